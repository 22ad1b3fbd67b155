"""Checkpoints of training runs: one ``.npz`` file holding everything needed to resume a run
exactly or to sample from it, and the functions that rebuild the model and schedule it describes.

Layout of ``checkpoint.npz`` (flat names, plain arrays, no pickles)::

    format_version          1
    config                  JSON text: the run's configuration, its model config under "model"
    step                    optimiser steps completed
    elapsed_s               training wall time so far, in seconds
    model.<param name>      the live weights               (Module.state_dict)
    ema.num_updates         EMA of the weights              (optim.EMA.state_dict)
    ema.shadow.<param name>
    optimizer.<key>         Adam hyperparameters and moments (optim.Adam.state_dict)
    batcher.<key>           data order: permutation, position, epoch, RNG (data.Batcher.state_dict)
    rng.<name>              JSON text of a NumPy Generator's state ("train": t, noise and flips;
                            "model": the initialisation generator that dropout keeps drawing from)

Every array is a NumPy copy, so a checkpoint written on the GPU loads on a CPU-only machine.
The file is written beside its destination and renamed over it (:func:`minidiff.files.save_npz`),
so an interrupted save never destroys the previous checkpoint.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backbones import BACKBONES, build_backbone
from .diffusion import PREDICTIONS
from .files import load_npz, save_npz
from .objectives import OBJECTIVES, SIGMA_DATA_OBJECTIVES
from .schedule import SCHEDULES, schedule_by_name

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
SECTIONS = ("model", "ema", "optimizer", "batcher", "rng")
# The entries of a run's config that decide what its network computes: a checkpoint is refused
# where one of them differs, since its weights would be loaded into the wrong model or sampled
# with the wrong noise schedule. Everything in config["model"] is compared as well.
IDENTITY_KEYS = ("backbone", "preset", "objective", "sigma_data", "schedule", "zero_terminal_snr",
                 "timesteps", "prediction")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, incomplete, or belongs to another model."""


def checkpoint_path(path) -> Path:
    """The checkpoint file named by ``path``: the file itself, or ``<run folder>/checkpoint.npz``."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


@dataclass
class Checkpoint:
    """A checkpoint read back by :func:`load_checkpoint`: its config, step and state sections."""

    path: Path
    config: dict
    step: int
    elapsed_s: float
    sections: dict  # section name -> {key: array}

    def model_weights(self, ema: bool = True) -> dict:
        """Parameter name → array: the EMA weights (what samples are drawn with) or the live ones."""
        if not ema:
            return self.sections["model"]
        prefix = "shadow."
        return {key[len(prefix):]: value for key, value in self.sections["ema"].items() if key.startswith(prefix)}

    def rng_state(self, name: str) -> dict:
        """The state of the Generator saved under ``rng.<name>``, ready for ``bit_generator.state``."""
        try:
            state = json.loads(str(self.sections["rng"][name]))
            np.random.PCG64().state = state  # tried on a spare generator: refuses a malformed state
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {self.path}: rng.{name} is not a generator state ({exc})") from None
        return state

    def restore(self, target, section: str, state=None):
        """``target.load_state_dict(state or this section)``, its complaint raised as a CheckpointError."""
        try:
            target.load_state_dict(self.sections[section] if state is None else state)
        except (ValueError, RuntimeError, TypeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {self.path} does not fit: {exc}") from exc

    def check_config(self, expected: dict) -> None:
        """Refuse this checkpoint when it describes another model than the run config ``expected``:
        any of :data:`IDENTITY_KEYS` present in ``expected``, or any entry of its ``"model"`` dict,
        that differs is named."""
        # A JSON round trip turns tuples into lists, as they are in a checkpoint's config.
        expected = json.loads(json.dumps(expected))
        keys = [key for key in IDENTITY_KEYS if key in expected and self.config.get(key) != expected[key]]
        found_model, expected_model = self.config.get("model", {}), expected.get("model", {})
        model_keys = [key for key in expected_model if found_model.get(key) != expected_model[key]]
        if not keys and not model_keys:
            return
        keys = keys or ["preset"]  # the preset anchors the message even when only a model entry differs

        def describe(config, model):
            head = ", ".join(f"{key} {config.get(key)!r}" for key in keys)
            if not model_keys:
                return head
            return head + " (" + ", ".join(f"{key} {_show(model.get(key))}" for key in model_keys) + ")"

        raise CheckpointError(
            f"checkpoint {self.path} is for {describe(self.config, found_model)}, "
            f"not {describe(expected, expected_model)}"
        )


def save_checkpoint(path, *, config: dict, step: int, elapsed_s: float = 0.0, **sections) -> Path:
    """Write a checkpoint to ``path`` atomically; ``sections`` are the state dicts of :data:`SECTIONS`.

    ``rng`` maps a name to a NumPy Generator, saved as the JSON text of its state.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"save_checkpoint: unknown sections {sorted(unknown)}; expected {', '.join(SECTIONS)}")
    sections = dict(sections)
    if "rng" in sections:
        sections["rng"] = {name: json.dumps(gen.bit_generator.state) for name, gen in sections["rng"].items()}
    flat = {"format_version": FORMAT_VERSION, "config": json.dumps(config), "step": step, "elapsed_s": elapsed_s}
    for section, state in sections.items():
        flat.update((f"{section}.{key}", value) for key, value in state.items())
    save_npz(flat, path)
    return Path(path)


def load_checkpoint(path, expect_config: dict | None = None) -> Checkpoint:
    """Read the checkpoint at ``path`` (a file or a run folder), refusing a bad one.

    Raises :class:`CheckpointError` — one line naming the file — when it does not exist, is not
    an ``.npz`` archive or is truncated, lacks one of its parts, or, given ``expect_config``
    (a run config), was written for another model (:meth:`Checkpoint.check_config`).
    """
    path = checkpoint_path(path)
    if not path.exists():
        where = f"no {CHECKPOINT_NAME} in run folder {path.parent}" if path.name == CHECKPOINT_NAME else None
        raise CheckpointError(where or f"checkpoint {path} does not exist")
    try:
        flat = load_npz(path)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable .npz archive: it is truncated, corrupt or another kind of file"
        ) from exc

    missing = [key for key in ("format_version", "config", "step", "elapsed_s") if key not in flat]
    sections = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        section, _, rest = key.partition(".")
        if section in sections and rest:
            sections[section][rest] = value
    missing += [f"{name}.*" for name, entries in sections.items() if not entries]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    version = _scalar(flat, "format_version", path, np.integer)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this minidiff reads {FORMAT_VERSION}")
    try:
        config = json.loads(str(flat["config"]))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path}: its config is not valid JSON ({exc})") from exc
    _check_config(config, path)
    step, elapsed_s = _scalar(flat, "step", path, np.integer), _scalar(flat, "elapsed_s", path, np.number)
    if step < 0 or not (math.isfinite(elapsed_s) and elapsed_s >= 0):
        raise CheckpointError(f"checkpoint {path}: step {step} or elapsed_s {elapsed_s} is out of range")
    for section in ("model", "ema", "optimizer"):
        for key, value in sections[section].items():
            if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
                raise CheckpointError(f"checkpoint {path}: {section}.{key} holds NaN or infinite values "
                                      "(the run diverged); use an earlier checkpoint")
    checkpoint = Checkpoint(path, config, step, elapsed_s, sections)
    if expect_config is not None:
        checkpoint.check_config(expect_config)
    return checkpoint


def _scalar(flat: dict, key: str, path: Path, kind) -> int | float:
    """The one number stored under ``key``, of NumPy kind ``kind`` (np.integer or np.number)."""
    value = np.asarray(flat[key])
    if value.shape != () or not np.issubdtype(value.dtype, kind) or np.issubdtype(value.dtype, np.bool_):
        raise CheckpointError(f"checkpoint {path}: {key} must be one {'integer' if kind is np.integer else 'number'}, "
                              f"got {value.dtype} of shape {value.shape}")
    return value.item()


# What a run config must hold for a model to be rebuilt from it: key → (test, what it must be).
_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer")
_INTS = (lambda v: isinstance(v, list) and all(_INT[0](x) for x in v), "a list of positive integers")
CONFIG_RULES = {
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "timesteps": _INT,
    "prediction": (lambda v: v in PREDICTIONS, f"one of {', '.join(PREDICTIONS)}"),
    "model": (lambda v: isinstance(v, dict), "a JSON object"),
    "zero_terminal_snr": (lambda v: isinstance(v, bool), "true or false"),
    "backbone": (lambda v: v in BACKBONES, f"one of {', '.join(BACKBONES)}"),
    "objective": (lambda v: v in OBJECTIVES, f"one of {', '.join(OBJECTIVES)}"),
}
_REAL = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
         "a positive number")
_CONDITIONING = {
    "num_classes": (lambda v: v is None or _INT[0](v), "null or a positive integer"),
    "null_class": (lambda v: isinstance(v, bool), "true or false"),
    "learn_sigma": (lambda v: isinstance(v, bool), "true or false"),
}
MODEL_RULES = {  # per backbone: what its constructor arguments must be
    "unet": {
        "in_channels": _INT, "base_channels": _INT, "channel_mults": _INTS, "num_res_blocks": _INT,
        "attn_resolutions": (lambda v: isinstance(v, list) and all(isinstance(x, int) for x in v), "a list of integers"),
        "num_groups": _INT, "image_size": _INT,
        "dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1, "in [0, 1)"),
        **_CONDITIONING,
    },
    "dit": {
        "in_channels": _INT, "image_size": _INT, "patch_size": _INT, "hidden_size": _INT, "depth": _INT,
        "num_heads": _INT, "mlp_ratio": _REAL, **_CONDITIONING,
    },
    "autoencoder": {
        "in_channels": _INT, "image_size": _INT, "base_channels": _INT, "channel_mults": _INTS,
        "num_res_blocks": _INT, "z_channels": _INT, "num_groups": _INT,
    },
}
# An autoencoder run (minidiff.autoencoder_train) has its own fields; its scale factor 1/std is
# measured at every save.
AUTOENCODER_RULES = {
    "model": CONFIG_RULES["model"],
    "kl_weight": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
                  "a number >= 0"),
    "scale_factor": _REAL,
}
# A latent diffusion run's record of its autoencoder (minidiff.latent.LatentSpace.record).
LATENT_RECORD_RULES = {
    "run": (lambda v: isinstance(v, str) and v != "", "a folder name"),
    "fingerprint": (lambda v: isinstance(v, str) and len(v) == 16, "16 hex digits"),
    "scale_factor": _REAL,
    "latent_shape": (lambda v: isinstance(v, list) and len(v) == 3 and all(_INT[0](x) for x in v), "[C, H, W]"),
}
# Fields newer than some checkpoints: a config without one gets the value every older run had.
CONFIG_DEFAULTS = {"zero_terminal_snr": False, "backbone": "unet", "objective": "ddpm"}
MODEL_DEFAULTS = {"null_class": False, "learn_sigma": False}


def _check_config(config, path: Path) -> None:
    """Refuse a config whose fields could not rebuild a model, naming the file and the field; a
    checkpoint older than a :data:`MODEL_DEFAULTS` key gets its default."""
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path}: its config is a JSON {type(config).__name__}, not an object")
    if config.get("kind") == "autoencoder":
        checks = [(AUTOENCODER_RULES, config, ""), (MODEL_RULES["autoencoder"], config.get("model"), "model.")]
    else:
        for key, value in CONFIG_DEFAULTS.items():
            config.setdefault(key, value)
        if isinstance(config.get("model"), dict):
            config["model"] = {**MODEL_DEFAULTS, **config["model"]}
        model_rules = MODEL_RULES.get(config.get("backbone"), {})  # an unknown backbone is named by CONFIG_RULES
        checks = [(CONFIG_RULES, config, ""), (model_rules, config.get("model"), "model.")]
        if "autoencoder" in config:  # a latent diffusion run
            if not isinstance(config["autoencoder"], dict):
                raise CheckpointError(f"checkpoint {path}: config field autoencoder must be a JSON object")
            checks.append((LATENT_RECORD_RULES, config["autoencoder"], "autoencoder."))
    for rules, where, prefix in checks:
        for key, (ok, what) in rules.items():
            if key not in where:
                raise CheckpointError(f"checkpoint {path}: config field {prefix}{key} is missing")
            try:
                valid = ok(where[key])
            except TypeError:  # e.g. an unhashable list tested against the choices
                valid = False
            if not valid:
                raise CheckpointError(f"checkpoint {path}: config field {prefix}{key} must be {what}, "
                                      f"got {where[key]!r}")
    sigma_data = config.get("sigma_data")
    if config.get("objective") in SIGMA_DATA_OBJECTIVES and not (isinstance(sigma_data, (int, float)) and not isinstance(sigma_data, bool)
                                             and math.isfinite(sigma_data) and sigma_data > 0):
        raise CheckpointError(f"checkpoint {path}: config field sigma_data must be a positive number for objective "
                              f"{config['objective']}, got {sigma_data!r}")


def _show(value) -> str:
    return "none" if value is None else str(tuple(value) if isinstance(value, list) else value)


# --------------------------------------------------------------------- what a config describes
def build_model(config: dict, rng=None):
    """The network of a run config (its ``"backbone"`` built from its ``"model"`` entry), freshly
    initialised from ``rng`` (:mod:`minidiff.backbones`)."""
    return build_backbone(config.get("backbone", "unet"), config["model"], rng=rng)


def load_model(path, ema: bool = True, device: str = "cpu"):
    """(model in eval mode on ``device``, its noise schedule, the run config) from a checkpoint.

    ``ema=True`` loads the exponential moving average of the weights, which DDPM samples with
    (Ho et al. 2020, App. B); ``ema=False`` the live weights.
    """
    checkpoint = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    try:
        model = build_model(checkpoint.config)
        schedule = schedule_by_name(checkpoint.config["schedule"], checkpoint.config["timesteps"],
                                    checkpoint.config["zero_terminal_snr"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path} has an unusable config: {exc}") from exc
    checkpoint.restore(model, "model", checkpoint.model_weights(ema))
    return model.to(device).eval(), schedule, checkpoint.config


__all__ = [
    "CheckpointError", "Checkpoint", "CHECKPOINT_NAME", "checkpoint_path", "save_checkpoint",
    "load_checkpoint", "build_model", "load_model",
]
