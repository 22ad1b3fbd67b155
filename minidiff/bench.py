"""``python -m minidiff bench``: time the reference U-Net's training step and forward pass, or sampling.

Prints one JSON object per kernel family: seconds per step (median over ``--steps``),
images/s, GFLOP/s (the matrix products counted by :mod:`minidiff.flops`; a training step is
three forward passes, DDIM-50 sampling fifty), the peak memory a training step allocates and
NumPy's BLAS (its core type decides which GEMM kernels run) and the CPU, by model name and the
vector extensions its GEMMs and kernels can use (figures from an AMD EPYC and an Intel Xeon
differ). ``--mode sample`` times drawing ``--batch`` digits as ``minidiff sample`` does, with
random weights, by ``--sampler`` (:data:`SAMPLERS`). With several
``--kernels`` the families run alternately, step by step, so that a busy machine slows them
alike and their ratio stays honest. ``--profile`` adds the per-op time breakdown of one step.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import json
import os
import platform
import pstats
import statistics
import time
import tracemalloc

import numpy as np

from . import backend, functional as F, no_grad
from .autograd import Function, Tensor
from .flops import count_flops
from .optim import Adam
from .sample import BATCH as SAMPLE_BATCH, generate
from .schedule import NoiseSchedule
from .backbones import PRESETS, backbone_of, build_backbone, model_config

KERNEL_CHOICES = ("cpu", "reference")
SAMPLE_STEPS = 50  # sampler steps of --mode sample
# --mode sample's samplers: name (as `generate` takes it) → model evaluations per step, which
# the GFLOP/s count uses. A sampler is timed by adding its line here. Heun (Karras et al. 2022,
# Algorithm 1) corrects every step but the last, through the VP bridge for the random DDPM model.
SAMPLERS = {"ddim": 1, "ddpm": 1, "dpm-solver++": 1, "heun": 2}


def sample_evaluations(sampler: str, steps: int) -> int:
    """Model evaluations of ``steps`` steps of ``sampler``: Heun's last step is a plain Euler step."""
    return SAMPLERS[sampler] * steps - (sampler == "heun")
# CPU flags worth naming in a report: the vector extensions NumPy's BLAS and the kernels can use.
VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                     "amx_bf16", "neon", "asimd", "sve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=[name for presets in PRESETS.values() for name in presets], default="mnist",
                        help="network to time, a U-Net or a DiT preset (default: mnist)")
    parser.add_argument("--batch", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--mode", choices=("train", "forward", "both", "sample"), default="both",
                        help="what to time: a training step, a no-grad forward (weights frozen, as sampling runs "
                             "it), both, or sampling --batch digits "
                             f"with --sampler, {SAMPLE_STEPS} steps, as `minidiff sample` does (default: both)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="ddim", help="the sampler --mode sample times (default: ddim)")
    parser.add_argument("--kernels", default="cpu",
                        help="comma-separated kernel families to compare: cpu, reference (default: cpu)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also print the per-op time breakdown of one training step")


def run(args) -> int:
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = [k for k in kernels if k not in KERNEL_CHOICES]
    if unknown or not kernels:
        raise ValueError(f"--kernels {args.kernels!r}: expected a comma-separated list of {', '.join(KERNEL_CHOICES)}")
    for name, value in (("--batch", args.batch), ("--steps", args.steps)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be at least 0, got {args.warmup}")
    device = backend.check_device(args.device)
    with backend.performance_settings():  # as training runs, also when run() is called from a script
        bench = Benchmark(args.preset, args.batch, device, args.seed, getattr(args, "sampler", "ddim"))
        modes = {"both": ("train", "forward")}.get(args.mode, (args.mode,))
        results = bench.measure_alternately(kernels, modes, args.steps, args.warmup)
        for kernel_family, timings in results.items():
            print(json.dumps(bench.report(kernel_family, timings)))
        if args.profile:
            with setting("MINIDIFF_KERNELS", kernels[0]):
                print_profile(bench)
    return 0


@contextlib.contextmanager
def setting(name: str, value: str):
    """The environment variable ``name`` (``MINIDIFF_KERNELS``, …) set to ``value`` for the block."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


class Benchmark:
    """The model, a fixed random batch and one Adam optimizer, as a training loop has them."""

    def __init__(self, preset: str, batch: int, device: str, seed: int, sampler: str = "ddim"):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r}: bench times {', '.join(SAMPLERS)}")
        rng = np.random.default_rng(seed)
        self.preset, self.batch, self.device, self.sampler = preset, batch, device, sampler
        backbone = backbone_of(preset)
        self.model = build_backbone(backbone, model_config(backbone, preset), rng=rng).to(device)
        self.optimizer = Adam(self.model.parameters(), lr=1e-4)
        shape = (batch, self.model.config["in_channels"], self.model.config["image_size"], self.model.config["image_size"])
        self.x = Tensor(rng.standard_normal(shape).astype(np.float32)).to(device)
        self.noise = Tensor(rng.standard_normal(shape).astype(np.float32)).to(device)
        self.t = rng.integers(0, 1000, size=batch)
        with no_grad(), count_flops() as counter:
            self.model(self.x, self.t)
        self.forward_flops = counter.total
        self.schedule = NoiseSchedule.linear(1000)

    def train_step(self):
        self.optimizer.zero_grad()
        loss = F.mse_loss(self.model(self.x, self.t), self.noise)
        loss.backward()
        self.optimizer.step()
        loss.item()  # waits for the device, so the step is really over

    def forward(self):
        with no_grad():
            self.model(self.x, self.t).numpy()

    def sample(self):
        """``batch`` digits in SAMPLE_STEPS steps of the sampler from x_T, as ``minidiff sample`` draws them (in its batches)."""
        generate(self.model, self.schedule, self.batch, sampler=self.sampler, steps=SAMPLE_STEPS)

    def measure_alternately(self, families, modes, steps, warmup):
        timings = {f: {m: [] for m in modes} for f in families}
        for mode in modes:
            step = {"train": self.train_step, "forward": self.forward, "sample": self.sample}[mode]
            # the forwards run as sampling runs them: weights frozen, each filter transformed once (Module.frozen)
            with self.model.frozen() if mode == "forward" else contextlib.nullcontext():
                self._measure(step, mode, families, timings, steps, warmup)
        for family in families:
            with setting("MINIDIFF_KERNELS", family):
                timings[family]["peak_memory_mib"] = self.peak_training_memory() if "train" in modes else None
        return timings

    @staticmethod
    def _measure(step, mode, families, timings, steps, warmup):
        """``warmup + steps`` calls of ``step``, each kernel family's in turn; the last ``steps`` timed."""
        for i in range(warmup + steps):
            for family in families:
                with setting("MINIDIFF_KERNELS", family):
                    start = time.perf_counter()
                    step()
                    elapsed = time.perf_counter() - start
                if i >= warmup:
                    timings[family][mode].append(elapsed)

    def peak_training_memory(self) -> float:
        """MiB allocated at the peak of one training step (NumPy reports its buffers to tracemalloc)."""
        tracemalloc.start()
        try:
            self.train_step()
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    def report(self, family, timings) -> dict:
        out = {
            "preset": self.preset, "params": self.model.num_parameters(), "batch": self.batch,
            "device": self.device, "kernels": family if self.device == "cpu" else "cuda",
            "cpu_count": os.cpu_count(), "gflop_per_image_forward": round(self.forward_flops / self.batch / 1e9, 4),
        }
        for mode, flops in (("train", 3 * self.forward_flops), ("forward", self.forward_flops),
                            ("sample", sample_evaluations(self.sampler, SAMPLE_STEPS) * self.forward_flops)):
            if mode in timings:
                seconds = statistics.median(timings[mode])
                out[f"{mode}_step_s"] = round(seconds, 6)
                out[f"{mode}_images_per_s"] = round(self.batch / seconds, 2)
                out[f"{mode}_gflops"] = round(flops / seconds / 1e9, 2)
        if timings.get("peak_memory_mib") is not None:
            out["train_peak_memory_mib"] = round(timings["peak_memory_mib"], 1)
        if "sample" in timings:
            out["sample_steps"], out["sample_batch"] = SAMPLE_STEPS, min(self.batch, SAMPLE_BATCH)
            out["sampler"], out["sample_evaluations"] = self.sampler, sample_evaluations(self.sampler, SAMPLE_STEPS)
        out["machine"] = platform.processor() or platform.machine()
        out["cpu"] = cpu_description()
        out["blas"] = blas_description()
        return out


def cpu_description() -> dict:
    """The CPU's model name and which of VECTOR_EXTENSIONS it has, from /proc/cpuinfo (Linux);
    elsewhere the platform's processor string and no extensions."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model == (platform.processor() or platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "vector_extensions": [f for f in VECTOR_EXTENSIONS if f in flags]}


def blas_description() -> dict:
    """NumPy's BLAS as threadpoolctl sees it: library, version and the CPU core type its kernels
    were picked for (OpenBLAS's ``OPENBLAS_CORETYPE`` can force an older one), and
    ``OPENBLAS_CORETYPE`` itself when it is set."""
    from threadpoolctl import threadpool_info

    info = next((i for i in threadpool_info() if i.get("user_api") == "blas"), {})
    description = {key: info.get(key) for key in ("internal_api", "version", "architecture")}
    if os.environ.get("OPENBLAS_CORETYPE"):
        description["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    return description


def print_profile(bench: Benchmark, top: int = 20):
    """Where one training step's time goes, as two JSON objects.

    ``wall_by_op_s``: the wall time of each op's forward and backward with every thread at work
    (the calling thread waits for its chunk workers inside the op, so this is the real cost).
    ``by_op_s``: self time per function, kernels apart; cProfile sees only the thread it runs
    in, so this step runs on the calling thread alone (``MINIDIFF_NUM_THREADS=1``: the
    convolutions' chunks, the GEMMs and the OpenMP kernels all on one core).
    """
    names = _qualified_names()
    ops = {key: name for key, name in names.items() if name.rsplit(".", 1)[-1] in ("forward", "backward") and "." in name
           and not name.startswith(("cpu.", "reference."))}
    bench.train_step()
    wall = _profile(bench.train_step)
    by_op = collections.Counter()
    for key, entry in wall.items():
        if key[:2] in ops and key[2] in ("forward", "backward"):
            by_op[ops[key[:2]]] += entry[3]  # cumulative: the op's wall time
    with setting("MINIDIFF_NUM_THREADS", "1"):
        single = _profile(bench.train_step)
    by_name = collections.Counter()
    for key, entry in single.items():
        by_name[names.get(key[:2], f"{os.path.basename(key[0])}:{key[2]}")] += entry[2]
    print(json.dumps({"profile_step_s": round(sum(entry[2] for entry in wall.values()), 4),
                      "wall_by_op_s": {name: round(seconds, 4) for name, seconds in by_op.most_common(top)}}))
    print(json.dumps({"profile_total_s": round(sum(entry[2] for entry in single.values()), 4), "profile_chunk_threads": 1,
                      "by_op_s": {name: round(seconds, 4) for name, seconds in by_name.most_common(top)}}))


def _profile(step) -> dict:
    profiler = cProfile.Profile()
    profiler.enable()
    step()
    profiler.disable()
    return pstats.Stats(profiler).stats


def _qualified_names() -> dict:
    """(file, first line) → 'Conv2d.backward' etc., for every op's forward/backward and every kernel."""
    from .kernels import cpu, reference

    names = {}
    functions = [getattr(m, n) for m in (cpu, reference) for n in dir(m) if callable(getattr(m, n))]
    for cls in _subclasses(Function):
        functions += [cls.forward, cls.backward]
    for fn in functions:
        code = getattr(fn, "__code__", None)
        if code is not None:
            kernel_family = fn.__module__.rsplit(".", 1)[-1] + "." if fn.__module__.startswith("minidiff.kernels") else ""
            # a function defined inside (the per-chunk work of a conv) counts as part of it
            for inner in [code] + [const for const in code.co_consts if hasattr(const, "co_firstlineno")]:
                names[(inner.co_filename, inner.co_firstlineno)] = kernel_family + code.co_qualname
    return names


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
