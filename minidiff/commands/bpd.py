"""The ``python -m minidiff bpd`` command: a checkpoint in, one JSON line out -- the negative
log-likelihood bound of held-out real images in bits per dimension (Ho et al. 2020, Eq. 3;
as improved-diffusion's ``calc_bpd_loop``), with its standard error and the number of timesteps sampled.

With T = 1000 the full bound costs T model calls per image; ``--timesteps K`` evaluates the prior
and decoder terms exactly and K − 1 KL terms drawn uniformly without replacement per image
(:func:`minidiff.likelihood.bpd_estimate`), an unbiased estimate whose standard error over the
images includes the timestep sampling; K ≥ 2, since K = 1 would drop every KL term. Under
``mpirun`` the images are split across the ranks and the result printed once, by rank 0. ``--timesteps T`` is the full bound. ``--weighting
importance`` draws the KL terms from p_t ∝ √E[L_t²] of a pilot run instead (on
:data:`PILOT_IMAGES` images at K evenly spaced timesteps; Nichol & Dhariwal 2021's p_t), which
spends the K terms where the bound varies most. The images are the
floor images of ``eval`` (:func:`minidiff.metrics.real_image_splits`), which no classifier saw
(2,500 with MNIST's t10k alone); the diffusion model may have trained on them then, and the
output says so.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

from ..backend import check_device, to_device
from ..checkpoint import load_checkpoint, load_model
from ..diffusion import VARIANCES
from ..distributed import RowsOf, batch_shares, world
from ..likelihood import bpd_estimate, pilot_probabilities
from ..metrics import real_image_splits
from ..sample import ddpm_variance
from .sample import add_weights_arguments

BATCH = 100  # images per model call
DEFAULT_TIMESTEPS = 50
PILOT_IMAGES = 8  # images of the pilot run that sets the importance weights (floor images past --n)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint .npz or a run folder holding checkpoint.npz")
    parser.add_argument("--n", type=int, default=100, help="held-out images to score (default: %(default)s)")
    parser.add_argument("--timesteps", type=int, default=None, metavar="K",
                        help="terms of the bound evaluated per image, from 2 to T (T: every term) (default: "
                             f"{DEFAULT_TIMESTEPS}, or T if the chain is shorter)")
    parser.add_argument("--weighting", choices=("uniform", "importance"), default="uniform",
                        help="how the KL terms are drawn: uniformly without replacement, or from a pilot run's "
                             "p_t ∝ sqrt(E[L_t^2]) (default: %(default)s)")
    parser.add_argument("--variance", choices=VARIANCES, default=None,
                        help="reverse variance (default: learned for --learn-sigma checkpoints, else fixed_small)")
    add_weights_arguments(parser, "score")
    parser.add_argument("--data-dir", default=None, help="where the dataset is (default: the checkpoint's)")


def run(args) -> int:
    if args.n < 2:
        raise ValueError(f"--n must be at least 2 (for a standard error), got {args.n}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be an integer in [0, 2^63), got {args.seed}")
    if args.timesteps is not None and args.timesteps < 2:  # the decoder alone: every KL term dropped, a "bound" far too low
        raise ValueError(f"--timesteps must be at least 2 (the decoder term and at least one KL term), "
                         f"got {args.timesteps}")
    device = check_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    if "autoencoder" in checkpoint.config:
        raise ValueError(f"checkpoint {checkpoint.path} diffuses an autoencoder's latents; bpd bounds the likelihood "
                         "of pixels, which its variational bound does not reach through the decoder")
    model, schedule, config = load_model(checkpoint, ema=not args.no_ema, device=device)
    if config["objective"] != "ddpm":
        raise ValueError(f"bpd is the variational bound of the DDPM chain; it is not available for this "
                         f"--objective {config['objective']} checkpoint (its ODE likelihood would need Hutchinson's "
                         "trace estimator, which minidiff does not implement)")
    if args.timesteps is None:
        args.timesteps = min(DEFAULT_TIMESTEPS, schedule.T)
    if args.timesteps > schedule.T:
        raise ValueError(f"--timesteps {args.timesteps} is outside [2, {schedule.T}], the checkpoint's timesteps")
    variance = ddpm_variance(model, args.variance)
    real = real_image_splits(config.get("dataset", "mnist"), args.data_dir or config.get("data_dir"))
    if args.n > len(real.floor):
        raise ValueError(f"--n {args.n} is more than the {len(real.floor)} held-out images ({real.source})")
    denoiser = _denoiser(model)
    options = dict(prediction=config["prediction"], variance=variance)
    if args.weighting == "importance":
        if args.timesteps < 3:
            raise ValueError("--weighting importance needs --timesteps of at least 3 (a pilot grid of 2 or more)")
        pilot = to_device(real.floor[-PILOT_IMAGES:], device)  # disjoint from the --n scored images
        grid = np.round(np.linspace(1, schedule.T - 1, args.timesteps - 1)).astype(np.int64)
        # Every rank runs the (small) pilot itself, on the same draws, so all weight alike.
        options["probabilities"] = pilot_probabilities(denoiser, schedule, pilot, grid,
                                                       np.random.default_rng(args.seed), **options)
    # Under MPI each rank scores its share of the images and rank 0 gathers them, as sample and eval do;
    # batch k draws from (seed, k) for all its rows, so the result does not depend on the number of ranks.
    ranks = world()
    scores = [
        bpd_estimate(denoiser, schedule, to_device(real.floor[share.start:share.stop], device), args.timesteps,
                     RowsOf(np.random.default_rng((args.seed, k)), len(batch),
                            slice(share.start - batch.start, share.stop - batch.start)), **options)
        for k, batch, share in batch_shares(args.n, BATCH, ranks.rows(args.n))
    ]
    bpd = ranks.gather_rows(np.concatenate(scores) if scores else np.empty(0))
    if bpd is None:  # not rank 0
        return 0
    print(json.dumps({"bpd": float(bpd.mean()), "stderr": float(bpd.std(ddof=1) / math.sqrt(len(bpd))),
                      "n": len(bpd), "timesteps_sampled": args.timesteps, "weighting": args.weighting,
                      "T": schedule.T, "variance": variance,
                      "images": f"the first {len(bpd)} floor images", "real_images": real.source,
                      "checkpoint": str(checkpoint.path), "step": checkpoint.step}))
    return 0


def _denoiser(model):
    """The checkpoint's unconditional model as ``model(x_t, t)``; a class-conditional one is refused."""
    if model.num_classes is not None:
        raise ValueError("bpd scores unconditional models only; this checkpoint is class-conditional")
    from ..backbones import as_denoiser

    return as_denoiser(model)
