"""Convolution and the fully connected layer, as GEMMs.

``conv2d`` picks one of three formulations: im2col, which unfolds the input so that the
convolution is one matrix product (chainer / Caffe's formulation, :class:`Conv2d`); one GEMM
per image for 1×1 kernels (:class:`PointwiseConv2d`); and Winograd's F(2×2, 3×3) for 3×3
stride-1 kernels (:mod:`~minidiff.functional.winograd`). Their memory-bound steps are named
kernels, so the Cython (CPU) or a GPU version replaces the NumPy reference without touching
this file.
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function
from .. import backend
from ..backend import get_array_module
from ..flops import add_flops
from ..kernels import kernel
from ..kernels.reference import conv_output_size
from .chunking import image_chunks, map_chunks, scratch, sum_shares
from .winograd import WinogradConv2d

__all__ = ["conv2d", "linear"]

WINOGRAD_MIN_CHANNELS = 4


class Conv2d(Function):
    r"""y[n] = W · im2col(x)[n] + b, with W flattened to (C_out, C·kh·kw).

    The batch is processed a few images at a time (:func:`image_chunks`): the columns of a
    chunk are written and read back while they are still in cache, which is what makes a
    3×3 convolution's 9× larger column matrix affordable on a CPU.

    Only ``x`` and ``w`` are saved, not the columns: a U-Net keeps every layer's saved arrays
    alive until its backward runs, so saving columns would dominate the peak memory of a
    training step. Recomputing them in the backward is one memory-bound pass per chunk.
    """

    def forward(self, x, w, b, stride, padding):
        xp = get_array_module(x)
        n = x.shape[0]
        c_out, _, kh, kw = w.shape
        ho = conv_output_size(x.shape[2], kh, stride, padding)
        wo = conv_output_size(x.shape[3], kw, stride, padding)
        im2col = kernel("im2col", x)
        w_matrix = w.reshape(c_out, -1)  # (C_out, C·kh·kw)
        out = xp.empty((n, c_out, ho * wo), dtype=x.dtype)

        def forward_chunk(chunk):
            cols = im2col(x[chunk], kh, kw, stride, padding, out=columns_buffer(x, chunk, w_matrix.shape[1], ho * wo))
            y = xp.matmul(w_matrix, cols, out=columns_buffer(x, chunk, c_out, ho * wo, "output"))
            out[chunk] = y.reshape(c_out, -1, ho * wo).transpose(1, 0, 2)  # (C_out, chunk, Ho·Wo) → (chunk, C_out, Ho·Wo)
            if b is not None:
                out[chunk] += b[:, None]

        map_chunks(forward_chunk, image_chunks(n, w_matrix.shape[1], ho * wo, x.itemsize, xp is not np), xp)
        add_flops(2 * out.size * w_matrix.shape[1])
        self.conv = (kh, kw, stride, padding)
        self.save_for_backward(x, w if self.needs_input_grad[0] else None)
        return out.reshape(n, c_out, ho, wo)

    def backward(self, grad):
        x, w = self.saved
        xp = get_array_module(grad)
        n, c_out = grad.shape[:2]
        kh, kw, stride, padding = self.conv
        c = x.shape[1]
        k, positions = c * kh * kw, grad.shape[2] * grad.shape[3]
        grad_x = xp.empty(x.shape, dtype=x.dtype) if self.needs_input_grad[0] else None
        # A stride-1 "same" conv's input gradient is itself a "same" conv: of dY with the kernel
        # flipped in space and transposed in channels. As a GEMM over columns of dY its inner
        # dimension is C_out·kh·kw, not C_out, and no scatter-add (col2im) is needed.
        same = stride == 1 and kh == kw == 2 * padding + 1
        w_flipped = xp.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(c, -1) if same and grad_x is not None else None
        im2col, col2im = kernel("im2col", x), kernel("col2im", x)

        def backward_chunk(chunk):
            grad_b = grad[chunk].sum(axis=(0, 2, 3)) if self.needs_input_grad[2] else None  # ∂y/∂b = 1, this chunk's share
            grad_chunk = xp.ascontiguousarray(grad[chunk].transpose(1, 0, 2, 3)).reshape(c_out, -1)  # dY: (C_out, chunk·Ho·Wo)
            if grad_x is not None and same:
                grad_cols = im2col(grad[chunk], kh, kw, 1, padding, out=columns_buffer(x, chunk, c_out * kh * kw, positions, "grad"))
                grad_x_chunk = xp.matmul(w_flipped, grad_cols, out=columns_buffer(x, chunk, c, positions, "output"))  # ∂y/∂x: dY ⋆ flip(W)ᵀ
                grad_x[chunk] = grad_x_chunk.reshape(c, -1, positions).transpose(1, 0, 2).reshape(grad_x[chunk].shape)
            elif grad_x is not None:
                grad_cols = xp.matmul(w.reshape(c_out, -1).T, grad_chunk, out=columns_buffer(x, chunk, k, positions, "grad"))  # ∂y/∂cols = Wᵀ
                col2im(grad_cols, x[chunk].shape, *self.conv, out=grad_x[chunk])  # ∂cols/∂x = col2im, im2col's adjoint
            if self.needs_input_grad[1]:
                cols = im2col(x[chunk], *self.conv, out=columns_buffer(x, chunk, k, positions))  # recomputed, see the class docstring
                return grad_chunk @ cols.T, grad_b  # ∂y/∂W = dY·colsᵀ, this chunk's share
            return None, grad_b

        grad_w, grad_b = sum_shares(map_chunks(backward_chunk, image_chunks(n, max(k, c_out * kh * kw), positions, x.itemsize, xp is not np), xp))
        return grad_x, None if grad_w is None else grad_w.reshape(self.inputs[1].shape), grad_b


class PointwiseConv2d(Function):
    """A 1×1 convolution, y[n] = W·x[n] + b for each image: one GEMM per image over its (C, H·W)
    matrix, with no im2col copy and no transposes (NumPy's stacked matmul calls BLAS per image)."""

    def forward(self, x, w, b):
        xp = get_array_module(x)
        n, c, h, width = x.shape
        c_out = w.shape[0]
        w_matrix = w.reshape(c_out, c)  # (C_out, C)
        x_images = x.reshape(n, c, h * width)  # (N, C, H·W)
        out = xp.empty((n, c_out, h * width), dtype=x.dtype)

        def forward_chunk(chunk):
            xp.matmul(w_matrix, x_images[chunk], out=out[chunk])
            if b is not None:
                out[chunk] += b[:, None]

        map_chunks(forward_chunk, image_chunks(n, max(c, c_out), h * width, x.itemsize, xp is not np), xp)
        add_flops(2 * out.size * c)
        self.save_for_backward(x_images if self.needs_input_grad[1] else None, w_matrix if self.needs_input_grad[0] else None)
        return out.reshape(n, c_out, h, width)

    def backward(self, grad):
        x_images, w_matrix = self.saved
        xp = get_array_module(grad)
        n, c_out, h, width = grad.shape
        grad_images = xp.ascontiguousarray(grad).reshape(n, c_out, h * width)  # (N, C_out, H·W)
        c = self.inputs[0].shape[1]
        grad_x = xp.empty((n, c, h * width), dtype=grad.dtype) if self.needs_input_grad[0] else None

        def backward_chunk(chunk):
            grad_b = grad_images[chunk].sum(axis=(0, 2)) if self.needs_input_grad[2] else None  # ∂y/∂b = 1, this chunk's share
            if grad_x is not None:
                xp.matmul(w_matrix.T, grad_images[chunk], out=grad_x[chunk])  # ∂y/∂x = Wᵀ, image by image
            if x_images is not None:
                return xp.matmul(grad_images[chunk], x_images[chunk].transpose(0, 2, 1)).sum(axis=0), grad_b  # ∂y/∂W = Σₙ dY[n]·x[n]ᵀ
            return None, grad_b

        grad_w, grad_b = sum_shares(map_chunks(backward_chunk, image_chunks(n, max(c, c_out), h * width, grad.itemsize, xp is not np), xp))
        return (None if grad_x is None else grad_x.reshape(self.inputs[0].shape),
                None if grad_w is None else grad_w.reshape(self.inputs[1].shape), grad_b)


def columns_buffer(x, chunk: slice, rows: int, positions: int, name: str = "columns"):
    """A scratch column matrix for the images ``x[chunk]``: (rows, chunk·positions)."""
    return scratch(name, (rows, (chunk.stop - chunk.start) * positions), x.dtype, get_array_module(x))


def conv2d(x, w, b=None, stride: int = 1, padding: int = 0, algorithm: str | None = None, residual=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` (integer stride and zero padding).

    x: (N, C, H, W), w: (C_out, C, kh, kw), b: (C_out,) or None → (N, C_out, Ho, Wo) with
    Ho = ⌊(H + 2·padding − kh)/stride⌋ + 1 (likewise Wo).

    ``algorithm``: ``"im2col"`` (one GEMM over unfolded patches, :class:`Conv2d`), ``"winograd"``
    (3×3 stride-1 kernels only, :mod:`~minidiff.functional.winograd`), or ``"auto"``: Winograd
    where it applies and the input has at least 4 channels, a GEMM per image for 1×1 kernels
    (:class:`PointwiseConv2d`), else im2col.
    ``None`` takes it from ``MINIDIFF_CONV`` (default ``"auto"``).

    ``residual`` (optional) is added to the result: ``conv2d(x, w, b, residual=r)`` is
    ``conv2d(x, w, b) + r``, with r of the output's shape (the end of a residual block) or
    (N, C_out, 1, 1) (a shift per image and channel, like a ResBlock's time embedding). On the
    Winograd path the addition happens while the output is written, not in a pass of its own.
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
    algorithm = backend.conv_algorithm() if algorithm is None else algorithm
    if algorithm not in ("auto", "im2col", "winograd"):
        raise ValueError(f"conv2d: algorithm must be 'auto', 'im2col' or 'winograd', got {algorithm!r}")
    winograd_applies = tuple(w.shape[2:]) == (3, 3) and stride == 1
    if algorithm == "winograd" and not winograd_applies:
        raise ValueError(f"conv2d: algorithm='winograd' needs a 3×3 kernel and stride 1, got kernel {tuple(w.shape[2:])}, stride={stride}")
    out_shape = (x.shape[0], w.shape[0], conv_output_size(x.shape[2], w.shape[2], stride, padding), conv_output_size(x.shape[3], w.shape[3], stride, padding))
    if residual is not None and tuple(residual.shape) not in (out_shape, out_shape[:2] + (1, 1)):
        raise ValueError(
            f"conv2d: residual of shape {tuple(residual.shape)} for an output of shape {out_shape} "
            f"(expected {out_shape} or {out_shape[:2] + (1, 1)})"
        )
    # "auto" leaves an image's first layer (1–3 input channels) to im2col: there the GEMMs are
    # tiny and Winograd's 16 transformed output planes per channel cost more than they save
    # (mnist conv_in, forward: 5.6 ms as Winograd, 0.8 ms as im2col)
    if algorithm == "winograd" or (algorithm == "auto" and winograd_applies and x.shape[1] >= WINOGRAD_MIN_CHANNELS):
        return WinogradConv2d.apply(x, w, b, residual, padding=int(padding))
    if algorithm == "auto" and tuple(w.shape[2:]) == (1, 1) and stride == 1 and padding == 0:
        y = PointwiseConv2d.apply(x, w, b)
    else:
        y = Conv2d.apply(x, w, b, stride=int(stride), padding=int(padding))
    return y if residual is None else y + residual


class Linear(Function):
    """y = x·Wᵀ + b over the last axis of x; any leading axes are batch axes."""

    def forward(self, x, w, b):
        self.save_for_backward(x if self.needs_input_grad[1] else None, w if self.needs_input_grad[0] else None)
        out = x @ w.T  # (..., out)
        add_flops(2 * out.size * w.shape[1])
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
