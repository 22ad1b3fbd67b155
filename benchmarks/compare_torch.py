"""Side-by-side ratio of minidiff to PyTorch on the reference U-Net, measured in one run.

Alternates rounds of ``python -m minidiff bench`` and ``benchmarks/torch_unet.py`` (each a fresh
process timing ``--steps`` steps) so that a change in the machine's load hits both alike, then
prints the median seconds of each and the throughput ratio minidiff / PyTorch as JSON.

    python benchmarks/compare_torch.py --torch-python /path/to/venv-with-torch/bin/python

minidiff never imports torch; the PyTorch side runs in whichever interpreter has it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_json(command) -> dict:
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True, help="a Python interpreter that can import torch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's thread count (minidiff uses the machine's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for name, value in (("--rounds", args.rounds), ("--steps", args.steps), ("--batch", args.batch)):
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    common = ["--steps", str(args.steps), "--batch", str(args.batch), "--device", args.device]
    seconds = {(side, mode): [] for side in ("minidiff", "torch") for mode in ("train", "forward")}
    for _ in range(args.rounds):
        ours = run_json([sys.executable, "-m", "minidiff", "bench", *common])
        theirs = run_json([args.torch_python, str(HERE / "torch_unet.py"), "--threads", str(args.threads), *common])
        for mode in ("train", "forward"):
            seconds["minidiff", mode].append(ours[f"{mode}_step_s"])
            seconds["torch", mode].append(theirs[f"{mode}_step_s"])
    report = {"batch": args.batch, "device": args.device, "rounds": args.rounds, "steps_per_round": args.steps,
              "torch_version": theirs["version"], "minidiff_peak_train_memory_mib": ours.get("train_peak_memory_mib")}
    for mode in ("train", "forward"):
        ours_s, theirs_s = statistics.median(seconds["minidiff", mode]), statistics.median(seconds["torch", mode])
        report[f"{mode}_step_s"] = {"minidiff": ours_s, "torch": theirs_s}
        report[f"{mode}_throughput_ratio"] = round(theirs_s / ours_s, 3)  # minidiff images/s ÷ PyTorch images/s
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
