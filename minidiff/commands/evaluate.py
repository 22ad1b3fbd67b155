"""The ``python -m minidiff eval`` command: a checkpoint (or saved samples) in, one JSON line of
scores out -- FID, KID ± its standard error, Inception Score, precision/recall, the fraction read
confidently and the class histogram of :mod:`minidiff.metrics`, measured on the feature classifier
of the checkpoint's dataset -- and the same scores, on stderr, as lines beside their floors.

Samples are drawn with :func:`minidiff.sample.generate`, exactly as ``sample`` draws them, so
``eval --seed S`` scores the images that ``sample --seed S --n N`` shows with the same sampler.
eval's default sampler is DPM-Solver++ with 20 steps (``sample``'s is DDIM 50): on a trained MNIST
model it scored within 1 FID of DDIM 50 and kept the ranking of the recipes, in a third of the time
(docs/experiments.md). The reference is ``--n`` real images no classifier trained on, and ``"floor"``
holds the same scores for ``--n`` other such real images
(:func:`minidiff.metrics.real_image_splits`; ``"real_images"`` says which): at a given N, no sample
set is expected to beat it, so a score is read against its floor. ``--n`` is at most the number of
reference (and floor) images, 2,500 with MNIST's t10k alone; a larger one is refused before sampling.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..backend import check_device
from ..checkpoint import checkpoint_path, load_checkpoint, load_model
from ..latent import LatentSpace
from ..datasets import DATASETS
from ..distributed import world
from ..files import atomic_write
from ..metrics import (IMAGE_SHAPE, TRAIN_STEPS, check_sample_images, evaluate_with_floor, feature_classifier,
                       real_image_splits)
from ..outputs import Output, check_outputs
from ..sample import (ODE_SAMPLER_NAMES, class_labels, ddpm_variance, generate_on_ranks, refusing_non_finite,
                      sampler_steps)
from .editing import add_guidance_argument, check_guidance
from .sample import add_sampling_arguments, check_sampling_arguments, checkpoint_options, sampling_options

DEFAULT_N = 1000
MIN_N = 4  # precision/recall (k = 3) needs more than 3 samples, KID two jackknife groups of 2
SAMPLER = "dpm-solver++"  # 20 steps: the fastest that keeps the ranking (module docstring)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="a checkpoint .npz or a run folder holding checkpoint.npz (optional with --samples)")
    parser.add_argument("--samples", default=None,
                        help="score these samples (.npy, float32 in [-1, 1], from `sample --npy`) "
                             "instead of drawing new ones")
    parser.add_argument("--n", type=int, default=None,
                        help=f"samples to draw (default: {DEFAULT_N}), or with --samples how many of them to score, the first "
                             "N (default: all); as many real images are compared with, at most 2,500 with MNIST's "
                             "t10k alone")
    add_sampling_arguments(parser)
    parser.set_defaults(sampler=SAMPLER)
    add_guidance_argument(parser)
    parser.add_argument("--dataset", choices=list(DATASETS), default=None,
                        help="the real images and the classifier (default: the checkpoint's dataset, else mnist)")
    parser.add_argument("--data-dir", default=None,
                        help="where the dataset is (default: the checkpoint's, else the usual search)")
    parser.add_argument("--classifier-steps", type=int, default=TRAIN_STEPS,
                        help="training steps of the feature classifier, when it is not cached yet (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the scores to this file")


def run(args) -> int:
    if args.n is None and args.samples is None:
        args.n = DEFAULT_N
    if args.n is not None and args.n < MIN_N:
        raise ValueError(f"--n must be at least {MIN_N}, got {args.n}")
    check_sampling_arguments(args)
    check_guidance(args)
    if args.classifier_steps < 1:
        raise ValueError(f"--classifier-steps must be at least 1, got {args.classifier_steps}")
    if args.checkpoint is None and args.samples is None:
        raise ValueError("give a checkpoint (or run folder) to sample from, or --samples samples.npy")
    check_outputs([Output("--json", args.json, (".json",))],
                  inputs=[("the checkpoint", args.checkpoint and checkpoint_path(args.checkpoint)),
                          ("--samples", args.samples)])
    device = check_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint) if args.checkpoint else None
    config = checkpoint.config if checkpoint else {}
    dataset = args.dataset or config.get("dataset", "mnist")
    data_dir = args.data_dir or config.get("data_dir")

    # Everything that can refuse the job is decided before the samples are drawn: the data, --n against it.
    samples = _load_samples(args.samples) if args.samples else None
    real = real_image_splits(dataset, data_dir)
    if samples is not None and args.n is not None:
        if args.n > len(samples):
            raise ValueError(f"--n {args.n} asks for more than the {len(samples)} images --samples {args.samples} holds")
        samples = samples[:args.n]
    n = args.n if samples is None else len(samples)
    if n > real.max_n:
        asked = f"--samples {args.samples} holds {n} images," if args.samples else f"--n {n} is"
        raise ValueError(f"{asked} more than the {real.max_n} real images each of the reference and the floor "
                         f"holds ({real.source})")
    report = {"checkpoint": str(checkpoint.path), "step": checkpoint.step} if checkpoint else {}
    if args.samples:
        report["samples"] = args.samples
    else:
        samples, drawn_with = _draw(checkpoint, args, device)
        report.update(drawn_with)
    if not world().is_root:  # under MPI, rank 0 scores what the ranks drew (gathered there)
        return 0

    classifier = feature_classifier(dataset, data_dir, train_steps=args.classifier_steps, progress=True,
                                    real=real).to(device)
    report = {**evaluate_with_floor(samples, classifier, real, progress=True), "real_images": real.source,
              "dataset": dataset, **report}
    line = json.dumps(report)
    print(line)
    print(beside_floor(report), file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.json) as f:
            f.write((line + "\n").encode())
    return 0


def beside_floor(report: dict) -> str:
    """The scores of ``report`` as lines for a reader, each beside its floor."""
    floor = report["floor"]
    return "\n".join([
        f"N = {report['n']} samples against as many reference digits; floor: as many other real digits "
        f"(classifier accuracy {report['classifier_accuracy']:.4f})",
        f"FID        {report['fid']:8.2f}   floor {floor['fid']:8.2f}   (biased upwards at small N: read it against the floor)",
        f"KID        {report['kid']:8.2f} ± {report['kid_se']:.2f}   floor {floor['kid']:8.2f} ± {floor['kid_se']:.2f}",
        f"IS         {report['inception_score']:8.2f}   floor {floor['inception_score']:8.2f}",
        f"precision  {report['precision']:8.3f}   floor {floor['precision']:8.3f}",
        f"recall     {report['recall']:8.3f}   floor {floor['recall']:8.3f}",
        f"confident  {report['confident']:8.3f}   floor {floor['confident']:8.3f}   (top probability >= 0.9)",
    ])


def _draw(checkpoint, args, device):
    """``--n`` samples of the checkpoint's model, and the settings they were drawn with."""
    model, schedule, config = load_model(checkpoint, ema=not args.no_ema, device=device)
    space = LatentSpace.of_checkpoint(checkpoint, device)  # a latent run's samples are decoded
    channels, size, _ = space.image_shape if space else (model.config["in_channels"], model.config["image_size"], None)
    if (channels, size, size) != IMAGE_SHAPE:
        raise ValueError(f"checkpoint {checkpoint.path} makes {channels}-channel {size}×{size} images; "
                         "eval scores 1-channel 28×28 digits only")
    check_guidance(args, model)
    drawn_as = checkpoint_options(args, config)
    num_steps = sampler_steps(args.sampler, args.steps, schedule.T)
    options = {**sampling_options(args), "guidance": args.guidance}
    with refusing_non_finite(checkpoint):
        samples = generate_on_ranks(model, schedule, args.n, args.sampler, num_steps,
                                    labels=class_labels(args.n, model.num_classes), progress=True,
                                    decode=space and space.decode, **drawn_as, **options)
    ode_options = options.pop("ode_options")
    drawn_with = {"sampler": args.sampler, "steps": num_steps, "ema": not args.no_ema, "objective": config["objective"],
                  **options}
    if args.sampler == "ddpm":
        drawn_with["variance"] = ddpm_variance(model, args.variance)
    if args.sampler in ODE_SAMPLER_NAMES:
        drawn_with["ode"] = {key: value for key, value in dataclasses.asdict(ode_options).items()
                             if math.isfinite(value)}
    return samples, drawn_with


def _load_samples(path) -> np.ndarray:
    """The array saved by ``sample --npy``, refused in one line unless it is (N, 1, 28, 28)."""
    try:
        samples = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--samples {path}: cannot read it as .npy ({exc})") from exc
    if not isinstance(samples, np.ndarray):
        raise ValueError(f"--samples {path} is an .npz archive; expected the .npy of `sample --npy`")
    check_sample_images(samples, f"--samples {path}")
    if len(samples) < MIN_N:
        raise ValueError(f"--samples {path} holds {len(samples)} images; at least {MIN_N} are needed")
    return samples
