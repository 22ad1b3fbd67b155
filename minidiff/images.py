"""Image grids: turn a batch of samples in [−1, 1] into one picture and save it as PNG."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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


# Larger input images are refused before they are decoded: a small file can claim 30000×30000
# pixels (a "decompression bomb") and take gigabytes; no picture a 28×28 model edits needs more.
MAX_INPUT_PIXELS = 4096 * 4096
INTEGER_FULL_SCALE = 65535  # integer images beyond 8 bits (PNG and TIFF "I;16", "I") are 16-bit


class ImageRefused(ValueError):
    """An input image that cannot be read, or is read by no rule (one line naming the flag and the file)."""


def load_image(path, flag: str, channels: int, size: int, nearest: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """The image file at ``path`` (PNG or anything Pillow reads) as (channels, size, size) float32
    in [−1, 1], and its own (width, height) before resizing.

    Every kind of image is first read as intensities in [0, 1], by one rule:

    - 8-bit channels (grey, RGB, palette colours, bilevel) are divided by 255; integer images of
      more bits (16-bit PNG or TIFF) by 65535; float images (TIFF "F") are taken as they are, 0
      black and 1 white, and refused when a value lies outside [0, 1] or is not finite;
    - an alpha channel is **composited on black**: each colour times its opacity, so transparent
      pixels are black (MNIST's background) and a sketch drawn in the alpha channel shows;
    - a photo's EXIF orientation is applied; other colour spaces (CMYK, YCbCr, …) become RGB;
    - colour becomes grey by ITU-R 601 luma, 0.299 R + 0.587 G + 0.114 B, for a 1-channel
      model; grey is repeated for a 3-channel one.

    Resizing is bicubic (clipped back to [0, 1]), or nearest-neighbour for masks (``nearest``).
    A file that cannot be read as an image, or one larger than :data:`MAX_INPUT_PIXELS`, is
    refused in one line naming ``flag``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                original = image.size
                if original[0] * original[1] <= MAX_INPUT_PIXELS:
                    colour = _intensities(ImageOps.exif_transpose(image), flag, path)  # a camera's rotation
                    original = colour.shape[1::-1]
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(f"{flag} {path}: refused, its header claims too many pixels to decode safely "
                           f"(a decompression bomb guard: {exc})") from None
    except Exception as exc:  # noqa: BLE001 — Pillow's decoders raise many kinds on a damaged file
        raise ImageRefused(f"{flag} {path}: cannot read it as an image ({type(exc).__name__}: {exc})") from None
    if original[0] * original[1] > MAX_INPUT_PIXELS:
        raise ImageRefused(f"{flag} {path} is {original[0]}×{original[1]} pixels, more than the "
                           f"{MAX_INPUT_PIXELS:,} read (a guard against decompression bombs); shrink it first")
    if channels == 1 and colour.shape[-1] == 3:
        colour = colour @ np.array([0.299, 0.587, 0.114])[:, None]
    elif channels == 3 and colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    planes = []
    for plane in colour.astype(np.float32).transpose(2, 0, 1):
        if original != (size, size):
            resized = Image.fromarray(plane, mode="F").resize((size, size), Image.NEAREST if nearest else Image.BICUBIC)
            plane = np.clip(np.asarray(resized, np.float32), 0.0, 1.0)
        planes.append(plane)
    return np.stack(planes) * 2.0 - 1.0, original


def _intensities(image, flag: str, path) -> np.ndarray:
    """(H, W, 1 or 3) float64 in [0, 1]: ``image`` read and composited on black by :func:`load_image`'s rule."""
    if image.mode == "F":
        values = np.asarray(image, np.float64)
        if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ImageRefused(f"{flag} {path}: a float image must hold values in [0, 1] (0 black, 1 white); "
                               f"this one lies in [{np.nanmin(values):.4g}, {np.nanmax(values):.4g}]")
        return values[..., None]
    if image.mode.startswith("I"):  # 16- or 32-bit integers
        values = np.asarray(image).astype(np.float64)
        if values.min() < 0 or values.max() > INTEGER_FULL_SCALE:
            raise ImageRefused(f"{flag} {path}: integer pixel values must lie in [0, {INTEGER_FULL_SCALE}] "
                               f"(16-bit), got [{values.min():.0f}, {values.max():.0f}]")
        return values[..., None] / INTEGER_FULL_SCALE
    grey = image.mode in ("1", "L", "LA", "La")
    if not grey and image.mode not in ("P", "PA", "RGB", "RGBA", "RGBa"):  # CMYK, YCbCr, LAB, HSV, …
        image = image.convert("RGB")
    values = np.asarray(image.convert("LA" if grey else "RGBA"), np.float64) / 255.0  # palette: through its colours
    return values[..., :-1] * values[..., -1:]  # composited on black
