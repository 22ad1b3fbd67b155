"""Matplotlib, when it is installed (``pip install 'minidiff[plot]'``): the figures of the examples
and of ``python -m minidiff figures`` are drawn with it; nothing else in minidiff needs it."""

MISSING = "matplotlib is needed for the figures: pip install 'minidiff[plot]'"


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or an ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
