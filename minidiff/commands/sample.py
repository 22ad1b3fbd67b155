"""The ``python -m minidiff sample`` command: a checkpoint in, a PNG grid (and optionally .npy and a
trajectory picture) out."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..backend import check_device
from ..checkpoint import checkpoint_path, load_checkpoint, load_model
from ..latent import LatentSpace
from ..diffusion import VARIANCES
from ..distributed import world
from ..images import save_image_grid
from ..objectives import DEFAULT_SAMPLER, OdeOptions
from ..objectives import edm
from ..outputs import Output, check_outputs
from ..sample import (GRID_SCALE, SAMPLERS, TrajectoryRecorder, generate_on_ranks, refusing_non_finite,
                      sampler_steps, save_npy)
from ..schedule import SPACINGS
from . import editing


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """How samples are drawn: the flags ``sample`` and ``eval`` share, so ``eval --seed S`` scores
    what ``sample --seed S`` shows."""
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="default: ddim for --objective ddpm checkpoints, heun for edm and flow ones; heun and "
                             "euler sample every objective (ddpm through the VP bridge), midpoint flow models")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default: the full chain for ddpm, reverse-sde and pc, 50 for ddim, "
                             "pf-ode and euler, 20 for dpm-solver++, 18 for heun, 25 for midpoint)")
    parser.add_argument("--eta", type=float, default=0.0,
                        help="DDIM noise scale η: 0 deterministic, 1 DDPM-like (default: %(default)s)")
    parser.add_argument("--spacing", choices=SPACINGS, default=None,
                        help="which of the T timesteps the --steps are (default: uniform; a distilled student's own)")
    parser.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    parser.add_argument("--dynamic-threshold", type=float, default=None, metavar="P",
                        help="dynamic thresholding of the predicted x0 at percentile P in (0, 1] (Imagen), "
                             "instead of clipping")
    parser.add_argument("--variance", choices=VARIANCES, default=None,
                        help="DDPM's reverse variance (default: learned for --learn-sigma checkpoints, else fixed_small)")
    ode = parser.add_argument_group("the ODE samplers (heun, euler, midpoint)")
    ode.add_argument("--sigma-min", type=float, default=edm.SIGMA_MIN,
                     help="EDM's smallest noise level (Karras et al. 2022, Eq. 5) (default: %(default)s)")
    ode.add_argument("--sigma-max", type=float, default=edm.SIGMA_MAX,
                     help="EDM's largest noise level (default: %(default)s)")
    ode.add_argument("--rho", type=float, default=edm.RHO, help="EDM's grid exponent ρ (default: %(default)s)")
    ode.add_argument("--s-churn", type=float, default=0.0,
                     help="EDM's stochastic churn S_churn (Algorithm 2); 0 is the deterministic ODE "
                          "(default: %(default)s)")
    ode.add_argument("--s-tmin", type=float, default=0.0, help="churn only at σ >= S_tmin (default: %(default)s)")
    ode.add_argument("--s-tmax", type=float, default=math.inf, help="churn only at σ <= S_tmax (default: %(default)s)")
    ode.add_argument("--s-noise", type=float, default=1.0,
                     help="scale of the churn's noise S_noise (default: %(default)s)")
    ode.add_argument("--time-shift", type=float, default=1.0,
                     help="flow models: the time shift s·t/(1 + (s-1)·t) of Stable Diffusion 3 "
                          "(default: %(default)s)")
    add_weights_arguments(parser, "sample with")


def add_weights_arguments(parser: argparse.ArgumentParser, use: str) -> None:
    """``--seed``, ``--no-ema`` and ``--device``: which weights run where (``sample``, ``eval``, ``bpd``)."""
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--no-ema", action="store_true", help=f"{use} the live weights, not their EMA")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


MAX_N = 100_000  # drawn 500 at a time, but returned (and gridded) as one array


def check_sampling_arguments(args) -> None:
    """Refuse flag values no sampler can use, naming the flag (shared by ``sample`` and ``eval``)."""
    if args.n is not None and not 1 <= args.n <= MAX_N:  # eval --samples leaves --n unset: all of them
        raise ValueError(f"--n must be between 1 and {MAX_N:,}, got {args.n}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be an integer in [0, 2^63), got {args.seed}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if not (math.isfinite(args.eta) and args.eta >= 0):
        raise ValueError(f"--eta must be a finite number >= 0, got {args.eta}")
    if args.eta and args.sampler not in (None, "ddim"):
        raise ValueError(f"--eta applies to --sampler ddim only, not {args.sampler}")
    if args.dynamic_threshold is not None and not 0 < args.dynamic_threshold <= 1:
        raise ValueError(f"--dynamic-threshold must be a percentile in (0, 1], got {args.dynamic_threshold}")
    if args.dynamic_threshold is not None and args.no_clip:
        raise ValueError("--dynamic-threshold and --no-clip contradict each other; give one of them")
    if args.variance is not None and args.sampler != "ddpm":
        raise ValueError(f"--variance applies to --sampler ddpm only, not {args.sampler}")
    OdeOptions.from_args(args).check()


def student_defaults(args, config: dict) -> None:
    """A distilled student samples by default on the steps it was distilled to, with its spacing
    (:mod:`minidiff.fewstep`); any other checkpoint on ``--steps`` and uniform spacing."""
    record = config.get("distill") or {}
    if args.steps is None and args.sampler == "ddim":
        args.steps = record.get("to_steps")
    if args.spacing is None:
        args.spacing = record.get("spacing", "uniform")


def sampling_options(args) -> dict:
    """The keyword arguments of :func:`minidiff.sample.generate` that the shared flags set."""
    return dict(eta=args.eta, seed=args.seed, spacing=args.spacing, clip_denoised=not args.no_clip,
                dynamic_threshold=args.dynamic_threshold, variance=args.variance,
                ode_options=OdeOptions.from_args(args))


def checkpoint_options(args, config: dict) -> dict:
    """The keyword arguments of :func:`minidiff.sample.generate` that the checkpoint fixes (its prediction,
    objective and σ_data); ``args.sampler`` defaults to the objective's sampler here."""
    args.sampler = args.sampler or DEFAULT_SAMPLER[config["objective"]]
    student_defaults(args, config)
    return dict(prediction=config["prediction"], objective=config["objective"], sigma_data=config.get("sigma_data"))


def _check_latent_arguments(args) -> None:
    """Refuse the flags that work on pixels for a latent diffusion checkpoint, naming them."""
    pixel_flags = [flag for flag, value in (("--init", args.init), ("--interpolate-images", args.interpolate_images),
                                            ("--dynamic-threshold", args.dynamic_threshold),
                                            ("--trajectory", args.trajectory)) if value is not None]
    if pixel_flags:
        raise ValueError(f"{', '.join(pixel_flags)}: pixel-space only, but this checkpoint diffuses an autoencoder's "
                         "latents (sampling, guidance and --interpolate work)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint .npz or a run folder holding checkpoint.npz")
    parser.add_argument("--n", type=int, default=16, help="number of samples (default: %(default)s)")
    add_sampling_arguments(parser)
    editing.add_arguments(parser)
    parser.add_argument("--out", default=None, help="PNG grid of the samples (default: <run folder>/samples.png)")
    parser.add_argument("--npy", default=None, help="also save the samples, float32 in [-1, 1], as .npy")
    parser.add_argument("--trajectory", default=None,
                        help="also save a PNG of x_t and the predicted x0 at 8 steps for the first samples")


def run(args) -> int:
    check_sampling_arguments(args)
    editing.check_arguments(args)
    out = args.out if args.out is not None else checkpoint_path(args.checkpoint).parent / "samples.png"
    check_outputs([Output("--out", out, (".png",)), Output("--npy", args.npy, (".npy",)),
                   Output("--trajectory", args.trajectory, (".png",))],
                  inputs=[("the checkpoint", checkpoint_path(args.checkpoint)), *editing.input_files(args)])
    device = check_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    model, schedule, config = load_model(checkpoint, ema=not args.no_ema, device=device)
    space = LatentSpace.of_checkpoint(checkpoint, device)  # a latent run's samples are decoded
    if space is not None:
        _check_latent_arguments(args)
    drawn_as = checkpoint_options(args, config)
    num_steps = sampler_steps(args.sampler, args.steps, schedule.T)
    drawing = editing.plan(args, model, schedule, drawn_as, num_steps)
    if drawing.n > MAX_N:
        raise ValueError(f"--n {args.n} with --label all draws {drawing.n:,} images, more than {MAX_N:,}")
    # Under MPI each rank draws a share of the samples (the trajectory's come from rank 0's);
    # rank 0 writes them all.
    recorder = TrajectoryRecorder(drawing.steps) if args.trajectory and world().is_root else None
    with refusing_non_finite(checkpoint):
        samples = generate_on_ranks(model, schedule, drawing.n, args.sampler, num_steps, labels=drawing.labels,
                                    callback=recorder, progress=True, decode=space and space.decode, **drawn_as,
                                    **sampling_options(args), **drawing.options)
    if samples is None:
        return 0
    written = [save_image_grid(samples, out, nrow=drawing.nrow, scale=GRID_SCALE)]
    if args.npy:
        written.append(save_npy(samples, args.npy))
    if recorder is not None:
        written.append(recorder.save(args.trajectory))
    weights = "live" if args.no_ema else "EMA"
    print(f"{drawing.n} samples from {checkpoint.path} (step {checkpoint.step}, {weights} weights, "
          f"{args.sampler}, {num_steps} steps): " + ", ".join(map(str, written)))
    return 0
