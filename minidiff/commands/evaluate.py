"""The ``python -m minidiff eval`` command: a checkpoint (or saved samples) in, one JSON line of
scores out — FID, Inception Score, precision/recall and the class histogram of
:mod:`minidiff.metrics`, measured on the feature classifier of the checkpoint's dataset.

Samples are drawn with :func:`minidiff.sample.generate`, exactly as ``sample`` draws them, so
``eval --seed S`` scores the images that ``sample --seed S --n N`` shows. The reference is ``--n``
real images of the test split, and ``"floor"`` holds the same scores for ``--n`` other held-out
real images (:func:`minidiff.metrics.real_image_splits`; ``"real_images"`` says which): at a
given N, no sample set is expected to beat it, so a score is read against its floor.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..backend import check_device
from ..checkpoint import checkpoint_path, load_checkpoint, load_model
from ..latent import LatentSpace
from ..datasets import DATASETS
from ..distributed import world
from ..files import atomic_write
from ..outputs import Output, check_outputs
from ..metrics import (IMAGE_SHAPE, TRAIN_STEPS, check_sample_images, evaluate_samples, feature_classifier,
                       real_image_splits)
from ..sample import class_labels, ddpm_variance, generate_on_ranks, sampler_steps
from .sample import add_sampling_arguments, check_sampling_arguments, sampling_options

MIN_N = 4  # precision/recall (k = 3) needs more than 3 samples, FID at least 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="a checkpoint .npz or a run folder holding checkpoint.npz (optional with --samples)")
    parser.add_argument("--samples", default=None,
                        help="score these samples (.npy, float32 in [-1, 1], from `sample --npy`) "
                             "instead of drawing new ones")
    parser.add_argument("--n", type=int, default=1000,
                        help="samples to draw; as many real images are compared with (default: %(default)s)")
    add_sampling_arguments(parser)
    parser.add_argument("--dataset", choices=list(DATASETS), default=None,
                        help="the real images and the classifier (default: the checkpoint's dataset, else mnist)")
    parser.add_argument("--data-dir", default=None,
                        help="where the dataset is (default: the checkpoint's, else the usual search)")
    parser.add_argument("--classifier-steps", type=int, default=TRAIN_STEPS,
                        help="training steps of the feature classifier, when it is not cached yet (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the scores to this file")


def run(args) -> int:
    if args.n < MIN_N:
        raise ValueError(f"--n must be at least {MIN_N}, got {args.n}")
    check_sampling_arguments(args)
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
    n = args.n if samples is None else len(samples)
    if n > min(len(real.reference), len(real.floor)):
        raise ValueError(f"--n {n} is more than the {min(len(real.reference), len(real.floor))} real images "
                         f"each of the reference and the floor has ({real.source})")
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
    scores = evaluate_samples(samples, classifier, real.reference[:n], progress=True)
    floor = evaluate_samples(real.floor[:n], classifier, real.reference[:n])
    floor = {key: floor[key] for key in ("fid", "inception_score", "precision", "recall")}
    report = {**scores, "floor": floor, "real_images": real.source, "dataset": dataset, **report}
    line = json.dumps(report)
    print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.json) as f:
            f.write((line + "\n").encode())
    return 0


def _draw(checkpoint, args, device):
    """``--n`` samples of the checkpoint's model, and the settings they were drawn with."""
    model, schedule, config = load_model(checkpoint, ema=not args.no_ema, device=device)
    space = LatentSpace.of_checkpoint(checkpoint, device)  # a latent run's samples are decoded
    channels, size, _ = space.image_shape if space else (model.config["in_channels"], model.config["image_size"], None)
    if (channels, size, size) != IMAGE_SHAPE:
        raise ValueError(f"checkpoint {checkpoint.path} makes {channels}-channel {size}×{size} images; "
                         "eval scores 1-channel 28×28 digits only")
    num_steps = sampler_steps(args.sampler, args.steps, schedule.T)
    options = sampling_options(args)
    samples = generate_on_ranks(model, schedule, args.n, args.sampler, num_steps,
                                labels=class_labels(args.n, model.num_classes), prediction=config["prediction"],
                                progress=True, decode=space and space.decode, **options)
    drawn_with = {"sampler": args.sampler, "steps": num_steps, "ema": not args.no_ema, **options}
    if args.sampler == "ddpm":
        drawn_with["variance"] = ddpm_variance(model, args.variance)
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
