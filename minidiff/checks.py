"""Checking the Python API's arguments where they come in, with messages in the caller's terms.

The maths functions and samplers take plain arrays, generators and numbers. Handed something
else, NumPy either fails deep inside with a message about its own internals (``'int' object has
no attribute 'standard_normal'``) or, worse, computes a wrong answer without a word: ᾱ cast to
the integer dtype of a uint8 x₀ is all zeros. Each function here refuses one kind of bad
argument, naming it, and returns the good one unchanged. The rules:

- **arrays** (x₀, x_T, ε, …) must be NumPy or CuPy arrays of a floating dtype. Integer, boolean
  and complex arrays are refused, not converted: uint8 images could mean [0, 255] or class
  indices, and no rule guesses that right every time; the message says how to convert images;
- **a model's output** must have x_t's shape, or twice its channels where the caller said the
  model learns its variances, and be finite;
- **generators** are ``numpy.random.Generator`` objects (or minidiff's per-rank view of one);
  a seed such as ``rng=0`` is refused with the one-line fix;
- **counts and numbers** are integers (not bools or floats) or finite reals in a stated range.

The errors are :class:`ArgumentError`, both a TypeError and a ValueError, so that code catching
either (and the command line, which reports ValueErrors in one line) sees them.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_array_module, is_cupy_array


class ArgumentError(TypeError, ValueError):
    """An argument of the wrong type or out of range, named in the message."""


class NonFiniteOutput(FloatingPointError, ValueError):
    """The model returned NaN or infinite values: sampling stops (a ValueError too, so the command
    line reports it in one line)."""


def _describe(value) -> str:
    if isinstance(value, np.ndarray) or is_cupy_array(value):
        return f"an array of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}" if value is None or np.isscalar(value) else f"a {type(value).__name__}"


def float_array(value, name: str):
    """``value`` if it is a NumPy or CuPy array of a floating dtype; refused otherwise (module docstring)."""
    from .autograd import Tensor

    if isinstance(value, Tensor):
        raise ArgumentError(f"{name} is a minidiff Tensor; pass its array ({name}.data)")
    if not (isinstance(value, np.ndarray) or is_cupy_array(value)):
        raise ArgumentError(f"{name} must be a NumPy or CuPy array of floats, got {_describe(value)}")
    kind = value.dtype.kind
    if kind == "f":
        return value
    if kind in "iub":
        raise ArgumentError(f"{name} has dtype {value.dtype}; it must be floating point (images in [0, 255] "
                            f"become the data range [-1, 1] by {name}.astype(np.float32) / 127.5 - 1)")
    raise ArgumentError(f"{name} has dtype {value.dtype}; it must be a real floating-point array")


def timestep_array(t, name: str = "t"):
    """``t`` as an array of integer timesteps (a list or a Python int is converted); refused otherwise."""
    from .autograd import Tensor

    if t is None or isinstance(t, Tensor):
        raise ArgumentError(f"timesteps {name} must be integers (an int64 array of shape (N,)), got {_describe(t)}")
    xp = get_array_module(t)
    array = xp.asarray(t)
    if array.dtype.kind not in "iu":
        raise ArgumentError(f"timesteps {name} must be integers, got dtype {array.dtype}")
    return array


def finite(array, name: str):
    """``array`` if every value is finite; refused naming how many are not."""
    bad = _nonfinite(array)
    if bad:
        raise ArgumentError(f"{name} holds {bad} NaN or infinite values")
    return array


def _nonfinite(array) -> int:
    xp = get_array_module(array)
    return int(xp.count_nonzero(~xp.isfinite(array)))


def shape(value, name: str = "shape") -> tuple:
    """``value`` as a tuple if it is a non-empty tuple or list of positive integers (an array shape)."""
    if not (isinstance(value, (tuple, list)) and value and all(
            isinstance(size, numbers.Integral) and not isinstance(size, bool) and size >= 1 for size in value)):
        raise ArgumentError(f"{name} must be a tuple of positive integers (N, C, H, W), got {value!r}")
    return tuple(value)


def broadcasts_to(array, name: str, shape: tuple):
    """``array`` if it broadcasts to ``shape`` (e.g. one image for a batch); refused naming both shapes otherwise."""
    try:
        fits = np.broadcast_shapes(tuple(array.shape), tuple(shape)) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ArgumentError(f"{name} has shape {tuple(array.shape)}, which does not broadcast to {tuple(shape)}")
    return array


def same_shape(array, name: str, like, like_name: str):
    """``array`` if it has the shape of ``like``; refused otherwise (broadcasting would hide the mistake)."""
    if tuple(array.shape) != tuple(like.shape):
        raise ArgumentError(f"{name} has shape {tuple(array.shape)}, {like_name} {tuple(like.shape)}; they must match")
    return array


def generator(rng, name: str = "rng"):
    """``rng`` if it draws like a ``numpy.random.Generator`` (or is None, for a fresh one); refused otherwise."""
    from .distributed import RowsOf

    if rng is None or isinstance(rng, (np.random.Generator, RowsOf)):
        return rng
    hint = f"; for a seed write {name}=np.random.default_rng({rng!r})" if isinstance(rng, numbers.Integral) else ""
    raise ArgumentError(f"{name} must be a numpy.random.Generator, got {_describe(rng)}{hint}")


def integer(value, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool, not a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name} must be an integer, got {_describe(value)}")
    if value < low or (high is not None and value > high):
        raise ArgumentError(f"{name} must be an integer in [{low}, {'∞' if high is None else high}], got {value}")
    return int(value)


def real(value, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a float if it is a finite real number (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name} must be a number, got {_describe(value)}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ArgumentError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value}")
    return float(value)


def probabilities(p, name: str, size: int) -> np.ndarray:
    """``p`` as a float64 array if it is a distribution over ``size`` outcomes: finite, ≥ 0, summing to 1."""
    array = np.asarray(p) if isinstance(p, (list, tuple, np.ndarray)) else None
    if array is None or array.dtype.kind not in "fiu":
        raise ArgumentError(f"{name} must be an array of {size} probabilities, got {_describe(p)}")
    array = array.astype(np.float64)
    if array.shape != (size,):
        raise ArgumentError(f"{name} must hold {size} probabilities, got shape {array.shape}")
    if not (np.isfinite(array).all() and (array >= 0).all() and abs(array.sum() - 1.0) < 1e-6):
        raise ArgumentError(f"{name} must be finite, non-negative and sum to 1; they sum to {array.sum():.6g}"
                            + ("" if (array >= 0).all() else f" with a minimum of {array.min():.3g}"))
    return array


def model_output(output, x_t, learned_variance: bool):
    """``output`` if its shape fits x_t: the same, or with twice the channels where ``learned_variance``
    (ε̂ and Nichol & Dhariwal's v stacked); refused naming both shapes otherwise."""
    if not hasattr(output, "shape"):
        raise ArgumentError(f"the model returned {_describe(output)}; it must return an array shaped like "
                            f"x_t {tuple(x_t.shape)}")
    shape = tuple(output.shape)
    expected = tuple(x_t.shape)
    doubled = expected[:1] + (2 * expected[1],) + expected[2:] if len(expected) > 1 else None
    if shape == expected or (learned_variance and shape == doubled):
        return output
    if shape == doubled:
        raise ArgumentError(f"the model returned shape {shape} for x_t of shape {expected}: twice the channels, "
                            "as a model that learns its variances does; say so (variance='learned', or a "
                            "model whose learned_variance attribute is True) or return x_t's shape")
    also = f" (or {doubled}, with learned variances)" if learned_variance else ""
    raise ArgumentError(f"the model returned shape {shape} for x_t of shape {expected}; expected {expected}{also}")


def finite_model_output(output, t, where: str | None = None) -> None:
    """Refuse a model output holding NaN or infinite values, naming the timestep (or ``where``, for a
    sampler whose model takes real noise levels) and how many."""
    bad = _nonfinite(output)
    if bad:  # t: the model's timesteps, one per example (the same one in a sampler's batch)
        where = where or f"timestep t={int(get_array_module(output).asarray(t).reshape(-1)[0])}"
        raise NonFiniteOutput(f"the model returned {bad} NaN or infinite values (of {output.size}) at {where}; "
                              "sampling stopped")
