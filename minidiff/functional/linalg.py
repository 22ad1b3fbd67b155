"""Matrix products."""
from __future__ import annotations

import numpy as np

from ..autograd import Function, unbroadcast
from ..backend import get_array_module

__all__ = ["matmul"]


class MatMul(Function):
    """``a @ b`` with NumPy's rules: batch axes broadcast; a 1-D ``a`` is a row, a 1-D ``b`` a column."""

    def forward(self, a, b):
        self.save_for_backward(a if self.needs_input_grad[1] else None, b if self.needs_input_grad[0] else None)
        return get_array_module(a).matmul(a, b)

    def backward(self, grad):
        a, b = self.saved
        a_shape, b_shape = self.inputs[0].shape, self.inputs[1].shape
        xp = get_array_module(grad)
        # put back the axes a 1-D operand lost, so both cases are plain (…, m, k) @ (…, k, n)
        a_2d = (1,) + a_shape if len(a_shape) == 1 else a_shape
        b_2d = b_shape + (1,) if len(b_shape) == 1 else b_shape
        if len(b_shape) == 1:
            grad = xp.expand_dims(grad, -1)
        if len(a_shape) == 1:
            grad = xp.expand_dims(grad, -2)
        grad_a = grad_b = None
        if self.needs_input_grad[0]:
            grad_a = unbroadcast(grad @ xp.swapaxes(b.reshape(b_2d), -1, -2), a_2d).reshape(a_shape)  # ∂(AB)/∂A: G Bᵀ
        if self.needs_input_grad[1]:
            grad_b = unbroadcast(xp.swapaxes(a.reshape(a_2d), -1, -2) @ grad, b_2d).reshape(b_shape)  # ∂(AB)/∂B: Aᵀ G
        return grad_a, grad_b


def matmul(a, b):
    a_shape, b_shape = (x.shape if hasattr(x, "shape") else np.shape(x) for x in (a, b))
    if not a_shape or not b_shape:
        raise ValueError(f"matmul: operands must be at least 1-D, got {a_shape} @ {b_shape}")
    inner_b = b_shape[0] if len(b_shape) == 1 else b_shape[-2]
    if a_shape[-1] != inner_b:
        raise ValueError(f"matmul: inner dimensions differ: {a_shape} @ {b_shape}")
    try:
        np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions do not broadcast: {a_shape} @ {b_shape}") from None
    return MatMul.apply(a, b)
