"""Convolution and the fully connected layer: both are one GEMM.

``conv2d`` unfolds the input with im2col so that the convolution is a matrix product
(chainer / Caffe's formulation); im2col and col2im are named kernels, so the Cython (CPU) or
a GPU version replaces the NumPy reference without touching this file.
"""
from __future__ import annotations

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import kernel
from ..kernels.reference import conv_output_size

__all__ = ["conv2d", "linear"]


class Conv2d(Function):
    r"""y[n] = W · im2col(x)[n] + b, with W flattened to (C_out, C·kh·kw).

    Only ``x`` and ``w`` are saved, not the columns: im2col(x) is kh·kw times the size of x
    (9× for a 3×3 conv), and a U-Net keeps every layer's saved arrays alive until its backward
    runs, so saving columns would dominate the peak memory of a training step. Recomputing them
    in the backward is one memory-bound pass, cheap next to the GEMMs.
    """

    def forward(self, x, w, b, stride, padding):
        xp = get_array_module(x)
        n = x.shape[0]
        c_out, _, kh, kw = w.shape
        ho = conv_output_size(x.shape[2], kh, stride, padding)
        wo = conv_output_size(x.shape[3], kw, stride, padding)
        cols = kernel("im2col", x)(x, kh, kw, stride, padding)  # (C·kh·kw, N·Ho·Wo)
        out = w.reshape(c_out, -1) @ cols  # one GEMM for the whole batch: (C_out, N·Ho·Wo)
        if b is not None:
            out += b[:, None]
        self.x_shape, self.conv = x.shape, (kh, kw, stride, padding)
        self.save_for_backward(x if self.needs_input_grad[1] else None, w if self.needs_input_grad[0] else None)
        return xp.ascontiguousarray(out.reshape(c_out, n, ho, wo).transpose(1, 0, 2, 3))  # (N, C_out, Ho, Wo)

    def backward(self, grad):
        x, w = self.saved
        xp = get_array_module(grad)
        c_out = grad.shape[1]
        grad = xp.ascontiguousarray(grad.transpose(1, 0, 2, 3)).reshape(c_out, -1)  # dY: (C_out, N·Ho·Wo)
        grad_x = grad_w = grad_b = None
        if self.needs_input_grad[0]:
            grad_cols = w.reshape(c_out, -1).T @ grad  # ∂y/∂cols = Wᵀ: (C·kh·kw, N·Ho·Wo)
            grad_x = kernel("col2im", grad_cols)(grad_cols, self.x_shape, *self.conv)  # ∂cols/∂x = col2im (adjoint of im2col)
        if self.needs_input_grad[1]:
            cols = kernel("im2col", x)(x, *self.conv)  # recomputed, see the class docstring
            grad_w = (grad @ cols.T).reshape(self.inputs[1].shape)  # ∂y/∂W = dY·colsᵀ: (C_out, C, kh, kw)
        if self.needs_input_grad[2]:
            grad_b = grad.sum(axis=1)  # ∂y/∂b = 1, summed over images and positions
        return grad_x, grad_w, grad_b


def conv2d(x, w, b=None, stride: int = 1, padding: int = 0):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` (integer stride and zero padding).

    x: (N, C, H, W), w: (C_out, C, kh, kw), b: (C_out,) or None → (N, C_out, Ho, Wo) with
    Ho = ⌊(H + 2·padding − kh)/stride⌋ + 1 (likewise Wo).
    """
    if len(x.shape) != 4:
        raise ValueError(f"conv2d: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if len(w.shape) != 4:
        raise ValueError(f"conv2d: expected a 4-D weight (C_out, C, kh, kw), got shape {tuple(w.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"conv2d: input has {x.shape[1]} channels (shape {tuple(x.shape)}) but weight expects "
            f"{w.shape[1]} (shape {tuple(w.shape)})"
        )
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"conv2d: bias of shape {tuple(b.shape)} for {w.shape[0]} output channels")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d: stride must be ≥ 1 and padding ≥ 0, got stride={stride}, padding={padding}")
    padded = (x.shape[2] + 2 * padding, x.shape[3] + 2 * padding)
    if w.shape[2] > padded[0] or w.shape[3] > padded[1]:
        raise ValueError(
            f"conv2d: kernel {tuple(w.shape[2:])} is larger than the padded input {padded} "
            f"(input shape {tuple(x.shape)}, padding={padding})"
        )
    return Conv2d.apply(x, w, b, stride=int(stride), padding=int(padding))


class Linear(Function):
    """y = x·Wᵀ + b over the last axis of x; any leading axes are batch axes."""

    def forward(self, x, w, b):
        self.save_for_backward(x if self.needs_input_grad[1] else None, w if self.needs_input_grad[0] else None)
        out = x @ w.T  # (..., out)
        return out if b is None else out + b

    def backward(self, grad):
        x, w = self.saved
        grad_x = grad @ w if self.needs_input_grad[0] else None  # ∂y/∂x = W
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
