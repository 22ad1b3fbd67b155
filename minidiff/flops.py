"""Counting the floating-point operations of the matrix-product ops, for GFLOP/s figures.

The GEMM-shaped ops (conv2d, linear, matmul, attention) report 2·m·k·n for each product of
their forward pass while a :class:`count_flops` block is open. Everything else (norms,
activations) is memory-bound and left out, as benchmark conventions do. A training step is
counted as three forward passes: the backward of a product is two products of the same size.
"""
from __future__ import annotations

_open_counters: list[count_flops] = []


class count_flops:
    """``with count_flops() as c: model(x, t)`` → ``c.total`` forward FLOPs."""

    def __enter__(self):
        self.total = 0
        _open_counters.append(self)
        return self

    def __exit__(self, *exc_info):
        _open_counters.remove(self)


def add_flops(count: int):
    """Called by the ops: record ``count`` FLOPs in every open counter (free when none is open)."""
    for counter in _open_counters:
        counter.total += int(count)
