"""Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) as one Function.

softmax(q·kᵀ·scale)·v with an explicit backward, so the (L × L) score matrix is built once and
only the probabilities P are kept for the backward.
"""
from __future__ import annotations

import math

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import kernel

__all__ = ["scaled_dot_product_attention"]


def _swap_last(a):
    return a.swapaxes(-1, -2)


class ScaledDotProductAttention(Function):
    r"""O = P·v with P = softmax(S) over keys and S = q·kᵀ·scale."""

    def forward(self, q, k, v, scale):
        xp = get_array_module(q)
        probs = kernel("softmax_forward", q)(xp.matmul(q, _swap_last(k)), scale)  # P = softmax(S): (..., L_q, L_k)
        self.scale = scale
        self.save_for_backward(q, k, v, probs)
        return xp.matmul(probs, v)  # (..., L_q, D_v)

    def backward(self, grad):
        q, k, v, probs = self.saved
        xp = get_array_module(grad)
        grad_v = xp.matmul(_swap_last(probs), grad) if self.needs_input_grad[2] else None  # ∂O/∂v = Pᵀ
        if not (self.needs_input_grad[0] or self.needs_input_grad[1]):
            return None, None, grad_v
        grad_probs = xp.matmul(grad, _swap_last(v))  # ∂O/∂P = v: dP = dO·vᵀ, (..., L_q, L_k)
        grad_scores = kernel("softmax_backward", probs)(probs, grad_probs)  # softmax Jacobian: dS = P ⊙ (dP − Σⱼ dP ⊙ P)
        grad_q = xp.matmul(grad_scores, k) * self.scale if self.needs_input_grad[0] else None  # ∂S/∂q = k·scale
        grad_k = xp.matmul(_swap_last(grad_scores), q) * self.scale if self.needs_input_grad[1] else None  # ∂S/∂k = q·scale
        return grad_q, grad_k, grad_v


def scaled_dot_product_attention(q, k, v, scale=None):
    """softmax(q·kᵀ·scale)·v over the last two axes; ``scale`` defaults to 1/√D.

    q: (B, L_q, D) or (B, H, L_q, D); k: (…, L_k, D); v: (…, L_k, D_v) with the same leading
    axes → (…, L_q, D_v). As ``torch.nn.functional.scaled_dot_product_attention`` without masks.
    """
    shapes = tuple(tuple(t.shape) for t in (q, k, v))
    if any(len(s) not in (3, 4) for s in shapes) or len({len(s) for s in shapes}) != 1:
        raise ValueError(f"scaled_dot_product_attention: expected q, k, v all (B, L, D) or (B, H, L, D), got {shapes}")
    (q_shape, k_shape, v_shape) = shapes
    if q_shape[:-2] != k_shape[:-2] or k_shape[:-2] != v_shape[:-2]:
        raise ValueError(f"scaled_dot_product_attention: leading axes of q, k, v differ: {shapes}")
    if q_shape[-1] != k_shape[-1] or k_shape[-2] != v_shape[-2]:
        raise ValueError(
            f"scaled_dot_product_attention: q and k need the same D and k and v the same L, got {shapes}"
        )
    scale = 1.0 / math.sqrt(q_shape[-1]) if scale is None else float(scale)
    return ScaledDotProductAttention.apply(q, k, v, scale=scale)
