"""Thin wrappers that give the Cython kernels (``minidiff._C``) the reference signatures.

Each wrapper allocates its output, makes inputs C-contiguous (the kernels index them
directly) and calls the OpenMP loop. A name missing here falls back to the reference.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .reference import conv_output_size

_C = backend.extension()


def im2col(x, kh: int, kw: int, stride: int, padding: int, out=None):
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    cols = np.empty((c * kh * kw, n * ho * wo), dtype=x.dtype) if out is None else out  # (C·kh·kw, N·Ho·Wo)
    _C.im2col(np.ascontiguousarray(x), kh, kw, stride, padding, ho, wo, cols)
    return cols


def col2im(cols, x_shape, kh: int, kw: int, stride: int, padding: int, out=None):
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    x = np.empty((n, c, h, w), dtype=cols.dtype) if out is None else out  # (N, C, H, W)
    _C.col2im(np.ascontiguousarray(cols).reshape(c * kh * kw, n * ho * wo), kh, kw, stride, padding, ho, wo, x)
    return x


def group_norm_forward(x, num_groups: int, weight, bias, eps: float, silu: bool):
    n, c, m = x.shape
    x = np.ascontiguousarray(x)
    y, x_hat, rstd = np.empty_like(x), np.empty_like(x), np.empty((n, num_groups), dtype=x.dtype)  # (N, C, M) ×2, (N, G)
    _C.group_norm_forward(x, num_groups, _vector(weight, x.dtype), _vector(bias, x.dtype), eps, silu, y, x_hat, rstd)
    return y, x_hat, rstd


def group_norm_backward(grad_y, x_hat, rstd, weight, bias, silu: bool):
    n, c, m = x_hat.shape
    grad_x = np.empty_like(x_hat)  # (N, C, M)
    grad_weight, grad_bias = np.empty((n, c)), np.empty((n, c))  # per image, summed below in float64
    _C.group_norm_backward(
        np.ascontiguousarray(grad_y, dtype=x_hat.dtype), np.ascontiguousarray(x_hat), np.ascontiguousarray(rstd),
        _vector(weight, x_hat.dtype), _vector(bias, x_hat.dtype), silu, grad_x, grad_weight, grad_bias,
    )
    return grad_x, grad_weight.sum(axis=0).astype(x_hat.dtype), grad_bias.sum(axis=0).astype(x_hat.dtype)


def _vector(v, dtype):
    return np.ascontiguousarray(v, dtype=dtype)


if _C is None:  # the dispatcher then uses the reference for every name
    del im2col, col2im, group_norm_forward, group_norm_backward
