"""Losses, with PyTorch's ``reduction`` argument: ``'mean'`` (default), ``'sum'`` or ``'none'``."""
from __future__ import annotations

from ..autograd import Tensor
from ..backend import get_array_module
from .activation import log_softmax
from .reduce import mean, sum
from .shape import getitem

__all__ = ["mse_loss", "cross_entropy"]


def _reduce(name, loss, reduction):
    if reduction == "mean":
        return mean(loss)
    if reduction == "sum":
        return sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{name}: reduction {reduction!r}: expected 'mean', 'sum' or 'none'")


def mse_loss(a, b, reduction="mean"):
    """(a − b)², element-wise, then reduced: the DDPM ε-prediction loss (Ho et al. 2020, Eq. 14)."""
    diff = a - b
    return _reduce("mse_loss", diff * diff, reduction)


def cross_entropy(logits, targets, reduction="mean"):
    """−log softmax(logits)[n, targets[n]] for logits (N, C) and integer class targets (N,)."""
    xp = get_array_module(logits.data if isinstance(logits, Tensor) else logits)
    targets = xp.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if len(logits.shape) != 2:
        raise ValueError(f"cross_entropy: logits must be (N, C), got shape {logits.shape}")
    n, classes = logits.shape
    if targets.shape != (n,):
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} for logits of shape {logits.shape}; expected ({n},)")
    if targets.dtype.kind == "f":  # a Tensor always holds floats; whole numbers still name classes
        if not (targets == xp.round(targets)).all():
            raise ValueError("cross_entropy: targets must be integer class indices")
        targets = targets.astype(xp.intp)
    if targets.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: targets must be integer class indices, got dtype {targets.dtype}")
    if n and (targets.min() < 0 or targets.max() >= classes):
        bad = int(targets[(targets < 0) | (targets >= classes)][0])
        raise ValueError(f"cross_entropy: target class {bad} out of range for {classes} classes")
    picked = getitem(log_softmax(logits, axis=-1), (xp.arange(n), targets))
    return _reduce("cross_entropy", -picked, reduction)
