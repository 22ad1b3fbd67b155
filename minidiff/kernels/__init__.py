"""Named kernels behind one dispatcher: the NumPy reference, Cython on the CPU, CuPy on the GPU.

``kernel(name, array)`` returns the implementation of ``name`` to use for ``array``:

* a CuPy array gets the reference, which is written with the array module of its inputs and
  so runs on CuPy too (there are no CUDA kernels yet);
* a NumPy array gets the Cython kernel when ``backend.kernel_mode()`` is ``"cpu"`` and the
  extension provides it, else the reference.

The reference (:mod:`minidiff.kernels.reference`) is the specification: the tests check every
fast kernel against it.
"""
from __future__ import annotations

from .. import backend
from . import cpu, reference


def kernel(name: str, array):
    """The implementation of kernel ``name`` for arrays like ``array``."""
    if not backend.is_cupy_array(array) and backend.kernel_mode() == "cpu":
        fast = getattr(cpu, name, None)
        if fast is not None:
            return fast
    return getattr(reference, name)
