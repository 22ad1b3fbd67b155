"""Training through the Python API: exact resume, Ctrl-C, divergence, checkpoint refusals, and
that the loss of Ho et al. 2020, Algorithm 1 goes down. Synthetic images keep these independent
of any data files; the slow test trains on the real MNIST t10k set."""
import importlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from minidiff.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from minidiff.files import save_npz as save_state_dict
from minidiff.train import DivergenceError, TrainConfig, Trainer

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"

# Tiny everything: the tiny U-Net, a 50-step chain, batches of 4, no preview grids.
TINY = dict(preset="tiny", timesteps=50, batch_size=4, lr=1e-3, warmup_steps=2, sample_every=0,
            checkpoint_every=0, log_every=1)


def synthetic_digits(n=24, seed=0):
    """(n, 1, 28, 28) float32 images in [−1, 1] — a bright bar on black — and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 1, 28, 28), -1.0, np.float32)
    for image in images:
        row, col = rng.integers(4, 24, size=2)
        if rng.random() < 0.5:
            image[0, row - 3 : row + 3, 4:24] = 1.0
        else:
            image[0, 4:24, col - 3 : col + 3] = 1.0
    return images, np.arange(n) % 10


DATA = synthetic_digits()


def make_config(run_dir, **overrides):
    return TrainConfig(out=str(run_dir), **{**TINY, **overrides})


def logged_losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def assert_same_training_state(run_dir, expected_dir):
    """The two runs' weights, EMA and optimiser moments are equal, bit for bit."""
    got, expected = load_checkpoint(run_dir), load_checkpoint(expected_dir)
    for section in ("model", "ema", "optimizer"):
        for key, value in expected.sections[section].items():
            np.testing.assert_array_equal(got.sections[section][key], value, err_msg=f"{section}.{key}")


def resume_to(run_dir, steps, **overrides):
    checkpoint = load_checkpoint(run_dir)
    config = TrainConfig.from_checkpoint(checkpoint, steps=steps, **overrides)
    return Trainer(config, data=DATA, resume=checkpoint, progress=False).fit()


# Every source of randomness at once: dropout masks, flips, t and ε draws, labels and their dropout.
EVERYTHING = dict(dropout=0.1, hflip=True, num_classes=10, p_uncond=0.3, prediction="v", min_snr_gamma=5.0)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Six uninterrupted steps with every random stream in use."""
    run_dir = tmp_path_factory.mktemp("straight")
    Trainer(make_config(run_dir, steps=6, **EVERYTHING), data=DATA, progress=False).fit()
    return run_dir


def test_run_folder_has_config_log_and_checkpoint(straight_run):
    config = json.loads((straight_run / "config.json").read_text())
    assert config["preset"] == "tiny" and config["model"]["base_channels"] == 16
    assert config["model"]["dropout"] == 0.1 and config["model"]["num_classes"] == 10
    assert config["p_uncond"] == 0.3 and config["model"]["null_class"] is True
    records = [json.loads(line) for line in (straight_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert set(records[0]) == {"step", "loss", "lr", "grad_norm", "images_per_s", "elapsed"}
    assert records[0]["lr"] == pytest.approx(1e-3 / 2)  # linear warm-up over 2 steps
    checkpoint = load_checkpoint(straight_run)
    assert checkpoint.step == 6 and checkpoint.config == config
    assert int(checkpoint.sections["ema"]["num_updates"]) == 6


def test_resume_reproduces_the_uninterrupted_losses_exactly(straight_run, tmp_path):
    Trainer(make_config(tmp_path, steps=3, **EVERYTHING), data=DATA, progress=False).fit()
    resume_to(tmp_path, steps=6)
    assert logged_losses(tmp_path) == logged_losses(straight_run)  # bit for bit
    assert_same_training_state(tmp_path, straight_run)


def test_preview_grids_leave_the_training_run_untouched(straight_run, tmp_path):
    """--sample-every draws from its own seed with the EMA swapped in and out: same losses, same weights."""
    Trainer(make_config(tmp_path, steps=6, sample_every=2, sample_n=2, sample_steps=2, **EVERYTHING), data=DATA,
            progress=False).fit()
    assert sorted(p.name for p in tmp_path.glob("samples_step*.png")) == [f"samples_step{n}.png" for n in (2, 4, 6)]
    assert logged_losses(tmp_path) == logged_losses(straight_run)
    assert_same_training_state(tmp_path, straight_run)


# Every phase of a step, each with a preview grid and a checkpoint at step 2: where a Ctrl-C lands.
PHASES = {
    "forward": ("minidiff.unet.UNet", "forward"),
    "backward": ("minidiff.autograd.Tensor", "backward"),
    "optimiser": ("minidiff.optim.Adam", "step"),
    "ema": ("minidiff.optim.EMA", "update"),
    "preview": ("minidiff.optim.EMA", "apply_to"),
    "checkpoint write": ("minidiff.train.Trainer", "save"),
}
PHASE_RUN = dict(EVERYTHING, sample_every=2, sample_n=2, sample_steps=2, checkpoint_every=2)
# The same run for each objective: EVERYTHING's DDPM-only fields back at their defaults, the others' set.
PHASE_RUNS = {
    "ddpm": PHASE_RUN,
    "edm": dict(PHASE_RUN, objective="edm", prediction="eps", min_snr_gamma=None, timesteps=1000, p_std=1.0),
    "flow": dict(PHASE_RUN, objective="flow", prediction="eps", min_snr_gamma=None, timesteps=1000,
                 t_distribution="logit-normal"),
}
# Every phase for ddpm; for edm and flow, a phase their own code runs in (their loss, their preview).
PHASE_CASES = [(phase, "ddpm") for phase in PHASES] + [("forward", "edm"), ("preview", "flow")]


@pytest.fixture(scope="module")
def phase_runs(tmp_path_factory):
    """The uninterrupted four-step run of an objective, trained on first use."""
    runs = {}

    def run(objective):
        if objective not in runs:
            runs[objective] = tmp_path_factory.mktemp(f"phases-{objective}")
            Trainer(make_config(runs[objective], steps=4, **PHASE_RUNS[objective]), data=DATA, progress=False).fit()
        return runs[objective]

    return run


@pytest.mark.parametrize("phase, objective", PHASE_CASES)
def test_sigint_in_any_phase_of_a_step_finishes_it_and_resumes_bit_for_bit(phase, objective, phase_runs, tmp_path,
                                                                          monkeypatch, capsys):
    owner, name = PHASES[phase]
    module_name, _, attribute = owner.rpartition(".")
    target = getattr(importlib.import_module(module_name), attribute)
    original = getattr(target, name)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        # in step 2, or in its preview / checkpoint, the first of those
        if len(calls) == (1 if phase in ("preview", "checkpoint write") else 2):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered at once to this thread
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_config(tmp_path, steps=4, **PHASE_RUNS[objective]), data=DATA, progress=False).fit()
    assert "interrupted at step 2" in capsys.readouterr().err
    assert load_checkpoint(tmp_path).step == 2  # the step the signal landed in was finished first
    monkeypatch.setattr(target, name, original)
    resume_to(tmp_path, steps=4)
    phase_run = phase_runs(objective)
    assert logged_losses(tmp_path) == logged_losses(phase_run)  # bit for bit
    assert not list(tmp_path.glob(".*.part"))
    assert_same_training_state(tmp_path, phase_run)


def test_resume_from_an_older_checkpoint_drops_the_log_lines_past_it(tmp_path):
    Trainer(make_config(tmp_path, steps=4, checkpoint_every=2), data=DATA, progress=False).fit()
    losses = logged_losses(tmp_path)
    # Put back the step-2 checkpoint, as if the run had been killed before saving step 4.
    run_b = tmp_path / "b"
    Trainer(make_config(run_b, steps=2), data=DATA, progress=False).fit()
    (run_b / "log.jsonl").write_text((tmp_path / "log.jsonl").read_text())
    resume_to(run_b, steps=4)
    assert logged_losses(run_b) == losses


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []
    original_loss = Trainer.loss

    def loss_nan_at_step_4(self, x0, y=None):
        calls.append(1)
        value = original_loss(self, x0, y)
        return value * float("nan") if len(calls) == 4 else value

    monkeypatch.setattr(Trainer, "loss", loss_nan_at_step_4)
    trainer = Trainer(make_config(tmp_path, steps=6, checkpoint_every=3), data=DATA, progress=False)
    with pytest.raises(DivergenceError, match=r"step 4: loss is nan; .* still holds step 3"):
        trainer.fit()
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.step == 3
    assert all(np.isfinite(value).all() for value in checkpoint.sections["model"].values())
    assert len(logged_losses(tmp_path)) == 3


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    images, labels = synthetic_digits(n=8)
    config = make_config(tmp_path, steps=30, batch_size=8, lr=1e-3, warmup_steps=0, timesteps=100)
    Trainer(config, data=(images, labels), progress=False).fit()
    losses = logged_losses(tmp_path)
    # ε̂ = 0 at initialisation (zero-initialised output conv), so the first loss is about E[ε²] = 1.
    assert losses[0] == pytest.approx(1.0, abs=0.1)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_fresh_run_refuses_a_folder_that_holds_a_checkpoint(straight_run):
    with pytest.raises(ValueError, match="already holds a checkpoint; continue it with --resume"):
        Trainer(make_config(straight_run, steps=6), data=DATA, progress=False)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, r"batch_size \(--batch-size\) must be a positive integer, got 0"),
    ("steps", 0, r"--steps\) must be a positive integer"),
    ("ema_decay", 1.0, r"ema_decay .* must be in \[0, 1\)"),
    ("schedule", "quadratic", r"must be one of linear, scaled_linear, cosine, sigmoid"),
    ("p_uncond", 1.0, r"p_uncond \(--p-uncond\) must be in \[0, 1\)"),
    ("p_uncond", 0.1, r"p_uncond \(--p-uncond\) must be 0 without --num-classes"),
])
def test_config_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_linear_schedule_that_reaches_zero_signal_is_refused_up_front(tmp_path):
    with pytest.raises(ValueError, match="reaches alphas_cumprod = 0"):
        Trainer(make_config(tmp_path, timesteps=20, steps=1), data=DATA, progress=False)


# --------------------------------------------------------------------- checkpoint files
def test_load_model_uses_the_ema_weights_on_cpu(straight_run):
    model, schedule, config = load_model(straight_run)
    checkpoint = load_checkpoint(straight_run)
    assert not model.training and schedule.T == 50 and config["prediction"] == "v"
    for name, value in model.state_dict().items():
        assert type(value) is np.ndarray
        np.testing.assert_array_equal(value, checkpoint.sections["ema"][f"shadow.{name}"])
    live, _, _ = load_model(straight_run, ema=False)
    assert any(not np.array_equal(a, b) for a, b in zip(live.state_dict().values(), model.state_dict().values()))


def test_checkpoint_refusals_name_the_file(straight_run, tmp_path):
    good = straight_run / "checkpoint.npz"
    with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'none.npz'} does not exist"):
        load_checkpoint(tmp_path / "none.npz")
    with pytest.raises(CheckpointError, match=f"no checkpoint.npz in run folder {tmp_path}"):
        load_checkpoint(tmp_path)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint\n")
    for path in (truncated, text):
        with pytest.raises(CheckpointError, match=f"checkpoint {path} is not a readable .npz archive") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)

    flat = {key: value for key, value in np.load(good).items() if not key.startswith("optimizer.")}
    del flat["step"]
    incomplete = tmp_path / "incomplete.npz"
    save_state_dict(flat, incomplete)
    with pytest.raises(CheckpointError, match=r"is incomplete: missing step, optimizer\.\*"):
        load_checkpoint(incomplete)


def test_checkpoint_of_another_preset_is_refused_naming_the_differences(straight_run):
    mnist = TrainConfig(**{**TINY, **EVERYTHING, "preset": "mnist"}).run_config()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(straight_run, expect_config=mnist)
    message = str(info.value)
    assert message.startswith(f"checkpoint {straight_run / 'checkpoint.npz'} is for preset 'tiny' (base_channels 16")
    assert "not preset 'mnist' (base_channels 32" in message


def test_checkpoint_with_weights_of_another_shape_is_refused(straight_run, tmp_path):
    checkpoint = load_checkpoint(straight_run)
    sections = {name: dict(entries) for name, entries in checkpoint.sections.items()}
    # The output conv (16 → 1 channels, 3×3), whatever its name in the U-Net's layout.
    name = next(key for key, value in sections["model"].items() if value.shape == (1, 16, 3, 3))
    sections["model"][name] = np.zeros((1, 16, 5, 5), np.float32)
    sections.pop("rng")
    save_checkpoint(tmp_path / "bad.npz", config=checkpoint.config, step=1, rng={"train": np.random.default_rng(),
                    "model": np.random.default_rng()}, **sections)
    with pytest.raises(CheckpointError, match=rf"does not fit: .*{name} expected \(1, 16, 3, 3\) got \(1, 16, 5, 5\)"):
        load_model(tmp_path / "bad.npz", ema=False)


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}")
def test_tiny_preset_learns_mnist(tmp_path):
    """A few hundred steps on real digits take the ε-prediction loss from ~1 to well under half."""
    config = TrainConfig(preset="tiny", data_dir=str(MNIST_DIR), steps=300, batch_size=32, lr=1e-3,
                         warmup_steps=50, sample_every=0, log_every=1, out=str(tmp_path))
    with pytest.warns(UserWarning, match="t10k"):
        Trainer(config, progress=False).fit()
    losses = logged_losses(tmp_path)
    assert np.mean(losses[:10]) > 0.8
    assert np.mean(losses[-50:]) < 0.4 * np.mean(losses[:10])


def test_cosine_lr_schedule_drives_the_logged_learning_rates(tmp_path):
    from minidiff.optim import learning_rate
    Trainer(make_config(tmp_path, steps=6, lr_schedule="cosine"), data=DATA, progress=False).fit()
    logged = [json.loads(line)["lr"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([learning_rate(s, 6, 2, 1e-3, "cosine") for s in range(6)])
    assert logged[2] == pytest.approx(1e-3) and logged[-1] < 0.15 * 1e-3  # p = 3/4 at the last step
