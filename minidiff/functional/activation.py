"""Activations, softmax and dropout."""
from __future__ import annotations

import math

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import kernel
from ..kernels.reference import sigmoid as _sigmoid
from .fusion import absorb

__all__ = ["tanh", "sigmoid", "silu", "gelu", "relu", "softmax", "log_softmax", "dropout"]


class Tanh(Function):
    def forward(self, x):
        out = get_array_module(x).tanh(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved
        return grad * (1 - out * out)  # ∂ tanh x/∂x = 1 − tanh²x


class Sigmoid(Function):
    def forward(self, x):
        out = _sigmoid(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved
        return grad * out * (1 - out)  # ∂σ/∂x = σ(1 − σ)


class SiLU(Function):
    def forward(self, x):
        s = _sigmoid(x)
        self.save_for_backward(x, s)
        return x * s

    def backward(self, grad):
        x, s = self.saved
        return grad * s * (1 + x * (1 - s))  # ∂(xσ(x))/∂x = σ + xσ(1 − σ) = σ(1 + x(1 − σ))


GELU_C = math.sqrt(2 / math.pi)  # √(2/π) in GELU's tanh approximation


class GELU(Function):
    r"""GELU's tanh approximation (Hendrycks & Gimpel 2016, §2), the MLP activation of DiT:
    y = ½x(1 + tanh u) with u = √(2/π)(x + 0.044715x³)."""

    def forward(self, x):
        xp = get_array_module(x)
        tanh_u = xp.tanh(GELU_C * (x + 0.044715 * x * x * x))
        self.save_for_backward(x, tanh_u)
        return 0.5 * x * (1 + tanh_u)

    def backward(self, grad):
        x, tanh_u = self.saved
        du_dx = GELU_C * (1 + 3 * 0.044715 * x * x)  # ∂u/∂x = √(2/π)(1 + 3·0.044715x²)
        return grad * (0.5 * (1 + tanh_u) + 0.5 * x * (1 - tanh_u * tanh_u) * du_dx)  # ∂y/∂x = ½(1 + tanh u) + ½x(1 − tanh²u)·∂u/∂x


class ReLU(Function):
    def forward(self, x):
        self.save_for_backward(x > 0)
        return get_array_module(x).maximum(x, 0)

    def backward(self, grad):
        (positive,) = self.saved
        return grad * positive  # ∂ max(x, 0)/∂x = [x > 0]


class Softmax(Function):
    """softmax along ``axis``: attention's ``softmax_forward`` / ``softmax_backward`` kernels
    (kernels/reference.py holds the one copy of the maths) with that axis moved last."""

    def forward(self, x, axis=-1):
        xp = get_array_module(x)
        probs = kernel("softmax_forward", x)(xp.moveaxis(x, axis, -1), 1.0)  # exp(x − max x)/Σ exp(x − max x)
        self.axis = axis
        self.save_for_backward(probs)
        return xp.moveaxis(probs, -1, axis)

    def backward(self, grad):
        (probs,) = self.saved
        xp = get_array_module(grad)
        grad_x = kernel("softmax_backward", probs)(probs, xp.moveaxis(grad, self.axis, -1))  # ∂yᵢ/∂xⱼ = yᵢ(δᵢⱼ − yⱼ)
        return xp.moveaxis(grad_x, -1, self.axis)


class LogSoftmax(Function):
    def forward(self, x, axis=-1):
        xp = get_array_module(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.save_for_backward(out, axis)
        return out

    def backward(self, grad):
        out, axis = self.saved
        softmax = get_array_module(out).exp(out)
        return grad - softmax * grad.sum(axis=axis, keepdims=True)  # ∂(xᵢ − log Σₖ eˣᵏ)/∂xⱼ = δᵢⱼ − softmaxⱼ


class Dropout(Function):
    def forward(self, x, p=0.5, rng=None):
        xp = get_array_module(x)
        rng = xp.random.default_rng() if rng is None else rng
        keep = xp.asarray(rng.random(x.shape)) >= p
        mask = keep.astype(x.dtype) / x.dtype.type(1 - p)  # inverted dropout: E[output] = x, so eval needs no rescale
        self.save_for_backward(mask)
        return x * mask

    def backward(self, grad):
        (mask,) = self.saved
        return grad * mask  # ∂(x·m)/∂x = m


def tanh(x):
    return Tanh.apply(x)


def sigmoid(x):
    return Sigmoid.apply(x)


def silu(x):
    """x·σ(x), the activation of the DDPM U-Net (also called swish)."""
    fused = absorb(x, "silu")  # silu(group_norm(·)) as one op, when fusion is on (fusion.py)
    return SiLU.apply(x) if fused is None else fused


def gelu(x):
    """GELU with the tanh approximation (PyTorch's ``gelu(x, approximate="tanh")``), as in DiT's MLP."""
    return GELU.apply(x)


def relu(x):
    return ReLU.apply(x)


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability ``p`` and scale the rest by 1/(1 − p); identity when
    ``p == 0`` or not ``training``. ``rng`` is a ``numpy`` (or ``cupy``) ``Generator``."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if p == 0 or not training:
        return x
    return Dropout.apply(x, p=p, rng=rng)
