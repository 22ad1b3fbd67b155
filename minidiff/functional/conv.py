"""Convolution and the fully connected layer, as GEMMs: the textbook formulations.

:class:`Conv2d` unfolds the input so that a convolution is one matrix product (im2col, the
formulation of Caffe and chainer) and scatters the gradient back with col2im, its adjoint. It is
the specification: plain, one thread, whole batch at once. The fast formulations -- chunked and
threaded im2col, a GEMM per image for 1×1 kernels, Winograd -- are its siblings in
:mod:`~minidiff.functional.conv_fast`; :func:`conv2d` chooses between them.
"""
from __future__ import annotations

from .. import backend
from ..autograd import Function
from ..kernels import kernel
from ..kernels.reference import conv_output_size
from .conv_fast import fast_conv2d

__all__ = ["conv2d", "linear"]

CONV_ALGORITHMS = ("reference", "auto", "im2col", "winograd")


class Conv2d(Function):
    r"""y = W · im2col(x) + b, with W flattened to (C_out, C·kh·kw): one GEMM for the whole batch.

    cols[(c, i, j), (n, p, q)] = x_pad[n, c, p·stride + i, q·stride + j], so that
    y[n, o, p, q] = Σ_{c,i,j} W[o, c, i, j] · cols[(c, i, j), (n, p, q)] + b[o].
    """

    def forward(self, x, w, b, stride, padding):
        n = x.shape[0]
        c_out, _, kh, kw = w.shape
        ho = conv_output_size(x.shape[2], kh, stride, padding)
        wo = conv_output_size(x.shape[3], kw, stride, padding)
        cols = kernel("im2col", x)(x, kh, kw, stride, padding)  # (C·kh·kw, N·Ho·Wo)
        y = w.reshape(c_out, -1) @ cols  # (C_out, C·kh·kw) @ (C·kh·kw, N·Ho·Wo) → (C_out, N·Ho·Wo)
        if b is not None:
            y += b[:, None]
        self.conv = (kh, kw, stride, padding)
        self.save_for_backward(x.shape, w, cols)
        return y.reshape(c_out, n, ho, wo).transpose(1, 0, 2, 3)  # (N, C_out, Ho, Wo)

    def backward(self, grad):
        x_shape, w, cols = self.saved
        c_out = w.shape[0]
        grad_y = grad.transpose(1, 0, 2, 3).reshape(c_out, -1)  # ∂Y: (C_out, N·Ho·Wo)
        grad_x = grad_w = grad_b = None
        if self.needs_input_grad[0]:
            grad_cols = w.reshape(c_out, -1).T @ grad_y  # ∂y/∂cols = Wᵀ: (C·kh·kw, N·Ho·Wo)
            grad_x = kernel("col2im", grad)(grad_cols, x_shape, *self.conv)  # ∂cols/∂x = col2im, im2col's adjoint: (N, C, H, W)
        if self.needs_input_grad[1]:
            grad_w = (grad_y @ cols.T).reshape(w.shape)  # ∂y/∂W = ∂Y·colsᵀ: (C_out, C·kh·kw)
        if self.needs_input_grad[2]:
            grad_b = grad_y.sum(axis=1)  # ∂y/∂b = 1: Σ ∂Y over images and positions, (C_out,)
        return grad_x, grad_w, grad_b


def conv2d(x, w, b=None, stride: int = 1, padding: int = 0, algorithm: str | None = None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` (integer stride and zero padding).

    x: (N, C, H, W), w: (C_out, C, kh, kw), b: (C_out,) or None → (N, C_out, Ho, Wo) with
    Ho = ⌊(H + 2·padding − kh)/stride⌋ + 1 (likewise Wo).

    ``algorithm``: ``"reference"``, the textbook :class:`Conv2d`; or a fast formulation of
    :func:`~minidiff.functional.conv_fast.fast_conv2d`: ``"im2col"``, ``"winograd"`` (3×3
    stride-1 kernels only) or ``"auto"``. ``None``: ``"reference"`` with
    ``MINIDIFF_KERNELS=reference``, else ``MINIDIFF_CONV`` (default ``"auto"``).
    """
    _check(x, w, b, stride, padding)
    if algorithm is None:
        algorithm = backend.conv_algorithm()
        algorithm = "reference" if backend.kernel_mode() == "reference" else algorithm
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"conv2d: algorithm must be one of {', '.join(map(repr, CONV_ALGORITHMS))}, got {algorithm!r}")
    if algorithm == "winograd" and not (tuple(w.shape[2:]) == (3, 3) and stride == 1):
        raise ValueError(f"conv2d: algorithm='winograd' needs a 3×3 kernel and stride 1, got kernel {tuple(w.shape[2:])}, stride={stride}")
    if algorithm == "reference":
        return Conv2d.apply(x, w, b, stride=int(stride), padding=int(padding))
    return fast_conv2d(x, w, b, int(stride), int(padding), algorithm)


def _check(x, w, b, stride, padding):
    x_shape, w_shape = tuple(x.shape), tuple(w.shape)
    if len(x_shape) != 4:
        raise ValueError(f"conv2d: expected a 4-D input (N, C, H, W), got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: expected a 4-D weight (C_out, C, kh, kw), got shape {w_shape}")
    if x_shape[1] != w_shape[1]:
        raise ValueError(
            f"conv2d: input has {x_shape[1]} channels (shape {x_shape}) but weight expects "
            f"{w_shape[1]} (shape {w_shape})"
        )
    if b is not None and tuple(b.shape) != (w_shape[0],):
        raise ValueError(f"conv2d: bias of shape {tuple(b.shape)} for {w_shape[0]} output channels")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d: stride must be ≥ 1 and padding ≥ 0, got stride={stride}, padding={padding}")
    padded = (x_shape[2] + 2 * padding, x_shape[3] + 2 * padding)
    if w_shape[2] > padded[0] or w_shape[3] > padded[1]:
        raise ValueError(
            f"conv2d: kernel {w_shape[2:]} is larger than the padded input {padded} "
            f"(input shape {x_shape}, padding={padding})"
        )


class Linear(Function):
    """y = x·Wᵀ + b over the last axis of x; any leading axes are batch axes."""

    def forward(self, x, w, b):
        self.save_for_backward(x if self.needs_input_grad[1] else None, w if self.needs_input_grad[0] else None)
        out = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])  # (..., out); one 2-D GEMM:
        return out if b is None else out + b  # NumPy's stacked (N, L, D) @ Wᵀ is a slow loop (40× at 8×49×128)

    def backward(self, grad):
        x, w = self.saved
        x_shape = self.inputs[0].shape
        grad_x = (grad.reshape(-1, grad.shape[-1]) @ w).reshape(x_shape) if self.needs_input_grad[0] else None  # ∂y/∂x = W
        grad_w = None
        if self.needs_input_grad[1]:
            grad_w = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # ∂y/∂W: Σ dyᵀ·x over batch rows
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(axis=0) if self.needs_input_grad[2] else None  # ∂y/∂b = 1
        return grad_x, grad_w, grad_b


def linear(x, w, b=None):
    """``torch.nn.functional.linear``: x (..., in), w (out, in), b (out,) or None → (..., out)."""
    if len(w.shape) != 2:
        raise ValueError(f"linear: expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
    if len(x.shape) == 0 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"linear: input has {x.shape[-1] if len(x.shape) else 0} features (shape {tuple(x.shape)}) "
            f"but weight expects {w.shape[1]} (shape {tuple(w.shape)})"
        )
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"linear: bias of shape {tuple(b.shape)} for {w.shape[0]} output features")
    return Linear.apply(x, w, b)
