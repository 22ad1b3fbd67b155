"""F(4×4, 3×3) where ``conv_fast.winograd_tile`` picks it, against F(2×2, 3×3) everywhere, on the
reference U-Net: the two alternate step by step in one process, so that a loaded machine slows
both alike. Prints, per mode, the median wall and CPU time (``time.process_time``: all threads
of this process, less sensitive than wall time to other processes on the cores) of each.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/winograd_tiles.py --batch 64 --rounds 7
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from minidiff import backend
from minidiff.bench import Benchmark
from minidiff.functional import conv_fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="timed steps of each variant and mode (default: 7)")
    parser.add_argument("--modes", default="train,forward", help="comma-separated: train, forward (default: both)")
    args = parser.parse_args()
    policies = {"f2x2_everywhere": lambda n, ho, wo, filters_reused=False: 2, "chosen": conv_fast.winograd_tile}
    modes = args.modes.split(",")
    with backend.performance_settings():
        bench = Benchmark("mnist", args.batch, "cpu", seed=0)
        times = {(policy, mode): ([], []) for policy in policies for mode in modes}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for mode in modes:
                step = bench.train_step if mode == "train" else bench.forward
                for policy, tile in policies.items():
                    conv_fast.winograd_tile = tile  # fast_conv2d looks it up at every call
                    wall, cpu = time.perf_counter(), time.process_time()
                    step()
                    if round_:
                        times[policy, mode][0].append(time.perf_counter() - wall)
                        times[policy, mode][1].append(time.process_time() - cpu)
        conv_fast.winograd_tile = policies["chosen"]
    for mode in modes:
        medians = {policy: [statistics.median(t) for t in times[policy, mode]] for policy in policies}
        base_wall, base_cpu = medians["f2x2_everywhere"]
        print(json.dumps({"batch": args.batch, "mode": mode, "rounds": args.rounds,
                          **{f"{policy}_{kind}_s": round(value, 4) for policy, (wall, cpu) in medians.items()
                             for kind, value in (("wall", wall), ("cpu", cpu))},
                          "chosen_wall_change": round(medians["chosen"][0] / base_wall - 1, 4),
                          "chosen_cpu_change": round(medians["chosen"][1] / base_cpu - 1, 4)}))


if __name__ == "__main__":
    main()
