"""Toy 2-D data sets: quick experiments whose whole distribution can be plotted."""
from __future__ import annotations

import numpy as np

from .batching import RngLike


def two_moons(n: int, noise: float = 0.05, rng: RngLike = 0) -> np.ndarray:
    """Two interleaved half circles, centred on the origin; float32 (n, 2)."""
    rng = np.random.default_rng(rng)
    angle = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    # The lower moon is the upper one turned over and shifted into its hollow.
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle)) - 0.5
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle)) - 0.25
    points = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return points.astype(np.float32)


def gaussian_mixture(
    n: int, modes: int = 8, radius: float = 1.0, std: float = 0.05,
    rng: RngLike = 0,
) -> np.ndarray:
    """``modes`` equal-weight Gaussians of standard deviation ``std``, centred on a circle
    of radius ``radius``; float32 (n, 2)."""
    rng = np.random.default_rng(rng)
    angle = 2 * np.pi * rng.integers(modes, size=n) / modes
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (centres + std * rng.standard_normal((n, 2))).astype(np.float32)


def swiss_roll(n: int, noise: float = 0.02, rng: RngLike = 0) -> np.ndarray:
    """The spiral ``r = θ``, θ in [1.5π, 4.5π], scaled into about [−1, 1]²; float32 (n, 2)."""
    rng = np.random.default_rng(rng)
    theta = rng.uniform(1.5 * np.pi, 4.5 * np.pi, n)
    points = np.stack([theta * np.cos(theta), theta * np.sin(theta)], axis=1) / (4.5 * np.pi)
    return (points + noise * rng.standard_normal((n, 2))).astype(np.float32)


def checkerboard(n: int, squares: int = 4, rng: RngLike = 0) -> np.ndarray:
    """Points uniform on the dark squares of a ``squares`` × ``squares`` board over [−1, 1]²
    (``squares`` even); float32 (n, 2)."""
    if squares < 2 or squares % 2:
        raise ValueError(f"squares must be a positive even number, got {squares}")
    rng = np.random.default_rng(rng)
    # A dark square is one whose column and row indices have an even sum.
    column = rng.integers(squares, size=n)
    row = 2 * rng.integers(squares // 2, size=n) + column % 2
    cells = np.stack([column, row], axis=1) + rng.random((n, 2))
    return (2.0 * cells / squares - 1.0).astype(np.float32)
