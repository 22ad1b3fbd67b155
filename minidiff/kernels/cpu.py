"""Thin wrappers that give the Cython kernels (``minidiff._C``) the reference signatures.

Each wrapper allocates its output, makes inputs C-contiguous (the kernels index them
directly) and calls the OpenMP loop. A name missing here falls back to the reference.
"""
from __future__ import annotations

import importlib

import numpy as np

from .. import backend
from . import reference
from .reference import WINOGRAD_TILE_ENTRIES as TILE_ENTRIES, conv_output_size, winograd_tile_count, winograd_tile_entries, winograd_tiles


def _C():
    """The compiled extension; the dispatcher hands out these wrappers only when it is built."""
    return backend.extension()


def im2col(x, kh: int, kw: int, stride: int, padding: int, out=None):
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    cols = np.empty((c * kh * kw, n * ho * wo), dtype=x.dtype) if out is None else out  # (C·kh·kw, N·Ho·Wo)
    _C().im2col(np.ascontiguousarray(x), kh, kw, stride, padding, ho, wo, cols)
    return cols


def col2im(cols, x_shape, kh: int, kw: int, stride: int, padding: int, out=None):
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    x = np.empty((n, c, h, w), dtype=cols.dtype) if out is None else out  # (N, C, H, W)
    _C().col2im(np.ascontiguousarray(cols).reshape(c * kh * kw, n * ho * wo), kh, kw, stride, padding, ho, wo, x)
    return x


def group_norm_forward(x, num_groups: int, weight, bias, eps: float, silu: bool):
    n, c, m = x.shape
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)  # (N, C, M)
    mean, rstd = np.empty((n, num_groups), dtype=x.dtype), np.empty((n, num_groups), dtype=x.dtype)  # (N, G) ×2
    weight, bias = _vector(weight, x.dtype), _vector(bias, x.dtype)
    _by_images(_C().group_norm_forward, x, num_groups, weight, bias, eps, silu, y, mean, rstd, batched=(0, 6, 7, 8))
    return y, mean, rstd


def group_norm_stats(x, num_groups: int, eps: float):
    n, c, _ = x.shape
    x = np.ascontiguousarray(x)
    mean, rstd = np.empty((n, num_groups), dtype=x.dtype), np.empty((n, num_groups), dtype=x.dtype)  # (N, G) ×2
    unused, no_y = np.zeros(c, dtype=x.dtype), np.empty((0, 0, 0), dtype=x.dtype)  # γ, β: an empty y asks for the statistics alone
    _by_images(_C().group_norm_forward, x, num_groups, unused, unused, eps, False, no_y, mean, rstd, batched=(0, 7, 8))
    return mean, rstd


def group_norm_backward(grad_y, x, mean, rstd, weight, bias, silu: bool):
    n, c, m = x.shape
    grad_x = np.empty_like(x)  # (N, C, M)
    grad_weight, grad_bias = np.empty((n, c)), np.empty((n, c))  # per image, summed below in float64
    grad_y, x = np.ascontiguousarray(grad_y, dtype=x.dtype), np.ascontiguousarray(x)
    mean, rstd, weight, bias = np.ascontiguousarray(mean), np.ascontiguousarray(rstd), _vector(weight, x.dtype), _vector(bias, x.dtype)
    _by_images(_C().group_norm_backward, grad_y, x, mean, rstd, weight, bias, silu, grad_x, grad_weight, grad_bias,
               batched=(0, 1, 2, 3, 7, 8, 9))
    return grad_x, grad_weight.sum(axis=0).astype(x.dtype), grad_bias.sum(axis=0).astype(x.dtype)


def _by_images(kernel, *args, batched):
    """kernel(*args), the arrays at positions ``batched`` (their first axis the batch's images)
    cut into pieces over the chunk threads when the first is large (``chunking.SHARED_KERNEL_ELEMENTS``
    says why); each image's values come out the same whichever piece holds it."""
    first = args[batched[0]]
    # one piece (batch 1, small arrays): a direct call, tested here rather than by building
    # batch_pieces' list, which with its slices cost 2 % of a batch-1 forward
    if first.shape[0] < 2 or first.size < _chunking().SHARED_KERNEL_ELEMENTS:
        kernel(*args)
        return

    def piece(images):
        kernel(*(a[images] if k in batched else a for k, a in enumerate(args)))

    _chunking().map_chunks(piece, _chunking().batch_pieces(first.shape[0], first.size, _chunking().SHARED_KERNEL_ELEMENTS), np)


def _chunking():
    # imported at the first call, not at load time: the functional package imports the kernels
    return importlib.import_module("minidiff.functional.chunking")


def winograd_filter_transform(w, m: int = 2):
    if m != 2:  # F(4×4, 3×3): NumPy's (36, 9) × (9, C_out·C) product, a few µs per conv of a training step
        return reference.winograd_filter_transform(w, m)
    c_out, c = w.shape[:2]
    rows = np.empty((TILE_ENTRIES, c_out * c + 16), dtype=w.dtype)  # (α², C_out·C + 16): the kernel says why 16
    _C().winograd_filter_transform(np.ascontiguousarray(w).reshape(c_out * c, 9), rows)
    return rows[:, : c_out * c].reshape(TILE_ENTRIES, c_out, c)  # (α², C_out, C), a view


def winograd_filter_transform_adjoint(grad_u, m: int = 2):
    if m != 2:
        return reference.winograd_filter_transform_adjoint(grad_u, m)
    _, c_out, c = grad_u.shape
    grad_w = np.empty((c_out, c, 3, 3), dtype=grad_u.dtype)  # (C_out, C, 3, 3)
    _C().winograd_filter_transform_adjoint(np.ascontiguousarray(grad_u).reshape(TILE_ENTRIES, c_out * c), grad_w.reshape(c_out * c, 9))
    return grad_w


def _transforms(m: int):
    """The Cython transforms of F(m×m, 3×3): winograd.pxi's (m = 2) or winograd4.pxi's (m = 4)."""
    return "winograd_" if m == 2 else "winograd4_"


def winograd_input_transform(x, padding: int, out=None, m: int = 2, norm=None, transposed: bool = False):
    n, c, h, w = x.shape
    th, tw = winograd_tiles(h + 2 * padding - 2, w + 2 * padding - 2, m)
    shape = (winograd_tile_entries(m), c, n * th * (tw + 1))  # (α², C, tH·N·(tW + 1))
    v = np.empty((shape[0], shape[2], shape[1]) if transposed else shape, dtype=x.dtype) if out is None else out
    if norm is None:
        mean = rstd = np.empty((0, 1), dtype=x.dtype)  # empty: x is the convolution's input as it is
        weight = bias = np.empty(0, dtype=x.dtype)
    else:
        mean, rstd, weight, bias = (np.ascontiguousarray(a, dtype=x.dtype) for a in norm)  # (N, G), (N, G), (C,), (C,)
    getattr(_C(), _transforms(m) + "input_transform")(np.ascontiguousarray(x), padding, th, tw, v, mean, rstd, weight, bias, transposed)
    return v


def winograd_transposed_v_pays(dtype) -> bool:
    """Whether ``winograd_input_transform(…, transposed=True)`` writes V[ξ]ᵀ of this dtype through the
    vectorised (AVX-512, float32) transpose here: only then is it cheaper than the "NT" GEMM it spares
    (benchmarks/README.md)."""
    return dtype == np.float32 and _C().winograd_fast_transpose()


def winograd_input_transform_adjoint(grad_v, x_shape, padding: int, out=None, m: int = 2):
    n, c, h, w = x_shape
    th, tw = winograd_tiles(h + 2 * padding - 2, w + 2 * padding - 2, m)
    grad_x = np.empty(x_shape, dtype=grad_v.dtype) if out is None else out  # (N, C, H, W)
    getattr(_C(), _transforms(m) + "input_transform_adjoint")(np.ascontiguousarray(grad_v), padding, th, tw, grad_x)
    return grad_x


def winograd_output_transform(products, out_shape, bias=None, residual=None, out=None, m: int = 2):
    y = np.empty(out_shape, dtype=products.dtype) if out is None else out  # (N, C_out, Ho, Wo)
    bias = np.empty(0, dtype=products.dtype) if bias is None else _vector(bias, products.dtype)
    residual = np.empty((0, 0, 0, 0), dtype=products.dtype) if residual is None else np.ascontiguousarray(residual, dtype=products.dtype)
    getattr(_C(), _transforms(m) + "output_transform")(np.ascontiguousarray(products), bias, residual, y)
    return y


def winograd_output_transform_adjoint(grad_y, out=None, plane_sums=None, m: int = 2):
    n, c_out, ho, wo = grad_y.shape
    grad_m = (np.empty((winograd_tile_entries(m), c_out, n * winograd_tile_count(ho, wo, m)), dtype=grad_y.dtype)
              if out is None else out)  # (α², C_out, tH·N·(tW + 1))
    sums = np.empty((n, c_out), dtype=grad_y.dtype) if plane_sums is None else plane_sums  # (N, C_out)
    getattr(_C(), _transforms(m) + "output_transform_adjoint")(np.ascontiguousarray(grad_y), grad_m, sums)
    return grad_m


def adam_update(param, grad, m, v, step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float):
    if not _flat_views(param, m, v) or grad.shape != param.shape:
        return reference.adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)
    _C().adam_update(param.reshape(-1), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1), m.reshape(-1), v.reshape(-1),
                   lr, beta1, beta2, 1 - beta1**step, 1 - beta2**step, eps, weight_decay)


def ema_update(average, param, one_minus_decay: float):
    if not _flat_views(average) or param.shape != average.shape:
        return reference.ema_update(average, param, one_minus_decay)
    _C().ema_update(average.reshape(-1), np.ascontiguousarray(param, dtype=average.dtype).reshape(-1), one_minus_decay)


def upsample_nearest_forward(x, scale: int):
    n, c, h, w = x.shape
    x = np.ascontiguousarray(x)
    y = np.empty((n, c, h * scale, w * scale), dtype=x.dtype)  # (N, C, H·s, W·s)
    _by_images(_C().upsample_nearest_forward, x, scale, y, batched=(0, 2))
    return y


def upsample_nearest_backward(grad_y, scale: int):
    n, c, hs, ws = grad_y.shape
    grad_y = np.ascontiguousarray(grad_y)
    grad_x = np.empty((n, c, hs // scale, ws // scale), dtype=grad_y.dtype)  # (N, C, H, W)
    _by_images(_C().upsample_nearest_backward, grad_y, scale, grad_x, batched=(0, 2))
    return grad_x


def softmax_forward(scores, scale: float):
    scores = np.ascontiguousarray(scores)
    probs = np.empty_like(scores)  # (…, L_q, L_k)
    _C().softmax_forward(_rows(scores), scale, _rows(probs))
    return probs


def softmax_backward(probs, grad_probs):
    probs = np.ascontiguousarray(probs)
    grad_scores = np.empty_like(probs)
    _C().softmax_backward(_rows(probs), _rows(np.ascontiguousarray(grad_probs, dtype=probs.dtype)), _rows(grad_scores))
    return grad_scores


def _rows(a):
    """A contiguous (…, L) array as (rows, L)."""
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def _flat_views(*arrays) -> bool:
    """Whether the kernels can update these arrays in place: C-contiguous, of one float type the kernels take."""
    return all(a.flags.c_contiguous and a.dtype == arrays[0].dtype for a in arrays) and arrays[0].dtype in (np.float32, np.float64)


def _vector(v, dtype):
    return np.ascontiguousarray(v, dtype=dtype)
