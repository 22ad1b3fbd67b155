"""Trust under faults and hostile input (issue 12): one test per kind of fault, each a one-line
refusal naming the problem or a run that loses nothing; and SIGKILL at every phase of a step."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_cli import MNIST_DIR, TINY, expect_error, losses, train
from test_train import DATA, PHASES, make_config

from minidiff.checkpoint import load_checkpoint
from minidiff.files import load_npz, save_npz
from minidiff.runfolder import RunFolder, RunFolderBusy
from minidiff.train import DivergenceError, Trainer
from minidiff.unet import UNet

pytestmark = [
    pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}"),
    pytest.mark.filterwarnings("ignore:mnist train files not found"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four steps with a checkpoint at step 2 and 4."""
    out = tmp_path_factory.mktemp("faults")
    assert train(out, "--steps", "4", "--sample-every", "0", "--checkpoint-every", "2") == 0
    return out


def crafted(run, tmp_path, **changes):
    """A copy of ``run``'s checkpoint with entries replaced (None deletes one); returns its path."""
    flat = dict(load_npz(run / "checkpoint.npz"))
    for key, value in changes.items():
        if value is None:
            del flat[key]
        else:
            flat[key] = value
    save_npz(flat, tmp_path / "crafted.npz")
    return tmp_path / "crafted.npz"


# 1. No "last good checkpoint" full of NaN -------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused(tmp_path, capsys, value):
    line = expect_error(capsys, ["train", *TINY, "--out", str(tmp_path), "--lr", value])
    assert "lr (--lr) must be a positive finite number" in line


def test_weights_that_are_not_finite_are_never_checkpointed(tmp_path):
    trainer = Trainer(make_config(tmp_path, steps=2), data=DATA, progress=False)
    trainer.fit()
    trainer.model.out[1].weight.data[0, 0, 0, 0] = np.inf
    with pytest.raises(DivergenceError, match=r"parameter out.1.weight is inf; .* still holds step 2"):
        trainer.save()
    assert load_checkpoint(tmp_path).step == 2


def test_a_diverging_learning_rate_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    line = expect_error(capsys, ["train", *TINY, "--out", str(tmp_path), "--lr", "1e30", "--warmup-steps", "0",
                                 "--steps", "6", "--checkpoint-every", "1", "--sample-every", "0"], after_progress=True)
    assert "training stopped" in line and "still holds step" in line
    checkpoint = load_checkpoint(tmp_path)  # refuses a non-finite one: this one is finite
    assert all(np.isfinite(value).all() for value in checkpoint.sections["model"].values())


def test_sample_and_eval_refuse_a_checkpoint_holding_nan(run, tmp_path, capsys):
    flat = load_npz(run / "checkpoint.npz")
    key = next(key for key in flat if key.startswith("ema.shadow."))
    path = crafted(run, tmp_path, **{key: np.full_like(flat[key], np.nan)})
    for command in ("sample", "eval"):
        line = expect_error(capsys, [command, str(path), "--n", "4"])
        assert f"{key} holds NaN or infinite values" in line and "crafted.npz" in line


# 2. One trainer per run folder -----------------------------------------------------------------------


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path, capsys):
    holder = RunFolder(tmp_path)
    holder.acquire()
    try:
        line = expect_error(capsys, ["train", *TINY, "--out", str(tmp_path), "--steps", "1"])
        assert f"run folder {tmp_path} is in use by another training process" in line
    finally:
        holder.release()
    assert train(tmp_path, "--steps", "1", "--sample-every", "0") == 0  # free again once released
    with pytest.raises(RunFolderBusy):
        other = RunFolder(tmp_path)
        other.acquire()
        try:
            RunFolder(tmp_path).acquire()
        finally:
            other.release()


# 4. The checkpoint, not the log, is the truth on resume -------------------------------------------------


@pytest.mark.parametrize("bad_line", ['{"step": 5, "loss": 0.', '{"loss": 1.0}', '[1, 2]', "\x00\x00garbage"])
def test_a_torn_or_foreign_log_line_is_dropped_with_a_warning(tmp_path, capsys, bad_line):
    assert train(tmp_path, "--steps", "2", "--sample-every", "0") == 0
    straight = losses(tmp_path)
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write(bad_line)
    with pytest.warns(RuntimeWarning, match="log.jsonl: dropped 1 unreadable line"):
        RunFolder(tmp_path).truncate_log(load_checkpoint(tmp_path).step)
    assert losses(tmp_path) == straight


def test_resume_repairs_a_torn_log_through_the_cli(tmp_path, capsys):
    assert train(tmp_path, "--steps", "2", "--sample-every", "0") == 0
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write('{"step": 3, "lo')
    assert main_quiet(["train", "--resume", str(tmp_path), "--steps", "3"]) == 0
    assert "log.jsonl: dropped 1 unreadable line" in capsys.readouterr().err
    assert len(losses(tmp_path)) == 3


def main_quiet(argv):
    from minidiff.__main__ import main

    return main(argv)


# 5. Crafted checkpoint fields are refused naming the file and the field ---------------------------------


@pytest.mark.parametrize("changes, message", [
    (dict(step=np.arange(3)), "step must be one integer"),
    (dict(step=np.array(-1)), "step -1 or elapsed_s"),
    (dict(elapsed_s=np.array("abc")), "elapsed_s must be one number"),
    (dict(config=np.array("[1, 2]")), "its config is a JSON list"),
    (dict(format_version=np.array("one")), "format_version must be one integer"),
])
def test_crafted_top_level_fields_are_refused(run, tmp_path, capsys, changes, message):
    path = crafted(run, tmp_path, **changes)
    line = expect_error(capsys, ["sample", str(path), "--n", "1"])
    assert message in line and "crafted.npz" in line


def with_config(run, **fields):
    config = json.loads(str(load_npz(run / "checkpoint.npz")["config"]))
    for key, value in fields.items():
        target, _, name = key.rpartition("__")
        where = config[target] if target else config
        if value is None:
            del where[name]
        else:
            where[name] = value
    return np.array(json.dumps(config))


@pytest.mark.parametrize("fields, message", [
    (dict(prediction=None), "config field prediction is missing"),
    (dict(timesteps="20"), "config field timesteps must be a positive integer, got '20'"),
    (dict(schedule=["cosine"]), "config field schedule must be one of"),
    (dict(model__base_channels=None), "config field model.base_channels is missing"),
    (dict(model__dropout="abc"), "config field model.dropout must be in [0, 1), got 'abc'"),
])
def test_crafted_config_fields_are_refused_by_sample(run, tmp_path, capsys, fields, message):
    path = crafted(run, tmp_path, config=with_config(run, **fields))
    line = expect_error(capsys, ["sample", str(path), "--n", "1"])
    assert message in line and "crafted.npz" in line


@pytest.mark.parametrize("fields, message", [
    (dict(lr="abc"), "lr (--lr) must be a positive finite number, got 'abc'"),
    (dict(batch_size=4.5), "batch_size (--batch-size) must be a positive integer"),
    (dict(hflip="yes"), "hflip (--hflip) must be true or false"),
])
def test_crafted_training_fields_are_refused_on_resume(run, tmp_path, capsys, fields, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    crafted(run, tmp_path, config=with_config(run, **fields)).rename(run_dir / "checkpoint.npz")
    line = expect_error(capsys, ["train", "--resume", str(run_dir), "--steps", "9"])
    assert message in line and "its config is not valid" in line and "checkpoint.npz" in line


@pytest.mark.parametrize("entry, value, message", [
    ("batcher.permutation", np.arange(64, dtype=np.float64), "not a permutation"),
    ("batcher.permutation", np.arange(1, 65), "not a permutation"),
    ("batcher.position", np.array([1, 2]), "position must be one integer"),
    ("batcher.position", np.array(999), "out of range"),
    ("rng.train", np.array("{}"), "rng.train is not a generator state"),
])
def test_crafted_training_state_is_refused_on_resume(run, tmp_path, capsys, entry, value, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    crafted(run, tmp_path, **{entry: value}).rename(run_dir / "checkpoint.npz")
    line = expect_error(capsys, ["train", "--resume", str(run_dir), "--steps", "9"])
    assert message in line and "checkpoint.npz" in line


# 6. eval scores only images it can score ------------------------------------------------------------


@pytest.mark.parametrize("samples, message", [
    (np.full((8, 1, 28, 28), 200.0, np.float32), "values lie in [200, 200], expected [-1, 1]"),
    (np.zeros((8, 1, 28, 28), np.uint8), "expected float images in [-1, 1], got dtype uint8"),
    (np.zeros((8, 1, 28, 28), np.complex64), "got dtype complex64"),
    (np.zeros((8, 1, 28, 28), bool), "got dtype bool"),
    (np.full((8, 1, 28, 28), np.nan, np.float32), "6272 values are NaN or infinite"),
])
def test_eval_refuses_samples_it_cannot_score(tmp_path, capsys, samples, message):
    np.save(tmp_path / "s.npy", samples)
    line = expect_error(capsys, ["eval", "--samples", str(tmp_path / "s.npy"), "--data-dir", str(MNIST_DIR)])
    assert message in line and "s.npy" in line


# 7. --resume: what may change is applied, what may not is refused -------------------------------------


def test_resume_refuses_flags_that_would_change_the_experiment(run, capsys):
    for flag, value in (("--seed", "99"), ("--timesteps", "30"), ("--batch-size", "8"), ("--prediction", "v")):
        line = expect_error(capsys, ["train", "--resume", str(run), flag, value, "--steps", "9"])
        assert f"{flag} {value}" in line and "cannot change on --resume" in line


def test_resume_refuses_steps_not_beyond_the_checkpoint(run, capsys):
    line = expect_error(capsys, ["train", "--resume", str(run), "--steps", "3"])
    assert "--steps 3 is not beyond the checkpoint's step 4" in line


def test_resume_applies_and_records_a_new_learning_rate(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main_quiet(["train", "--resume", str(copy), "--steps", "5", "--lr", "5e-4"]) == 0
    assert json.loads((copy / "config.json").read_text())["lr"] == 5e-4
    assert load_checkpoint(copy).config["lr"] == 5e-4
    warmed_up = 5e-4 * 5 / 500  # the learning rate of step 5 under the default 500-step warm-up
    assert json.loads((copy / "log.jsonl").read_text().splitlines()[-1])["lr"] == pytest.approx(warmed_up)


# 8. Degenerate settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--timesteps", "1", "--schedule", "linear"], "--timesteps 1 ends at alphas_cumprod = 0.9, far from pure noise"),
    (["--timesteps", "10", "--schedule", "linear"], "--schedule linear with --timesteps 10 is not a valid schedule"),
    (["--timesteps", "100000000"], "at most 100000 timesteps"),
    (["--out", ""], "out (--out) must be a folder name"),
    (["--num-classes", "5", "--conditional"], "--conditional means --num-classes 10, which contradicts --num-classes 5"),
])
def test_degenerate_training_settings_are_refused(tmp_path, capsys, flags, message):
    argv = ["train", *TINY, *flags] + ([] if "--out" in flags else ["--out", str(tmp_path)])
    assert message in expect_error(capsys, argv)


@pytest.mark.parametrize("flags, message", [
    (["--n", "1000000000"], "--n must be between 1 and 100,000"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2^63), got -1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "21"], "--steps 21 is outside [1, 20]"),
    (["--eta", "nan"], "--eta must be a finite number >= 0"),
    (["--eta", "0.5", "--sampler", "ddpm"], "--eta applies to --sampler ddim only"),
])
def test_bad_sampling_flags_name_the_flag(run, capsys, flags, message):
    assert message in expect_error(capsys, ["sample", str(run), *flags])


# 9. Leftovers and vague lines -----------------------------------------------------------------------


def test_stale_part_files_of_dead_writers_are_removed_on_start(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = copy / f".checkpoint.npz.{dead.stdout.strip()}.0badcafe.part"
    stale.write_bytes(b"half a checkpoint")
    assert main_quiet(["train", "--resume", str(copy), "--steps", "5", "--sample-every", "0"]) == 0
    assert not stale.exists()


def test_data_faults_name_the_path(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    line = expect_error(capsys, ["train", "--data-dir", str(not_a_folder), "--out", str(tmp_path / "r")])
    assert f"data directory {not_a_folder} is a file" in line
    unreadable = tmp_path / "d"
    (unreadable / "t10k-images-idx3-ubyte").mkdir(parents=True)  # a folder where the file should be: read fails
    (unreadable / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    (unreadable / "t10k-images-idx3-ubyte.gz").mkdir()
    line = expect_error(capsys, ["train", "--data-dir", str(unreadable), "--out", str(tmp_path / "r")])
    assert str(unreadable) in line


# 10. The model's entry ------------------------------------------------------------------------------


@pytest.mark.parametrize("t, y, message", [
    (np.array([np.nan, 2.0]), None, "noise levels t must be finite"),
    (np.array(["a", "b"]), None, "timesteps t must be integers or real noise levels"),
    (np.array([-1, 3]), None, r"timesteps t must lie in >= 0, got -1…3"),
    (np.array([1, 2]), np.array([0.0, 1.0]), "class labels y must be integers"),
    (np.array([1, 2]), np.array([0, 10]), r"class labels y must lie in \[0, 10\)"),
])
def test_the_unet_refuses_bad_timesteps_and_labels(t, y, message):
    model = UNet.from_preset("tiny", num_classes=10 if y is not None else None)
    with pytest.raises(ValueError, match=message):
        model(np.zeros((2, 1, 28, 28), np.float32), t, y)


def test_the_unet_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        UNet.from_preset("tiny")(np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64))


# SIGKILL at every phase of a step ------------------------------------------------------------------

KILLED_RUN = textwrap.dedent("""
    import importlib, os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_train import DATA, PHASE_RUNS, make_config
    from minidiff.train import Trainer
    owner, name = {phase!r}
    module_name, _, attribute = owner.rpartition(".")
    target = getattr(importlib.import_module(module_name), attribute)
    original, calls = getattr(target, name), []
    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == {call}:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(target, name, killed)
    Trainer(make_config({out!r}, steps=4, **PHASE_RUNS[{objective!r}]), data=DATA, progress=False).fit()
""")


# (target, the call to kill at): always after the step-2 checkpoint and before the step-4 one. The
# forward runs once per step and twice in the step-2 preview (2 sampling steps), so its 5th call is
# in step 3; the 2nd preview / checkpoint is step 4's; the 5th os.replace is the step-4 checkpoint's
# rename (after config.json, a preview, the step-2 checkpoint and another preview): its .part stays.
# Heun's preview of an edm or flow run calls the forward three times, so there it is the 6th call.
CALL_TO_KILL = {"forward": 5, "preview": 2, "checkpoint write": 2}
KILL_POINTS = {**{phase: (target, CALL_TO_KILL.get(phase, 3)) for phase, target in PHASES.items()},
               "checkpoint rename": (("minidiff.files.os", "replace"), 5)}
KILL_CASES = [(phase, "ddpm") for phase in KILL_POINTS] + [("forward", "edm"), ("forward", "flow")]


@pytest.mark.parametrize("phase, objective", KILL_CASES)
def test_sigkill_in_any_phase_of_a_step_loses_nothing(phase, objective, tmp_path):
    from test_train import PHASE_RUNS, resume_to

    straight = tmp_path / "straight"
    Trainer(make_config(straight, steps=4, **PHASE_RUNS[objective]), data=DATA, progress=False).fit()
    out = tmp_path / "killed"
    target, call = KILL_POINTS[phase]
    call += phase == "forward" and objective != "ddpm"
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), phase=target, call=call, out=str(out),
                               objective=objective)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    checkpoint = load_checkpoint(out)  # the last complete one, never a torn file
    assert checkpoint.step == 2
    resume_to(out, steps=4)
    assert losses(out) == losses(straight)  # bit for bit, the log cut back and redone
    assert not list(out.glob(".*.part"))
