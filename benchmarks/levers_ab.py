"""A/B of one speed lever of the Winograd convolution, on and off alternated in one process so that a
change in the machine's load hits both alike, on the mnist U-Net: a training step (forward, loss,
backward) and a no-grad forward with frozen weights, as sampling runs it (timed after one forward
in the same frozen block, which transforms the filters).

Levers (issue 28, benchmarks/README.md):
  fusion        GroupNorm+SiLU applied by the conv's input transform (off: the fused GroupNorm+SiLU
                writes its output, the conv reads it)
  transposed-v  the backward's recomputed V written as Vᵀ, so ∂U = ∂M·Vᵀ is an "NN" GEMM (off: "NT")
  batch1-f4     F(4×4) at 28×28 for a batch of one when the filter transform is reused (off: F(2×2))

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/levers_ab.py fusion --batch 64 --rounds 15
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/levers_ab.py batch1-f4 --batch 1 --modes forward --rounds 150
"""
import argparse
import contextlib
import time
from unittest import mock

import numpy as np

from minidiff import backend, no_grad
from minidiff.backbones import build_backbone, model_config
from minidiff.functional import conv_fast, winograd
from minidiff.functional.fusion import absorb


def without_conv_fusion(x, name, *operands):
    return None if name == "conv" else absorb(x, name, *operands)


def tile_ignoring_reuse(n, ho, wo, filters_reused=False, chosen=conv_fast.winograd_tile):
    return chosen(n, ho, wo)


LEVERS = {
    "fusion": lambda: mock.patch.object(conv_fast, "absorb", without_conv_fusion),
    "transposed-v": lambda: mock.patch.object(winograd, "TRANSPOSED_V_FOR_FILTER_GRADIENT", False),
    "batch1-f4": lambda: mock.patch.object(conv_fast, "winograd_tile", tile_ignoring_reuse),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lever", choices=sorted(LEVERS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--modes", default="train,forward", help="comma-separated: train, forward")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.batch < 1 or args.rounds < 3 or not set(modes) <= {"train", "forward"}:
        parser.error("--batch ≥ 1, --rounds ≥ 3, --modes from train, forward")
    rng = np.random.default_rng(1)
    model = build_backbone("unet", model_config("unet", "mnist"), rng=rng)
    x, t = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32), rng.integers(0, 1000, args.batch)

    def train_step():
        start = time.perf_counter()
        model.zero_grad()
        (model(x, t) ** 2).mean().backward()
        return time.perf_counter() - start

    def forward():
        with no_grad(), model.frozen():
            model(x, t)  # transforms the filters once, as the first step of sampling does
            start = time.perf_counter()
            model(x, t).numpy()
            return time.perf_counter() - start

    steps = {"train": train_step, "forward": forward}
    variants = {"on": contextlib.nullcontext, "off": LEVERS[args.lever]}
    times = {(mode, name): [] for mode in modes for name in variants}
    with backend.performance_settings():
        for round_ in range(args.rounds + 1):  # the first round warms up, untimed
            for mode in modes:
                for name, variant in variants.items():
                    with variant():
                        elapsed = steps[mode]()
                    if round_:
                        times[mode, name].append(elapsed)
    for mode in modes:
        on, off = (np.median(times[mode, name]) for name in variants)
        print(f"{args.lever} {mode:7s} batch {args.batch}: on {1e3 * on:.2f} ms, off {1e3 * off:.2f} ms, "
              f"change {100 * (on / off - 1):+.1f} % (medians of {args.rounds} alternated rounds)")


if __name__ == "__main__":
    main()
