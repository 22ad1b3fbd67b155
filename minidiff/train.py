"""Training a diffusion model: the :class:`Trainer` loop (its :class:`TrainConfig` is :mod:`minidiff.config`).

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
import warnings
from pathlib import Path

import numpy as np

from .backend import check_device, performance_settings
from .batching import Batcher
from .checkpoint import Checkpoint, build_model, load_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from .datasets import dataset_info, load_dataset
from .diffusion import UniformSampler, training_loss
from .distributed import sync_check_every, world
from .guidance import drop_labels
from .images import save_image_grid
from .latent import LatentSpace
from .objectives import DEFAULT_SAMPLER, SIGMA_DATA_OBJECTIVES, edm
from .objectives import training_loss as objective_loss
from .optim import EMA, Adam, clip_grad_norm, learning_rate
from .runfolder import RunFolder, sigint_deferred
from .sample import GRID_SCALE, class_labels, generate
from .schedule import schedule_by_name


class DivergenceError(RuntimeError):
    """The loss or the gradient became NaN or infinite; the run stopped without saving."""


def load_training_data(config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) in [−1, 1] and labels of ``config.dataset``, the first ``limit_data`` only."""
    images, labels = load_dataset(config.dataset, split="auto", data_dir=config.data_dir)
    if config.limit_data is not None and config.limit_data > len(images):  # the run would record a limit it never had
        raise ValueError(f"--limit-data {config.limit_data} is more than the {len(images)} images found; "
                         f"give at most {len(images)}")
    return images[: config.limit_data], labels[: config.limit_data]


class BaseTrainer:
    """The loop every run folder is trained by: Adam with warm-up and clipping, the EMA, exact resume.

    A subclass says what is trained: :meth:`build_model`, :meth:`training_data` (what the
    batcher draws from), :meth:`loss` on a batch, and :meth:`save_samples` (a preview grid);
    :meth:`checkpoint_config` may add what it measured to the checkpoint's config. ``resume`` (a
    checkpoint, its path or its run folder) continues that run, which must be of the same model.
    ``fit()`` runs to ``config.steps`` steps.
    """

    command = "train"  # the CLI command that resumes such a run

    def __init__(self, config: RunConfig, data=None, resume=None, progress: bool = True):
        """A subclass sets ``self.run_config``, the JSON-ready config its checkpoints record, first."""
        self.config, self.progress = config, progress
        self.device = check_device(config.device)
        self.world = world()
        if config.batch_size % self.world.size:
            raise ValueError(f"batch_size (--batch-size) is the global batch and must divide by the {self.world.size} "
                             f"MPI ranks, got {config.batch_size}")
        self.folder = RunFolder(config.out)
        if resume is None and self.folder.checkpoint_file.exists():
            raise ValueError(
                f"run folder {self.folder.path} already holds a checkpoint; continue it with --resume "
                f"{self.folder.path} or choose another --out"
            )
        if resume is not None:
            resume = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume)
            resume.check_config(self.run_config)  # before the data is loaded: fail fast
            edits = self.folder.config_edits(resume.config) if self.world.is_root else []
            if edits:
                warnings.warn(f"{self.folder.config_file} differs from the checkpoint's config in {', '.join(edits)}: "
                              "config.json is not read on resume (the checkpoint and the flags given are) and is "
                              "rewritten now; give changes as flags, e.g. --lr", RuntimeWarning, stacklevel=2)
        images, labels = self.training_data(data)

        # Independent streams, so that e.g. turning on --hflip does not change the data order.
        model_seed, batch_seed, train_seed = np.random.SeedSequence(config.seed).spawn(3)
        # The initialisation generator lives on in the Dropout layers, which draw their masks from it.
        self.model_rng = np.random.default_rng(model_seed)
        self.rng = np.random.default_rng(train_seed)  # t, ε and flips (the autoencoder's ε)
        self.model = self.build_model(self.model_rng).to(self.device)
        self.ema = EMA(self.model, decay=config.ema_decay)  # after .to(): the averages live with the weights
        self.optimizer = Adam(self.model, lr=config.lr)
        self.batcher = Batcher(images, labels, batch_size=config.batch_size, rng=np.random.default_rng(batch_seed))
        self.step, self.elapsed_s, self.saved_step = 0, 0.0, None
        if resume is not None:
            self._resume(resume)
        # Dropout masks differ across ranks: rank r's stream is rank 0's jumped r times (2^127
        # draws each), and jumping commutes with drawing, so rank 0's checkpoint restores them all.
        self.model_rng.bit_generator.state = self.model_rng.bit_generator.jumped(self.world.rank).state

    # ----------------------------------------------------------------- what a subclass says
    def build_model(self, rng):
        """The network to train, initialised from ``rng``."""
        return build_model(self.run_config, rng=rng)

    def training_data(self, data) -> tuple[np.ndarray, np.ndarray]:
        """(arrays the batcher draws from, labels): ``data`` if given, else the config's dataset."""
        return load_training_data(self.config) if data is None else data

    def loss(self, x0: np.ndarray, y: np.ndarray | None = None):
        raise NotImplementedError

    def save_samples(self) -> Path:
        raise NotImplementedError

    def checkpoint_config(self) -> dict:
        """The config written into each checkpoint: the run config."""
        return self.run_config

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def checkpoint_file(self) -> Path:
        return self.folder.checkpoint_file

    def _resume(self, checkpoint: Checkpoint):
        for target, section in ((self.model, "model"), (self.ema, "ema"), (self.optimizer, "optimizer"),
                                (self.batcher, "batcher")):
            checkpoint.restore(target, section)
        self.rng.bit_generator.state = checkpoint.rng_state("train")
        self.model_rng.bit_generator.state = checkpoint.rng_state("model")
        self.step = self.saved_step = checkpoint.step
        self.elapsed_s = checkpoint.elapsed_s

    # ----------------------------------------------------------------- one step
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
        self.optimizer.lr = learning_rate(self.step, self.config.steps, self.config.warmup_steps, self.config.lr,
                                          self.config.lr_schedule)
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
                               f"  python -m minidiff {self.command} --resume {self.run_dir}", file=sys.stderr)
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
            values = param.numpy()
            bad = values[~np.isfinite(values)]
            if bad.size:
                self._check_finite(f"parameter {name}", float(bad[0]))
        save_checkpoint(
            self.checkpoint_file, config=self.checkpoint_config(), step=self.step, elapsed_s=self.elapsed_s,
            model=self.model.state_dict(), ema=self.ema.state_dict(), optimizer=self.optimizer.state_dict(),
            batcher=self.batcher.state_dict(), rng={"train": self.rng, "model": self.model_rng},
        )
        self.saved_step = self.step
        return self.checkpoint_file


class Trainer(BaseTrainer):
    """Trains the diffusion model of ``config`` (U-Net or DiT, on pixels or on an autoencoder's
    latents) on ``data`` (images, labels), by default the config's dataset.

    ``resume`` (a checkpoint, its path or its run folder) continues that run; its model, schedule,
    parameterisation and autoencoder must be the config's. ``fit()`` runs to ``config.steps`` steps.
    """

    def __init__(self, config: TrainConfig, data=None, resume=None, progress: bool = True):
        # With --latent, the autoencoder first: the run config records it and the model takes its latents.
        # A resumed run's is the one it recorded (by absolute path), refused if missing or changed since.
        if resume is not None and not isinstance(resume, Checkpoint):
            resume = load_checkpoint(resume)
        recorded = None if resume is None else resume.config.get("autoencoder")
        device = check_device(config.device)
        self.latent = None
        if config.latent:
            self.latent = (LatentSpace.from_record(recorded, f"checkpoint {resume.path}", device) if recorded
                           else LatentSpace.load(config.latent, device))
        self.run_config = config.run_config(None if self.latent is None else self.latent.record())
        self.schedule = schedule_by_name(config.schedule, config.timesteps, config.zero_terminal_snr)
        self.timestep_sampler = UniformSampler(self.schedule.T)
        super().__init__(config, data, resume, progress)
        self.objective_loss = None if self.config.objective == "ddpm" else objective_loss(self.config)

    def training_data(self, data):
        """The images and labels (``data`` if given, else the config's dataset; a reflow student's are its
        teacher's pairs, :mod:`minidiff.fewstep`); with ``--latent``, the images' q(z|x) parameters (μ, σ), encoded once.
        For edm and consistency without ``--sigma-data``, σ_data is measured here on the data (the scaled latents) and recorded."""
        images, labels = super().training_data(data)
        self._check_data(images, labels, dataset_info(self.config.dataset).num_classes if data is None else None)
        moments = None if self.latent is None else self.latent.encode(images)
        if self.config.objective in SIGMA_DATA_OBJECTIVES and self.config.sigma_data is None:
            x0 = images if moments is None else self.latent.scaled_sample(moments, np.random.default_rng(0))
            self.config = dataclasses.replace(self.config, sigma_data=edm.measure_sigma_data(x0))
            self.run_config = self.config.run_config(None if self.latent is None else self.latent.record())
        return (images, labels) if moments is None else (moments, labels)

    def _check_data(self, images, labels, dataset_classes: int | None):
        """Refuse data the model (or the autoencoder) cannot take; ``dataset_classes``: the class count
        of the dataset it came from."""
        model = self.run_config["model"] if self.latent is None else self.latent.autoencoder.config
        expected = (model["in_channels"], model["image_size"], model["image_size"])
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"preset {self.config.preset!r} takes images of shape (N, {', '.join(map(str, expected))}); "
                             f"the data has shape {images.shape}")
        num_classes = self.config.num_classes
        if num_classes is not None and dataset_classes is not None and num_classes != dataset_classes:
            # More would add classes never trained, that sample --label then draws as if they were.
            raise ValueError(f"--num-classes {num_classes} does not match the {self.config.dataset} dataset's "
                             f"{dataset_classes} classes (labels 0..{dataset_classes - 1}); give --num-classes "
                             f"{dataset_classes}")
        if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
            raise ValueError(f"the data has label {int(labels.max())}, outside --num-classes {self.config.num_classes}")

    # ----------------------------------------------------------------- one step
    def loss(self, x0: np.ndarray, y: np.ndarray | None = None):
        """The training loss on a batch x₀ (with ``--latent``, z₀ drawn from its q(z|x)), a differentiable
        scalar (:meth:`objective`: Algorithm 1 of Ho et al. 2020, or edm's, flow's and consistency's own,
        :mod:`minidiff.objectives`), after random horizontal flips when ``hflip`` is on and with
        labels dropped to the null class at rate ``p_uncond`` (:func:`minidiff.guidance.drop_labels`)."""
        config = self.config
        if config.hflip:
            flip = self.rng.random(len(x0)) < 0.5
            x0 = np.where(flip[:, None, None, None], x0[..., ::-1], x0)
        if self.latent is not None:
            x0 = self.latent.scaled_sample(x0, self.rng)  # z₀ = s·(μ + σ ⊙ ε): a fresh draw from q(z|x)
        rows = self.world.rows(len(x0))  # this rank's share; all of it in a single process
        labels = None
        if config.num_classes is not None:
            labels = drop_labels(y, config.p_uncond, config.num_classes, self.rng) if config.p_uncond else y
            labels = labels[rows]

        def denoiser(x_t, t):
            return self.model(x_t, t, labels)

        denoiser.learned_variance = self.model.learned_variance  # ε̂ and v stacked: L_hybrid
        return self.objective(denoiser, x0, labels, rows)

    def objective(self, model, x0: np.ndarray, labels, rows: slice):
        """This run's loss on its rows of the batch x₀, given ``model(x_t, t)`` with the ``labels``
        closed over: Algorithm 1 (:func:`minidiff.diffusion.training_loss`), or for edm, flow and consistency
        their own (:mod:`minidiff.objectives`). A few-step student puts its teacher's loss here (:mod:`minidiff.fewstep`)."""
        config = self.config
        if self.objective_loss is not None:  # edm, flow or consistency (minidiff.objectives)
            return self.objective_loss(model, x0, self.rng, device=self.device, rows=rows, step=self.step).loss
        return training_loss(model, self.schedule, x0, self.rng, prediction=config.prediction,
                             min_snr_gamma=config.min_snr_gamma, timestep_sampler=self.timestep_sampler,
                             device=self.device, rows=rows).loss

    def preview_sampler(self) -> dict:
        """How preview grids are drawn: DDIM (Heun for edm and flow) on ``sample_steps`` steps (a few-step
        student: its own steps)."""
        objective = self.config.objective
        steps = 1 if objective == "consistency" else min(self.config.sample_steps, self.schedule.T)  # its one step
        return dict(sampler=DEFAULT_SAMPLER[objective], steps=steps)

    def save_samples(self) -> Path:
        """``samples_step<N>.png``: DDIM (Heun for edm and flow) with the EMA weights from a fixed seed, so
        that successive grids show the same x_T maturing into digits (latents decoded to images)."""
        config = self.config
        labels = class_labels(config.sample_n, config.num_classes)
        self.model.eval()
        try:
            with self.ema.applied(self.model):
                samples = generate(self.model, self.schedule, config.sample_n, seed=config.seed, labels=labels,
                                   prediction=config.prediction, objective=config.objective,
                                   sigma_data=config.sigma_data, decode=self.latent and self.latent.decode,
                                   **self.preview_sampler())
        finally:
            self.model.train()
        return save_image_grid(samples, self.folder.preview_file(self.step), scale=GRID_SCALE)
