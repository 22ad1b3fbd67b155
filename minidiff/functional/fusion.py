"""Fusions below the model: a result that waits until it is used, so that the op using it can
take its place.

Model code reads like the paper -- ``h = conv(silu(group_norm(x))) + emb`` -- and the fast path
still runs GroupNorm and SiLU as one kernel and adds ``emb`` while the Winograd convolution
writes its output. An op that has a fused form returns a :class:`Pending` tensor: the op and its
inputs, not run yet. The op applied to it next may *absorb* it: ``silu`` of a pending GroupNorm
is the fused GroupNorm+SiLU op on the GroupNorm's inputs, a 3×3 Winograd ``conv2d`` of that is
the convolution normalising its input as it reads it, and ``pending_conv + r`` is the
convolution that adds r as it writes. Any other use reads ``.data``, which runs the op there and
then: the pending tensor becomes an ordinary graph node. So values and gradients are those of
the ops as written whichever way it goes (a test holds the fused and unfused U-Net together).

Results are pending only inside a module's forward (:func:`module_call`), and the outermost
module call hands its result back computed: a pending result never outlives a forward pass, so
its inputs cannot change in place (an optimiser step, an EMA swap) before it runs. Fusion is
off with ``MINIDIFF_KERNELS=reference`` (the plain path runs every op as written, for the
debugger) and inside ``with no_fusion():``.
"""
from __future__ import annotations

import math
import threading

from .. import backend
from ..autograd import Tensor, is_grad_enabled

__all__ = ["no_fusion"]

_disabled = 0  # open no_fusion blocks


class _Depth(threading.local):
    """Module forwards in progress on this thread (two threads' forwards must not count as nested)."""

    value = 0


_module_depth = _Depth()


class no_fusion:
    """Context manager: every op runs as written, none is left pending or fused."""

    def __enter__(self):
        global _disabled
        _disabled += 1

    def __exit__(self, *exc_info):
        global _disabled
        _disabled -= 1


def fusion_enabled() -> bool:
    return _module_depth.value > 0 and not _disabled and backend.kernel_mode() != "reference"


def module_call(forward, args, kwargs):
    """``forward(*args, **kwargs)`` as ``Module.__call__`` runs it: results may stay pending
    inside, and the outermost call returns its result computed."""
    if _module_depth.value:
        _module_depth.value += 1
        try:
            return forward(*args, **kwargs)
        finally:
            _module_depth.value -= 1
    with backend.settings_held():  # the whole forward pass runs with one reading of the settings
        _module_depth.value = 1
        try:
            out = forward(*args, **kwargs)
        finally:
            _module_depth.value = 0
        for result in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(result, Pending):
                result.data  # runs the op
    return out


def pending(function, inputs: tuple, options: dict, shape, **absorbers):
    """``function.apply(*inputs, **options)`` -- left pending when fusion is on.

    ``absorbers`` maps the name of an op that may take its place (``"silu"``, ``"conv"``, ``"add"``) to a
    builder of the fused op, called with that op's other operands; it returns ``None`` when it
    does not apply (a residual of the wrong shape, …), and the op then runs as written.
    """
    if not fusion_enabled():
        return function.apply(*inputs, **options)
    return Pending(function, inputs, options, shape, absorbers)


def absorb(x, name: str, *operands):
    """The fused op that replaces ``name(x, *operands)`` when ``x`` is a pending result with one, else ``None``."""
    if type(x) is Pending and x._value is None and name in x._absorbers:
        return x._absorbers[name](*operands)
    return None


class Pending(Tensor):
    """The result of ``function.apply(*inputs, **options)``, computed when ``.data`` is first read.

    Its shape is known at once (the ops around it check shapes without running it); it requires
    grad as the op's output would. Once run, it is that output: its ``_ctx`` is the op's node.
    """

    def __init__(self, function, inputs, options, shape, absorbers):
        self._function, self._inputs, self._options, self._absorbers = function, inputs, options, absorbers
        self._shape, self._value = tuple(shape), None
        self.requires_grad = is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
        self.grad = None
        self._ctx = None

    @property
    def data(self):
        if self._value is None:
            result = self._function.apply(*self._inputs, **self._options)
            self._value, self._ctx, self.requires_grad = result.data, result._ctx, result.requires_grad
            self._inputs = self._absorbers = None  # the node holds what the backward needs
        return self._value

    @data.setter
    def data(self, value):
        self._value, self._inputs, self._absorbers = value, None, None

    shape = property(lambda self: self._shape)
    ndim = property(lambda self: len(self._shape))
    size = property(lambda self: math.prod(self._shape))
    dtype = property(lambda self: self._inputs[0].dtype if self._value is None else self._value.dtype)
    device = property(lambda self: self._inputs[0].device if self._value is None else backend.device_of(self._value))
