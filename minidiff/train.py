"""Training a diffusion model, and the ``python -m minidiff train`` command.

The loop is Ho et al. 2020, Algorithm 1 — draw x₀ from the data, t ∼ Uniform({0, …, T−1}),
ε ∼ N(0, I), take a gradient step on ‖ε − ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t)‖² — with the recipe
of their App. B: Adam, a linear learning-rate warm-up, gradient clipping at norm 1, and an
exponential moving average of the weights for sampling. The network may instead predict x₀ or
v (Salimans & Ho 2022), with Min-SNR-γ loss weights (Hang et al. 2023).

A run lives in one folder::

    config.json             the TrainConfig and the model's constructor arguments
    checkpoint.npz          everything needed to resume exactly (see minidiff.checkpoint)
    log.jsonl               one JSON line every --log-every steps
    samples_step<N>.png     preview grids drawn with the EMA weights

Resuming is exact: the weights, the Adam moments, the EMA, the data order and every random
generator (t, ε and flips; dropout) are checkpointed, so a run stopped and resumed computes the
very same losses, bit for bit, as one that never stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import functional as F
from .autograd import Tensor
from .backend import DEVICES, check_device, to_device
from .checkpoint import (
    CHECKPOINT_NAME, SCHEDULES, Checkpoint, build_model, build_schedule, load_checkpoint, model_config,
    save_checkpoint,
)
from .data import DATASETS, Batcher, atomic_write, load_dataset
from .diffusion import PREDICTIONS, UniformSampler, mean_flat, training_batch
from .images import save_image_grid
from .optim import EMA, Adam, clip_grad_norm, linear_warmup
from .sample import GRID_SCALE, class_labels, generate
from .unet import PRESETS


class DivergenceError(RuntimeError):
    """The loss or the gradient became NaN or infinite; the run stopped without saving."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; the CLI flags are these names with dashes."""

    # data
    dataset: str = "mnist"
    data_dir: str | None = None
    limit_data: int | None = None  # train on the first N images only (quick experiments, tests)
    hflip: bool = False  # off by default: digits are not mirror-symmetric
    # model
    preset: str = "mnist"
    dropout: float | None = None  # None keeps the preset's
    num_classes: int | None = None  # class-conditional when set
    # diffusion
    schedule: str = "linear"
    timesteps: int = 1000
    prediction: str = "eps"
    min_snr_gamma: float | None = None
    # optimisation (Ho et al. 2020, App. B, but a shorter warm-up for short MNIST runs)
    steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0  # 0 turns clipping off
    ema_decay: float = 0.9999
    seed: int = 0
    # the run folder and what goes into it
    out: str | None = None  # default runs/<dataset>-<preset>
    sample_every: int = 1000  # 0: no preview grids
    sample_n: int = 16
    sample_steps: int = 50
    checkpoint_every: int = 500  # 0: only at the end (and on Ctrl-C)
    log_every: int = 10
    device: str = "cpu"

    def __post_init__(self):
        if self.out is None:
            self.out = f"runs/{self.dataset}-{self.preset}"
        problems = []

        def need(ok, name, what):
            if not ok:
                problems.append(f"{name} (--{name.replace('_', '-')}) must be {what}, got {getattr(self, name)!r}")

        def is_int(value):
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        for name in ("steps", "batch_size", "timesteps", "sample_n", "sample_steps", "log_every"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer")
        for name in ("warmup_steps", "sample_every", "checkpoint_every", "seed"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "a non-negative integer")
        for name in ("limit_data", "num_classes"):
            need(getattr(self, name) is None or is_int(getattr(self, name)) and getattr(self, name) >= 1,
                 name, "a positive integer")
        need(self.lr > 0, "lr", "positive")
        need(self.grad_clip >= 0, "grad_clip", "non-negative (0 turns clipping off)")
        need(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1)")
        need(self.dropout is None or 0 <= self.dropout < 1, "dropout", "in [0, 1)")
        need(self.min_snr_gamma is None or self.min_snr_gamma > 0, "min_snr_gamma", "positive")
        for name, choices in (("dataset", DATASETS), ("preset", PRESETS), ("schedule", SCHEDULES),
                              ("prediction", PREDICTIONS), ("device", DEVICES)):
            need(getattr(self, name) in choices, name, "one of " + ", ".join(choices))
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **overrides) -> TrainConfig:
        """The config a checkpoint was trained with, writing to its folder, updated by ``overrides``."""
        names = {field.name for field in dataclasses.fields(cls)}
        saved = {name: value for name, value in checkpoint.config.items() if name in names}
        return cls(**{**saved, "out": str(checkpoint.path.parent), **overrides})

    def run_config(self) -> dict:
        """The JSON-ready config of a run: these fields plus the model's constructor arguments."""
        overrides = {"num_classes": self.num_classes}
        if self.dropout is not None:
            overrides["dropout"] = self.dropout
        return {**dataclasses.asdict(self), "model": model_config(self.preset, **overrides)}


CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))


def load_training_data(config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) in [−1, 1] and labels of ``config.dataset``, the first ``limit_data`` only."""
    images, labels = load_dataset(config.dataset, split="auto", data_dir=config.data_dir)
    return images[: config.limit_data], labels[: config.limit_data]


@contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C until the block ends, so it cannot land halfway through updating the weights,
    the Adam moments and the EMA, which would leave the checkpoint saved on interrupt inconsistent."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


class Trainer:
    """Trains the U-Net of ``config`` on ``data`` (images, labels), by default the config's dataset.

    ``resume`` (a checkpoint, its path or its run folder) continues that run; its model, schedule
    and parameterisation must be the config's. ``fit()`` runs to ``config.steps`` steps.
    """

    def __init__(self, config: TrainConfig, data=None, resume=None, progress: bool = True):
        self.config, self.progress = config, progress
        self.device = check_device(config.device)
        self.run_dir = Path(config.out)
        self.checkpoint_file = self.run_dir / CHECKPOINT_NAME
        self.log_file = self.run_dir / "log.jsonl"
        self.run_config = config.run_config()
        if resume is None and self.checkpoint_file.exists():
            raise ValueError(
                f"run folder {self.run_dir} already holds a checkpoint; continue it with --resume {self.run_dir} "
                "or choose another --out"
            )
        if resume is not None:
            resume = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume)
            resume.check_config(self.run_config)  # before the data is loaded: fail fast
        images, labels = load_training_data(config) if data is None else data
        self._check_data(images, labels)

        # Independent streams, so that e.g. turning on --hflip does not change the data order.
        model_seed, batch_seed, train_seed = np.random.SeedSequence(config.seed).spawn(3)
        # The initialisation generator lives on in the Dropout layers, which draw their masks from it.
        self.model_rng = np.random.default_rng(model_seed)
        self.rng = np.random.default_rng(train_seed)  # t, ε and flips
        self.schedule = build_schedule(self.run_config)
        self.model = build_model(self.run_config, rng=self.model_rng).to(self.device)
        self.ema = EMA(self.model, decay=config.ema_decay)  # after .to(): the averages live with the weights
        self.optimizer = Adam(self.model, lr=config.lr)
        self.batcher = Batcher(images, labels, batch_size=config.batch_size, rng=np.random.default_rng(batch_seed))
        self.timestep_sampler = UniformSampler(self.schedule.T)
        self.step, self.elapsed_s, self.saved_step = 0, 0.0, None
        if resume is not None:
            self._resume(resume)

    def _check_data(self, images, labels):
        model = self.run_config["model"]
        expected = (model["in_channels"], model["image_size"], model["image_size"])
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"preset {self.config.preset!r} takes images of shape (N, {', '.join(map(str, expected))}); "
                             f"the data has shape {images.shape}")
        if self.config.num_classes is not None and len(labels) and int(labels.max()) >= self.config.num_classes:
            raise ValueError(f"the data has label {int(labels.max())}, outside --num-classes {self.config.num_classes}")

    def _resume(self, checkpoint: Checkpoint):
        for target, section in ((self.model, "model"), (self.ema, "ema"), (self.optimizer, "optimizer"),
                                (self.batcher, "batcher")):
            checkpoint.restore(target, section)
        self.rng.bit_generator.state = checkpoint.rng_state("train")
        self.model_rng.bit_generator.state = checkpoint.rng_state("model")
        self.step = self.saved_step = checkpoint.step
        self.elapsed_s = checkpoint.elapsed_s

    # ----------------------------------------------------------------- one step
    def loss(self, x0: np.ndarray, y: np.ndarray | None = None) -> Tensor:
        """The training loss on a batch x₀, as a differentiable scalar (Ho et al. 2020, Algorithm 1).

        t ∼ Uniform({0, …, T−1}), ε ∼ N(0, I), x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (Eq. 4); the loss is
        the mean over the batch of w_t · mean‖target − model(x_t, t)‖², where the target is ε
        (Eq. 14, L_simple), x₀ or v, and w_t = 1 or the Min-SNR-γ weight.
        """
        config, n = self.config, len(x0)
        if config.hflip:
            flip = self.rng.random(n) < 0.5
            x0 = np.where(flip[:, None, None, None], x0[..., ::-1], x0)
        t, _ = self.timestep_sampler.sample(n, self.rng)
        noise = self.rng.standard_normal(x0.shape, dtype=np.float32)
        # The forward process and the target are cheap: NumPy on the host, then one move each.
        x_t, target, weight = training_batch(self.schedule, x0, t, noise, config.prediction, config.min_snr_gamma)
        output = self.model(Tensor(to_device(x_t, self.device)), t, y if config.num_classes is not None else None)
        per_example = mean_flat(F.mse_loss(output, Tensor(to_device(target, self.device)), reduction="none"))
        if config.min_snr_gamma is None:  # every weight is 1
            return per_example.mean()
        return (per_example * Tensor(to_device(weight.astype(np.float32), self.device))).mean()

    def train_step(self) -> tuple[float, float]:
        """Draw a batch, take one optimiser step; returns (loss, gradient norm before clipping).

        A NaN or infinite loss or gradient raises :class:`DivergenceError` before the weights
        move, so they and the last checkpoint stay finite.
        """
        x0, y = next(self.batcher)
        loss = self.loss(x0, y)
        value = float(loss.item())
        self._check_finite("loss", value)
        self.model.zero_grad()
        loss.backward()
        grad_norm = clip_grad_norm(self.model, self.config.grad_clip or math.inf)
        self._check_finite("gradient norm", grad_norm)
        with _sigint_deferred():
            self.optimizer.lr = linear_warmup(self.step, self.config.warmup_steps, self.config.lr)
            self.optimizer.step()
            self.ema.update()
            self.step += 1
        return value, grad_norm

    def _check_finite(self, what: str, value: float):
        if math.isfinite(value):
            return
        kept = (f"{self.checkpoint_file} still holds step {self.saved_step}" if self.saved_step is not None
                else "no checkpoint was written")
        raise DivergenceError(f"step {self.step + 1}: {what} is {value}; training stopped, {kept}")

    def _draw_state(self):
        return self.rng.bit_generator.state, self.model_rng.bit_generator.state, self.batcher.state_dict()

    def _step_undoing_draws_on_interrupt(self):
        """:meth:`train_step`; a Ctrl-C before the weights move rewinds its random draws, so that
        the checkpoint then saved resumes exactly where the uninterrupted run would have gone on."""
        step, draws = self.step, self._draw_state()
        try:
            return self.train_step()
        except KeyboardInterrupt:
            if self.step == step:
                self.rng.bit_generator.state, self.model_rng.bit_generator.state, batcher = draws
                self.batcher.load_state_dict(batcher)
            raise

    # ----------------------------------------------------------------- the loop
    def fit(self) -> Path:
        """Train to ``config.steps`` steps; returns the checkpoint path.

        Ctrl-C saves a checkpoint, says how to resume, and re-raises KeyboardInterrupt.
        """
        from tqdm import tqdm

        config = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / "config.json") as f:
            f.write(json.dumps(self.run_config, indent=2).encode() + b"\n")
        self._truncate_log()
        bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True, disable=not self.progress)
        clock_start, elapsed_start = time.perf_counter(), self.elapsed_s
        window_start, window_steps = clock_start, 0
        try:
            with open(self.log_file, "a") as log:
                while self.step < config.steps:
                    loss, grad_norm = self._step_undoing_draws_on_interrupt()
                    now = time.perf_counter()
                    self.elapsed_s = elapsed_start + now - clock_start
                    window_steps += 1
                    images_per_s = window_steps * config.batch_size / max(now - window_start, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", refresh=False)
                    bar.update(1)
                    if self.step % config.log_every == 0:
                        record = dict(step=self.step, loss=loss, lr=self.optimizer.lr, grad_norm=grad_norm,
                                      images_per_s=images_per_s, elapsed=self.elapsed_s)
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        window_start, window_steps = now, 0
                    if config.sample_every and self.step % config.sample_every == 0:
                        self.save_samples()
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                        self.save()
        except KeyboardInterrupt:
            self.save()
            tqdm.write(f"interrupted at step {self.step}; saved {self.checkpoint_file}. Resume with:\n"
                       f"  python -m minidiff train --resume {self.run_dir}", file=sys.stderr)
            raise
        finally:
            bar.close()
        if self.saved_step != self.step:
            self.save()
        return self.checkpoint_file

    def save(self) -> Path:
        """Write the checkpoint (atomically: the previous one survives a crash mid-write)."""
        save_checkpoint(
            self.checkpoint_file, config=self.run_config, step=self.step, elapsed_s=self.elapsed_s,
            model=self.model.state_dict(), ema=self.ema.state_dict(), optimizer=self.optimizer.state_dict(),
            batcher=self.batcher.state_dict(), rng={"train": self.rng, "model": self.model_rng},
        )
        self.saved_step = self.step
        return self.checkpoint_file

    def save_samples(self) -> Path:
        """``samples_step<N>.png``: DDIM with the EMA weights from a fixed seed, so that successive
        grids show the same x_T maturing into digits."""
        config = self.config
        labels = class_labels(config.sample_n, config.num_classes)
        self.model.eval()
        try:
            with self.ema.applied(self.model):
                samples = generate(self.model, self.schedule, config.sample_n, "ddim",
                                   min(config.sample_steps, self.schedule.T), seed=config.seed, labels=labels,
                                   prediction=config.prediction)
        finally:
            self.model.train()
        return save_image_grid(samples, self.run_dir / f"samples_step{self.step}.png", scale=GRID_SCALE)

    def _truncate_log(self):
        """Drop log lines past the current step: a run resumed from an earlier checkpoint than its
        last log line redoes those steps and must not log them twice."""
        if not self.log_file.exists():
            return
        lines = self.log_file.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= self.step]
        with atomic_write(self.log_file) as f:
            f.write("".join(kept).encode())


# --------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train flags. Their defaults are left out of the namespace (SUPPRESS), so that ``run``
    can tell the flags given from the ones not given: on --resume, only the former override the
    checkpoint's config. The defaults shown come from :class:`TrainConfig`."""
    defaults = TrainConfig()
    groups = {name: parser.add_argument_group(name) for name in ("data", "model", "diffusion", "optimisation", "run")}

    def option(group, *flags, help, dest=None, **kwargs):
        dest = dest or flags[0].lstrip("-").replace("-", "_")
        if getattr(defaults, dest, None) not in (None, False):
            help += f" (default: {getattr(defaults, dest)})"
        groups[group].add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=help, **kwargs)

    option("data", "--dataset", choices=list(DATASETS), help="training images")
    option("data", "--data-dir", help="folder holding the IDX files (default: search $MINIDIFF_DATA/<dataset>, then the cache)")
    option("data", "--limit-data", type=int, metavar="N", help="train on the first N images only")
    option("data", "--hflip", action="store_true", help="random horizontal flips (off: digits are not symmetric)")
    option("model", "--preset", choices=list(PRESETS), help="U-Net size")
    option("model", "--dropout", type=float, help="dropout in the ResBlocks (default: the preset's)")
    option("model", "--num-classes", type=int, metavar="K", help="train a class-conditional model on K classes")
    option("model", "--conditional", dest="num_classes", action="store_const", const=10,
           help="same as --num-classes 10 (MNIST and Fashion-MNIST have 10 classes)")
    option("diffusion", "--schedule", choices=SCHEDULES, help="noise schedule (linear is scaled by 1000/T)")
    option("diffusion", "--timesteps", type=int, metavar="T", help="length of the diffusion chain")
    option("diffusion", "--prediction", choices=PREDICTIONS, help="what the network predicts")
    option("diffusion", "--min-snr-gamma", type=float, metavar="GAMMA", help="Min-SNR-γ loss weighting (Hang et al. 2023)")
    option("optimisation", "--steps", type=int, help="train until this many optimiser steps")
    option("optimisation", "--batch-size", type=int, help="images per step")
    option("optimisation", "--lr", type=float, help="Adam learning rate after warm-up")
    option("optimisation", "--warmup-steps", type=int, help="linear learning-rate warm-up")
    option("optimisation", "--grad-clip", type=float, help="clip the gradient norm; 0 turns it off")
    option("optimisation", "--ema-decay", type=float, help="EMA decay of the weights used for sampling")
    option("optimisation", "--seed", type=int, help="seeds initialisation, data order, t, noise and dropout")
    option("run", "--out", help="run folder")
    option("run", "--resume", help="continue the run in this folder (or from this checkpoint .npz); "
                                   "flags given override its config")
    option("run", "--sample-every", type=int, metavar="N", help="preview grid every N steps; 0: never")
    option("run", "--sample-n", type=int, metavar="N", help="images in a preview grid")
    option("run", "--sample-steps", type=int, metavar="N", help="DDIM steps for a preview grid")
    option("run", "--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps; 0: only at the end")
    option("run", "--log-every", type=int, metavar="N", help="log.jsonl line every N steps")
    option("run", "--device", help="cpu or cuda")


def run(args) -> int:
    explicit = {name: value for name, value in vars(args).items() if name in CONFIG_FIELDS}
    resume = getattr(args, "resume", None)
    checkpoint = load_checkpoint(resume) if resume else None
    config = TrainConfig.from_checkpoint(checkpoint, **explicit) if checkpoint else TrainConfig(**explicit)
    trainer = Trainer(config, resume=checkpoint)
    path = trainer.fit()  # on Ctrl-C it saves, says how to resume, and re-raises
    print(f"trained to step {trainer.step} in {trainer.elapsed_s:.0f} s; checkpoint {path}")
    return 0
