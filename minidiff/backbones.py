"""The denoising networks, behind one interface: ``model(x, noise_level, labels)``.

A backbone maps a noised batch x (N, C, H, W), its noise levels (N,) and optional class labels
(N,) to an output of the same shape (twice the channels with ``learn_sigma``); it has a ``config``
that rebuilds it, ``num_classes`` and, for classifier-free guidance, a ``null_label``. Two do:

- ``unet``: the DDPM U-Net (Ho et al. 2020, App. B; :mod:`minidiff.unet`);
- ``dit``: the Diffusion Transformer (Peebles & Xie 2023; :mod:`minidiff.dit`).

Everything downstream -- the losses, the samplers, guidance, editing -- sees only that interface,
through :func:`as_denoiser`. A run config names its backbone and preset; :func:`model_config` turns
them into constructor arguments and :func:`build_backbone` into a network.
"""
from __future__ import annotations

from . import dit, unet
from .unet import as_denoiser  # defined beside the U-Net, where docs and messages point; it takes any backbone

BACKBONES = {"unet": unet.UNet, "dit": dit.DiT}
PRESETS = {"unet": unet.PRESETS, "dit": dit.PRESETS}
DEFAULT_PRESET = {"unet": "mnist", "dit": "dit-s4"}


def model_config(backbone: str, preset: str, **overrides) -> dict:
    """The constructor arguments of ``backbone``'s ``preset`` with ``overrides`` (e.g. num_classes, patch_size)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if preset not in PRESETS[backbone]:
        raise ValueError(f"unknown {backbone} preset {preset!r}; choose one of {', '.join(PRESETS[backbone])}")
    return {**PRESETS[backbone][preset], "num_classes": None, "null_class": False, **overrides}


def backbone_of(preset: str) -> str:
    """The backbone whose preset ``preset`` is (preset names are unique across backbones)."""
    for backbone, presets in PRESETS.items():
        if preset in presets:
            return backbone
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(p for ps in PRESETS.values() for p in ps)}")


def build_backbone(backbone: str, config: dict, rng=None):
    """A fresh ``backbone`` network with constructor arguments ``config``, initialised from ``rng``."""
    return BACKBONES[backbone](**config, rng=rng)

