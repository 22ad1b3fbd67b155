"""Input images (--init, --mask, --interpolate-images) of every kind Pillow reads become [−1, 1] by one
documented rule (minidiff.images.load_image): 16-bit and float images by their full scale, alpha
composited on black; unreadable files and decompression bombs are refused in one line."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minidiff.images import MAX_INPUT_PIXELS, load_image

RAMP = np.linspace(0.0, 1.0, 28 * 28).reshape(28, 28)  # black to white


def load(path, **kwargs):
    image, size = load_image(path, "--init", kwargs.pop("channels", 1), 28, **kwargs)
    assert image.dtype == np.float32 and -1 <= image.min() and image.max() <= 1
    return (image + 1) / 2, size  # back to intensities in [0, 1]


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)).save(tmp_path / "a.png")
    image, _ = load(tmp_path / "a.png")
    np.testing.assert_allclose(image[0], RAMP, atol=1e-4)  # not every non-zero pixel white


def test_a_float_tiff_is_read_as_0_black_1_white_and_refused_outside(tmp_path):
    Image.fromarray(RAMP.astype(np.float32), mode="F").save(tmp_path / "a.tif")
    np.testing.assert_allclose(load(tmp_path / "a.tif")[0][0], RAMP, atol=1e-6)
    Image.fromarray((RAMP * 255).astype(np.float32), mode="F").save(tmp_path / "b.tif")
    with pytest.raises(ValueError, match=r"--init .*b.tif: a float image must hold values in \[0, 1\]"):
        load(tmp_path / "b.tif")


def test_alpha_is_composited_on_black(tmp_path):
    """A white sketch drawn in the alpha channel over transparent white shows as white on black."""
    sketch = np.zeros((28, 28), np.uint8)
    sketch[5:20, 10:14] = 255
    rgba = np.dstack([np.full((28, 28, 3), 255, np.uint8), sketch])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([np.full((28, 28), 255, np.uint8), sketch]), "LA").save(tmp_path / "la.png")
    for name in ("rgba.png", "la.png"):
        np.testing.assert_allclose(load(tmp_path / name)[0][0], sketch / 255, atol=1e-6, err_msg=name)
    half = rgba.copy()
    half[..., 3] = 128
    Image.fromarray(half, "RGBA").save(tmp_path / "half.png")
    np.testing.assert_allclose(load(tmp_path / "half.png")[0], 128 / 255, atol=1e-6)  # colour × opacity
    mask, _ = load_image(tmp_path / "rgba.png", "--mask", 1, 28, nearest=True)
    assert np.array_equal(mask[0] > 0, sketch > 0)  # an RGBA mask repaints its sketch


def test_palette_colour_and_grey_follow_the_same_rule(tmp_path):
    grey = np.round(RAMP * 255).astype(np.uint8)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    np.testing.assert_allclose(load(tmp_path / "p.png")[0][0], grey / 255, atol=1e-6)
    colour = np.zeros((28, 28, 3), np.uint8)
    colour[..., 1] = 255  # pure green
    Image.fromarray(colour).save(tmp_path / "g.png")
    np.testing.assert_allclose(load(tmp_path / "g.png")[0], 0.587, atol=1e-6)  # ITU-R 601 luma
    rgb, _ = load(tmp_path / "p.png", channels=3)
    assert rgb.shape == (3, 28, 28) and np.allclose(rgb, grey / 255, atol=1e-6)


def png_claiming(width, height) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(30000, 30000), (4097, 4097)])
def test_a_decompression_bomb_is_refused_in_one_line(tmp_path, size):
    (tmp_path / "bomb.png").write_bytes(png_claiming(*size))
    with pytest.raises(ValueError, match=r"--init .*bomb.png.*(decompression bomb|too many pixels)") as info:
        load(tmp_path / "bomb.png")
    assert "\n" not in str(info.value) and size[0] * size[1] > MAX_INPUT_PIXELS


@pytest.mark.parametrize("make", ["truncated", "text", "folder", "missing", "empty"])
def test_an_unreadable_file_is_refused_in_one_line(tmp_path, make):
    path = tmp_path / "x.png"
    if make == "truncated":
        Image.fromarray(np.round(RAMP * 255).astype(np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:80])
    elif make == "text":
        path.write_text("not an image")
    elif make == "folder":
        path.mkdir()
    elif make == "empty":
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--init .*x.png: cannot read it as an image") as info:
        load(path)
    assert "\n" not in str(info.value)
