"""A/B of Module.frozen() on the forward, alternated in one process so that a change in the machine's
load hits both alike: the mnist U-Net's no-grad forward with its weights writeable (each conv transforms
its filters, U = G g Gᵀ, at every call) against frozen (transformed once).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/frozen_ab.py --batch 1 --rounds 300
"""
import argparse
import time

import numpy as np

from minidiff import backend, no_grad
from minidiff.backbones import build_backbone, model_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    if args.batch < 1 or args.rounds < 11:
        parser.error("--batch must be at least 1 and --rounds at least 11")
    rng = np.random.default_rng(1)
    model = build_backbone("unet", model_config("unet", "mnist"), rng=rng)
    x, t = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32), np.full(args.batch, 500)
    times = {"writeable": [], "frozen": []}
    with backend.performance_settings(), no_grad():
        for _ in range(args.rounds):
            start = time.perf_counter()
            model(x, t).numpy()
            times["writeable"].append(time.perf_counter() - start)
            with model.frozen():
                model(x, t)  # transforms the filters once
                start = time.perf_counter()
                model(x, t).numpy()
                times["frozen"].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:9s} median {1e3 * np.median(values[10:]):.2f} ms over {args.rounds - 10} rounds, batch {args.batch}")


if __name__ == "__main__":
    main()
