"""Training a diffusion model: :class:`TrainConfig` and the :class:`Trainer` loop.

The loss of one step is :func:`minidiff.diffusion.training_loss` — Ho et al. 2020, Algorithm 1:
draw x₀ from the data, t ∼ Uniform({0, …, T−1}), ε ∼ N(0, I), take a gradient step on
‖ε − ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t)‖² — and the loop around it follows their App. B: Adam, a
linear learning-rate warm-up, gradient clipping at norm 1, and an exponential moving average of
the weights for sampling. The network may instead predict x₀ or v (Salimans & Ho 2022), with
Min-SNR-γ loss weights (Hang et al. 2023).

Resuming is exact: the weights, the Adam moments, the EMA, the data order and every random
generator (t, ε and flips; dropout) are checkpointed, and a Ctrl-C is held until
the step it lands in — loss, update, EMA, log line, preview and checkpoint — is complete. A run
stopped and resumed so computes the very same losses, bit for bit, as one that never stopped.
Under ``mpirun -n N`` the step is data-parallel (:mod:`minidiff.distributed`): ``batch_size`` is
the global batch, each rank computes its rows' loss, the gradients are averaged, and rank 0
writes the run folder.
The files of a run are :mod:`minidiff.runfolder`'s; the ``train`` command is
:mod:`minidiff.commands.train`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

from .backend import DEVICES, check_device, performance_settings
from .batching import Batcher
from .checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint, model_config, save_checkpoint
from .datasets import DATASETS, load_dataset
from .diffusion import PREDICTIONS, UniformSampler, training_loss
from .distributed import sync_check_every, world
from .guidance import drop_labels
from .images import save_image_grid
from .optim import EMA, Adam, clip_grad_norm, linear_warmup
from .runfolder import RunFolder, sigint_deferred
from .sample import GRID_SCALE, class_labels, generate
from .schedule import SCHEDULES, schedule_by_name
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
    p_uncond: float = 0.0  # > 0: labels dropped to the null class with this probability (classifier-free guidance)
    # diffusion
    schedule: str = "linear"
    zero_terminal_snr: bool = False  # rescale the schedule so ᾱ_{T−1} = 0 (Lin et al. 2023)
    timesteps: int = 1000
    prediction: str = "eps"
    min_snr_gamma: float | None = None
    learn_sigma: bool = False  # also learn Σ_θ, trained with L_hybrid (Nichol & Dhariwal 2021)
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

        def is_real(value):
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
                and math.isfinite(value)

        for name in ("steps", "batch_size", "timesteps", "sample_n", "sample_steps", "log_every"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer")
        for name in ("warmup_steps", "sample_every", "checkpoint_every", "seed"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "a non-negative integer")
        for name in ("limit_data", "num_classes"):
            need(getattr(self, name) is None or is_int(getattr(self, name)) and getattr(self, name) >= 1,
                 name, "a positive integer")

        need(is_real(self.lr) and self.lr > 0, "lr", "a positive finite number")
        need(is_real(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "a finite number >= 0 (0 turns clipping off)")
        need(is_real(self.ema_decay) and 0 <= self.ema_decay < 1, "ema_decay", "in [0, 1)")
        need(self.dropout is None or is_real(self.dropout) and 0 <= self.dropout < 1, "dropout", "in [0, 1)")
        need(self.min_snr_gamma is None or is_real(self.min_snr_gamma) and self.min_snr_gamma > 0,
             "min_snr_gamma", "a positive finite number")
        need(is_real(self.p_uncond) and 0 <= self.p_uncond < 1, "p_uncond", "in [0, 1)")
        need(not self.p_uncond or self.num_classes is not None, "p_uncond",
             "0 without --num-classes (it drops class labels)")
        for name, choices in (("dataset", DATASETS), ("preset", PRESETS), ("schedule", SCHEDULES),
                              ("prediction", PREDICTIONS), ("device", DEVICES)):
            need(isinstance(getattr(self, name), str) and getattr(self, name) in choices, name,
                 "one of " + ", ".join(choices))
        for name in ("hflip", "zero_terminal_snr", "learn_sigma"):
            need(isinstance(getattr(self, name), bool), name, "true or false")
        need(isinstance(self.out, str) and self.out.strip() != "", "out", "a folder name")
        need(self.data_dir is None or isinstance(self.data_dir, str) and self.data_dir.strip() != "",
             "data_dir", "a folder name")
        if not problems:
            problems += _schedule_problems(self.schedule, self.timesteps, self.prediction, self.zero_terminal_snr)
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **overrides) -> TrainConfig:
        """The config a checkpoint was trained with, writing to its folder, updated by ``overrides``.

        The checkpoint is the source of truth: a saved field that is not valid is refused naming the
        file; an override of a field in :data:`FIXED_ON_RESUME` that differs from the saved value is
        refused naming the flag (it would silently change the experiment); and ``steps`` must lie
        beyond the checkpoint's step. Other overrides (lr, steps, cadences, device) apply from here on.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        saved = {name: value for name, value in checkpoint.config.items() if name in names}
        saved["out"] = str(checkpoint.path.parent)
        try:
            cls(**saved)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {checkpoint.path}: its config is not valid: {exc}") from None
        changed = [name for name in FIXED_ON_RESUME if name in overrides and overrides[name] != saved.get(name)]
        if changed:
            flags = ", ".join(f"--{name.replace('_', '-')} {overrides[name]} (saved: {saved.get(name)})"
                              for name in changed)
            raise ValueError(f"{flags}: cannot change on --resume, since the resumed run would no longer "
                             f"be the one in {checkpoint.path}; start a new run with another --out")
        config = cls(**{**saved, **overrides})
        if config.steps <= checkpoint.step:
            raise ValueError(f"--steps {config.steps} is not beyond the checkpoint's step {checkpoint.step}: "
                             "nothing to train; pass a larger --steps to continue")
        return config

    def run_config(self) -> dict:
        """The JSON-ready config of a run: these fields plus the model's constructor arguments."""
        overrides = {"num_classes": self.num_classes, "null_class": bool(self.p_uncond), "learn_sigma": self.learn_sigma}
        if self.dropout is not None:
            overrides["dropout"] = self.dropout
        return {**dataclasses.asdict(self), "model": model_config(self.preset, **overrides)}


# What defines the experiment a checkpoint belongs to: refused as an override on --resume.
FIXED_ON_RESUME = ("dataset", "limit_data", "hflip", "preset", "dropout", "num_classes", "p_uncond", "schedule",
                   "zero_terminal_snr", "timesteps", "prediction", "min_snr_gamma", "learn_sigma", "batch_size", "seed")

# The chain must end close to pure noise, or sampling from N(0, I) starts far from q(x_T).
MAX_FINAL_ALPHA_BAR = 0.05


def _schedule_problems(name: str, T: int, prediction: str, zero_terminal_snr: bool = False) -> list[str]:
    """Why ``--schedule name --timesteps T [--zero-terminal-snr]`` cannot train a ``prediction`` model (empty when it can)."""
    where = f"--schedule {name}{' --zero-terminal-snr' if zero_terminal_snr else ''} with --timesteps {T}"
    if T > 100_000:
        return [f"{where}: at most 100000 timesteps are supported"]
    try:
        schedule = schedule_by_name(name, T, zero_terminal_snr)
    except ValueError as exc:
        return [f"{where} is not a valid schedule ({exc})"]
    final = schedule.alphas_cumprod[-1]
    if final > MAX_FINAL_ALPHA_BAR:
        return [f"{where} ends at alphas_cumprod = {final:.3g}, far from pure noise (need <= {MAX_FINAL_ALPHA_BAR}); "
                "use more timesteps"]
    if final == 0 and prediction == "eps":
        # ε-prediction cannot recover x₀ where ᾱ = 0; better to say so before training than after.
        return [f"{where} reaches alphas_cumprod = 0 at the last step, where an eps-predicting model cannot "
                "recover x0; use --prediction v or x0, more timesteps, or another schedule"]
    return []


CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))




def load_training_data(config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) in [−1, 1] and labels of ``config.dataset``, the first ``limit_data`` only."""
    images, labels = load_dataset(config.dataset, split="auto", data_dir=config.data_dir)
    return images[: config.limit_data], labels[: config.limit_data]


class Trainer:
    """Trains the U-Net of ``config`` on ``data`` (images, labels), by default the config's dataset.

    ``resume`` (a checkpoint, its path or its run folder) continues that run; its model, schedule
    and parameterisation must be the config's. ``fit()`` runs to ``config.steps`` steps.
    """

    def __init__(self, config: TrainConfig, data=None, resume=None, progress: bool = True):
        self.config, self.progress = config, progress
        self.device = check_device(config.device)
        self.world = world()
        if config.batch_size % self.world.size:
            raise ValueError(f"batch_size (--batch-size) is the global batch and must divide by the {self.world.size} "
                             f"MPI ranks, got {config.batch_size}")
        self.folder = RunFolder(config.out)
        self.run_config = config.run_config()
        if resume is None and self.folder.checkpoint_file.exists():
            raise ValueError(
                f"run folder {self.folder.path} already holds a checkpoint; continue it with --resume "
                f"{self.folder.path} or choose another --out"
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
        self.schedule = schedule_by_name(config.schedule, config.timesteps, config.zero_terminal_snr)
        self.model = build_model(self.run_config, rng=self.model_rng).to(self.device)
        self.ema = EMA(self.model, decay=config.ema_decay)  # after .to(): the averages live with the weights
        self.optimizer = Adam(self.model, lr=config.lr)
        self.batcher = Batcher(images, labels, batch_size=config.batch_size, rng=np.random.default_rng(batch_seed))
        self.timestep_sampler = UniformSampler(self.schedule.T)
        self.step, self.elapsed_s, self.saved_step = 0, 0.0, None
        if resume is not None:
            self._resume(resume)
        # Dropout masks differ across ranks: rank r's stream is rank 0's jumped r times (2^127
        # draws each), and jumping commutes with drawing, so rank 0's checkpoint restores them all.
        self.model_rng.bit_generator.state = self.model_rng.bit_generator.jumped(self.world.rank).state

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def checkpoint_file(self) -> Path:
        return self.folder.checkpoint_file

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
    def loss(self, x0: np.ndarray, y: np.ndarray | None = None):
        """The training loss on a batch x₀, a differentiable scalar (:func:`minidiff.diffusion.training_loss`,
        Ho et al. 2020, Algorithm 1), after random horizontal flips when ``hflip`` is on and with
        labels dropped to the null class at rate ``p_uncond`` (:func:`minidiff.guidance.drop_labels`)."""
        config = self.config
        if config.hflip:
            flip = self.rng.random(len(x0)) < 0.5
            x0 = np.where(flip[:, None, None, None], x0[..., ::-1], x0)
        rows = self.world.rows(len(x0))  # this rank's share; all of it in a single process
        labels = None
        if config.num_classes is not None:
            labels = drop_labels(y, config.p_uncond, config.num_classes, self.rng) if config.p_uncond else y
            labels = labels[rows]
        return training_loss(lambda x_t, t: self.model(x_t, t, labels), self.schedule, x0, self.rng,
                             prediction=config.prediction, min_snr_gamma=config.min_snr_gamma,
                             timestep_sampler=self.timestep_sampler, device=self.device, rows=rows).loss

    def train_step(self) -> tuple[float, float]:
        """Draw a batch, take one optimiser step; returns (loss, gradient norm before clipping).

        A NaN or infinite loss or gradient raises :class:`DivergenceError` before the weights
        move, so they and the last checkpoint stay finite.
        """
        x0, y = next(self.batcher)
        loss = self.loss(x0, y)
        self.model.zero_grad()
        loss.backward()
        # One Allreduce (none in a single process): the global batch's mean loss and gradients.
        value = self.world.average_gradients(self.model.parameters(), float(loss.item()))
        self._check_finite("loss", value)
        grad_norm = clip_grad_norm(self.model, self.config.grad_clip or math.inf)
        self._check_finite("gradient norm", grad_norm)
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

    # ----------------------------------------------------------------- the loop
    def fit(self) -> Path:
        """Train to ``config.steps`` steps; returns the checkpoint path.

        Ctrl-C finishes the step under way, saves a checkpoint, says how to resume, and re-raises
        KeyboardInterrupt. Runs inside :func:`minidiff.backend.performance_settings`.
        """
        with performance_settings():
            return self._fit()

    def _fit(self) -> Path:
        from tqdm import tqdm

        config, root = self.config, self.world.is_root
        if root:  # rank 0 alone owns the run folder
            self.folder.acquire()
        try:
            if root:
                self.folder.write_config(self.run_config)
                self.folder.truncate_log(self.step)
            bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True,
                       disable=not (self.progress and root))
            try:
                self._loop(bar)
            except KeyboardInterrupt:
                if self.saved_step != self.step:
                    self.save()
                if root:
                    tqdm.write(f"interrupted at step {self.step}; saved {self.checkpoint_file}. Resume with:\n"
                               f"  python -m minidiff train --resume {self.run_dir}", file=sys.stderr)
                raise
            finally:
                bar.close()
            if self.saved_step != self.step:
                self.save()
        finally:
            self.folder.release()
        return self.checkpoint_file

    def _loop(self, bar):
        config, root, check_every = self.config, self.world.is_root, sync_check_every()
        clock_start, elapsed_start = time.perf_counter(), self.elapsed_s
        window_start, window_steps = clock_start, 0
        while self.step < config.steps:
            with sigint_deferred():  # the whole step and its bookkeeping, or none of it
                loss, grad_norm = self.train_step()
                now = time.perf_counter()
                self.elapsed_s = elapsed_start + now - clock_start
                window_steps += 1
                images_per_s = window_steps * config.batch_size / max(now - window_start, 1e-9)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", refresh=False)
                bar.update(1)
                if check_every and self.step % check_every == 0:
                    self.world.check_identical(self.model.parameters(), f"step {self.step}")
                if root and self.step % config.log_every == 0:
                    self.folder.append_log(dict(step=self.step, loss=loss, lr=self.optimizer.lr, grad_norm=grad_norm,
                                                images_per_s=images_per_s, elapsed=self.elapsed_s))
                    window_start, window_steps = now, 0
                if root and config.sample_every and self.step % config.sample_every == 0:
                    self.save_samples()
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save()

    def save(self) -> Path:
        """Write the checkpoint (atomically: the previous one survives a crash mid-write).

        Weights that are not finite are never written: the run stops with a
        :class:`DivergenceError` and the previous checkpoint stays the last good one. Under MPI
        only rank 0 writes: the weights are the same on every rank.
        """
        if not self.world.is_root:
            self.saved_step = self.step
            return self.checkpoint_file
        for name, param in self.model.named_parameters():
            if not np.isfinite(param.numpy()).all():
                self._check_finite(f"parameter {name}", float("nan"))
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
        return save_image_grid(samples, self.folder.preview_file(self.step), scale=GRID_SCALE)
