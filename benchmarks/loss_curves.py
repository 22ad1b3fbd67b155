"""The training-loss curves of runs, from their ``log.jsonl``, as one PNG (docs/experiments.md):

    python benchmarks/loss_curves.py runs/A runs/B --out docs/loss_curves.png

Each curve is the logged loss (one line per ``--log-every`` steps) smoothed by a running mean of
10 lines, against the step; the losses of different targets (ε, v) and weightings are not on the
same scale, so each run gets its own panel. Needs ``pip install 'minidiff[plot]'``.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from minidiff.plot import pyplot


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders holding log.jsonl")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--columns", type=int, default=4, help="panels per row (default: 4)")
    args = parser.parse_args()
    if args.columns < 1:
        parser.error(f"--columns must be at least 1, got {args.columns}")
    plt = pyplot()
    columns = min(args.columns, len(args.runs))
    rows = -(-len(args.runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(args.runs):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, args.runs):
        lines = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]
        steps, losses = np.array([r["step"] for r in lines]), np.array([r["loss"] for r in lines])
        window = min(10, len(losses))
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps, losses, color="0.8", lw=0.8, label="logged")
        ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"mean of {window}")
        ax.set(title=Path(run).name, xlabel="step", ylabel="training loss", yscale="log")
        ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
