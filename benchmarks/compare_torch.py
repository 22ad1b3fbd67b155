"""Side-by-side ratios of minidiff to PyTorch on the reference U-Net, measured in one run.

For every size in ``--batches`` it alternates rounds of ``python -m minidiff bench`` and
``benchmarks/torch_unet.py`` (each a fresh process timing ``--steps`` steps), so that a change in
the machine's load hits both alike: a training step and a no-grad forward (batch 1: the forward
only, the latency of interactive sampling). ``--sample N`` adds sampling N digits with DDIM-50,
each side drawing them in the same batches (``minidiff sample``'s). Prints one JSON object per
batch size, and one for sampling: the median seconds of each side and the throughput ratio
minidiff / PyTorch, with the BLAS NumPy ran with (threadpoolctl: library, version, core type)
and the CPU (model name and vector extensions, so a figure says which machine kind made it).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python benchmarks/compare_torch.py --torch-python /path/to/venv-with-torch/bin/python \
        --batches 1,64,128,256 --sample 200 --rounds 5

``OPENBLAS_CORETYPE`` makes NumPy's OpenBLAS use an older core's kernels than the CPU has (some
development machines set it, with ``OPENBLAS_L2_SIZE``); a user's machine picks its own, so the
script warns when it is set. minidiff never imports torch; the PyTorch side runs in whichever
interpreter has it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_json(command) -> dict:
    """The first line of ``command``'s output, as JSON; its own last error line if it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        sys.exit(f"compare_torch.py: error: cannot run {command[0]}: {exc.strerror}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        sys.exit(f"compare_torch.py: error: {' '.join(command[:4])} … failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[0])


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def batch_list(text: str) -> list[int]:
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers like 1,64,256 ({exc})") from None


def steps_for(batch: int, steps: int) -> int:
    """Timed steps per round: at batch 1 at least 50, so that the median of a 10 ms forward is stable."""
    return max(steps, 50) if batch == 1 else steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True, help="a Python interpreter that can import torch")
    parser.add_argument("--batches", type=batch_list, default=[64], help="batch sizes, comma-separated (default: 64)")
    parser.add_argument("--sample", type=int, default=0, help="also time DDIM-50 sampling of this many digits (default: 0, off)")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2, help="PyTorch's thread count (minidiff uses the machine's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.sample < 0:
        parser.error(f"--sample must be at least 0, got {args.sample}")
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"compare_torch.py: warning: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} forces NumPy's OpenBLAS onto "
              "that core's kernels, not the ones this CPU would get; for figures a user would see, run with "
              "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`", file=sys.stderr)

    jobs = [(batch, ("forward",) if batch == 1 else ("train", "forward")) for batch in args.batches]
    if args.sample:
        jobs.append((args.sample, ("sample",)))
    seconds = {(job, side, mode): [] for job, (_, modes) in enumerate(jobs) for side in ("minidiff", "torch") for mode in modes}
    reports = {}
    for _ in range(args.rounds):
        for job, (batch, modes) in enumerate(jobs):
            sampling = modes == ("sample",)
            mode = modes[0] if len(modes) == 1 else "both"
            steps = ["--steps", str(1 if sampling else steps_for(batch, args.steps))]
            common = ["--batch", str(batch), "--device", args.device, "--mode", mode, *steps]
            ours = run_json([sys.executable, "-m", "minidiff", "bench", *common] + (["--warmup", "0"] if sampling else []))
            extra = ["--warmup", "0", "--sample-batch", str(ours["sample_batch"])] if sampling else []
            theirs = run_json([args.torch_python, str(HERE / "torch_unet.py"), "--threads", str(args.threads), *common, *extra])
            for m in modes:
                seconds[job, "minidiff", m].append(ours[f"{m}_step_s"])
                seconds[job, "torch", m].append(theirs[f"{m}_s" if m == "sample" else f"{m}_step_s"])
            reports[job] = {"batch": batch, "device": args.device, "rounds": args.rounds, "torch_version": theirs["version"],
                            "torch_threads": theirs["threads"], "blas": ours["blas"], "cpu": ours["cpu"]}
            if sampling:
                reports[job].update(digits=batch, sample_steps=ours["sample_steps"], sample_batch=ours["sample_batch"])
                del reports[job]["batch"]
            else:
                reports[job]["steps_per_round"] = steps_for(batch, args.steps)
            if "train_peak_memory_mib" in ours:
                reports[job]["minidiff_peak_train_memory_mib"] = ours["train_peak_memory_mib"]
    for job, (_, modes) in enumerate(jobs):
        report = reports[job]
        for mode in modes:
            ours_s, theirs_s = statistics.median(seconds[job, "minidiff", mode]), statistics.median(seconds[job, "torch", mode])
            key = "sample_s" if mode == "sample" else f"{mode}_step_s"
            report[key] = {"minidiff": ours_s, "torch": theirs_s}
            report[f"{mode}_throughput_ratio"] = round(theirs_s / ours_s, 3)  # minidiff images/s ÷ PyTorch images/s
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
