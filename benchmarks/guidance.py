"""Classifier-free guidance scale against sample quality: for each w, KID and FID (and IS, precision,
recall, each beside its floor) in the feature classifier of ``python -m minidiff eval``, and the fraction of samples
that classifier assigns to the digit they were asked for.

    python benchmarks/guidance.py runs/cond --n 500 --guidance 0 1 2 4 8 --grids docs

Draws ``--n`` samples per w with labels 0, 1, …, 9, 0, … (as ``eval`` labels a conditional
checkpoint), the same seed for every w, so the rows differ by w alone; compares them with the
reference images, beside the floor, as ``eval`` does. Prints a Markdown table and
one JSON line per w; ``--grids DIR`` also writes ``DIR/guidance_w<W>.png``: the first 80
samples, one digit per column.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from minidiff.checkpoint import load_checkpoint, load_model
from minidiff.images import save_image_grid
from minidiff.metrics import evaluate_with_floor, feature_classifier, real_image_splits
from minidiff.sample import generate, sampler_steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a run folder (or checkpoint .npz) trained with --num-classes and --p-uncond")
    parser.add_argument("--n", type=int, default=500, help="samples per guidance weight (default: %(default)s)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0, 1, 2, 4, 8], help="the weights w")
    parser.add_argument("--sampler", default="dpm-solver++", help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=None, help="default: the sampler's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grids", default=None, help="folder for one PNG grid per w")
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    model, schedule, config = load_model(checkpoint)
    if model.null_label is None:
        sys.exit(f"{checkpoint.path} has no null class: train it with --num-classes K --p-uncond P")
    real = real_image_splits(config["dataset"], config.get("data_dir"))
    classifier = feature_classifier(config["dataset"], config.get("data_dir"), progress=True, real=real)
    labels = np.arange(args.n) % model.num_classes
    steps = sampler_steps(args.sampler, args.steps, schedule.T)
    print(f"{checkpoint.path} (step {checkpoint.step}), {args.sampler} {steps} steps, n = {args.n} per w, "
          f"seed {args.seed}", file=sys.stderr)
    rows = []
    for w in args.guidance:
        start = time.perf_counter()
        samples = generate(model, schedule, args.n, args.sampler, steps, seed=args.seed, labels=labels,
                           prediction=config["prediction"], guidance=w, progress=True)
        scores = evaluate_with_floor(samples, classifier, real)
        _, probs = classifier.embed(samples)
        scores.update(guidance=w, class_accuracy=float(np.mean(probs.argmax(axis=1) == labels)),
                      sampling_s=round(time.perf_counter() - start, 1))
        print(json.dumps(scores), flush=True)
        rows.append(scores)
        if args.grids:
            save_image_grid(samples[:80], Path(args.grids) / f"guidance_w{w:g}.png", nrow=model.num_classes)
    floor = rows[0]["floor"]
    print("\n| w | KID | FID | class accuracy | confident | Inception Score | precision | recall |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for w, r in [("floor", {**floor, "class_accuracy": classifier.accuracy}), *((f"{r['guidance']:g}", r) for r in rows)]:
        print(f"| {w} | {r['kid']:.2f} ± {r['kid_se']:.2f} | {r['fid']:.1f} | {r['class_accuracy']:.3f} | "
              f"{r['confident']:.3f} | {r['inception_score']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
