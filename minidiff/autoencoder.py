"""A small KL-regularised autoencoder (Rombach et al. 2022, §3 and App. G): the first stage of latent diffusion.

The encoder maps an image x (N, C, H, W) to the parameters of a diagonal Gaussian q(z|x) over
latents z (N, z_channels, H/f, W/f), f = 2^(levels − 1); the decoder maps z back to an image.
Training minimises, per image (Rombach et al. 2022, App. G, without their perceptual and GAN terms),

    L = ‖x − D(z)‖² / D_x + β · KL(q(z|x) ‖ N(0, I)) / D_x,   z ∼ q(z|x) (reparameterised),

with D_x the number of pixels: their summed loss divided by D_x, so the reconstruction term is a
per-pixel MSE and β is their ``kl_weight``. A small β keeps the latents almost free of the KL
term, so their scale is arbitrary: latent diffusion multiplies them by 1/std, measured on the
data once the autoencoder is trained (their ``scale_by_std``; :func:`latent_statistics`).

The blocks are the U-Net's (:class:`minidiff.unet.ResBlock` without a time embedding, self-attention,
down- and upsampling), laid out as latent-diffusion's ``Encoder`` / ``Decoder``.
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from . import nn
from .autograd import DEFAULT_DTYPE, Tensor, no_grad
from .unet import AttentionBlock, Downsample, ResBlock, Upsample, _as_input

__all__ = ["DiagonalGaussian", "Encoder", "Decoder", "AutoencoderKL", "autoencoder_loss", "latent_statistics",
           "PRESETS"]

LOGVAR_RANGE = (-30.0, 20.0)  # latent-diffusion's clamp of log σ², so exp() neither under- nor overflows


class DiagonalGaussian:
    """q(z|x) = N(μ, diag σ²) from the encoder's 2·z_channels output, split into μ and log σ²
    (latent-diffusion's ``DiagonalGaussianDistribution``)."""

    def __init__(self, moments):
        c = moments.shape[1] // 2
        self.mean = moments[:, :c]  # μ: (N, z, h, w)
        self.logvar = F.clamp(moments[:, c:], *LOGVAR_RANGE)  # log σ²: (N, z, h, w)
        self.std = (0.5 * self.logvar).exp()  # σ = exp(½ log σ²)

    def sample(self, noise):
        """z = μ + σ ⊙ ε for a given ε ∼ N(0, I): the reparameterisation trick (Kingma & Welling 2014, §2.4)."""
        return self.mean + self.std * noise

    def kl(self):
        """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) per image: (N,) (Kingma & Welling 2014, App. B)."""
        terms = self.mean * self.mean + self.std * self.std - 1.0 - self.logvar  # (N, z, h, w)
        return 0.5 * terms.reshape(terms.shape[0], -1).sum(axis=1)


class Encoder(nn.Module):
    """x (N, C, H, W) → the moments (N, 2·z_channels, H/f, W/f) of q(z|x): conv_in, per level
    ``num_res_blocks`` ResBlocks then a stride-2 Downsample (not after the last), a middle of
    ResBlock, attention, ResBlock, then GroupNorm, SiLU, conv_out (latent-diffusion's ``Encoder``)."""

    def __init__(self, in_channels, base_channels, channel_mults, num_res_blocks, z_channels, num_groups, layer):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1, **layer)
        self.down = nn.Sequential()
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, base_channels * mult, None, num_groups, **layer))
                ch = base_channels * mult
            if level != len(channel_mults) - 1:
                self.down.append(Downsample(ch, **layer))
        self.mid = nn.Sequential(ResBlock(ch, ch, None, num_groups, **layer), AttentionBlock(ch, num_groups, **layer),
                                 ResBlock(ch, ch, None, num_groups, **layer))
        self.norm_out = nn.GroupNorm(num_groups, ch, dtype=layer["dtype"])
        self.conv_out = nn.Conv2d(ch, 2 * z_channels, 3, padding=1, **layer)

    def forward(self, x):
        h = self.mid(self.down(self.conv_in(x)))  # (N, ch, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 2·z, H/f, W/f): μ then log σ²


class Decoder(nn.Module):
    """z (N, z_channels, h, w) → x̂ (N, C, h·f, w·f): the encoder mirrored, with nearest 2× Upsample
    between levels (latent-diffusion's ``Decoder``)."""

    def __init__(self, in_channels, base_channels, channel_mults, num_res_blocks, z_channels, num_groups, layer):
        super().__init__()
        ch = base_channels * channel_mults[-1]
        self.conv_in = nn.Conv2d(z_channels, ch, 3, padding=1, **layer)
        self.mid = nn.Sequential(ResBlock(ch, ch, None, num_groups, **layer), AttentionBlock(ch, num_groups, **layer),
                                 ResBlock(ch, ch, None, num_groups, **layer))
        self.up = nn.Sequential()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks):
                self.up.append(ResBlock(ch, base_channels * mult, None, num_groups, **layer))
                ch = base_channels * mult
            if level != 0:
                self.up.append(Upsample(ch, **layer))
        self.norm_out = nn.GroupNorm(num_groups, ch, dtype=layer["dtype"])
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1, **layer)

    def forward(self, z):
        h = self.up(self.mid(self.conv_in(z)))  # (N, base, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, C, H, W)


PRESETS = {
    # 28×28×1 → 7×7×4 (f = 4, Rombach et al. 2022's KL-f4 in miniature): 32, 64, 64 channels at
    # 28, 14 and 7 pixels, one ResBlock per level.
    "kl-f4": dict(in_channels=1, image_size=28, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                  z_channels=4, num_groups=8),
    # 28×28×1 → 14×14×2 (f = 2).
    "kl-f2": dict(in_channels=1, image_size=28, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                  z_channels=2, num_groups=8),
    # For tests: f = 4 at 8 and 16 channels.
    "kl-f4-tiny": dict(in_channels=1, image_size=28, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                       z_channels=4, num_groups=4),
}


class AutoencoderKL(nn.Module):
    """The KL-regularised autoencoder (Rombach et al. 2022, §3): :class:`Encoder`, q(z|x), :class:`Decoder`.

    ``config`` holds the constructor's arguments, so ``AutoencoderKL(**config)`` rebuilds it.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, base_channels: int = 32, channel_mults=(1, 2, 2),
                 num_res_blocks: int = 1, z_channels: int = 4, num_groups: int = 8, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        channel_mults = tuple(channel_mults)
        self.config = dict(in_channels=in_channels, image_size=image_size, base_channels=base_channels,
                           channel_mults=channel_mults, num_res_blocks=num_res_blocks, z_channels=z_channels,
                           num_groups=num_groups)
        self.factor = 2 ** (len(channel_mults) - 1)  # f: the downsampling factor
        if image_size % self.factor:
            raise ValueError(f"AutoencoderKL: image_size={image_size} cannot be halved {len(channel_mults) - 1} "
                             f"times evenly")
        self.latent_shape = (z_channels, image_size // self.factor, image_size // self.factor)
        args = (in_channels, base_channels, channel_mults, num_res_blocks, z_channels, num_groups, dict(rng=rng, dtype=dtype))
        self.encoder, self.decoder = Encoder(*args), Decoder(*args)

    def encode(self, x) -> DiagonalGaussian:
        """q(z|x) for images x (N, C, H, W) in [−1, 1]."""
        expected = (self.config["in_channels"], self.config["image_size"], self.config["image_size"])
        if len(x.shape) != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"AutoencoderKL: expected images (N, {', '.join(map(str, expected))}), got shape "
                             f"{tuple(x.shape)}")
        return DiagonalGaussian(self.encoder(_as_input(x, self.encoder.conv_in.weight)))

    def decode(self, z):
        """x̂ = D(z) for latents z (N, z_channels, h, w): unbounded, [−1, 1] where it learnt the data."""
        if len(z.shape) != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"AutoencoderKL: expected latents (N, {', '.join(map(str, self.latent_shape))}), got "
                             f"shape {tuple(z.shape)}")
        return self.decoder(_as_input(z, self.decoder.conv_in.weight))

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def autoencoder_loss(model: AutoencoderKL, x: np.ndarray, rng: np.random.Generator, kl_weight: float):
    """(L, reconstruction MSE, KL per pixel) for a batch x: the module docstring's loss (the KL-reg
    autoencoder of Rombach et al. 2022, §3), z drawn with ε from ``rng``. L is a differentiable scalar; the other two are floats for the log."""
    posterior = model.encode(x)
    noise = rng.standard_normal(posterior.mean.shape).astype(posterior.mean.dtype)  # ε ∼ N(0, I)
    reconstruction = model.decode(posterior.sample(noise))  # x̂ = D(μ + σ ⊙ ε)
    pixels = x[0].size  # D_x
    error = reconstruction - Tensor(x, dtype=reconstruction.dtype)
    mse = (error * error).mean()  # ‖x − x̂‖² / D_x, averaged over the batch
    kl = posterior.kl().mean() / pixels  # KL / D_x, averaged over the batch
    return mse + kl_weight * kl, float(mse.item()), float(kl.item())


def latent_statistics(model: AutoencoderKL, images: np.ndarray, rng: np.random.Generator, batch: int = 256):
    """(std of z ∼ q(z|x) over ``images``, reconstruction MSE of D(μ)): the latents' scale, whose
    inverse latent diffusion multiplies them by (Rombach et al. 2022, §4.3.2 and App. G, "scale_by_std"),
    and the autoencoder's error. The std is over every latent element, as latent-diffusion's
    ``1/z.flatten().std()``."""
    total, total_sq, count, squared_error = 0.0, 0.0, 0, 0.0
    with no_grad():
        for start in range(0, len(images), batch):
            x = images[start:start + batch]
            posterior = model.encode(x)
            z = posterior.sample(rng.standard_normal(posterior.mean.shape).astype(posterior.mean.dtype)).numpy()
            total, total_sq, count = total + z.sum(dtype=np.float64), total_sq + np.square(z, dtype=np.float64).sum(), count + z.size
            squared_error += np.square(model.decode(posterior.mean).numpy() - x, dtype=np.float64).sum()
    mean = total / count
    return float(np.sqrt(total_sq / count - mean * mean)), float(squared_error / images.size)
