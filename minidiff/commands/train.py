"""The ``python -m minidiff train`` command: flags in, a :class:`~minidiff.train.Trainer` run out."""
from __future__ import annotations

import argparse

from ..checkpoint import load_checkpoint
from ..datasets import DATASETS
from ..diffusion import PREDICTIONS
from ..objectives import OBJECTIVES
from ..objectives.flow import T_DISTRIBUTIONS
from ..optim import LR_SCHEDULES
from ..schedule import SCHEDULES
from ..config import CONFIG_FIELDS, TrainConfig
from ..outputs import Output, check_outputs
from ..train import Trainer
from ..backbones import PRESETS


def shared_options(parser: argparse.ArgumentParser, defaults, groups=("data", "model", "optimisation", "run")):
    """The flags of every run folder's :class:`~minidiff.config.RunConfig` (data, optimisation, run),
    added to ``parser``; returns ``option(group, *flags, help=…, **kwargs)`` to add the model's.

    Their defaults are left out of the namespace (SUPPRESS), so that ``run`` can tell the flags
    given from the ones not given: on --resume, only the former override the checkpoint's config.
    The defaults shown come from ``defaults``, the config class's instance."""
    groups = {name: parser.add_argument_group(name) for name in groups}

    def option(group, *flags, help, dest=None, **kwargs):
        dest = dest or flags[0].lstrip("-").replace("-", "_")
        if getattr(defaults, dest, None) not in (None, False):
            help += f" (default: {getattr(defaults, dest)})"
        groups[group].add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=help, **kwargs)

    option("data", "--dataset", choices=list(DATASETS), help="training images")
    option("data", "--data-dir", help="folder holding the IDX files (default: search $MINIDIFF_DATA/<dataset>, then the cache)")
    option("data", "--limit-data", type=int, metavar="N", help="train on the first N images only")
    option("optimisation", "--steps", type=int, help="train until this many optimiser steps")
    option("optimisation", "--batch-size", type=int, help="images per step")
    option("optimisation", "--lr", type=float, help="Adam learning rate after warm-up")
    option("optimisation", "--warmup-steps", type=int, help="linear learning-rate warm-up")
    option("optimisation", "--lr-schedule", choices=LR_SCHEDULES,
           help="after the warm-up: constant, or cosine decay to 0 at --steps")
    option("optimisation", "--grad-clip", type=float, help="clip the gradient norm; 0 turns it off")
    option("optimisation", "--ema-decay", type=float, help="EMA decay of the weights used for sampling")
    option("optimisation", "--seed", type=int, help="seeds initialisation, data order, t, noise and dropout")
    option("run", "--out", help="run folder")
    option("run", "--resume", help="continue the run in this folder (or from this checkpoint .npz); "
                                   "other flags (--steps, --lr, the cadences, --device, …) apply from there; "
                                   "a flag that would change the experiment (--seed, the model, the schedule, "
                                   "the batch) is refused")
    option("run", "--sample-every", type=int, metavar="N", help="preview grid every N steps; 0: never")
    option("run", "--sample-n", type=int, metavar="N", help="images in a preview grid")
    option("run", "--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps; 0: only at the end")
    option("run", "--log-every", type=int, metavar="N", help="log.jsonl line every N steps")
    option("run", "--device", help="cpu or cuda")
    return option


def add_arguments(parser: argparse.ArgumentParser, skip=()) -> None:
    """The train flags: the shared ones, the model's and the diffusion's, but for the groups and flags
    named in ``skip`` (``distill`` takes the rest)."""
    shared = shared_options(parser, TrainConfig(), tuple(
        name for name in ("data", "model", "objective", "diffusion", "optimisation", "run") if name not in skip))

    def option(group, *flags, help, dest=None, **kwargs):
        dest = dest or flags[0].lstrip("-").replace("-", "_")
        if group not in skip and dest not in skip:
            shared(group, *flags, help=help, dest=dest, **kwargs)

    option("data", "--hflip", action="store_true", help="random horizontal flips (off: digits are not symmetric)")
    option("model", "--backbone", choices=list(PRESETS), help="the network: the U-Net or the Diffusion Transformer")
    option("model", "--preset", choices=[name for presets in PRESETS.values() for name in presets],
           help="the network's size (default: mnist for unet, dit-s4 for dit)")
    option("model", "--patch-size", type=int, metavar="P", help="dit: patch size, dividing the image (default: the preset's)")
    option("model", "--latent", metavar="AE_RUN",
           help="diffuse the scaled latents of this autoencoder run (python -m minidiff autoencoder train), "
                "not the pixels; sample decodes them")
    option("model", "--dropout", type=float, help="dropout in the ResBlocks (default: the preset's)")
    option("model", "--num-classes", type=int, metavar="K", help="train a class-conditional model on K classes")
    option("model", "--p-uncond", type=float, metavar="P",
           help="drop labels to a learned null class with probability P, for classifier-free guidance "
                "(Ho & Salimans 2021 use 0.1 or 0.2)")
    option("model", "--conditional", action="store_true",
           help="same as --num-classes 10 (MNIST and Fashion-MNIST have 10 classes)")
    option("objective", "--objective", choices=OBJECTIVES,
           help="what the network learns: ddpm (the flags under 'diffusion'), edm (Karras et al. 2022), flow "
                "(flow matching, noise at t = 1) or consistency (improved consistency training, Song & Dhariwal "
                "2023: its grid doubles over --steps; sample it in 1 step)")
    option("objective", "--sigma-data", type=float, metavar="S",
           help="edm and consistency: the data's scale σ_data (default: the training images' root mean square)")
    option("objective", "--p-mean", type=float, help="edm: the mean of ln σ in training")
    option("objective", "--p-std", type=float, help="edm: the standard deviation of ln σ in training")
    option("objective", "--t-distribution", choices=T_DISTRIBUTIONS,
           help="flow: how training draws t (logit-normal: Esser et al. 2024)")
    option("diffusion", "--schedule", choices=SCHEDULES, help="noise schedule (linear and scaled_linear are scaled by 1000/T)")
    option("diffusion", "--zero-terminal-snr", action="store_true",
           help="rescale the schedule to end at alphas_cumprod = 0 (Lin et al. 2023); needs --prediction v or x0")
    option("diffusion", "--timesteps", type=int, metavar="T", help="length of the diffusion chain")
    option("diffusion", "--prediction", choices=PREDICTIONS, help="what the network predicts")
    option("diffusion", "--min-snr-gamma", type=float, metavar="GAMMA", help="Min-SNR-γ loss weighting (Hang et al. 2023; they use 5), γ in [0.01, 1e4]")
    option("diffusion", "--learn-sigma", action="store_true",
           help="also learn the reverse variances, trained with L_hybrid (Nichol & Dhariwal 2021); "
                "sample --sampler ddpm then uses them"),
    option("run", "--sample-steps", type=int, metavar="N", help="DDIM steps for a preview grid")


def run(args) -> int:
    explicit = {name: value for name, value in vars(args).items() if name in CONFIG_FIELDS}
    if getattr(args, "conditional", False):
        if explicit.get("num_classes", 10) != 10:
            raise ValueError(f"--conditional means --num-classes 10, which contradicts --num-classes {args.num_classes}; "
                             "give one of them")
        explicit["num_classes"] = 10
    resume = getattr(args, "resume", None)
    checkpoint = load_checkpoint(resume) if resume else None
    if checkpoint and "distill" in checkpoint.config:  # its loss has a teacher that train knows nothing of
        raise ValueError(f"{checkpoint.path} is a distilled student; continue it with distill --resume")
    if checkpoint is not None and checkpoint.config.get("kind") == "autoencoder":
        raise ValueError(f"--resume {resume}: {checkpoint.path} is an autoencoder run; resume it with "
                         "python -m minidiff autoencoder train")
    config = TrainConfig.from_checkpoint(checkpoint, **explicit) if checkpoint else TrainConfig(**explicit)
    check_outputs([Output("--out", config.out)], inputs=[("--data-dir", config.data_dir), ("--latent", config.latent)])
    trainer = Trainer(config, resume=checkpoint)
    path = trainer.fit()  # on Ctrl-C it saves, says how to resume, and re-raises
    if trainer.world.is_root:  # one report for an MPI job
        print(f"trained to step {trainer.step} in {trainer.elapsed_s:.0f} s; checkpoint {path}")
    return 0
