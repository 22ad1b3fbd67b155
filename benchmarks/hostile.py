"""Hostile input against the command line, counted: ``python benchmarks/hostile.py [--verbose]``.

Each case is a command line (``python -m minidiff …``) given a bad flag, a bad file or a crafted
checkpoint, with the words its refusal must contain; or a call of the Python API with bad
arguments (refused by an exception whose one-line message holds the words); or an input that
must be accepted, with a test of the result. A case is

* ``refused cleanly``: exit status 2, one line ``minidiff <command>: error: …`` containing them
  (for a call: a ValueError or TypeError whose one-line message contains them);
* ``refused vaguely``: refused, but the line does not name the problem;
* ``traceback``: any other exception;
* ``silently accepted``: exit status 0 (a call returns) where a refusal was due;
* ``correct result`` / ``wrong result``: an input to accept, accepted, and its result right or wrong;
* ``lost``: the run folder's checkpoint no longer loads afterwards (checked after every case).

It needs the MNIST t10k set in ``../shared/data/mnist`` and takes about a minute; the faults of a
process being killed are covered by ``tests/test_faults.py`` (SIGINT and SIGKILL at every phase).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from minidiff.__main__ import main
from minidiff.checkpoint import load_checkpoint


def load_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def save_npz(flat, path):
    np.savez(path, **flat)  # plain NumPy, so this script also runs against older minidiff versions

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
TINY = ["--preset", "tiny", "--data-dir", str(MNIST), "--limit-data", "64", "--batch-size", "4", "--schedule",
        "cosine", "--timesteps", "20", "--sample-every", "0", "--log-every", "1"]


def crafted(run: Path, where: Path, name: str, **changes) -> str:
    """A copy of the run's checkpoint with entries replaced; ``config__<field>`` edits the JSON config."""
    flat = dict(load_npz(run / "checkpoint.npz"))
    config = json.loads(str(flat["config"]))
    for key, value in changes.items():
        if key.startswith("config__"):
            field = key[len("config__"):]
            if value is None:
                config.pop(field)
            else:
                config[field] = value
        else:
            flat[key] = value
    flat.setdefault("config", None)
    flat["config"] = np.array(json.dumps(config)) if "config" not in changes else changes["config"]
    path = where / f"{name}.npz"
    save_npz(flat, path)
    return str(path)


def cases(run: Path, tmp: Path) -> list[tuple[str, list[str], str]]:
    """(description, argv, words the refusal must contain)."""
    fresh = iter(range(10**6))

    def train(*flags):  # a new folder per case; a silently accepted run stays short
        return ["train", *TINY, "--out", str(tmp / f"new{next(fresh)}"), "--steps", "3", *flags]

    def objective_train(objective, *flags):  # train another objective, without TINY's DDPM chain
        chain = TINY.index("--schedule")
        return ["train", *TINY[:chain], *TINY[chain + 4:], "--objective", objective, "--out",
                str(tmp / f"new{next(fresh)}"), "--steps", "3", *flags]

    def bad(flag, *values):  # train with one bad value of one flag, each refusal naming the flag
        return [(f"train {flag} {value}", train(flag, value), flag) for value in values]

    (tmp / "afile").write_text("x")
    (tmp / "random.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp / "truncated.npz").write_bytes((run / "checkpoint.npz").read_bytes()[:4000])
    key = next(k for k in load_npz(run / "checkpoint.npz") if k.startswith("ema.shadow."))
    nan = crafted(run, tmp, "nan", **{key: np.full_like(load_npz(run / "checkpoint.npz")[key], np.nan)})
    # finite weights whose first convolution overflows: NaN images at the first sampler step
    overflow = crafted(run, tmp, "overflow", **{prefix + "input_blocks.0.0.weight": np.full_like(
        load_npz(run / "checkpoint.npz")[prefix + "input_blocks.0.0.weight"], 1e38) for prefix in ("model.", "ema.shadow.")})
    samples = {
        "s255": np.full((8, 1, 28, 28), 200.0, np.float32), "uint8": np.zeros((8, 1, 28, 28), np.uint8),
        "complex": np.zeros((8, 1, 28, 28), np.complex64), "bool": np.zeros((8, 1, 28, 28), bool),
        "nan": np.full((8, 1, 28, 28), np.nan, np.float32), "rgb": np.zeros((8, 3, 28, 28), np.float32),
    }
    for name, array in samples.items():
        np.save(tmp / f"{name}.npy", array)
    np.savez(tmp / "arch.npz", a=np.zeros(3))
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp / "digit.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp / "big.png")
    result = [
        *bad("--lr", "inf", "nan", "-1", "0", "abc"),
        *bad("--steps", "0", "-5", "1.5", "abc"),
        *bad("--batch-size", "0"),
        ("train --batch-size larger than the data", train("--batch-size", "1000"), "batch_size=1000"),
        *bad("--timesteps", "0", "abc", "100000000"),
        ("train --timesteps 1 (linear)", train("--schedule", "linear", "--timesteps", "1"), "--timesteps 1"),
        ("train --timesteps 10 (linear)", train("--schedule", "linear", "--timesteps", "10"), "--timesteps 10"),
        *bad("--ema-decay", "1", "-0.1", "nan"),
        *bad("--grad-clip", "-1", "inf"),
        *bad("--dropout", "1", "-0.5"),
        *bad("--min-snr-gamma", "0", "inf"),
        *bad("--warmup-steps", "-1"),
        *bad("--sample-every", "-1"),
        *bad("--checkpoint-every", "-1"),
        *bad("--log-every", "0"),
        *bad("--seed", "-1"),
        *bad("--limit-data", "0"),
        *bad("--num-classes", "0"),
        ("train --num-classes 5 --conditional", train("--num-classes", "5", "--conditional"), "--conditional"),
        ("train --out ''", ["train", *TINY, "--out", ""], "--out"),
        ("train --data-dir missing", train("--data-dir", str(tmp / "missing")), "missing"),
        ("train --data-dir a file", train("--data-dir", str(tmp / "afile")), "afile"),
        *bad("--dataset", "bogus"),
        *bad("--preset", "bogus"),
        *bad("--schedule", "bogus"),
        *bad("--prediction", "bogus"),
        ("train --device cuda (no CuPy)", train("--device", "cuda"), "cuda"),
        ("train --device tpu", train("--device", "tpu"), "tpu"),
        ("train --bogus-flag", train("--bogus-flag"), "--bogus-flag"),
        ("train into a folder holding a checkpoint", ["train", *TINY, "--out", str(run)], "--resume"),
        ("train --resume missing", ["train", "--resume", str(tmp / "missing")], "missing"),
        ("train --resume random bytes", ["train", "--resume", str(tmp / "random.npz")], "random.npz"),
        ("train --resume --seed 99", ["train", "--resume", str(run), "--seed", "99", "--steps", "9"], "--seed 99"),
        ("train --resume --preset mnist", ["train", "--resume", str(run), "--preset", "mnist", "--steps", "9"],
         "--preset mnist"),
        ("train --resume --steps 3 (at step 4)", ["train", "--resume", str(run), "--steps", "3"], "--steps 3"),
        ("train --resume NaN checkpoint", ["train", "--resume", nan, "--steps", "9"], "NaN"),
        ("train --resume config lr 'abc'",
         ["train", "--resume", crafted(run, tmp, "lrabc", config__lr="abc"), "--steps", "9"], "lr"),
        ("train --resume permutation of floats",
         ["train", "--resume", crafted(run, tmp, "perm", **{"batcher.permutation": np.arange(64.0)}), "--steps", "9"],
         "permutation"),
        ("train --resume position out of range",
         ["train", "--resume", crafted(run, tmp, "pos", **{"batcher.position": np.array(999)}), "--steps", "9"],
         "position"),
        *[(f"sample --n {v}", ["sample", str(run), "--n", v], "--n") for v in ("0", "-1", "1000000000", "abc")],
        ("sample --seed -1", ["sample", str(run), "--seed", "-1"], "--seed"),
        *[(f"sample --steps {v}", ["sample", str(run), "--steps", v], "--steps") for v in ("0", "100000")],
        *[(f"sample --eta {v}", ["sample", str(run), "--eta", v], "--eta") for v in ("-1", "nan")],
        ("sample --eta with ddpm", ["sample", str(run), "--eta", "0.5", "--sampler", "ddpm"], "--eta"),
        ("sample --label on an unconditional model", ["sample", str(run), "--label", "3"], "--label"),
        ("sample --sampler bogus", ["sample", str(run), "--sampler", "bogus"], "--sampler"),
        ("sample missing checkpoint", ["sample", str(tmp / "missing")], "missing"),
        ("sample random bytes", ["sample", str(tmp / "random.npz")], "random.npz"),
        ("sample truncated checkpoint", ["sample", str(tmp / "truncated.npz")], "truncated.npz"),
        ("sample NaN checkpoint", ["sample", nan, "--n", "2"], "NaN"),
        ("sample step as an array", ["sample", crafted(run, tmp, "steparr", step=np.arange(3)), "--n", "2"], "step"),
        ("sample config a JSON list", ["sample", crafted(run, tmp, "cfglist", config=np.array("[1, 2]")), "--n", "2"],
         "list"),
        ("sample config without prediction",
         ["sample", crafted(run, tmp, "nopred", config__prediction=None), "--n", "2"], "prediction"),
        ("sample config timesteps 'abc'",
         ["sample", crafted(run, tmp, "tabc", config__timesteps="abc"), "--n", "2"], "timesteps"),
        ("sample --device cuda (no CuPy)", ["sample", str(run), "--device", "cuda"], "cuda"),
        *[(f"eval --samples {name}", ["eval", "--samples", str(tmp / f"{name}.npy"), "--data-dir", str(MNIST)],
           f"{name}.npy") for name in samples],
        *bad("--p-uncond", "1", "-0.1", "nan"),
        ("train --p-uncond without --num-classes", train("--p-uncond", "0.1"), "--p-uncond"),
        ("sample --guidance on an unconditional model", ["sample", str(run), "--guidance", "2"], "--guidance"),
        ("sample --label all on an unconditional model", ["sample", str(run), "--label", "all"], "--label"),
        ("sample --init missing", ["sample", str(run), "--init", str(tmp / "missing.png")], "missing.png"),
        ("sample --init not an image", ["sample", str(run), "--init", str(tmp / "afile")], "afile"),
        *[(f"sample --strength {v}", ["sample", str(run), "--init", str(tmp / "digit.png"), "--strength", v], "--strength")
          for v in ("-0.1", "1.5", "nan")],
        ("sample --mask of another size",
         ["sample", str(run), "--init", str(tmp / "digit.png"), "--mask", str(tmp / "big.png")], "mask"),
        ("sample --interpolate with ddpm", ["sample", str(run), "--interpolate", "1", "2", "--sampler", "ddpm"],
         "--interpolate"),
        ("sample --spacing bogus", ["sample", str(run), "--spacing", "bogus"], "--spacing"),
        *[(f"sample --dynamic-threshold {v}", ["sample", str(run), "--dynamic-threshold", v], "--dynamic-threshold")
          for v in ("0", "1.5", "nan")],
        ("sample --variance learned without --learn-sigma", ["sample", str(run), "--sampler", "ddpm", "--variance",
                                                             "learned"], "--learn-sigma"),
        ("sample --variance with ddim", ["sample", str(run), "--variance", "fixed_large"], "variance"),
        ("train --zero-terminal-snr with eps", train("--zero-terminal-snr"), "--zero-terminal-snr"),
        *[(f"bpd --n {v}", ["bpd", str(run), "--n", v], "--n") for v in ("0", "-3")],
        *[(f"bpd --timesteps {v}", ["bpd", str(run), "--timesteps", v], "--timesteps") for v in ("0", "100000")],
        ("bpd --weighting bogus", ["bpd", str(run), "--weighting", "bogus"], "--weighting"),
        ("eval --samples an .npz", ["eval", "--samples", str(tmp / "arch.npz")], "arch.npz"),
        ("eval --samples missing", ["eval", "--samples", str(tmp / "missing.npy")], "missing.npy"),
        ("eval --n 1", ["eval", str(run), "--n", "1"], "--n"),
        ("eval --classifier-steps 0", ["eval", str(run), "--classifier-steps", "0"], "--classifier-steps"),
        ("eval with nothing to score", ["eval"], "checkpoint"),
        ("eval --n above the reference images", ["eval", str(run), "--n", "2501"], "--n 2501"),
        *[(f"{command} of finite weights making NaN images", [command, overflow, "--n", "4", "--steps", "5"],
           "non-finite images") for command in ("sample", "eval")],
        ("sample --sigma-max below --sigma-min", ["sample", str(run), "--sampler", "heun", "--sigma-max", "0.001"],
         "--sigma-max"),
        *[(f"sample --rho {v}", ["sample", str(run), "--sampler", "heun", "--rho", v], "--rho") for v in ("0", "-7")],
        ("train --objective edm --p-std -1", objective_train("edm", "--p-std", "-1"), "--p-std"),
        *[(f"sample --time-shift {v}", ["sample", str(run), "--sampler", "euler", "--time-shift", v], "--time-shift")
          for v in ("0", "-2")],
        ("sample an objective the checkpoint lacks", ["sample", crafted(run, tmp, "objective",
                                                                        config__objective="gan")], "objective"),
        ("sample --sampler midpoint (flow's) on a ddpm checkpoint", ["sample", str(run), "--sampler", "midpoint"],
         "--objective ddpm"),
        ("train --resume --objective flow", ["train", "--resume", str(run), "--objective", "flow", "--steps", "9"],
         "--objective flow"),
        *outputs_checked_first(run, tmp),
        *python_api_edges(),
        *image_inputs(run, tmp),
        *semantics(run, tmp, train),
    ]
    return result


def outputs_checked_first(run: Path, tmp: Path) -> list:
    """Every output path (and --data-dir, --n) checked before any work; the checkpoint never written over."""
    (tmp / "link.npy").symlink_to(run / "checkpoint.npz")
    dead = 2**22 + 12345  # above the default pid_max: a writer killed long ago
    stale = tmp / f".kept.png.{dead}.0123abcd.part"
    stale.write_bytes(b"half a picture")
    sample = ["sample", str(run), "--n", "2", "--steps", "2"]
    return [
        ("sample --npy RUN/checkpoint.npz", ["sample", str(run), "--npy", str(run / "checkpoint.npz")], "--npy"),
        ("sample --out RUN/checkpoint.npz", ["sample", str(run), "--out", str(run / "checkpoint.npz")], "--out"),
        ("sample --out RUN/samples_step4.png", ["sample", str(run), "--out", str(run / "samples_step4.png")],
         "run folder"),
        ("sample --npy a link to the checkpoint", ["sample", str(run), "--npy", str(tmp / "link.npy")], "checkpoint"),
        ("sample --out s.jpg", ["sample", str(run), "--out", str(tmp / "s.jpg")], "--out"),
        ("sample --out a folder", ["sample", str(run), "--out", str(tmp)], "--out"),
        ("sample --out ''", ["sample", str(run), "--out", ""], "--out"),
        ("sample --out and --trajectory the same", ["sample", str(run), "--out", str(tmp / "a.png"), "--trajectory",
                                                    str(tmp / "a.png")], "--out and --trajectory"),
        ("sample --out the --init image", ["sample", str(run), "--init", str(tmp / "digit.png"), "--out",
                                           str(tmp / "digit.png")], "--init"),
        ("sample --npy under a file", ["sample", str(run), "--npy", str(tmp / "afile" / "x.npy")], "afile"),
        ("sample --npy /proc/nope/x.npy", ["sample", str(run), "--npy", "/proc/nope/x.npy"], "--npy"),
        ("eval --json RUN/checkpoint.npz", ["eval", str(run), "--json", str(run / "checkpoint.npz")], "--json"),
        ("eval --json RUN/config.json", ["eval", str(run), "--json", str(run / "config.json")], "run folder"),
        ("eval --json /proc/nope/x.json", ["eval", str(run), "--json", "/proc/nope/x.json"], "--json"),
        ("eval --n 6000 (before sampling)", ["eval", str(run), "--n", "6000", "--data-dir", str(MNIST)], "--n 6000"),
        ("eval --data-dir missing (before sampling)", ["eval", str(run), "--data-dir", str(tmp / "missing")],
         "missing"),
        ("figures --data-dir missing (before drawing)", ["figures", str(run), "--out", str(tmp / "figs"),
                                                         "--data-dir", str(tmp / "missing")], "missing"),
        ("figures --out a file", ["figures", str(run), "--out", str(tmp / "afile")], "--out"),
        ("train --out a file", ["train", *TINY, "--out", str(tmp / "afile"), "--steps", "1"], "--out"),
        ("sample --sampler pf-ode --no-clip --npy: in [-1, 1], what eval scores",
         [*sample, "--sampler", "pf-ode", "--no-clip", "--out", str(tmp / "pf.png"), "--npy", str(tmp / "pf.npy")],
         lambda err: np.abs(np.load(tmp / "pf.npy")).max() <= 1.0),
        ("a killed write's .part file is removed by the next write of that output",
         [*sample, "--out", str(tmp / "kept.png")], lambda err: not stale.exists() and (tmp / "kept.png").exists()),
    ]


def python_api_edges() -> list:
    """The Python API refuses what would be silently wrong, in the caller's terms."""
    from minidiff.autograd import Tensor
    from minidiff.diffusion import q_sample, training_loss
    from minidiff.guidance import guided_denoiser
    from minidiff.likelihood import bpd_estimate
    from minidiff.sampling import ddim_sample, ddpm_sample
    from minidiff.schedule import NoiseSchedule
    from minidiff.testing import check_round_trips, schedules
    from minidiff.unet import UNet

    schedule, shape = NoiseSchedule.linear(10), (2, 1, 4, 4)
    x, t = np.random.default_rng(0).standard_normal(shape), np.array([3, 7])

    def returning(make):
        return lambda x_t, t: make(x_t)

    def zeros(x_t, t):
        return np.zeros_like(x_t)

    def nan(x_t, t):
        return np.full_like(x_t, np.nan)

    def ddim(model, **kwargs):
        return lambda: ddim_sample(model, schedule, shape, 3, **kwargs)

    conditional = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                       num_groups=4, image_size=4, num_classes=2, null_class=True, rng=np.random.default_rng(0))

    def float32_round_trips():
        for name in ("linear", "cosine", "sigmoid"):
            s = getattr(NoiseSchedule, name)(100)
            check_round_trips(s, x.astype(np.float32), np.arange(0, 100, 50), x.astype(np.float32))
        return True

    def one_step_schedules():
        from hypothesis import given, settings

        @settings(max_examples=30, database=None)
        @given(schedules(min_T=1, max_T=3))
        def draw(s):
            assert s.T >= 1

        draw()
        return True

    return [
        ("API q_sample with uint8 x0", lambda: q_sample(schedule, x.astype(np.uint8), t, x), "x0 has dtype uint8"),
        ("API training_loss with int x0", lambda: training_loss(lambda x_t, t: Tensor(np.zeros(x_t.shape)), schedule,
                                                                x.astype(int), np.random.default_rng(0)), "x0"),
        ("API ddim_sample with int x_T", ddim(zeros, x_T=np.zeros(shape, int)), "x_T has dtype"),
        ("API q_sample with a Tensor x0", lambda: q_sample(schedule, Tensor(x), t, x), "Tensor"),
        ("API q_sample with a list x0", lambda: q_sample(schedule, x.tolist(), t, x), "list"),
        ("API q_sample with t None", lambda: q_sample(schedule, x, None, x), "timesteps t"),
        ("API model output (1, C, H, W)", ddim(returning(lambda x_t: np.zeros((1, *x_t.shape[1:])))),
         "the model returned shape"),
        ("API model output 0-d", ddim(returning(lambda x_t: np.zeros(()))), "the model returned shape ()"),
        ("API model output (N, 1, 1, 1)", ddim(returning(lambda x_t: np.zeros((len(x_t), 1, 1, 1)))),
         "the model returned shape"),
        ("API model output 3C channels", ddim(returning(lambda x_t: np.zeros((2, 3, 4, 4))))
         , "the model returned shape"),
        ("API model output 2C without learned variances", ddim(returning(lambda x_t: np.zeros((2, 2, 4, 4)))),
         "twice the channels"),
        ("API model returning NaN", ddim(nan), "NaN"),
        ("API rng=0", lambda: ddpm_sample(zeros, schedule, shape, 3, rng=0), "default_rng(0)"),
        ("API steps '5'", lambda: ddim_sample(zeros, schedule, shape, "5"), "steps"),
        ("API guidance w '2'", lambda: guided_denoiser(conditional, np.array([0, 1]), "2"), "guidance"),
        ("API bpd probabilities not summing to 1",
         lambda: bpd_estimate(zeros, schedule, x, 3, np.random.default_rng(0), probabilities=np.full(9, 0.2)),
         "sum to 1"),
        ("API bpd_estimate with 1 timestep", lambda: bpd_estimate(zeros, schedule, x, 1, np.random.default_rng(0)),
         "num_timesteps"),
        ("API q_sample with noise of another shape", lambda: q_sample(schedule, x, t, x[:1]), "noise has shape"),
        ("API q_sample with 3 timesteps for 2 images", lambda: q_sample(schedule, x, np.arange(3), x), "timesteps t"),
        ("API a U-Net handed to a sampler as it is",
         ddim(UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                   num_groups=4, image_size=4, rng=np.random.default_rng(0))), "as_denoiser"),
        ("API NoiseSchedule.cosine(s=-1)", lambda: NoiseSchedule.cosine(10, s=-1), "s (the cosine"),
        ("API testing.schedules(min_T=1)", one_step_schedules, lambda ok: ok),
        ("API check_round_trips on float32", float32_round_trips, lambda ok: ok),
    ]


def image_inputs(run: Path, tmp: Path) -> list:
    """Input images of every kind by one rule; bombs and unreadable files refused."""
    import struct
    import zlib

    from PIL import Image

    from minidiff.images import load_image

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                                   + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    ramp = np.linspace(0, 1, 28 * 28).reshape(28, 28)
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp / "grey16.png")
    Image.fromarray((ramp * 255).astype(np.float32), mode="F").save(tmp / "float255.tif")
    sketch = np.zeros((28, 28), np.uint8)
    sketch[5:20, 10:14] = 255
    Image.fromarray(np.dstack([np.full((28, 28, 3), 255, np.uint8), sketch]), "RGBA").save(tmp / "sketch.png")
    (tmp / "empty.png").write_bytes(b"")

    def intensities(name, **kwargs):
        return lambda: (load_image(tmp / name, "--init", 1, 28, **kwargs)[0][0] + 1) / 2

    return [
        ("sample --init a decompression bomb", ["sample", str(run), "--init", str(tmp / "bomb.png")], "bomb"),
        ("sample --init a float TIFF in [0, 255]", ["sample", str(run), "--init", str(tmp / "float255.tif")],
         "float image"),
        ("sample --init an empty file", ["sample", str(run), "--init", str(tmp / "empty.png")], "cannot read"),
        ("sample --mask a decompression bomb", ["sample", str(run), "--init", str(tmp / "digit.png"), "--mask",
                                                str(tmp / "bomb.png")], "--mask"),
        ("a 16-bit PNG keeps its grey levels", intensities("grey16.png"), lambda a: np.allclose(a, ramp, atol=1e-4)),
        ("an RGBA sketch is composited on black", intensities("sketch.png"),
         lambda a: np.allclose(a, sketch / 255, atol=1e-6)),
        ("an RGBA mask repaints its sketch", intensities("sketch.png", nearest=True),
         lambda a: np.array_equal(a > 0.5, sketch > 0)),
    ]


def semantics(run: Path, tmp: Path, train) -> list:
    """Semantics that must not drift: the bound's KL terms, the classes, Min-SNR-γ, inpainting's variance, resume."""
    from minidiff.sample import generate
    from minidiff.schedule import NoiseSchedule
    from minidiff.unet import UNet

    model = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                 num_groups=4, image_size=8, rng=np.random.default_rng(0))
    for param in model.parameters():
        param.data += np.random.default_rng(1).normal(0, 0.05, param.shape).astype(param.data.dtype)
    mask = np.zeros((8, 8), np.float32)
    mask[:4] = 1

    def inpaint(variance):
        return generate(model, NoiseSchedule.cosine(20), 2, "ddpm", 5, variance=variance, seed=3,
                        init=np.zeros((1, 8, 8), np.float32), mask=mask)

    edited = tmp / "edited"
    shutil.copytree(run, edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "lr": 0.5}))
    return [
        ("bpd --timesteps 1 (drops every KL term)", ["bpd", str(run), "--timesteps", "1"], "--timesteps"),
        ("train --limit-data beyond the data", train("--limit-data", "20000"), "--limit-data 20000"),
        ("sample --mask with --sampler pf-ode", ["sample", str(run), "--init", str(tmp / "digit.png"), "--mask",
                                                 str(tmp / "digit.png"), "--sampler", "pf-ode"], "--sampler"),
        ("sample --jump-length as long as the chain", ["sample", str(run), "--init", str(tmp / "digit.png"), "--mask",
                                                       str(tmp / "digit.png"), "--sampler", "ddpm", "--steps", "4",
                                                       "--jump-length", "4", "--jump-n-sample", "2"], "--jump-length 4"),
        *[(f"train --num-classes {k} on MNIST", train("--num-classes", k), f"--num-classes {k}") for k in ("20", "11")],
        *[(f"train --min-snr-gamma {g}", train("--min-snr-gamma", g), "--min-snr-gamma") for g in ("1e-300", "1e30")],
        ("inpainting honours the DDPM variance", lambda: (inpaint("fixed_small"), inpaint("fixed_large")),
         lambda pair: not np.allclose(*pair)),
        ("train --resume after config.json was edited by hand", ["train", "--resume", str(edited), "--steps", "5"],
         lambda err: "config.json" in err and "not read on resume" in err),
    ]


def classify(argv, expect) -> tuple[str, str]:
    """How case ``argv`` (a command line, or a callable of the Python API) met ``expect``: the words of
    its refusal, or a test ``expect(result)`` of an accepted case's result (a call's return value, a
    command's stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("always" if callable(expect) else "ignore")  # an accepted case may be judged by one
        try:
            result = argv() if callable(argv) else None
            status = 0 if callable(argv) else main(argv)
        except SystemExit as exc:
            status = exc.code
        except (ValueError, TypeError) as exc:
            if not callable(argv):
                return "traceback", f"{type(exc).__name__}: {exc}"
            line = f"{type(exc).__name__}: {exc}"
            return ("refused cleanly" if isinstance(expect, str) and expect in line and "\n" not in line
                    else "refused vaguely"), line
        except BaseException as exc:  # noqa: BLE001 — an escaping exception is what this counts
            return "traceback", f"{type(exc).__name__}: {exc}"
    lines = [line for line in err.getvalue().splitlines() if line.strip() and "\r" not in line and "%|" not in line]
    last = lines[-1] if lines else ""
    if status == 0:
        if callable(expect):
            right = expect(result if callable(argv) else err.getvalue())
            return ("correct result" if right else "wrong result"), last
        return "silently accepted", ""
    if status == 2 and not callable(argv) and last.startswith(f"minidiff {argv[0]}: error:"):
        return ("refused cleanly" if isinstance(expect, str) and expect in last else "refused vaguely"), last
    return "traceback", last


def run_all(verbose: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["train", *TINY, "--out", str(run), "--steps", "4"]) == 0
        counts = {kind: 0 for kind in ("refused cleanly", "correct result", "refused vaguely", "traceback",
                                       "silently accepted", "wrong result", "lost")}
        all_cases = cases(run, tmp)
        for description, argv, words in all_cases:
            kind, line = classify(argv, words)
            counts[kind] += 1
            try:
                load_checkpoint(run)
            except Exception:  # noqa: BLE001
                counts["lost"] += 1
                kind += ", and the run folder's checkpoint was lost"
                shutil.copytree(run, tmp / "broken", dirs_exist_ok=True)
            if verbose or kind not in ("refused cleanly", "correct result"):
                print(f"{kind:18} {description}: {line}")
        return {"tried": len(all_cases), **counts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case, not only the failures")
    print(json.dumps(run_all(parser.parse_args().verbose)))
    sys.exit(0)
