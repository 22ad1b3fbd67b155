"""Shuffled mini-batches that a training loop can checkpoint and resume exactly."""
from __future__ import annotations

import json

import numpy as np

# Batchers and toy sets take a Generator, or a seed for a fresh one.
RngLike = np.random.Generator | int | None


class Batcher:
    """Endless shuffled mini-batches over arrays that share their first axis.

    Each epoch is one permutation drawn from ``rng``; batches are consecutive slices of it,
    and the last partial batch of an epoch is dropped (every batch has ``batch_size`` rows).
    The whole state is (rng, permutation, position) plus an ``epoch`` counter, so
    ``state_dict`` / ``load_state_dict`` let a training loop resume exactly where it stopped::

        batcher = Batcher(images, labels, batch_size=128, rng=0)
        x, y = next(batcher)
        np.savez("batcher.npz", **batcher.state_dict())
    """

    def __init__(self, *arrays: np.ndarray, batch_size: int, rng: RngLike = None):
        if not arrays:
            raise ValueError("Batcher needs at least one array")
        n = len(arrays[0])
        lengths = [len(a) for a in arrays]
        if any(length != n for length in lengths):
            raise ValueError(f"Batcher arrays must have equal lengths, got {lengths}")
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size={batch_size} must be between 1 and the {n} examples")
        self.arrays, self.batch_size = arrays, batch_size
        self.rng = np.random.default_rng(rng)
        self.epoch = 0
        self._shuffle()

    @property
    def batches_per_epoch(self) -> int:
        return len(self.arrays[0]) // self.batch_size

    def _shuffle(self) -> None:
        self.permutation = self.rng.permutation(len(self.arrays[0]))
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[np.ndarray, ...]:
        if self.position + self.batch_size > len(self.permutation):
            self.epoch += 1
            self._shuffle()
        index = self.permutation[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return tuple(a[index] for a in self.arrays)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as plain arrays, ready for ``np.savez`` (the rng state as JSON text)."""
        return {
            "rng_state": np.array(json.dumps(self.rng.bit_generator.state)),
            "permutation": self.permutation.copy(),
            "position": np.array(self.position),
            "epoch": np.array(self.epoch),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a ``state_dict`` (also as read back from an ``.npz``), refusing one that is not
        a permutation of this Batcher's examples with a position inside it."""
        n = len(self.arrays[0])
        missing = [key for key in ("rng_state", "permutation", "position", "epoch") if key not in state]
        if missing:
            raise ValueError(f"Batcher state lacks {', '.join(missing)}")
        permutation = np.asarray(state["permutation"])
        if permutation.shape != (n,):
            raise ValueError(f"Batcher state is for {permutation.size} examples in shape {permutation.shape}, "
                             f"this Batcher has {n}")
        if not np.issubdtype(permutation.dtype, np.integer) or not np.array_equal(np.sort(permutation), np.arange(n)):
            raise ValueError(f"Batcher state: permutation is not a permutation of 0..{n - 1}")
        position, epoch = _integer(state, "position"), _integer(state, "epoch")
        if not 0 <= position <= n or epoch < 0:
            raise ValueError(f"Batcher state: position {position} or epoch {epoch} is out of range")
        try:
            rng_state = json.loads(str(state["rng_state"]))
            type(self.rng.bit_generator)().state = rng_state  # tried on a spare generator first
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"Batcher state: rng_state is not a generator state ({exc})") from None
        self.rng.bit_generator.state = rng_state
        self.permutation = permutation.astype(np.int64)
        self.position, self.epoch = position, epoch


def _integer(state: dict, key: str) -> int:
    value = np.asarray(state[key])
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"Batcher state: {key} must be one integer, got {value.dtype} of shape {value.shape}")
    return int(value)
