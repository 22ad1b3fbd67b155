"""Does ``eval``'s yardstick rank what it should? ``python benchmarks/yardstick.py [--n 1000]``

Scores five sets of N images against the reference, as ``eval`` scores samples, each beside the
floor: real digits the classifier never saw (neither reference nor floor), the same digits lightly
blurred (3×3 box) or lightly noised (σ = 0.2), heavily noised (σ = 0.8), and uniform noise. A
yardstick that separates good from bad puts them in that order with gaps wider than the standard
errors, and the real digits at the floor (tests/test_metrics.py asserts both). Prints a markdown
table (docs/experiments.md, "The yardstick"); uses the cached classifier (trained first if absent).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from minidiff.metrics import evaluate_with_floor, feature_classifier, real_image_splits


def box_blur(images):
    """A 3×3 box blur, the edges repeated."""
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    return sum(padded[:, :, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9


def noised(images, sigma, rng):
    """Gaussian noise of standard deviation ``sigma``, clipped back to [−1, 1]."""
    return np.clip(images + sigma * rng.standard_normal(images.shape), -1, 1).astype(np.float32)


def image_sets(real, n: int, rng) -> dict:
    """The five sets, best first; the real digits are floor images past the first N (the floor's own)."""
    if 2 * n > len(real.floor):
        raise ValueError(f"--n {n}: the real set takes the floor images past the first N, so N is at most "
                         f"{len(real.floor) // 2}")
    others = real.floor[n:2 * n]
    return {"real digits": others, "blurred 3×3": box_blur(others).astype(np.float32),
            "noised σ = 0.2": noised(others, 0.2, rng), "noised σ = 0.8": noised(others, 0.8, rng),
            "uniform noise": rng.uniform(-1, 1, others.shape).astype(np.float32)}


def ranking(classifier, real, n: int = 1000, seed: int = 0) -> dict:
    """:func:`minidiff.metrics.evaluate_with_floor` of each of :func:`image_sets`, by name."""
    sets = image_sets(real, n, np.random.default_rng(seed))
    return {name: evaluate_with_floor(images, classifier, real) for name, images in sets.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    real = real_image_splits("mnist", args.data_dir)
    start = time.perf_counter()
    classifier = feature_classifier("mnist", args.data_dir, real=real, progress=True)
    print(f"classifier: held-out accuracy {classifier.accuracy:.4f} ({time.perf_counter() - start:.0f} s to load or "
          f"train); {real.source}\n")
    scores = ranking(classifier, real, args.n)
    floor = next(iter(scores.values()))["floor"]
    print("| N = %d | KID | FID | IS | precision | recall | confident |" % args.n)
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, s in [("floor", floor), *scores.items()]:
        print(f"| {name} | {s['kid']:.2f} ± {s['kid_se']:.2f} | {s['fid']:.2f} | {s['inception_score']:.2f} | "
              f"{s['precision']:.3f} | {s['recall']:.3f} | {s['confident']:.3f} |")


if __name__ == "__main__":
    main()
