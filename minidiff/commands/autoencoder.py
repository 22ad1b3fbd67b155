"""The ``python -m minidiff autoencoder train`` command: the first stage of latent diffusion.

Its flags are ``train``'s shared ones (data, optimisation, run folder) plus the autoencoder's
preset and β; ``--resume`` continues a run exactly, as for ``train``. At the end it reports the
reconstruction error and the latents' std, whose inverse is the scale factor
``train --latent`` multiplies the latents by.
"""
from __future__ import annotations

import argparse
import dataclasses

from ..autoencoder import PRESETS
from ..autoencoder_train import AutoencoderConfig, AutoencoderTrainer
from ..checkpoint import load_checkpoint
from ..outputs import Output, check_outputs
from . import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train"], metavar="train", help="train (or --resume) an autoencoder run")
    option = train.shared_options(parser, AutoencoderConfig())
    option("model", "--preset", choices=list(PRESETS), help="autoencoder size (kl-f4: 28×28×1 → 7×7×4)")
    option("model", "--kl-weight", type=float, metavar="BETA", help="β, the weight of the KL term per pixel")


def run(args) -> int:
    fields = {field.name for field in dataclasses.fields(AutoencoderConfig)}
    explicit = {name: value for name, value in vars(args).items() if name in fields}
    resume = getattr(args, "resume", None)
    checkpoint = load_checkpoint(resume) if resume else None
    if checkpoint is not None and checkpoint.config.get("kind") != "autoencoder":
        raise ValueError(f"--resume {resume}: {checkpoint.path} is a diffusion run; resume it with python -m minidiff train")
    config = AutoencoderConfig.from_checkpoint(checkpoint, **explicit) if checkpoint else AutoencoderConfig(**explicit)
    check_outputs([Output("--out", config.out)], inputs=[("--data-dir", config.data_dir)])
    trainer = AutoencoderTrainer(config, resume=checkpoint)
    path = trainer.fit()
    if trainer.world.is_root:
        std, mse = trainer.statistics if trainer.statistics is not None else trainer.measure()
        print(f"trained to step {trainer.step} in {trainer.elapsed_s:.0f} s; reconstruction MSE {mse:.4g} "
              f"(images in [-1, 1]); latent std {std:.4g}, scale factor {1 / std:.4g}; checkpoint {path}")
    return 0
