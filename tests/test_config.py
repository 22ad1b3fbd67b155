"""TrainConfig's checks at their boundaries: the last value each flag accepts and the first it
refuses, named in the message (whole runs with a config are in test_train.py)."""

import math

import pytest

from minidiff.checkpoint import CheckpointError, load_checkpoint
from minidiff.config import TrainConfig

# field → (values accepted, values refused, what the message says it must be)
BOUNDARIES = {
    "steps": ([1], [0, True, 1.0], "a positive integer"),
    "batch_size": ([1], [0, False], "a positive integer"),
    "sample_n": ([1], [0], "a positive integer"),
    "sample_steps": ([1], [0], "a positive integer"),
    "log_every": ([1], [0], "a positive integer"),
    "warmup_steps": ([0], [-1, False], "a non-negative integer"),
    "sample_every": ([0], [-1], "a non-negative integer"),
    "checkpoint_every": ([0], [-1], "a non-negative integer"),
    "seed": ([0], [-1, 0.5], "a non-negative integer"),
    "limit_data": ([None, 1], [0], "a positive integer"),
    "num_classes": ([None, 1], [0], "a positive integer"),
    "lr": ([1e-12], [0, -1e-3, math.inf, True], "a positive finite number"),
    "grad_clip": ([0, 0.5], [-1e-12, math.nan], "a finite number >= 0"),
    "ema_decay": ([0, 0.9999], [1.0, -1e-12, math.nan], r"in \[0, 1\)"),
    "dropout": ([None, 0, 0.5], [1.0, -1e-12], r"in \[0, 1\)"),
    "min_snr_gamma": ([None, 0.01, 10_000], [0.0099, 10_001, math.inf], r"in \[0.01, 10000\]"),
    "dataset": (["mnist"], ["cifar10", 3], "one of"),
    "prediction": (["v"], ["score"], "one of"),
    "hflip": ([True], [1], "true or false"),
    "out": (["x"], ["", "  ", 7], "a folder name"),
    "data_dir": ([None, "d"], ["", " "], "a folder name"),
}


@pytest.mark.parametrize("field", BOUNDARIES)
def test_each_field_accepts_up_to_its_boundary_and_refuses_past_it(field):
    accepted, refused, what = BOUNDARIES[field]
    for value in accepted:
        assert getattr(TrainConfig(**{field: value}), field) == value
    for value in refused:
        with pytest.raises(ValueError, match=rf"{field} \(--{field.replace('_', '-')}\) must be {what}"):
            TrainConfig(**{field: value})


def test_p_uncond_needs_classes_and_lies_in_0_1():
    assert TrainConfig(p_uncond=0.0).p_uncond == 0 and TrainConfig(num_classes=10, p_uncond=0.5).p_uncond == 0.5
    for value in (1.0, -1e-12):
        with pytest.raises(ValueError, match=r"p_uncond \(--p-uncond\) must be in \[0, 1\)"):
            TrainConfig(num_classes=10, p_uncond=value)
    with pytest.raises(ValueError, match="must be 0 without --num-classes"):
        TrainConfig(p_uncond=0.1)


def test_every_problem_is_named_at_once_and_the_out_folder_defaults_to_dataset_and_preset():
    with pytest.raises(ValueError, match=r"^steps .*; lr .*; dataset ") as info:
        TrainConfig(steps=0, lr=0, dataset="x")
    assert info.value.args[0].count("; ") == 2
    assert TrainConfig(dataset="fashion-mnist", preset="tiny").out == "runs/fashion-mnist-tiny"


def test_schedules_that_cannot_train_are_refused_up_front():
    with pytest.raises(ValueError, match="at most 100000 timesteps"):
        TrainConfig(timesteps=100_001)
    assert TrainConfig(timesteps=100_000, schedule="cosine").timesteps == 100_000
    with pytest.raises(ValueError, match="far from pure noise"):
        TrainConfig(schedule="scaled_linear", timesteps=1)  # β = 0.85: ᾱ ends at 0.15
    with pytest.raises(ValueError, match="reaches alphas_cumprod = 0 at the last step"):
        TrainConfig(zero_terminal_snr=True)
    assert TrainConfig(zero_terminal_snr=True, prediction="v").zero_terminal_snr  # x₀ comes from v there


def test_run_config_keeps_the_presets_dropout_unless_one_is_given():
    assert TrainConfig(preset="tiny").run_config()["model"]["dropout"] == 0.0
    assert TrainConfig(preset="tiny", dropout=0.25).run_config()["model"]["dropout"] == 0.25


def test_the_defaults_are_the_documented_recipe():
    # README: DDPM's longer recipe (Ho et al. 2020, App. B: lr 2e-4, EMA 0.9999, T = 1000, the linear
    # schedule, ε-prediction, clipping at 1) at batch 64 for 5000 steps, with a warm-up of 500.
    config = TrainConfig()
    assert (config.steps, config.batch_size, config.lr, config.warmup_steps, config.grad_clip, config.ema_decay) == (
        5000, 64, 2e-4, 500, 1.0, 0.9999)
    assert (config.schedule, config.timesteps, config.prediction, config.min_snr_gamma, config.learn_sigma) == (
        "linear", 1000, "eps", None, False)
    assert (config.dataset, config.preset, config.hflip, config.dropout, config.num_classes, config.p_uncond) == (
        "mnist", "mnist", False, None, None, 0.0)
    assert (config.sample_every, config.sample_n, config.sample_steps, config.checkpoint_every, config.log_every,
            config.seed, config.device, config.zero_terminal_snr) == (1000, 16, 50, 500, 10, 0, "cpu", False)


def test_a_resumed_config_is_checked_and_must_train_past_the_checkpoint(tmp_path):
    from test_checkpoint import run_config, write

    checkpoint = load_checkpoint(write(tmp_path / "c.npz", run_config()))  # saved at step 3
    assert TrainConfig.from_checkpoint(checkpoint, steps=4).steps == 4
    with pytest.raises(ValueError, match="--steps 3 is not beyond the checkpoint's step 3"):
        TrainConfig.from_checkpoint(checkpoint, steps=3)
    bad = run_config()
    bad["ema_decay"] = 1.5  # a field the checkpoint's own checks leave to TrainConfig
    with pytest.raises(CheckpointError, match=r"its config is not valid: ema_decay .* must be in \[0, 1\)"):
        TrainConfig.from_checkpoint(load_checkpoint(write(tmp_path / "bad.npz", bad)), steps=10)
