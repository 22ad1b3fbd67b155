"""Image grids: turn a batch of samples in [−1, 1] into one picture and save it as PNG."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Map [−1, 1] to [0, 255], rounding; values outside are clipped, NaN becomes mid-grey
    (a diverged sample should show up as a flat grey tile, not as random noise)."""
    images = np.nan_to_num(np.asarray(images, dtype=np.float64), nan=0.0)
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(
    images: np.ndarray, nrow: int | None = None, padding: int = 2, pad_value: float = 0.0
) -> np.ndarray:
    """Tile a batch (N, C, H, W) in [−1, 1], C = 1 or 3, into one uint8 picture.

    ``nrow`` images per row (default: a square-ish ⌈√N⌉), ``padding`` pixels of
    ``pad_value`` (in [−1, 1]; the default 0 is mid-grey, which stands out from MNIST's black
    background) around and between tiles. Returns (H', W') for C = 1, (H', W', 3) for C = 3.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            f"make_grid expects a non-empty (N, C, H, W) batch with C = 1 or 3, "
            f"got shape {images.shape}"
        )
    n, channels, height, width = images.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    if nrow < 1:
        raise ValueError(f"make_grid: nrow={nrow} must be at least 1")
    if padding < 0:
        raise ValueError(f"make_grid: padding={padding} must be non-negative")
    ncol = math.ceil(n / nrow)
    step_y, step_x = height + padding, width + padding
    grid_shape = (ncol * step_y + padding, nrow * step_x + padding, channels)
    grid = np.full(grid_shape, to_uint8(pad_value), np.uint8)
    tiles = to_uint8(images).transpose(0, 2, 3, 1)  # to (N, H, W, C), the layout of a picture
    for i, tile in enumerate(tiles):
        top, left = padding + (i // nrow) * step_y, padding + (i % nrow) * step_x
        grid[top : top + height, left : left + width] = tile
    return grid[..., 0] if channels == 1 else grid


def save_image_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    nrow: int | None = None,
    scale: int = 1,
    padding: int = 2,
    pad_value: float = 0.0,
) -> Path:
    """Save ``make_grid(images, nrow, padding, pad_value)`` as a PNG, enlarged ``scale``
    times by pixel repetition (so 28×28 digits stay crisp), and return the path.

    The PNG is written to a temporary file beside ``path`` and renamed over it, so a reader
    (or a crash) never sees half a picture; missing parent directories are created.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_image_grid writes PNG; {path} does not end in .png")
    if not isinstance(scale, numbers.Integral) or scale < 1:
        raise ValueError(f"save_image_grid: scale={scale!r} must be a positive integer")
    grid = make_grid(images, nrow, padding, pad_value)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as out:
        Image.fromarray(grid).save(out, format="PNG")
    return path


def load_image(path, flag: str, channels: int, size: int, nearest: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """The image file at ``path`` (PNG or anything Pillow reads) as (channels, size, size) float32
    in [−1, 1], and its own (width, height) before resizing; unreadable files are refused in one
    line naming ``flag``. Resizing is bicubic, or nearest-neighbour for masks (``nearest``)."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as exc:  # a missing file, not an image, a truncated one
        raise ValueError(f"{flag} {path}: cannot read it as an image ({exc})") from None
    original = image.size
    if original != (size, size):
        image = image.resize((size, size), Image.NEAREST if nearest else Image.BICUBIC)
    array = np.asarray(image, np.float32) / 127.5 - 1.0
    return (array[None] if channels == 1 else array.transpose(2, 0, 1)), original
