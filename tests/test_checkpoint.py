"""What a checkpoint's config must say before it is loaded or resumed: the fields that decide what the
network computes, each compared on its own, and the model fields' ranges. The checkpoints here
hold a config and placeholder sections only (no training), so every case takes milliseconds;
whole runs are resumed in test_train.py."""

import json

import numpy as np
import pytest

from minidiff.backbones import model_config
from minidiff.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from minidiff.config import TrainConfig
from minidiff.files import save_npz
from minidiff.unet import UNet


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


def tampered(tmp_path, change):
    """A checkpoint whose flat fields (``np.load``'s names) were passed through ``change(flat, config)``."""
    path = write(tmp_path / "good.npz", run_config())
    flat = dict(np.load(path))
    saved = flat["config"]
    config = json.loads(str(saved))
    change(flat, config)
    if flat.get("config") is saved:  # the change was to the parsed config
        flat["config"] = np.asarray(json.dumps(config))
    save_npz(flat, tmp_path / "bad.npz")
    return tmp_path / "bad.npz"


def setter(key, value):
    return lambda flat, config: flat.__setitem__(key, np.asarray(value))


def config_setter(path, value):
    """Set (or, for value DELETE, remove) config[path[0]][path[1]]…"""
    def change(flat, config):
        *parents, last = path
        for parent in parents:
            config = config[parent]
        if value is DELETE:
            del config[last]
        else:
            config[last] = value
    return change


DELETE = object()
TAMPERED = {
    "negative step": (setter("step", -1), "step -1 or elapsed_s 0.0 is out of range"),
    "negative time": (setter("elapsed_s", -1e-9), "is out of range"),
    "time not finite": (setter("elapsed_s", np.nan), "is out of range"),
    "fractional step": (setter("step", 1.5), "step must be one integer, got float64"),
    "boolean step": (setter("step", True), "step must be one integer, got bool"),
    "two steps": (setter("step", [1, 2]), r"step must be one integer, got int64 of shape \(2,\)"),
    "text time": (setter("elapsed_s", "soon"), "elapsed_s must be one number"),
    "other format": (setter("format_version", 2), "has format version 2; this minidiff reads 1"),
    "config not JSON": (setter("config", "{"), "its config is not valid JSON"),
    "config a list": (setter("config", "[1]"), "its config is a JSON list, not an object"),
    "section missing": (lambda flat, config: flat.pop("optimizer.lr"), r"incomplete: missing optimizer\.\*"),
    "step missing": (lambda flat, config: flat.pop("step"), "incomplete: missing step"),
    "diverged weights": (setter("ema.shadow.w", [0.0, np.inf]), r"ema\.shadow\.w holds NaN or infinite values"),
    "field missing": (config_setter(["timesteps"], DELETE), "config field timesteps is missing"),
    "model field missing": (config_setter(["model", "num_groups"], DELETE), "config field model.num_groups is missing"),
    "model not a dict": (config_setter(["model"], [1]), "config field model must be a JSON object"),
    "unknown schedule": (config_setter(["schedule"], "cubic"), "config field schedule must be one of"),
    "unknown prediction": (config_setter(["prediction"], "score"), "config field prediction must be one of"),
    "timesteps 0": (config_setter(["timesteps"], 0), "config field timesteps must be a positive integer"),
    "timesteps true": (config_setter(["timesteps"], True), "config field timesteps must be a positive integer"),
    "terminal SNR not bool": (config_setter(["zero_terminal_snr"], 1), "zero_terminal_snr must be true or false"),
    "a channel multiplier 0": (config_setter(["model", "channel_mults"], [1, 0]), "channel_mults must be a list of"),
    "multipliers not a list": (config_setter(["model", "channel_mults"], 2), "channel_mults must be a list of"),
    "attention at 1.5": (config_setter(["model", "attn_resolutions"], [1.5]), "attn_resolutions must be a list of"),
    "attention not a list": (config_setter(["model", "attn_resolutions"], 14), "attn_resolutions must be a list of"),
    "0 classes": (config_setter(["model", "num_classes"], 0), "num_classes must be null or a positive integer"),
    "null class not bool": (config_setter(["model", "null_class"], 0), "null_class must be true or false"),
    "learn_sigma not bool": (config_setter(["model", "learn_sigma"], "yes"), "learn_sigma must be true or false"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_checkpoint_is_refused_naming_the_file_and_the_field(tmp_path, case):
    change, message = TAMPERED[case]
    path = tampered(tmp_path, change)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}.*{message}"):
        load_checkpoint(path)


def test_the_edges_of_the_ranges_load(tmp_path):
    path = tampered(tmp_path, lambda flat, config: flat.update(step=np.asarray(0), elapsed_s=np.asarray(0)))
    checkpoint = load_checkpoint(path)
    assert (checkpoint.step, checkpoint.elapsed_s) == (0, 0)
    old = tampered(tmp_path, config_setter(["model", "learn_sigma"], DELETE))  # written before the field existed
    assert load_checkpoint(old).config["model"]["learn_sigma"] is False


def test_sections_weights_and_generator_states_read_back(tmp_path):
    checkpoint = load_checkpoint(write(tmp_path / "c.npz", run_config()))
    assert list(checkpoint.model_weights()) == ["w"] and list(checkpoint.model_weights(ema=False)) == ["w"]
    generator = np.random.default_rng(0)
    assert checkpoint.rng_state("train") == generator.bit_generator.state
    with pytest.raises(CheckpointError, match=r"rng\.model is not a generator state"):
        checkpoint.rng_state("model")
    with pytest.raises(CheckpointError, match=f"checkpoint {checkpoint.path} does not fit"):
        checkpoint.restore(UNet(**run_config()["model"]), "model")
    with pytest.raises(ValueError, match=r"unknown sections \['weights'\]"):
        save_checkpoint(tmp_path / "x.npz", config={}, step=0, weights={})


def test_a_model_config_that_cannot_be_built_is_refused_when_loading_the_model(tmp_path):
    config = run_config()
    config["model"]["num_groups"] = 5  # 16 channels do not split into 5 groups
    with pytest.raises(CheckpointError, match="has an unusable config"):
        load_model(write(tmp_path / "c.npz", config))
    with pytest.raises(ValueError, match="unknown unet preset 'huge'"):
        model_config("unet", "huge")
    assert model_config("unet", "tiny", dropout=0.5)["dropout"] == 0.5 and model_config("unet", "tiny")["num_classes"] is None


def test_a_difference_in_classes_shows_none_for_no_classes(tmp_path):
    path = write(tmp_path / "c.npz", run_config())
    expected = run_config(num_classes=10)
    with pytest.raises(CheckpointError, match=r"is for preset 'tiny' \(num_classes none\), not preset 'tiny' \(num_classes 10\)$"):
        load_checkpoint(path, expect_config=expected)
