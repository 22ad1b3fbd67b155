"""Consistency distillation, consistency training and reflow from the command line, on tiny settings: each
writes an ordinary run folder, resumes bit for bit after a Ctrl-C, samples in one step by default, and
refuses bad input in one line."""
import json

import numpy as np
import pytest

from minidiff.__main__ import main
from minidiff.checkpoint import load_checkpoint, load_model
from minidiff.fewstep import Student
from minidiff.guidance import guided_denoiser
from minidiff.sample import generate
from minidiff.train import Trainer

from test_cli import MNIST_DIR, expect_error, losses

pytestmark = [
    pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}"),
    pytest.mark.filterwarnings("ignore:mnist train files not found"),
]
TINY = ["--preset", "tiny", "--data-dir", str(MNIST_DIR), "--limit-data", "64", "--batch-size", "4",
        "--log-every", "1", "--sample-every", "0", "--warmup-steps", "0", "--lr", "1e-3"]
STUDENT = {"cd": ["--method", "cd", "--grid-steps", "6"], "reflow": ["--method", "reflow", "--pairs", "8",
                                                                      "--pair-steps", "2"]}
OPTIMISE = ["--steps", "3", "--batch-size", "4", "--log-every", "1", "--warmup-steps", "0", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One-step edm and flow teachers."""
    root = tmp_path_factory.mktemp("teachers")
    for objective in ("edm", "flow"):
        assert main(["train", *TINY, "--objective", objective, "--steps", "1", "--out", str(root / objective)]) == 0
    return root


TEACHER_OF = {"cd": "edm", "reflow": "flow"}


def interrupted_at(monkeypatch, cls, step):
    original = cls.train_step

    def step_then_interrupt(self):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(cls, "train_step", step_then_interrupt)
    return lambda: monkeypatch.setattr(cls, "train_step", original)


@pytest.mark.parametrize("method", ["cd", "reflow"])
def test_student_resumes_exactly_and_samples_in_one_step(teachers, tmp_path, monkeypatch, capsys, method):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    argv = ["distill", str(teachers / TEACHER_OF[method]), *STUDENT[method], *OPTIMISE]
    assert main(argv + ["--out", str(straight)]) == 0
    config = json.loads((straight / "config.json").read_text())
    assert config["distill"]["method"] == method and config["objective"] == {"cd": "consistency",
                                                                              "reflow": "flow"}[method]
    restore = interrupted_at(monkeypatch, Student, 1)
    assert main(argv + ["--out", str(stopped)]) == 130
    assert f"python -m minidiff distill --resume {stopped}" in capsys.readouterr().err
    restore()
    assert main(["distill", "--resume", str(stopped)]) == 0
    assert losses(stopped) == losses(straight)
    resumed = load_checkpoint(stopped).sections["model"]
    for key, value in load_checkpoint(straight).sections["model"].items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)
    assert main(["sample", str(straight), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    expected = {"cd": "consistency, 1 steps", "reflow": "heun, 18 steps"}[method]
    assert expected in capsys.readouterr().out


def test_reflow_keeps_its_pairs_and_refuses_changed_ones(teachers, tmp_path, monkeypatch, capsys):
    restore = interrupted_at(monkeypatch, Student, 1)
    assert main(["distill", str(teachers / "flow"), *STUDENT["reflow"], *OPTIMISE, "--out", str(tmp_path)]) == 130
    restore()
    pairs = np.load(tmp_path / "pairs.npz")
    assert pairs["x0"].shape == pairs["noise"].shape == (8, 1, 28, 28) and np.abs(pairs["x0"]).max() <= 1
    np.savez(tmp_path / "pairs.npz", x0=pairs["noise"], noise=pairs["noise"], labels=pairs["labels"])
    assert "changed since this student drew it" in expect_error(capsys, ["distill", "--resume", str(tmp_path)])


def test_consistency_training_resumes_exactly_and_samples_in_one_step(tmp_path, monkeypatch, capsys):
    argv = ["train", *TINY, "--objective", "consistency", "--steps", "3"]
    assert main(argv + ["--out", str(tmp_path / "straight")]) == 0
    restore = interrupted_at(monkeypatch, Trainer, 2)
    assert main(argv + ["--out", str(tmp_path / "stopped")]) == 130
    restore()
    assert main(["train", "--resume", str(tmp_path / "stopped")]) == 0
    assert losses(tmp_path / "stopped") == losses(tmp_path / "straight")
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["sigma_data"] > 0
    assert main(["sample", str(tmp_path / "straight"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert "consistency, 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--method", "cd", "--to-steps", "2"], "--to-steps applies to --method pd, not cd"),
    (["--method", "cd", "--grid-steps", "0"], "--grid-steps must be a positive integer"),
    (["--method", "reflow"], "--method reflow distils an --objective flow teacher"),
    (["--method", "pd", "--to-steps", "2"], "--method pd distils an --objective ddpm teacher"),
])
def test_bad_method_flags_and_teachers(teachers, tmp_path, capsys, argv, message):
    line = expect_error(capsys, ["distill", str(teachers / "edm"), *argv, "--out", str(tmp_path)])
    assert message in line


def test_train_refuses_to_resume_a_student_and_sample_refuses_to_encode_a_consistency_model(teachers, tmp_path, capsys):
    assert main(["distill", str(teachers / "edm"), *STUDENT["cd"], *OPTIMISE, "--steps", "1", "--out", str(tmp_path)]) == 0
    assert "continue it with distill --resume" in expect_error(capsys, ["train", "--resume", str(tmp_path)])
    assert "--sampler consistency cannot sample" in expect_error(
        capsys, ["sample", str(teachers / "edm"), "--sampler", "consistency", "--n", "1"])


def test_teacher_guidance_draws_the_reflow_pairs_with_the_guided_teacher(tmp_path, capsys):
    """--teacher-guidance w: the stored pairs are the teacher's guided Heun samples of the stored noise (not its
    unguided ones), and a --method cd / pd student's teacher is guided_denoiser at w."""
    teacher = tmp_path / "flow"
    assert main(["train", *TINY, "--objective", "flow", "--num-classes", "10", "--p-uncond", "0.5", "--steps", "2",
                 "--out", str(teacher)]) == 0
    assert main(["distill", str(teacher), *STUDENT["reflow"], *OPTIMISE, "--steps", "1", "--teacher-guidance", "3",
                 "--out", str(tmp_path / "student")]) == 0
    assert json.loads((tmp_path / "student" / "config.json").read_text())["distill"]["teacher_guidance"] == 3.0
    pairs = np.load(tmp_path / "student" / "pairs.npz")
    model, schedule, _ = load_model(teacher)

    def heun(w):
        return generate(model, schedule, 8, "heun", 2, x_T=pairs["noise"], labels=pairs["labels"], objective="flow",
                        guidance=w)
    np.testing.assert_allclose(pairs["x0"], heun(3.0), atol=1e-6)
    assert np.abs(pairs["x0"] - heun(0.0)).max() > 1e-2
    student = Student.__new__(Student)
    student.teacher, student.record = model, {"teacher_guidance": 3.0}
    x, t, labels = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32), np.full(4, 5), [1, 2, 3, 4]
    np.testing.assert_allclose(student.guided_teacher(labels)(x, t), guided_denoiser(model, labels, 3.0)(x, t))


@pytest.mark.parametrize("argv, message", [
    (["--teacher-guidance", "1"], "--teacher-guidance needs a class-conditional teacher with a null class"),
    (["--teacher-guidance", "-1"], "--teacher-guidance must be a finite number in [0, inf]"),
    (["--teacher-guidance", "nan"], "--teacher-guidance must be a finite number"),
])
def test_bad_teacher_guidance(teachers, tmp_path, capsys, argv, message):
    line = expect_error(capsys, ["distill", str(teachers / "flow"), *STUDENT["reflow"], *argv, "--out", str(tmp_path)])
    assert message in line
    assert not (tmp_path / "pairs.npz").exists()


def test_resume_refuses_a_new_teacher_guidance(teachers, tmp_path, capsys):
    assert main(["distill", str(teachers / "edm"), *STUDENT["cd"], *OPTIMISE, "--steps", "1", "--out", str(tmp_path)]) == 0
    assert "give no TEACHER or method flags" in expect_error(
        capsys, ["distill", "--resume", str(tmp_path), "--teacher-guidance", "2"])
