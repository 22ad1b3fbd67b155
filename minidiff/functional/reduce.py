"""Reductions over an axis (int), several axes (tuple) or everything (``None``), with ``keepdims``."""
from __future__ import annotations

import math

from ..autograd import Function
from ..backend import get_array_module

__all__ = ["sum", "mean", "max", "var"]


def _axes(axis, ndim) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(a % ndim for a in ((axis,) if isinstance(axis, int) else axis)))


def _spread(grad, shape, axes, keepdims):
    """The adjoint of a reduction: put back the reduced axes and copy ``grad`` along them.

    A writable copy, not a broadcast view, so an optimizer may scale a ``.grad`` in place.
    """
    xp = get_array_module(grad)
    if not keepdims:
        grad = xp.expand_dims(grad, axes)
    return xp.broadcast_to(grad, shape).copy()


class Sum(Function):
    def forward(self, x, axis=None, keepdims=False):
        axes = _axes(axis, x.ndim)
        self.save_for_backward(x.shape, axes, keepdims)
        return x.sum(axis=axes, keepdims=keepdims)

    def backward(self, grad):
        shape, axes, keepdims = self.saved
        return _spread(grad, shape, axes, keepdims)  # ∂(Σᵢ xᵢ)/∂xⱼ = 1


class Mean(Function):
    def forward(self, x, axis=None, keepdims=False):
        axes = _axes(axis, x.ndim)
        self.save_for_backward(x.shape, axes, keepdims)
        return x.mean(axis=axes, keepdims=keepdims)

    def backward(self, grad):
        shape, axes, keepdims = self.saved
        count = math.prod(shape[a] for a in axes)
        return _spread(grad / count, shape, axes, keepdims)  # ∂(Σᵢ xᵢ/n)/∂xⱼ = 1/n


class Max(Function):
    """The gradient goes to the maximal elements, split equally among ties (PyTorch's ``amax``)."""

    def forward(self, x, axis=None, keepdims=False):
        axes = _axes(axis, x.ndim)
        out = x.max(axis=axes, keepdims=True)
        is_max = x == out
        self.save_for_backward(is_max / is_max.sum(axis=axes, keepdims=True, dtype=x.dtype), axes, keepdims)
        return out if keepdims else out.squeeze(axes)

    def backward(self, grad):
        share, axes, keepdims = self.saved
        return _spread(grad, share.shape, axes, keepdims) * share  # ∂ max x/∂xⱼ = [xⱼ = max]/#ties


def sum(x, axis=None, keepdims=False):
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    """The maximum over ``axis`` (values only: use ``x.data.argmax`` for the indices)."""
    return Max.apply(x, axis=axis, keepdims=keepdims)


def var(x, axis=None, keepdims=False, correction=1):
    """Variance with Bessel's ``correction`` (1, PyTorch's default: unbiased; 0: the population variance)."""
    count = math.prod(x.shape[a] for a in _axes(axis, x.ndim))
    centered = x - mean(x, axis=axis, keepdims=True)
    return sum(centered * centered, axis=axis, keepdims=keepdims) / (count - correction)
