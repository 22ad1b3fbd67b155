"""Side by side across checkouts: `minidiff bench` of each checkout in turn, round after round, in fresh
processes (two builds cannot share one), so that a change in the machine's load hits all alike; medians.

Each checkout needs its compiled kernels in place (for a worktree: `pip wheel --no-deps -w W DIR`, then
unzip W's `minidiff/_C*.so` into DIR/minidiff). Run it under the BLAS settings a user's machine has:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ab_checkouts.py --rounds 9 --batch 64 \\
        before=/path/to/old/checkout after=.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", metavar="NAME=DIR", help="the first is the baseline")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mode", choices=("train", "forward", "both"), default="both")
    args = parser.parse_args()
    if any("=" not in c for c in args.checkouts) or args.rounds < 1 or args.batch < 1:
        parser.error("checkouts as NAME=DIR, --rounds and --batch at least 1")
    checkouts = dict(c.split("=", 1) for c in args.checkouts)
    for name, folder in checkouts.items():
        if not os.path.isdir(os.path.join(folder, "minidiff")):
            parser.error(f"{name}={folder}: no minidiff package in that folder")
    steps = "3" if args.batch > 8 else "60"
    # each checkout runs from its own folder: `python -m` puts the working directory first on sys.path, so run
    # from elsewhere every checkout would import the minidiff found there instead of its own
    runs = {name: dict(env=dict(os.environ, PYTHONPATH=os.path.abspath(folder)), cwd=os.path.abspath(folder))
            for name, folder in checkouts.items()}
    for name, folder in checkouts.items():
        where = subprocess.run([sys.executable, "-c", "import minidiff.backend as b; print(b.extension().__file__)"],
                               capture_output=True, text=True, **runs[name]).stdout.strip()
        if not where.startswith(os.path.abspath(folder) + os.sep):
            parser.error(f"{name}={folder}: its minidiff with compiled kernels is not what loads there (got {where or 'none'})")
    times = {name: {} for name in checkouts}
    for _ in range(args.rounds):
        for name in checkouts:
            out = subprocess.run([sys.executable, "-m", "minidiff", "bench", "--batch", str(args.batch), "--mode", args.mode,
                                  "--steps", steps], capture_output=True, text=True, check=True, **runs[name]).stdout
            record = json.loads(out.strip().splitlines()[0])
            for key in ("train_step_s", "forward_step_s"):
                if key in record:
                    times[name].setdefault(key, []).append(record[key])
    baseline = next(iter(checkouts))
    print(json.dumps({"cpu": record.get("cpu"), "batch": args.batch, "rounds": args.rounds}))
    for key in times[baseline]:
        base = statistics.median(times[baseline][key])
        for name in checkouts:
            median = statistics.median(times[name][key])
            print(f"{key:15s} {name:10s} {1e3 * median:9.2f} ms  {100 * (median / base - 1):+6.1f} % against {baseline}")


if __name__ == "__main__":
    main()
