"""Hostile input against the command line, counted: ``python benchmarks/hostile.py [--verbose]``.

Each case is a command line (``python -m minidiff …``) given a bad flag, a bad file or a crafted
checkpoint, with the words its refusal must contain. A case is

* ``refused cleanly``: exit status 2, one line ``minidiff <command>: error: …`` containing them;
* ``refused vaguely``: exit status 2 but the line does not name the problem;
* ``traceback``: any other exception;
* ``silently accepted``: exit status 0;
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
        ("sample --sigma-max below --sigma-min", ["sample", str(run), "--sampler", "heun", "--sigma-max", "0.001"],
         "--sigma-max"),
        *[(f"sample --rho {v}", ["sample", str(run), "--sampler", "heun", "--rho", v], "--rho") for v in ("0", "-7")],
        ("train --objective edm --p-std -1", objective_train("edm", "--p-std", "-1"), "--p-std"),
        *[(f"sample --time-shift {v}", ["sample", str(run), "--sampler", "euler", "--time-shift", v], "--time-shift")
          for v in ("0", "-2")],
        ("sample an objective the checkpoint lacks", ["sample", crafted(run, tmp, "objective",
                                                                        config__objective="consistency")], "objective"),
        ("sample --sampler midpoint (flow's) on a ddpm checkpoint", ["sample", str(run), "--sampler", "midpoint"],
         "--objective ddpm"),
        ("train --resume --objective flow", ["train", "--resume", str(run), "--objective", "flow", "--steps", "9"],
         "--objective flow"),
    ]
    return result


def classify(argv: list[str], words: str) -> tuple[str, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
        except BaseException as exc:  # noqa: BLE001 — an escaping exception is what this counts
            return "traceback", f"{type(exc).__name__}: {exc}"
    lines = [line for line in err.getvalue().splitlines() if line.strip() and "\r" not in line and "%|" not in line]
    last = lines[-1] if lines else ""
    if status == 0:
        return "silently accepted", ""
    if status == 2 and last.startswith(f"minidiff {argv[0]}: error:"):
        return ("refused cleanly" if words in last else "refused vaguely"), last
    return "traceback", last


def run_all(verbose: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["train", *TINY, "--out", str(run), "--steps", "4"]) == 0
        counts = {kind: 0 for kind in ("refused cleanly", "refused vaguely", "traceback", "silently accepted", "lost")}
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
            if verbose or kind != "refused cleanly":
                print(f"{kind:18} {description}: {line}")
        return {"tried": len(all_cases), **counts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print every case, not only the failures")
    print(json.dumps(run_all(parser.parse_args().verbose)))
    sys.exit(0)
