"""What a checkpoint's config must say before it is loaded or resumed: the fields that decide what the
network computes, each compared on its own, and the model fields' ranges. The checkpoints here
hold a config and placeholder sections only (no training), so every case takes milliseconds;
whole runs are resumed in test_train.py."""

import numpy as np
import pytest

from minidiff.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minidiff.config import TrainConfig


def run_config(**overrides):
    return TrainConfig(preset="tiny", timesteps=50, out="run", **overrides).run_config()


def write(path, config):
    """A checkpoint of ``config`` whose state sections are one placeholder entry each."""
    return save_checkpoint(path, config=config, step=3, model={"w": np.zeros(2, np.float32)},
                           ema={"shadow.w": np.zeros(2, np.float32)}, optimizer={"lr": 1.0}, batcher={"epoch": 0},
                           rng={"train": np.random.default_rng(0)})


# Every run-config entry that changes what the weights mean or how they are sampled.
RUN_IDENTITY = {"schedule": "cosine", "zero_terminal_snr": True, "timesteps": 100, "prediction": "v"}
# Every model-config entry, changed one at a time (the tiny preset has 16 base channels, no classes, no dropout).
MODEL_IDENTITY = {"base_channels": 32, "learn_sigma": True, "dropout": 0.1, "num_classes": 10, "null_class": True,
                  "channel_mults": [1, 2, 2], "num_res_blocks": 2, "attn_resolutions": [], "image_size": 32}


@pytest.mark.parametrize("key", RUN_IDENTITY)
def test_a_checkpoint_of_another_run_identity_is_refused_naming_the_field(tmp_path, key):
    path = write(tmp_path / "c.npz", run_config())
    load_checkpoint(path, expect_config=run_config())  # the same run resumes
    expected = {**run_config(), key: RUN_IDENTITY[key]}
    with pytest.raises(CheckpointError, match=f"is for .*{key} .* not .*{key} {RUN_IDENTITY[key]!r}"):
        load_checkpoint(path, expect_config=expected)


@pytest.mark.parametrize("key", MODEL_IDENTITY)
def test_a_checkpoint_of_another_model_is_refused_naming_the_model_field(tmp_path, key):
    path = write(tmp_path / "c.npz", run_config())
    expected = run_config()
    expected["model"] = {**expected["model"], key: MODEL_IDENTITY[key]}
    with pytest.raises(CheckpointError, match=f"is for preset 'tiny' \\(.*{key} .*not preset 'tiny' \\(.*{key} "):
        load_checkpoint(path, expect_config=expected)


@pytest.mark.parametrize("dropout, ok", [(0.0, True), (0.999, True), (1.0, False), (-0.1, False), (True, False)])
def test_model_dropout_must_lie_in_0_1(tmp_path, dropout, ok):
    # Dropout 1 zeroes every activation it touches: no network a checkpoint could describe.
    config = run_config()
    config["model"]["dropout"] = dropout
    path = write(tmp_path / "c.npz", config)
    if ok:
        assert load_checkpoint(path).config["model"]["dropout"] == dropout
    else:
        with pytest.raises(CheckpointError, match=r"config field model\.dropout must be in \[0, 1\)"):
            load_checkpoint(path)
