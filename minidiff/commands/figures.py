"""The ``python -m minidiff figures RUN`` command: two pictures of a trained model at work.

- ``trajectory.png``: the denoising strip — for a few samples, x_t and the model's x̂₀ at 8
  points of a DDIM chain (Heun's for edm and flow checkpoints), noise on the left, digit on the right;
- ``spectrum.png``: the spectral view (:mod:`minidiff.spectrum`): per frequency band, when the
  forward process drowns the data under the linear and the cosine schedule, and how the model's
  x̂₀ settles band by band along the reverse chain (its correlation with the final sample, per
  band) — coarse layout first, detail last.

The spectrum needs matplotlib (``pip install 'minidiff[plot]'``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..backend import check_device
from ..checkpoint import checkpoint_path, load_checkpoint, load_model
from ..datasets import load_dataset
from ..distributed import world
from ..files import atomic_write
from ..objectives import DEFAULT_SAMPLER
from ..outputs import Output, check_outputs
from ..plot import MISSING, pyplot
from ..sample import TrajectoryRecorder, generate, refusing_non_finite, sampler_steps
from ..schedule import schedule_by_name
from ..spectrum import band_correlation, band_crossings, forward_snr_per_band, radial_power_spectrum

REAL_IMAGES = 2000  # enough for a smooth data spectrum
FIGURES = ("trajectory.png", "spectrum.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint .npz or a run folder holding checkpoint.npz")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the run folder)")
    parser.add_argument("--n", type=int, default=64, help="samples whose x̂₀ spectra are averaged (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="DDIM steps, Heun's for edm and flow checkpoints (default: 50 for DDIM, or T if the chain "
                             "is shorter; 18 for Heun)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--data-dir", default=None, help="the real images (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")


def run(args) -> int:
    if not 2 <= args.n <= 10_000:
        raise ValueError(f"--n must be between 2 and 10,000, got {args.n}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be an integer in [0, 2^63), got {args.seed}")
    folder = args.out if args.out is not None else checkpoint_path(args.checkpoint).parent
    out = Path(folder)
    check_outputs([Output("--out", folder), *(Output("--out", out / name, (".png",)) for name in FIGURES)],
                  inputs=[("the checkpoint", checkpoint_path(args.checkpoint))])
    checkpoint = load_checkpoint(args.checkpoint)
    if "autoencoder" in checkpoint.config:
        raise ValueError(f"checkpoint {checkpoint.path} diffuses an autoencoder's latents; figures draws pixel-space "
                         "trajectories and spectra only")
    model, schedule, config = load_model(checkpoint, device=check_device(args.device))
    if not world().is_root:  # under mpirun, one picture is drawn, once: rank 0's (every rank checked the flags)
        return 0
    sampler = DEFAULT_SAMPLER[config["objective"]]
    steps = sampler_steps(sampler, args.steps, schedule.T)  # refuses a count outside [1, T]
    # The real images before any sampling or writing, so that a bad --data-dir leaves nothing behind.
    real, _ = load_dataset(config.get("dataset", "mnist"), "auto", args.data_dir or config.get("data_dir"))
    try:
        plt = pyplot()
    except ImportError:
        raise ValueError(MISSING) from None

    recorder = TrajectoryRecorder(steps)
    x0_hats = []  # (steps, n, C, H, W): every step's x̂₀, for the spectra

    def record(index, t, x_t, x0_hat):
        recorder(index, t, x_t, x0_hat)
        x0_hats.append((t, np.asarray(x0_hat, dtype=np.float32)))

    labels = np.arange(args.n) % model.num_classes if model.num_classes else None
    with refusing_non_finite(checkpoint):
        generate(model, schedule, args.n, sampler, steps, seed=args.seed, labels=labels,
                 prediction=config["prediction"], objective=config["objective"],
                 sigma_data=config.get("sigma_data"), callback=record, progress=True)
    out.mkdir(parents=True, exist_ok=True)  # after sampling: a refused checkpoint leaves no folder behind
    written = [recorder.save(out / FIGURES[0])]
    level = "σ" if config["objective"] in ("edm", "consistency") else "t"  # the noise level a step reports
    written.append(_spectrum_figure(plt, real[:REAL_IMAGES], x0_hats, schedule.T, out / FIGURES[1], level))
    print(f"figures of {checkpoint.path} (step {checkpoint.step}): " + ", ".join(map(str, written)))
    return 0


def _spectrum_figure(plt, real, x0_hats, T: int, path: Path, level: str = "t") -> Path:
    data_spectrum = radial_power_spectrum(real)  # (bands,)
    bands = np.arange(len(data_spectrum))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    for ax, name in zip(axes[:2], ("linear", "cosine")):
        schedule = schedule_by_name(name, T)
        snr = forward_snr_per_band(schedule, data_spectrum)  # (T, bands)
        image = ax.imshow(np.log10(snr).T, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-4, vmax=4,
                          extent=(0, T, -0.5, bands[-1] + 0.5))
        ax.plot(band_crossings(snr), bands, "k-", lw=2, label="SNR = 1")
        ax.set(title=f"forward, {name} schedule: SNR_t(f) per band", xlabel="t", ylabel="frequency band f (cycles/image)")
        ax.legend(loc="upper right")
    fig.colorbar(image, ax=axes[:2], shrink=0.9, label="log₁₀ SNR (red: signal above the noise)")

    final = x0_hats[-1][1]
    chosen = np.unique(np.linspace(0, len(x0_hats) - 1, 8).round().astype(int))
    colours = plt.cm.viridis(np.linspace(0, 1, len(chosen)))
    for colour, index in zip(colours, chosen):
        t, x0_hat = x0_hats[index]
        axes[2].plot(bands, band_correlation(x0_hat, final), color=colour, marker=".", label=f"{level} = {t:.3g}")
    axes[2].set_ylim(top=1.05)
    axes[2].set(title="reverse: x̂₀_t against the final sample, per band",
                xlabel="frequency band f (cycles/image)", ylabel="correlation (1: settled)")
    axes[2].legend(fontsize=8, loc="lower left")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path
