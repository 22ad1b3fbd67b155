"""``python -m minidiff train|sample`` end to end on tiny settings: the tiny U-Net, a 20-step
cosine chain, batches of 4, the first 64 MNIST t10k digits; and every user error as one line."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minidiff.__main__ import main
from minidiff.backend import DeviceError, check_device
from minidiff.checkpoint import load_checkpoint
from minidiff.train import Trainer

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
pytestmark = [
    pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}"),
    pytest.mark.filterwarnings("ignore:mnist train files not found"),
]

TINY = ["--preset", "tiny", "--data-dir", str(MNIST_DIR), "--limit-data", "64", "--batch-size", "4",
        "--schedule", "cosine", "--timesteps", "20", "--sample-n", "4", "--sample-steps", "3", "--log-every", "1"]


def train(out, *flags):
    return main(["train", *TINY, "--out", str(out), *flags])


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def expect_error(capsys, argv, after_progress=False):
    """Run ``main(argv)``; it must exit with status 2 and print one line ``minidiff <cmd>: error: …``
    (after the progress bar's lines, when the error comes mid-training); returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and (after_progress or len(lines) == 1), err
    assert lines[-1].startswith(f"minidiff {argv[0]}: error: "), err
    return lines[-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four steps, preview grids at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run")
    assert train(out, "--steps", "4", "--sample-every", "2") == 0
    return out


def test_train_writes_the_run_folder(run):
    for name in ("checkpoint.npz", "config.json", "log.jsonl", "samples_step2.png", "samples_step4.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "tiny" and config["timesteps"] == 20 and config["model"]["base_channels"] == 16
    assert len(losses(run)) == 4
    assert load_checkpoint(run).step == 4


def test_resume_reproduces_the_uninterrupted_run(run, tmp_path, capsys):
    assert train(tmp_path, "--steps", "2", "--sample-every", "2") == 0
    assert main(["train", "--resume", str(tmp_path), "--steps", "4"]) == 0
    assert losses(tmp_path) == losses(run)
    assert "trained to step 4" in capsys.readouterr().out


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(run, tmp_path, monkeypatch, capsys):
    original_step = Trainer.train_step

    def step_then_interrupt(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    assert train(tmp_path, "--steps", "4", "--sample-every", "0") == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2" in err and f"python -m minidiff train --resume {tmp_path}" in err
    assert "Traceback" not in err

    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert main(["train", "--resume", str(tmp_path)]) == 0
    assert losses(tmp_path) == losses(run)


def test_nan_loss_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    original_loss = Trainer.loss

    def nan_at_step_3(self, x0, y=None):
        loss = original_loss(self, x0, y)
        return loss * float("nan") if self.step == 2 else loss

    monkeypatch.setattr(Trainer, "loss", nan_at_step_3)
    line = expect_error(capsys, ["train", *TINY, "--out", str(tmp_path), "--steps", "4", "--checkpoint-every", "2",
                                 "--sample-every", "0"], after_progress=True)
    assert "step 3: loss is nan" in line and "still holds step 2" in line
    assert load_checkpoint(tmp_path).step == 2


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddpm", "5"), ("ddim", "3"), ("dpm-solver++", "3"),
                                            ("reverse-sde", "3"), ("pf-ode", "3"), ("pc", "3")])
def test_sample_writes_grid_npy_and_trajectory(run, tmp_path, capsys, sampler, steps):
    out, npy, trajectory = tmp_path / "grid.png", tmp_path / "samples.npy", tmp_path / "traj.png"
    argv = ["sample", str(run), "--sampler", sampler, "--n", "3", "--seed", "1", "--out", str(out),
            "--npy", str(npy), "--trajectory", str(trajectory)]
    assert main(argv + (["--steps", steps] if steps else [])) == 0
    assert out.is_file() and trajectory.is_file()
    samples = np.load(npy)
    assert samples.shape == (3, 1, 28, 28) and samples.dtype == np.float32 and np.isfinite(samples).all()
    expected_steps = steps or "20"  # DDPM walks the whole chain by default
    assert f"{sampler}, {expected_steps} steps" in capsys.readouterr().out


def test_sample_defaults_to_the_run_folder_and_is_reproducible(run, tmp_path):
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    for npy in (first, second):
        assert main(["sample", str(run / "checkpoint.npz"), "--n", "2", "--steps", "2", "--npy", str(npy)]) == 0
    assert (run / "samples.png").is_file()
    np.testing.assert_array_equal(np.load(first), np.load(second))


def test_class_conditional_checkpoint_takes_labels(tmp_path, capsys):
    assert train(tmp_path, "--steps", "1", "--conditional", "--sample-every", "0") == 0
    assert load_checkpoint(tmp_path).config["model"]["num_classes"] == 10
    npy = tmp_path / "threes.npy"
    assert main(["sample", str(tmp_path), "--label", "3", "--n", "2", "--steps", "2", "--npy", str(npy)]) == 0
    assert np.load(npy).shape == (2, 1, 28, 28)
    line = expect_error(capsys, ["sample", str(tmp_path), "--label", "10", "--steps", "2"])
    assert "--label 10 is outside the checkpoint's classes 0..9" in line


# --------------------------------------------------------------------- one-line errors
def test_label_on_an_unconditional_checkpoint(run, capsys):
    assert "needs a class-conditional checkpoint" in expect_error(capsys, ["sample", str(run), "--label", "1"])


def test_corrupt_checkpoint(run, tmp_path, capsys):
    corrupt = tmp_path / "checkpoint.npz"
    corrupt.write_bytes((run / "checkpoint.npz").read_bytes()[:5000])
    line = expect_error(capsys, ["sample", str(corrupt)])
    assert f"checkpoint {corrupt} is not a readable .npz archive" in line
    line = expect_error(capsys, ["train", "--resume", str(tmp_path)])
    assert f"checkpoint {corrupt}" in line


def test_checkpoint_of_another_preset(run, capsys):
    line = expect_error(capsys, ["train", "--resume", str(run), "--preset", "mnist"])
    assert "--preset mnist (saved: tiny): cannot change on --resume" in line


@pytest.mark.parametrize("flags, message", [
    (["--data-dir", "/nonexistent/mnist"], "data directory /nonexistent/mnist does not exist"),
    (["--batch-size", "0"], "batch_size (--batch-size) must be a positive integer, got 0"),
    (["--steps", "0"], "steps (--steps) must be a positive integer, got 0"),
    (["--batch-sise", "8"], "unrecognized arguments: --batch-sise 8"),
    (["--schedule", "quadratic"], "argument --schedule: invalid choice: 'quadratic'"),
])
def test_bad_train_flags(tmp_path, capsys, flags, message):
    line = expect_error(capsys, ["train", *TINY, "--out", str(tmp_path), *flags])
    assert message in line


def test_existing_run_folder_is_not_overwritten(run, capsys):
    assert "already holds a checkpoint" in expect_error(capsys, ["train", *TINY, "--out", str(run)])


def test_cuda_without_a_gpu(run, capsys):
    try:
        check_device("cuda")
        pytest.skip("a CUDA device is available")
    except DeviceError:
        pass
    line = expect_error(capsys, ["sample", str(run), "--device", "cuda"])
    assert "device 'cuda'" in line


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "sample" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--no-such-flag"], "minidiff train: error: unrecognized arguments: --no-such-flag"),
    (["sample", "{run}/log.jsonl"], "is not a readable .npz archive"),
])
def test_errors_in_a_real_process_have_no_traceback(run, argv, message):
    argv = [arg.format(run=run) for arg in argv]
    result = subprocess.run([sys.executable, "-m", "minidiff", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert "Traceback" not in result.stderr


def test_real_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    """SIGINT to a real training process: exit status 130, a message, a checkpoint at a whole step."""
    process = subprocess.Popen([sys.executable, "-m", "minidiff", "train", *TINY, "--out", str(tmp_path),
                                "--steps", "10000", "--sample-every", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "log.jsonl"
    deadline = time.monotonic() + 60
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and f"--resume {tmp_path}" in err
    step = load_checkpoint(tmp_path).step
    assert step >= 2 and len(losses(tmp_path)) == step  # logged up to the checkpoint, no further

    assert main(["train", "--resume", str(tmp_path), "--steps", str(step + 2)]) == 0
    straight = tmp_path / "straight"
    assert train(straight, "--steps", str(step + 2), "--sample-every", "0") == 0
    assert losses(tmp_path) == losses(straight)
