"""Tests of minidiff.images: value mapping, grid layout and the PNG round trip."""

import numpy as np
import pytest
from PIL import Image

from minidiff.images import make_grid, save_image_grid, to_uint8


def test_to_uint8_maps_clips_and_greys_out_nan():
    values = np.array([-1.0, 0.0, 1.0, -3.0, 2.0, np.nan])
    assert to_uint8(values).tolist() == [0, 128, 255, 0, 255, 128]


def test_make_grid_layout_gray():
    images = np.stack([np.full((1, 4, 5), v) for v in np.linspace(-1, 1, 7)])
    grid = make_grid(images, nrow=3, padding=2, pad_value=-1.0)
    assert grid.shape == (3 * (4 + 2) + 2, 3 * (5 + 2) + 2) and grid.dtype == np.uint8
    # image i sits at row i // 3, column i % 3, after the padding
    np.testing.assert_array_equal(grid[2:6, 2:7], to_uint8(images[0, 0]))
    np.testing.assert_array_equal(grid[8:12, 9:14], to_uint8(images[4, 0]))
    assert grid[:2].max() == 0 and grid[14:, 9:].max() == 0  # padding and the empty slots


def test_make_grid_colour_and_default_rows():
    grid = make_grid(np.zeros((10, 3, 28, 28)))
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2, 3)  # ⌈√10⌉ = 4 per row


def test_make_grid_without_padding_is_a_plain_tiling():
    images = np.random.default_rng(0).uniform(-1, 1, (4, 1, 3, 3))
    grid = make_grid(images, nrow=2, padding=0)
    expected = to_uint8(images[:, 0]).reshape(2, 2, 3, 3).transpose(0, 2, 1, 3).reshape(6, 6)
    np.testing.assert_array_equal(grid, expected)


@pytest.mark.parametrize(
    "shape, kwargs, message",
    [
        ((4, 2, 8, 8), {}, r"C = 1 or 3, got shape \(4, 2, 8, 8\)"),
        ((8, 8), {}, r"got shape \(8, 8\)"),
        ((0, 1, 8, 8), {}, "non-empty"),
        ((4, 1, 8, 8), {"nrow": 0}, "nrow=0"),
        ((4, 1, 8, 8), {"padding": -1}, "padding=-1"),
    ],
)
def test_make_grid_rejects(shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_grid(np.zeros(shape), **kwargs)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_with_upscaling(tmp_path, channels):
    images = np.random.default_rng(1).uniform(-1, 1, (5, channels, 28, 28))
    path = save_image_grid(images, tmp_path / "samples" / "step_10.png", nrow=3, scale=3)
    expected = make_grid(images, nrow=3).repeat(3, axis=0).repeat(3, axis=1)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)
    assert [p.name for p in path.parent.iterdir()] == ["step_10.png"]  # no temp file left


def test_failed_save_keeps_the_old_png_and_no_temp_file(tmp_path, monkeypatch):
    path = save_image_grid(np.zeros((1, 1, 4, 4)), tmp_path / "grid.png")
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_grid(np.ones((1, 1, 4, 4)), path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("name, scale, message", [("grid.jpg", 1, "end in .png"), ("g.png", 0, "scale=0"), ("g.png", 1.5, "scale=1.5")])
def test_save_rejects(tmp_path, name, scale, message):
    with pytest.raises(ValueError, match=message):
        save_image_grid(np.zeros((1, 1, 4, 4)), tmp_path / name, scale=scale)
