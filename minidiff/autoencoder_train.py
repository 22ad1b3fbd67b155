"""Training the autoencoder of latent diffusion: ``python -m minidiff autoencoder train``.

An :class:`AutoencoderConfig` run is an ordinary run folder -- config.json, atomic checkpoints,
log.jsonl, preview grids, exact resume -- trained by the loop of :class:`minidiff.train.BaseTrainer`
on :func:`minidiff.autoencoder.autoencoder_loss`. Each checkpoint also records what latent diffusion
needs and a reader wants to know (:func:`minidiff.autoencoder.latent_statistics`, on the first
:data:`STATISTICS_IMAGES` training images): the latents' std, the scale factor 1/std
(latent-diffusion's ``scale_by_std``) and the reconstruction MSE.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .autograd import no_grad
from .autoencoder import PRESETS, AutoencoderKL, autoencoder_loss, latent_statistics
from .config import RunConfig, _is_real, _need
from .images import save_image_grid
from .sample import GRID_SCALE
from .train import BaseTrainer

STATISTICS_IMAGES = 1000  # images the latents' std and the reconstruction error are measured on
STATISTICS_SEED = 0  # ε of those latents: fixed, so a checkpoint's statistics do not depend on the run's streams


@dataclasses.dataclass
class AutoencoderConfig(RunConfig):
    """An autoencoder run: the shared fields of :class:`minidiff.config.RunConfig`, the preset and β."""

    preset: str = "kl-f4"
    kl_weight: float = 1e-4  # β of the KL term (per pixel, as latent-diffusion's kl_weight)
    warmup_steps: int = 100
    ema_decay: float = 0.999  # kept, as in every run; the latent space uses the live weights

    FIXED_ON_RESUME = RunConfig.FIXED_ON_RESUME + ("preset", "kl_weight")

    def __post_init__(self):
        if self.out is None:
            self.out = f"runs/{self.dataset}-{self.preset}"
        super().__post_init__()

    def problems(self) -> list[str]:
        problems = super().problems()
        _need(problems, self, isinstance(self.preset, str) and self.preset in PRESETS, "preset",
              "one of " + ", ".join(PRESETS))
        _need(problems, self, _is_real(self.kl_weight) and self.kl_weight >= 0, "kl_weight", "a finite number >= 0")
        return problems

    def run_config(self) -> dict:
        """The JSON-ready config: these fields, ``"kind": "autoencoder"`` and the model's constructor arguments."""
        return {**dataclasses.asdict(self), "kind": "autoencoder", "model": dict(PRESETS[self.preset])}


class AutoencoderTrainer(BaseTrainer):
    """Trains the :class:`~minidiff.autoencoder.AutoencoderKL` of ``config`` (Rombach et al. 2022, §3)."""

    command = "autoencoder train"  # resumed with python -m minidiff autoencoder train --resume

    def __init__(self, config: AutoencoderConfig, data=None, resume=None, progress: bool = True):
        self.run_config = config.run_config()
        super().__init__(config, data, resume, progress)
        self.statistics_images = self.batcher.arrays[0][:STATISTICS_IMAGES]
        self.statistics = None  # (latent std, reconstruction MSE) of the weights last measured

    def build_model(self, rng):
        return AutoencoderKL(**self.run_config["model"], rng=rng)

    def training_data(self, data):
        images, labels = super().training_data(data)
        expected = (self.run_config["model"]["in_channels"],) + (self.run_config["model"]["image_size"],) * 2
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"autoencoder preset {self.config.preset!r} takes images of shape "
                             f"(N, {', '.join(map(str, expected))}); the data has shape {images.shape}")
        return images, labels

    def loss(self, x0: np.ndarray, y: np.ndarray | None = None):
        """L = ‖x − D(z)‖²/D_x + β·KL/D_x on this rank's rows (:func:`minidiff.autoencoder.autoencoder_loss`)."""
        rows = self.world.rows(len(x0))  # this rank's share; all of it in a single process
        return autoencoder_loss(self.model, x0[rows], self.rng, self.config.kl_weight)[0]

    def measure(self) -> tuple[float, float]:
        """(latent std, reconstruction MSE) of the current weights on the statistics images."""
        self.model.eval()
        try:
            self.statistics = latent_statistics(self.model, self.statistics_images,
                                                np.random.default_rng(STATISTICS_SEED))
        finally:
            self.model.train()
        return self.statistics

    def checkpoint_config(self) -> dict:
        """The run config with the latents' std, the scale factor 1/std and the reconstruction MSE."""
        std, mse = self.measure()
        return {**self.run_config, "latent_std": std, "scale_factor": 1.0 / std, "reconstruction_mse": mse}

    def save_samples(self) -> Path:
        """``samples_step<N>.png``: the first ``sample_n`` training images over their reconstructions D(μ)."""
        x = self.batcher.arrays[0][: self.config.sample_n]
        self.model.eval()
        try:
            with no_grad():
                reconstruction = self.model.decode(self.model.encode(x).mean).numpy().clip(-1, 1)
        finally:
            self.model.train()
        return save_image_grid(np.concatenate([x, reconstruction]), self.folder.preview_file(self.step),
                               nrow=len(x), scale=GRID_SCALE)
