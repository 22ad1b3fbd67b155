"""``train --p-uncond`` and ``sample --label all | --guidance | --init | --mask | --interpolate[-images]``
end to end on tiny settings, and each mistake refused in one line."""
import numpy as np
import pytest
from PIL import Image
from test_cli import MNIST_DIR, expect_error, train

from minidiff.__main__ import main
from minidiff.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}"),
    pytest.mark.filterwarnings("ignore:mnist train files not found"),
]
FAST = ["--steps", "4", "--sampler", "ddim"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two steps each: guided (null row), conditional without one, unconditional."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("guided", "conditional", "unconditional")}
    assert train(folders["guided"], "--steps", "2", "--num-classes", "10", "--p-uncond", "0.5") == 0
    assert train(folders["conditional"], "--steps", "2", "--num-classes", "10") == 0
    assert train(folders["unconditional"], "--steps", "2") == 0
    return folders


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """An image, a mask of its right half, a mask of another size and a larger image."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / "image.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / "large.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[:, 14:] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(mask[:20]).save(folder / "small_mask.png")
    return folder


def sample(run_dir, tmp_path, *flags):
    """``sample`` with the tiny settings; returns the samples it saved."""
    assert main(["sample", str(run_dir), *FAST, "--out", str(tmp_path / "s.png"), "--npy", str(tmp_path / "s.npy"),
                 *flags]) == 0
    return np.load(tmp_path / "s.npy")


def image_array(path):
    return np.asarray(Image.open(path), np.float32)[None] / 127.5 - 1.0


def test_p_uncond_is_recorded_with_the_null_row(runs):
    config = load_checkpoint(runs["guided"]).config
    assert config["p_uncond"] == 0.5 and config["model"]["null_class"] is True
    assert load_checkpoint(runs["conditional"]).config["model"]["null_class"] is False


def test_label_all_draws_one_row_per_class(runs, tmp_path):
    samples = sample(runs["guided"], tmp_path, "--label", "all", "--n", "2", "--guidance", "3")
    assert samples.shape == (20, 1, 28, 28)
    assert Image.open(tmp_path / "s.png").size[0] < Image.open(tmp_path / "s.png").size[1]  # 2 wide, 10 high


def test_guidance_zero_is_the_plain_sample(runs, tmp_path):
    plain = sample(runs["guided"], tmp_path, "--label", "3")
    np.testing.assert_array_equal(sample(runs["guided"], tmp_path, "--label", "3", "--guidance", "0"), plain)
    assert not np.array_equal(sample(runs["guided"], tmp_path, "--label", "3", "--guidance", "2"), plain)


def test_sdedit_at_strength_zero_returns_the_image(runs, pictures, tmp_path):
    image = image_array(pictures / "image.png")
    samples = sample(runs["guided"], tmp_path, "--init", str(pictures / "image.png"), "--strength", "0", "--n", "2")
    np.testing.assert_array_equal(samples, np.broadcast_to(image, samples.shape))
    edited = sample(runs["unconditional"], tmp_path, "--init", str(pictures / "image.png"), "--n", "2")
    assert not np.allclose(edited, image)


def test_inpainting_keeps_the_black_half_of_the_mask(runs, pictures, tmp_path):
    image = image_array(pictures / "image.png")
    samples = sample(runs["guided"], tmp_path, "--init", str(pictures / "image.png"), "--mask",
                     str(pictures / "mask.png"), "--sampler", "ddpm", "--jump-length", "2", "--jump-n-sample", "2",
                     "--label", "1", "--guidance", "1", "--n", "2")
    np.testing.assert_array_equal(samples[..., :14], np.broadcast_to(image[..., :14], samples[..., :14].shape))
    assert not np.allclose(samples[..., 14:], image[..., 14:])


def test_interpolation_between_seeds_ends_at_their_samples(runs, tmp_path):
    frames = sample(runs["guided"], tmp_path, "--interpolate", "5", "6", "--n", "4", "--label", "7")
    for frame, seed in ((frames[0], "5"), (frames[-1], "6")):
        alone = sample(runs["guided"], tmp_path, "--seed", seed, "--n", "1", "--label", "7")[0]
        np.testing.assert_allclose(frame, alone, rtol=0, atol=1e-5)  # batch of 4 vs 1: float32's last bits


def test_interpolation_between_images_resizes_them_and_says_so(runs, pictures, tmp_path, capsys):
    frames = sample(runs["unconditional"], tmp_path, "--interpolate-images", str(pictures / "image.png"),
                    str(pictures / "large.png"), "--n", "3")
    assert frames.shape == (3, 1, 28, 28)
    assert "large.png is 40×40; resized to the model's 28×28" in capsys.readouterr().err


@pytest.mark.parametrize("run, flags, message", [
    ("guided", ["--label", "10"], "--label 10 is outside the checkpoint's classes 0..9"),
    ("unconditional", ["--label", "3"], "--label needs a class-conditional checkpoint"),
    ("unconditional", ["--label", "all"], "--label needs a class-conditional checkpoint"),
    ("unconditional", ["--guidance", "2"], "--guidance needs a checkpoint trained with --num-classes and --p-uncond; "
                                           "this one is unconditional"),
    ("conditional", ["--guidance", "2"], "this one is class-conditional without a null class"),
    ("guided", ["--guidance", "-1"], "--guidance must be a finite number >= 0"),
    ("guided", ["--init", "{pictures}/image.png", "--strength", "1.5"], r"--strength must lie in [0, 1], got 1.5"),
    ("guided", ["--init", "{pictures}/image.png", "--mask", "{pictures}/small_mask.png"],
     "--mask {pictures}/small_mask.png is 28×20 but --init {pictures}/image.png is 28×28"),
    ("guided", ["--init", "{pictures}/missing.png"], "--init {pictures}/missing.png: cannot read it as an image"),
    ("guided", ["--mask", "{pictures}/mask.png"], "--mask edits an image: give it with --init"),
    ("guided", ["--init", "{pictures}/image.png", "--mask", "{pictures}/mask.png", "--sampler", "pc"],
     "use sampler ddpm, ddim, heun, euler or midpoint, not pc"),
    ("guided", ["--interpolate", "1", "2", "--sampler", "ddpm"], "--interpolate needs a deterministic sampler"),
    ("conditional", ["--interpolate", "1", "2"], "--interpolate on a class-conditional checkpoint needs --label K"),
    ("guided", ["--interpolate", "1", "2", "--init", "{pictures}/image.png"], "cannot be combined"),
    ("guided", ["--jump-length", "3"], "they need --mask"),
])
def test_bad_editing_flags_are_one_line(runs, pictures, capsys, run, flags, message):
    flags = [flag.format(pictures=pictures) for flag in flags]
    line = expect_error(capsys, ["sample", str(runs[run]), *flags])
    assert message.format(pictures=pictures) in line


@pytest.mark.parametrize("flags, message", [
    (["--num-classes", "10", "--p-uncond", "1"], r"p_uncond (--p-uncond) must be in [0, 1), got 1.0"),
    (["--num-classes", "10", "--p-uncond", "-0.1"], r"p_uncond (--p-uncond) must be in [0, 1)"),
    (["--p-uncond", "0.1"], "must be 0 without --num-classes"),
])
def test_bad_p_uncond_is_one_line(tmp_path, capsys, flags, message):
    assert message in expect_error(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path), *flags])
