"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): the target is exact, the grids nest,
the student trains as an ordinary run that resumes bit for bit, and ``distill`` refuses bad input in one line."""
import json

import numpy as np
import pytest

from minidiff.__main__ import main
from minidiff.checkpoint import load_checkpoint
from minidiff.diffusion import predict_eps_from_x0
from minidiff.distill import ddim_step, distillation_target, student_grid, teacher_grid
from minidiff.fewstep import ProgressiveDistiller
from minidiff.oracles import GaussianMixture, mixture_denoiser
from minidiff.sampling import ddim_update
from minidiff.schedule import NoiseSchedule, extract

from test_cli import MNIST_DIR, expect_error, losses

pytestmark = [
    pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}"),
    pytest.mark.filterwarnings("ignore:mnist train files not found"),
]
TINY = ["--preset", "tiny", "--data-dir", str(MNIST_DIR), "--limit-data", "64", "--batch-size", "4",
        "--schedule", "cosine", "--timesteps", "20", "--log-every", "1", "--sample-every", "0"]
STUDENT = ["--teacher-steps", "4", "--to-steps", "1", "--steps-per-round", "2", "--batch-size", "4",
           "--log-every", "1", "--warmup-steps", "0", "--lr", "1e-3"]


@pytest.mark.parametrize("student_steps", [1, 2, 5, 32])
def test_one_student_ddim_step_from_the_target_lands_where_the_teacher_two_land(student_steps):
    schedule = NoiseSchedule.linear(T=1000)
    grid, student = teacher_grid(schedule, student_steps), student_grid(schedule, student_steps)
    np.testing.assert_array_equal(student.timesteps, grid.timesteps[1::2])  # the grids nest
    teacher = mixture_denoiser(GaussianMixture.on_circle(), schedule)
    rng = np.random.default_rng(0)
    i = rng.integers(student_steps, size=64)
    t = 2 * i + 1
    z_t = rng.standard_normal((64, 2)) * 3
    z_s = ddim_step(teacher, grid, ddim_step(teacher, grid, z_t, t, "eps"), t - 1, "eps")
    alpha_t, sigma_t = extract(grid.sqrt_alphas_cumprod, t, z_t), extract(grid.sqrt_one_minus_alphas_cumprod, t, z_t)
    alpha_bar_s = extract(grid.alphas_cumprod_prev, t - 1, z_t)
    x_target = distillation_target(z_t, z_s, alpha_t, sigma_t, np.sqrt(alpha_bar_s), np.sqrt(1 - alpha_bar_s))
    # The student's one DDIM step i → i − 1 with x̂ = x̃ (Song et al. 2021, Eq. 12, η = 0).
    eps = predict_eps_from_x0(student, z_t, i, x_target)
    landed = ddim_update(x_target, eps, extract(student.alphas_cumprod_prev, i, z_t))
    np.testing.assert_allclose(landed, z_s, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", *TINY, "--prediction", "v", "--steps", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """Two rounds (4 → 2 → 1 steps) of two optimiser steps, uninterrupted."""
    out = tmp_path_factory.mktemp("student")
    assert main(["distill", str(teacher), *STUDENT, "--out", str(out)]) == 0
    return out


def test_student_is_an_ordinary_run_folder_recording_its_teacher(teacher, student):
    config = json.loads((student / "config.json").read_text())
    record = config["distill"]
    assert record["method"] == "pd" and record["teacher"] == str((teacher / "checkpoint.npz").resolve())
    assert len(record["teacher_fingerprint"]) == 64 and record["to_steps"] == 1 and config["steps"] == 4
    assert config["prediction"] == "v" and config["model"]["base_channels"] == 16  # the teacher's network
    assert (student / "teacher_steps2.npz").is_file()  # round 2's teacher, round 1's student
    assert load_checkpoint(student).step == 4 and len(losses(student)) == 4


def test_ctrl_c_and_resume_reproduce_the_uninterrupted_student_exactly(teacher, student, tmp_path, monkeypatch,
                                                                        capsys):
    """Stopped on a round's boundary (step 2), resumed and stopped mid-round (step 3), resumed to the end."""
    original_step = ProgressiveDistiller.train_step
    stops = [2, 3]

    def step_then_interrupt(self):
        if stops and self.step == stops[0]:
            stops.pop(0)
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(ProgressiveDistiller, "train_step", step_then_interrupt)
    assert main(["distill", str(teacher), *STUDENT, "--out", str(tmp_path)]) == 130
    assert f"python -m minidiff distill --resume {tmp_path}" in capsys.readouterr().err
    assert main(["distill", "--resume", str(tmp_path)]) == 130
    assert main(["distill", "--resume", str(tmp_path)]) == 0
    assert losses(tmp_path) == losses(student)  # bit for bit
    resumed, straight = load_checkpoint(tmp_path), load_checkpoint(student)
    for section in ("model", "ema", "optimizer"):
        for key, value in straight.sections[section].items():
            np.testing.assert_array_equal(resumed.sections[section][key], value, err_msg=f"{section}.{key}")


def test_sample_defaults_to_the_students_steps(student, tmp_path, capsys):
    assert main(["sample", str(student), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert "ddim, 1 steps" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--to-steps", "3"], "must be the teacher's --teacher-steps 4 halved"),
    (["--to-steps", "4"], "must be the teacher's --teacher-steps 4 halved"),
    (["--to-steps", "1", "--teacher-steps", "64"], "exceeds the teacher's 20 timesteps"),
    (["--to-steps", "1", "--steps-per-round", "0"], "--steps-per-round must be a positive integer"),
    ([], "--method pd needs --to-steps"),
    (["--to-steps", "1", "--grid-steps", "4"], "--grid-steps applies to --method cd, not pd"),
    (["--to-steps", "1", "--steps", "9"], "give no --steps"),
])
def test_bad_student_flags(teacher, tmp_path, capsys, flags, message):
    line = expect_error(capsys, ["distill", str(teacher), "--teacher-steps", "4", *flags, "--out", str(tmp_path)])
    assert message in line


def test_eps_teacher_is_refused_citing_the_paper(tmp_path, capsys):
    assert main(["train", *TINY, "--steps", "1", "--out", str(tmp_path / "eps")]) == 0
    line = expect_error(capsys, ["distill", str(tmp_path / "eps"), "--to-steps", "1", "--out", str(tmp_path / "s")])
    assert "--prediction v or x0" in line and "Salimans & Ho 2022, §4" in line


def test_missing_and_corrupt_teachers(tmp_path, capsys):
    assert "no checkpoint.npz in run folder" in expect_error(capsys, ["distill", str(tmp_path), "--to-steps", "1"])
    (tmp_path / "checkpoint.npz").write_bytes(b"not an archive")
    assert "not a readable .npz archive" in expect_error(capsys, ["distill", str(tmp_path), "--to-steps", "1"])


def test_resume_refuses_a_changed_teacher_a_finished_student_and_a_plain_run(teacher, student, tmp_path, monkeypatch,
                                                                              capsys):
    copy = tmp_path / "teacher"
    copy.mkdir()
    (copy / "checkpoint.npz").write_bytes((teacher / "checkpoint.npz").read_bytes())
    original_step = ProgressiveDistiller.train_step
    monkeypatch.setattr(ProgressiveDistiller, "train_step",
                        lambda self: (_ for _ in ()).throw(KeyboardInterrupt) if self.step == 1 else original_step(self))
    assert main(["distill", str(copy), *STUDENT, "--out", str(tmp_path / "s")]) == 130
    monkeypatch.setattr(ProgressiveDistiller, "train_step", original_step)
    (copy / "checkpoint.npz").write_bytes((student / "checkpoint.npz").read_bytes())  # the teacher moved on
    assert "changed since this student began" in expect_error(capsys, ["distill", "--resume", str(tmp_path / "s")])
    assert "fully distilled" in expect_error(capsys, ["distill", "--resume", str(student)])
    assert "not a distilled student" in expect_error(capsys, ["distill", "--resume", str(teacher)])
