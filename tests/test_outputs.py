"""Every command checks its output paths (and its data, --n and flag combinations) before any work,
in one line naming the flag, and the checkpoint survives every output-path mistake
(minidiff.outputs); leftover .part files of a killed write are removed by the next write."""
import os
from pathlib import Path

import numpy as np
import pytest

from minidiff.__main__ import main
from minidiff.files import atomic_write
from minidiff.images import save_image_grid
from minidiff.outputs import Output, check_outputs
from minidiff.sample import generate
from minidiff.schedule import NoiseSchedule
from minidiff.unet import UNet

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}")
pytestmark = pytest.mark.filterwarnings("ignore:mnist train files not found")
TINY = ["--preset", "tiny", "--data-dir", str(MNIST_DIR), "--limit-data", "64", "--batch-size", "4",
        "--schedule", "cosine", "--timesteps", "20", "--sample-every", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--out", str(out), "--steps", "2"]) == 0
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Sampling, scoring or drawing figures raises: a refusal must come before any of it."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the command started working before refusing")

    for module in ("sample", "evaluate", "figures"):
        name = "generate" if module == "figures" else "generate_on_ranks"
        monkeypatch.setattr(f"minidiff.commands.{module}.{name}", forbidden)
    monkeypatch.setattr("minidiff.commands.figures.pyplot", lambda: None)  # matplotlib is not needed to refuse


def refusal(capsys, argv) -> str:
    """The one line ``minidiff <cmd>: error: …`` of a refused command (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith(f"minidiff {argv[0]}: error: "), err
    return err[0]


CASES = [  # (argv after the run folder is put in place of RUN, words the line must hold)
    (["sample", "RUN", "--npy", "RUN/checkpoint.npz"], "--npy"),
    (["sample", "RUN", "--out", "RUN/checkpoint.npz"], "--out"),
    (["sample", "RUN", "--out", "s.jpg"], "--out s.jpg"),
    (["sample", "RUN", "--out", "RUN/samples_step2.png"], "run folder"),
    (["sample", "RUN", "--trajectory", "RUN/samples_step100.png"], "--trajectory"),
    (["sample", "RUN", "--out", "same.png", "--trajectory", "same.png"], "--out and --trajectory"),
    (["sample", "RUN", "--out", "RUN"], "--out"),
    (["sample", "RUN", "--npy", "/proc/nope/x.npy"], "--npy /proc/nope/x.npy"),
    (["sample", "RUN", "--npy", "afile/x.npy"], "afile is a file"),
    (["sample", "RUN", "--out", ""], "--out"),
    (["eval", "RUN", "--json", "RUN/checkpoint.npz"], "--json"),
    (["eval", "RUN", "--json", "RUN/config.json"], "run folder"),
    (["eval", "RUN", "--json", "/proc/nope/x.json"], "--json /proc/nope/x.json"),
    (["eval", "RUN", "--n", "6000", "--data-dir", str(MNIST_DIR)], "--n 6000"),
    (["eval", "RUN", "--data-dir", "missing"], "missing"),
    (["figures", "RUN", "--out", "afile"], "--out"),
    (["train", "--resume", "RUN", "--steps", "3", "--out", "afile"], "--out"),
]


@needs_mnist
@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(argv) for argv, _ in CASES])
def test_output_mistakes_are_refused_before_any_work_and_the_checkpoint_survives(run, tmp_path, monkeypatch,
                                                                               capsys, no_work, argv, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    before = (run / "checkpoint.npz").read_bytes()
    argv = [str(run) + arg[3:] if arg.startswith("RUN") else arg for arg in argv]
    words = words.replace("RUN", str(run))
    assert words in refusal(capsys, argv)
    assert (run / "checkpoint.npz").read_bytes() == before


@needs_mnist
def test_a_link_to_the_checkpoint_is_the_checkpoint(run, tmp_path, capsys, no_work):
    (tmp_path / "link.npy").symlink_to(run / "checkpoint.npz")
    assert "is the checkpoint" in refusal(capsys, ["sample", str(run), "--npy", str(tmp_path / "link.npy")])


@needs_mnist
def test_an_output_may_not_overwrite_an_input_image(run, tmp_path, capsys, no_work):
    save_image_grid(np.zeros((1, 1, 28, 28)), tmp_path / "digit.png")
    line = refusal(capsys, ["sample", str(run), "--init", str(tmp_path / "digit.png"), "--out",
                            str(tmp_path / "digit.png")])
    assert "--out" in line and "--init" in line


@needs_mnist
def test_figures_checks_its_data_before_drawing_anything(run, tmp_path, capsys, no_work):
    assert "missing" in refusal(capsys, ["figures", str(run), "--out", str(tmp_path / "figs"),
                                         "--data-dir", str(tmp_path / "missing")])
    assert not (tmp_path / "figs").exists()


@needs_mnist
def test_train_refuses_more_classes_than_the_dataset_has(tmp_path, capsys):
    line = refusal(capsys, ["train", *TINY, "--out", str(tmp_path / "r"), "--steps", "1", "--num-classes", "20"])
    assert "--num-classes 20" in line and "10 classes" in line


def test_outputs_are_checked_in_one_line_naming_the_flag(tmp_path):
    (tmp_path / "in.png").write_bytes(b"")
    with pytest.raises(ValueError, match="--a and --b name the same file"):
        check_outputs([Output("--a", tmp_path / "x.png", (".png",)), Output("--b", tmp_path / "x.png", (".png",))])
    with pytest.raises(ValueError, match="--a .* is --init, which this command reads"):
        check_outputs([Output("--a", tmp_path / "in.png", (".png",))], inputs=[("--init", tmp_path / "in.png")])
    check_outputs([Output("--a", tmp_path / "new" / "deeper" / "x.png", (".png",)), Output("--b", None)])
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_part_file_left_by_a_killed_write_is_removed_by_the_next_write_of_that_file(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".out.png.{dead}.0123abcd.part"
    other = tmp_path / f".other.png.{dead}.0123abcd.part"  # another output's: left for its own next write
    mine = tmp_path / f".out.png.{os.getpid()}.0123abcd.part"  # a live writer's: kept
    for part in (stale, other, mine):
        part.write_bytes(b"half a picture")
    save_image_grid(np.zeros((1, 1, 4, 4)), tmp_path / "out.png")
    assert not stale.exists() and other.exists() and mine.exists()
    with atomic_write(tmp_path / "other.png") as f:
        f.write(b"x")
    assert not other.exists()


def test_generate_returns_the_data_range_whatever_the_sampler_and_clipping():
    """eval scores what sample shows: without x̂₀ clipping, the probability-flow ODE's last step
    overshoots [−1, 1]; generate clips its final samples, as the PNG does."""
    model = UNet.from_preset("tiny", rng=np.random.default_rng(0))  # ε̂ = 0 at initialisation
    samples = generate(model, NoiseSchedule.cosine(20), 2, "pf-ode", 4, clip_denoised=False)
    assert samples.min() == -1.0 or samples.max() == 1.0  # it did overshoot, and was clipped
    assert -1.0 <= samples.min() and samples.max() <= 1.0


@needs_mnist
@pytest.mark.parametrize("flags, words", [
    (["--limit-data", "20000"], "--limit-data 20000 is more than the 10000 images"),
])
def test_train_refuses_a_data_limit_beyond_the_data(tmp_path, capsys, flags, words):
    assert words in refusal(capsys, ["train", *TINY, "--out", str(tmp_path / "r"), "--steps", "1", *flags])


@needs_mnist
@pytest.mark.parametrize("flags, words", [
    (["--sampler", "pf-ode"], "use sampler ddpm, ddim, heun, euler or midpoint, not pf-ode"),
    (["--sampler", "ddpm", "--steps", "5", "--jump-length", "5", "--jump-n-sample", "2"],
     "--jump-length 5 must be less than the 5 sampling steps"),
])
def test_inpainting_flags_that_cannot_work_are_refused_before_sampling(run, tmp_path, capsys, no_work, flags, words):
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "mask.png")
    argv = ["sample", str(run), "--init", str(tmp_path / "digit.png"), "--mask", str(tmp_path / "mask.png"), *flags]
    assert words in refusal(capsys, argv)
