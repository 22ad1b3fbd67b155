"""One denoising problem in three coordinate systems, and the conversions between them.

DDPM, EDM and flow matching all noise the data the same way up to a scale (Karras et al. 2022,
Eq. 4 and Table 1): x = s·(x₀ + σ·ε), ε ∼ N(0, I).

- DDPM / VP: s = √ᾱ, σ = √((1 − ᾱ)/ᾱ), so x = √ᾱ x₀ + √(1 − ᾱ) ε (Ho et al. 2020, Eq. 4);
- EDM / VE: s = 1, x = x₀ + σ ε;
- flow matching: s = 1 − t, σ = t/(1 − t), so x_t = (1 − t) x₀ + t ε, with noise at t = 1 as in
  diffusers and Stable Diffusion 3 (Esser et al. 2024, §2; Liu et al. 2023 put noise at t = 0).

A network's output at (x, noise level) is therefore one affine function of the pair (x̂₀, ε̂) in
any of them: ε̂ (Ho et al. 2020), x̂₀, the VP v = √ᾱ ε − √(1 − ᾱ) x₀ (Salimans & Ho 2022), EDM's
denoiser D = x̂₀ (Karras et al. 2022, Eq. 7) and the flow velocity v = ε − x₀ (Liu et al. 2023,
Eq. 1). The functions here are those maps, and nothing else: the samplers of
:mod:`minidiff.objectives.edm` and :mod:`minidiff.objectives.flow` take a DDPM model through them
(the VP bridge), and guidance, clipping and inpainting act on x̂₀ through them for every objective.

Papers:

- Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative
  Models" (Eqs. 1, 3 and 4, Table 1; Algorithms 1 and 2).
- Liu, Gong & Liu 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with
  Rectified Flow" (Eq. 1).
- Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (§2).
- Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models" (v, §4).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..diffusion import dynamic_thresholding


def batch_column(level, x):
    """A per-example noise level (N,) shaped (N, 1, …) to broadcast against the batch ``x``."""
    return get_array_module(x).asarray(level).reshape((-1,) + (1,) * (x.ndim - 1))


# Noise levels ---------------------------------------------------------------------------------


def vp_sigma(alphas_cumprod):
    """σ = √((1 − ᾱ)/ᾱ), the EDM noise level of a VP state (Karras et al. 2022, Table 1, "VP"; Eq. 4).

    The VP bridge: x_VP = √ᾱ (x₀ + σ ε), so a DDPM state divided by √ᾱ is an EDM state at σ.
    """
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def flow_time(sigma):
    """t = σ/(1 + σ): the flow-matching time of EDM noise level σ (Karras et al. 2022, Eq. 4 with s = 1 − t).

    x_t = (1 − t)(x₀ + σ ε) with σ = t/(1 − t) is (1 − t) x₀ + t ε, the straight path.
    """
    return sigma / (1.0 + sigma)


def flow_sigma(t):
    """σ = t/(1 − t), the EDM noise level of flow time t: the inverse of :func:`flow_time` (Karras et al. 2022, Eq. 4)."""
    return t / (1.0 - t)


# Predictions -----------------------------------------------------------------------------------


def velocity_from_x0_eps(x0, eps):
    """v = ε − x₀, the velocity of the straight path x_t = (1 − t) x₀ + t ε (Liu et al. 2023, Eq. 1)."""
    return eps - x0


def x0_from_velocity(x_t, t, v):
    """x̂₀ = x_t − t v̂: where the straight path through x_t with velocity v̂ started (Liu et al. 2023, Eq. 1)."""
    return x_t - batch_column(t, x_t) * v


def eps_from_velocity(x_t, t, v):
    """ε̂ = x_t + (1 − t) v̂: where the straight path through x_t with velocity v̂ ends (Liu et al. 2023, Eq. 1)."""
    return x_t + (1.0 - batch_column(t, x_t)) * v


def velocity_from_x0(x_t, t, x0):
    """v̂ = (x_t − x̂₀)/t, the velocity that leads from x̂₀ through x_t (Liu et al. 2023, Eq. 1); t > 0."""
    return (x_t - x0) / batch_column(t, x_t)


def eps_from_denoiser(x, sigma, denoised):
    """ε̂ = (x − D)/σ for EDM's x = x₀ + σ ε and its denoiser D = x̂₀ (Karras et al. 2022, Eq. 4 with s = 1)."""
    return (x - denoised) / batch_column(sigma, x)


def vp_v_from_velocity(x_t, t, v):
    """The VP v-prediction √ᾱ ε̂ − √(1 − ᾱ) x̂₀ (Salimans & Ho 2022, §4) of the VP state that flow
    state x_t at time t is, from the flow velocity v̂.

    √ᾱ = (1 − t)/n and √(1 − ᾱ) = t/n with n = √((1 − t)² + t²) (Karras et al. 2022, Eq. 4).
    """
    x0, eps = x0_from_velocity(x_t, t, v), eps_from_velocity(x_t, t, v)
    t = batch_column(t, x_t)
    return ((1.0 - t) * eps - t * x0) / get_array_module(x_t).sqrt((1.0 - t) ** 2 + t**2)


def replace_known(x0_hat, known=None, mask=None):
    """x̂₀ with the known pixels (``mask`` 0) set to ``known``: inpainting by replacing the estimate
    of the clean image, which every objective's sampler then follows (none when ``mask`` is None)."""
    return x0_hat if mask is None else (1 - mask) * known + mask * x0_hat


def clip_x0(x0_hat, clip_denoised=True, dynamic_threshold=None):
    """x̂₀ clipped to the data range [−1, 1], or dynamically thresholded at percentile ``dynamic_threshold``
    (Saharia et al. 2022, §2.3), as the DDPM samplers do (:func:`minidiff.diffusion.denoise_output`)."""
    if dynamic_threshold is not None:
        return dynamic_thresholding(x0_hat, dynamic_threshold)
    return get_array_module(x0_hat).clip(x0_hat, -1.0, 1.0) if clip_denoised else x0_hat


def constrained_denoiser(denoise, clip_denoised=True, dynamic_threshold=None, known=None, mask=None):
    """``denoise(x, σ) -> D`` with D = x̂₀ clipped (:func:`clip_x0`) and the known pixels re-imposed
    (:func:`replace_known`): what the DDPM samplers do to x̂₀, for EDM's sampler."""
    def constrained(x, sigma):
        return replace_known(clip_x0(denoise(x, sigma), clip_denoised, dynamic_threshold), known, mask)

    return constrained


def constrained_velocity(velocity, clip_denoised=True, dynamic_threshold=None, known=None, mask=None):
    """``velocity(x, t) -> v̂`` whose x̂₀ = x − t v̂ is clipped (:func:`clip_x0`) and has the known pixels
    re-imposed (:func:`replace_known`), v̂ recomputed from it (:func:`velocity_from_x0`); t > 0."""
    if not (clip_denoised or dynamic_threshold is not None or mask is not None):
        return velocity

    def constrained(x, t):
        x0 = x0_from_velocity(x, t, velocity(x, t))
        return velocity_from_x0(x, t, replace_known(clip_x0(x0, clip_denoised, dynamic_threshold), known, mask))

    return constrained


def velocity_from_denoiser(denoise):
    """The flow velocity v(x, t) of an EDM denoiser ``denoise(x̃, σ) -> D``, 0 < t < 1: the flow state x at t is
    the EDM state x̃ = x/(1 − t) at σ = t/(1 − t) (Karras et al. 2022, Eq. 4 with s = 1 − t), where x̂₀ = D,
    ε̂ = (x̃ − D)/σ and v = ε̂ − x̂₀ (Liu et al. 2023, Eq. 1). With a DDPM model's D (the VP bridge), Euler
    steps on this velocity are DDIM's steps."""
    def velocity(x, t):
        sigma = flow_sigma(np.asarray(t, dtype=np.float64))
        x_edm = x / (1.0 - batch_column(t, x))
        x0 = denoise(x_edm, sigma)
        return velocity_from_x0_eps(x0, eps_from_denoiser(x_edm, sigma, x0))

    return velocity
