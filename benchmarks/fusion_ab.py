"""A/B of GroupNorm+SiLU fused into the Winograd convolution's input transform, alternated in one
process so that a change in the machine's load hits both alike: the mnist U-Net with the fusion
(``conv(silu(group_norm(x)))`` as one op) against without it (the fused GroupNorm+SiLU writes its
output, the convolution reads it), for a training step (forward and backward) and a no-grad forward
with frozen weights, as sampling runs it.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fusion_ab.py --batch 64 --rounds 15
"""
import argparse
import contextlib
import time
from unittest import mock

import numpy as np

from minidiff import backend, no_grad
from minidiff.backbones import build_backbone, model_config
from minidiff.functional import conv_fast
from minidiff.functional.fusion import absorb


def without_conv_fusion(x, name, *operands):
    return None if name == "conv" else absorb(x, name, *operands)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        model.zero_grad()
        (model(x, t) ** 2).mean().backward()

    def forward():
        with no_grad(), model.frozen():
            model(x, t).numpy()

    steps = {"train": train_step, "forward": forward}
    variants = {"fused": contextlib.nullcontext, "unfused": lambda: mock.patch.object(conv_fast, "absorb", without_conv_fusion)}
    times = {(mode, name): [] for mode in modes for name in variants}
    with backend.performance_settings():
        for round_ in range(args.rounds + 1):  # the first round warms up, untimed
            for mode in modes:
                for name, variant in variants.items():
                    with variant():
                        start = time.perf_counter()
                        steps[mode]()
                        if round_:
                            times[mode, name].append(time.perf_counter() - start)
    for mode in modes:
        fused, unfused = (np.median(times[mode, name]) for name in variants)
        print(f"{mode:7s} batch {args.batch}: fused {1e3 * fused:.2f} ms, unfused {1e3 * unfused:.2f} ms, "
              f"change {100 * (fused / unfused - 1):+.1f} % (medians of {args.rounds} alternated rounds)")


if __name__ == "__main__":
    main()
