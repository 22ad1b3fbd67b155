"""Thin wrappers that give the Cython kernels (``minidiff._C``) the reference signatures.

Each wrapper allocates its output, makes inputs C-contiguous (the kernels index them
directly) and calls the OpenMP loop. A name missing here falls back to the reference.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .reference import conv_output_size

_C = backend.extension()


def im2col(x, kh: int, kw: int, stride: int, padding: int):
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    cols = np.empty((c * kh * kw, n * ho * wo), dtype=x.dtype)  # (C·kh·kw, N·Ho·Wo)
    _C.im2col(np.ascontiguousarray(x), kh, kw, stride, padding, ho, wo, cols)
    return cols


def col2im(cols, x_shape, kh: int, kw: int, stride: int, padding: int):
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    x = np.empty((n, c, h, w), dtype=cols.dtype)  # (N, C, H, W)
    _C.col2im(np.ascontiguousarray(cols).reshape(c * kh * kw, n * ho * wo), kh, kw, stride, padding, ho, wo, x)
    return x


def group_norm_forward(x, eps: float):
    n, g, m = x.shape
    x = np.ascontiguousarray(x)
    x_hat, rstd = np.empty_like(x), np.empty((n, g), dtype=x.dtype)  # (N, G, M), (N, G)
    _C.group_norm_forward(x.reshape(n * g, m), eps, x_hat.reshape(n * g, m), rstd.reshape(n * g))
    return x_hat, rstd


def group_norm_backward(grad_xhat, x_hat, rstd):
    n, g, m = x_hat.shape
    grad_xhat = np.ascontiguousarray(grad_xhat, dtype=x_hat.dtype)
    grad_x = np.empty_like(grad_xhat)  # (N, G, M)
    _C.group_norm_backward(
        grad_xhat.reshape(n * g, m),
        np.ascontiguousarray(x_hat).reshape(n * g, m),
        np.ascontiguousarray(rstd).reshape(n * g),
        grad_x.reshape(n * g, m),
    )
    return grad_x


if _C is None:  # the dispatcher then uses the reference for every name
    del im2col, col2im, group_norm_forward, group_norm_backward
