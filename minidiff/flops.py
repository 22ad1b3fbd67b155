"""Counting the floating-point operations of the matrix-product ops, for GFLOP/s figures.

The counting sits outside the maths: while a :class:`count_flops` block is open, a hook in
``Function.apply`` (``autograd.apply_hooks``) looks the op up in :data:`FORMULAS` and adds
2·m·k·n for each product of its forward pass. Everything else (norms, activations) is
memory-bound and left out, as benchmark conventions do. A training step is counted as three
forward passes: the backward of a product is two products of the same size.
"""
from __future__ import annotations

import math

from . import autograd
from .functional.attention import ScaledDotProductAttention
from .functional.conv import Conv2d, Linear
from .functional.conv_fast import ChunkedConv2d, PointwiseConv2d
from .functional.linalg import MatMul
from .functional.winograd import WinogradConv2d


def _convolution(ctx, out):
    """2·(N·C_out·Ho·Wo)·(C·kh·kw), the direct convolution's count whatever the algorithm (Winograd
    does fewer multiplications), so that GFLOP/s compare across algorithms."""
    return 2 * out.size * math.prod(ctx.inputs[1].shape[1:])


FORMULAS = {
    Conv2d: _convolution,
    ChunkedConv2d: _convolution,
    PointwiseConv2d: _convolution,
    WinogradConv2d: _convolution,
    Linear: lambda ctx, out: 2 * out.size * ctx.inputs[1].shape[1],  # (…, out) = (…, in)·Wᵀ
    MatMul: lambda ctx, out: 2 * out.size * ctx.inputs[0].shape[-1],  # (…, m, n) = (…, m, k)·(…, k, n)
    # S = q·kᵀ (…, L_q, L_k) over D, then O = P·v over L_k: 2·(…·L_q·L_k)·(D + D_v)
    ScaledDotProductAttention: lambda ctx, out: (
        2 * math.prod(ctx.inputs[0].shape[:-1]) * ctx.inputs[1].shape[-2] * (ctx.inputs[0].shape[-1] + ctx.inputs[2].shape[-1])
    ),
}

_open_counters: list[count_flops] = []


class count_flops:
    """``with count_flops() as c: model(x, t)`` → ``c.total`` forward FLOPs."""

    def __enter__(self):
        self.total = 0
        if not _open_counters:
            autograd.apply_hooks.append(_count)
        _open_counters.append(self)
        return self

    def __exit__(self, *exc_info):
        _open_counters.remove(self)
        if not _open_counters:
            autograd.apply_hooks.remove(_count)


def _count(ctx, output):
    formula = FORMULAS.get(type(ctx))
    if formula is not None:
        count = int(formula(ctx, output))
        for counter in _open_counters:
            counter.total += count
