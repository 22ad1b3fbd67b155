"""Latent diffusion (Rombach et al. 2022): diffuse an autoencoder's scaled latents instead of pixels.

A trained :class:`minidiff.autoencoder.AutoencoderKL` run gives the latent space. Its latents are
multiplied by the scale factor s = 1/std stored in its checkpoint (latent-diffusion's
``scale_by_std``), so that the diffusion model sees data of unit variance, as the noise schedules
assume:

    training:  z₀ = s · (μ(x) + σ(x) ⊙ ε),  ε ∼ N(0, I)   (a fresh draw from q(z|x) at every step)
    sampling:  x = D(ẑ₀ / s)

A diffusion run records its autoencoder -- folder, fingerprint of the weights, scale factor and
latent shape -- under ``"autoencoder"`` in its config (:meth:`LatentSpace.record`); resuming or
sampling it refuses an autoencoder that is missing or whose weights changed since.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .autoencoder import AutoencoderKL
from .autograd import no_grad
from .checkpoint import CheckpointError, load_checkpoint

__all__ = ["LatentSpace", "fingerprint"]


def fingerprint(state: dict) -> str:
    """The first 16 hex digits of SHA-256 over the weights (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = np.ascontiguousarray(state[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


class LatentSpace:
    """An autoencoder and the scale factor s of its latents: :meth:`encode` to q(z|x)'s parameters,
    :meth:`scaled_sample` for training, :meth:`decode` for sampling."""

    def __init__(self, autoencoder: AutoencoderKL, scale_factor: float, run: str, fingerprint: str):
        self.autoencoder, self.scale_factor, self.run, self.fingerprint = autoencoder.eval(), scale_factor, run, fingerprint

    @classmethod
    def load(cls, run, device: str = "cpu") -> LatentSpace:
        """The latent space of the autoencoder run folder (or checkpoint) ``run``; its live weights,
        which its scale factor was measured with. A missing or unreadable run is refused in one line."""
        try:
            checkpoint = load_checkpoint(run)
        except CheckpointError as exc:
            raise CheckpointError(f"autoencoder run {run}: {exc}") from None
        if checkpoint.config.get("kind") != "autoencoder":
            raise CheckpointError(f"{checkpoint.path} is not an autoencoder run (train one with "
                                  "python -m minidiff autoencoder train)")
        weights = checkpoint.sections["model"]
        model = AutoencoderKL(**checkpoint.config["model"])
        checkpoint.restore(model, "model")
        return cls(model.to(device), float(checkpoint.config["scale_factor"]), str(checkpoint.path.parent.resolve()),
                   fingerprint(weights))

    @classmethod
    def from_record(cls, record: dict, where, device: str = "cpu") -> LatentSpace:
        """The latent space a diffusion run's ``record`` names, refused in one line (naming ``where``,
        the diffusion checkpoint) when it is missing or its weights are no longer the recorded ones."""
        run = Path(record["run"])
        if not (run / "checkpoint.npz").exists():
            raise CheckpointError(f"{where} diffuses the latents of autoencoder {run}, which is missing "
                                  f"(no checkpoint.npz there)")
        space = cls.load(run, device)
        space.check(record, where)
        return space

    @classmethod
    def of_checkpoint(cls, checkpoint, device: str = "cpu") -> LatentSpace | None:
        """The latent space of a diffusion checkpoint (checked against its record), None for a pixel run."""
        record = checkpoint.config.get("autoencoder")
        return None if record is None else cls.from_record(record, f"checkpoint {checkpoint.path}", device)

    @property
    def image_shape(self) -> tuple:
        """(C, H, W) of the images the decoder makes."""
        config = self.autoencoder.config
        return config["in_channels"], config["image_size"], config["image_size"]

    def check(self, record: dict, where) -> None:
        """Refuse this latent space when it is not the one ``record`` describes."""
        if (self.fingerprint, self.scale_factor) != (record["fingerprint"], record["scale_factor"]):
            raise CheckpointError(
                f"{where} was trained on the latents of autoencoder {self.run} with fingerprint {record['fingerprint']} "
                f"and scale factor {record['scale_factor']:.6g}; it now has {self.fingerprint} and "
                f"{self.scale_factor:.6g} (retrained or replaced): use the original autoencoder or train anew")

    def record(self) -> dict:
        """What a diffusion run stores under ``"autoencoder"`` in its config."""
        return dict(run=self.run, fingerprint=self.fingerprint, scale_factor=self.scale_factor,
                    latent_shape=list(self.autoencoder.latent_shape))

    def encode(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """q(z|x)'s parameters for ``images`` (N, C, H, W) in [−1, 1]: (N, 2·z_channels, h, w), μ then σ,
        unscaled. Encoded once before training; :meth:`scaled_sample` draws from them."""
        parts = []
        with no_grad():
            for start in range(0, len(images), batch):
                posterior = self.autoencoder.encode(images[start:start + batch])
                parts.append(np.concatenate([posterior.mean.numpy(), posterior.std.numpy()], axis=1))
        return np.concatenate(parts).astype(np.float32)

    def scaled_sample(self, moments: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """z₀ = s·(μ + σ ⊙ ε), ε ∼ N(0, I) from ``rng``: a training batch from :meth:`encode`'s (N, 2z, h, w),
        latents scaled to unit std (Rombach et al. 2022, §4.3.2)."""
        c = moments.shape[1] // 2
        mean, std = moments[:, :c], moments[:, c:]
        return (self.scale_factor * (mean + std * rng.standard_normal(mean.shape))).astype(np.float32)

    def decode(self, z):
        """Images x = D(ẑ₀/s), clipped to [−1, 1], for scaled latents (N, z_channels, h, w) on any device
        (the decoder of Rombach et al. 2022, §3)."""
        with no_grad():
            images = self.autoencoder.decode(z / self.scale_factor).data
        return images.clip(-1.0, 1.0)
