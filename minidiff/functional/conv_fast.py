"""The fast formulations of ``conv2d``: a batch in cache-sized chunks on worker threads.

Three formulations, each a sibling of the textbook :class:`~minidiff.functional.conv.Conv2d`
and held to it by the tests: :class:`ChunkedConv2d` (im2col + GEMM a few images at a time, with
the flipped-kernel trick in its backward), :class:`PointwiseConv2d` (one GEMM per image for 1×1
kernels) and Winograd's F(2×2, 3×3) for 3×3 stride-1 kernels
(:mod:`~minidiff.functional.winograd`), or F(4×4, 3×3) on large maps (:func:`winograd_tile`). :func:`fast_conv2d` picks one. Their memory-bound steps
are named kernels, so the Cython (CPU) or a GPU version replaces the NumPy reference without
touching this file.
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import kernel
from ..kernels.reference import conv_output_size
from .chunking import image_chunks, map_chunks, scratch, sum_shares
from .fusion import absorb
from .winograd import reuses_filters, winograd_conv2d

WINOGRAD_MIN_CHANNELS = 4


class ChunkedConv2d(Function):
    r"""y[n] = W · im2col(x)[n] + b, with W flattened to (C_out, C·kh·kw): the textbook
    :class:`~minidiff.functional.conv.Conv2d`, a few images at a time.

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


WINOGRAD4_MIN_SIDE = 20


def winograd_tile(n: int, ho: int, wo: int, filters_reused: bool = False) -> int:
    """m of the F(m×m, 3×3) that computes a batch of ``n`` Hₒ×Wₒ outputs: 4 for maps of at least
    WINOGRAD4_MIN_SIDE on each side in batches of 2 or more, or of 1 when the filters' transform
    is reused (``filters_reused``: frozen weights, :func:`~minidiff.functional.winograd.reuses_filters`),
    else 2.

    F(4×4, 3×3) does 36 multiply-adds per 16 outputs and channel pair against F(2×2, 3×3)'s 64,
    and its transformed tiles are 2.25× the input rather than 4×; its transforms cost about what
    F(2×2, 3×3)'s do per image (more for the output adjoint). Measured on the mnist U-Net
    (Intel Xeon, batch 64, CPU time, alternated): F(4×4) at 28×28 only, −7 % per training step and
    −6 % per forward; adding 14×14 (16×16 of tiles for 14×14 outputs, and GEMMs of ~100 columns a
    chunk) or 7×7 gave back 2–4 points. At batch 1 the (36, 9) filter transform, done by NumPy,
    and the smaller GEMMs cost more than they save (+6 %); with the transform done once (frozen
    weights, as sampling runs) F(4×4) at 28×28 takes 3.8–6.2 % off a batch-1 forward (Intel Xeon,
    300 alternated rounds, ``benchmarks/levers_ab.py batch1-f4``).
    """
    return 4 if (n >= 2 or filters_reused) and min(ho, wo) >= WINOGRAD4_MIN_SIDE else 2


def fast_conv2d(x, w, b, stride: int, padding: int, algorithm: str):
    """``conv2d`` (arguments already checked) by the fast formulation ``algorithm`` names.

    ``"im2col"``: :class:`ChunkedConv2d`; ``"winograd"``: Winograd; ``"auto"``: Winograd where
    it applies and the input has at least WINOGRAD_MIN_CHANNELS channels, a GEMM per image for
    1×1 kernels, else im2col.
    """
    winograd_applies = tuple(w.shape[2:]) == (3, 3) and stride == 1
    # "auto" leaves an image's first layer (1–3 input channels) to im2col: there the GEMMs are
    # tiny and Winograd's 16 transformed output planes per channel cost more than they save
    # (mnist conv_in, forward: 5.6 ms as Winograd, 0.8 ms as im2col)
    if algorithm == "winograd" or (algorithm == "auto" and winograd_applies and x.shape[1] >= WINOGRAD_MIN_CHANNELS):
        tile = winograd_tile(x.shape[0], x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2, reuses_filters(w.data))
        fused = absorb(x, "conv", w, b, padding, tile)  # conv(silu(group_norm(·))) as one op (fusion.py)
        return winograd_conv2d(x, w, b, padding, tile) if fused is None else fused
    if algorithm == "auto" and tuple(w.shape[2:]) == (1, 1) and stride == 1 and padding == 0:
        return PointwiseConv2d.apply(x, w, b)
    return ChunkedConv2d.apply(x, w, b, stride=stride, padding=padding)
