"""Editing with a trained model: img2img (SDEdit), inpainting (RePaint) and interpolation.

- :func:`sdedit_start` — SDEdit (Meng et al. 2022): noise a guide image to an intermediate step
  with q(x_t | x₀) and hand it to any sampler as ``x_T`` with ``t_start``; the sampler denoises
  from there. ``strength`` 0 returns the image, 1 starts at the last step.
- :func:`repaint_sample` — RePaint (Lugmayr et al. 2022): at every step the known pixels are
  replaced by a fresh sample of q(x_{t−1} | x₀), the unknown ones come from the model, and with
  resampling jumps the chain goes back up a few steps to let the two parts agree.
- :func:`slerp` — spherical interpolation of two starting noises x_T (or of two images'
  :func:`minidiff.sampling.ddim_encode`), decoded by a deterministic sampler (Song et al. 2021, §5.3).

Papers:

- Meng, He, Song, Song, Wu, Zhu & Ermon 2022, "SDEdit: Guided Image Synthesis and Editing with
  Stochastic Differential Equations".
- Lugmayr, Danelljan, Romero, Yu, Timofte & Van Gool 2022, "RePaint: Inpainting using Denoising
  Diffusion Probabilistic Models" (Algorithm 1).
- Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (interpolation, §5.3).
- Shoemake 1985, "Animating Rotation with Quaternion Curves" (slerp).
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module
from . import checks
from .diffusion import call_model, denoise_output, model_output_parts, p_mean_variance, q_sample, q_step
from .sampling import _recorder, _start, _timestep_batch, ddim_update, ddim_variance, respaced
from .schedule import extract, standard_normal


def strength_steps(strength: float, steps: int) -> int:
    """How many of ``steps`` denoising steps an SDEdit of ``strength`` ∈ [0, 1] runs: round(strength·steps)."""
    if not 0 <= checks.real(strength, "strength") <= 1:
        raise checks.ArgumentError(f"strength must lie in [0, 1], got {strength}")
    return round(strength * steps)


def sdedit_start(schedule, x0, strength: float, noise):
    """(x_{t₀}, t₀): the guide image x₀ perturbed by q(x_{t₀} | x₀) at t₀ = strength·T (Meng et al. 2022, §3).

    §3 writes the perturbation for the VE SDE, x_{t₀} ∼ N(x_guide, σ²(t₀) I); this is its VP
    variant, the same step written with DDPM's q(x_t | x₀).

    ``schedule`` is the (respaced) schedule the sampler will run on; t₀ is its index
    round(strength·T) − 1, so that the sampler then takes round(strength·T) steps
    (``sampler(..., x_T=x_{t₀}, t_start=t₀)``). x_{t₀} = √ᾱ x₀ + √(1 − ᾱ) ε with ε = ``noise``
    (Ho et al. 2020, Eq. 4). Strength 0 returns (x₀, −1): no step, the image itself.
    """
    t_start = strength_steps(strength, schedule.T) - 1
    if t_start < 0:
        return x0, t_start
    return q_sample(schedule, x0, _timestep_batch(t_start, x0), noise), t_start


def repaint_timesteps(T: int, jump_length: int = 1, jump_n_sample: int = 1) -> list[int]:
    """The indices RePaint's chain visits, from T − 1 down to −1 (x₀), with resampling jumps.

    Going down, at every multiple of ``jump_length`` below T − ``jump_length`` the chain goes
    back up ``jump_length`` steps, ``jump_n_sample − 1`` times there (Lugmayr et al. 2022,
    Algorithm 1 with their released code's jump schedule; the paper uses 10 and 10). The
    defaults (1, 1) make no jump: T − 1, T − 2, …, −1.
    """
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"jump_length and jump_n_sample must be at least 1, got {jump_length} and {jump_n_sample}")
    jumps_left = {t: jump_n_sample - 1 for t in range(0, T - jump_length, jump_length)}
    t, visited = T - 1, [T - 1]
    while t >= 0:
        t -= 1
        visited.append(t)
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            visited.extend(range(t + 1, t + jump_length + 1))
            t += jump_length
    return visited


def repaint_sample(model, schedule, shape, steps=None, spacing="uniform", *, known, mask, eta=1.0, variance=None,
                   jump_length=1, jump_n_sample=1, rng=None, prediction="eps", clip_denoised=True,
                   dynamic_threshold=None, x_T=None, callback=None, return_trajectory=False):
    """Inpaint ``known`` where ``mask`` is 0 (Lugmayr et al. 2022, Algorithm 1): returns x₀ equal to
    ``known`` on those pixels and sampled on the others (mask 1).

    Each step down draws x_{t−1}^known ∼ q(x_{t−1} | x₀) (Ho et al. 2020, Eq. 4; x₀ itself at the
    last step) and x_{t−1}^unknown ∼ p_θ(x_{t−1} | x_t) by the DDIM update with σ_t(η)
    (Song et al. 2021, Eqs. 12 and 16; η = 1 is DDPM's ancestral step, the paper's), and keeps
    x_{t−1} = (1 − mask) ⊙ x^known + mask ⊙ x^unknown: the paper's m, 1 on the known pixels, is
    1 − ``mask``. Given a DDPM ``variance`` (``"fixed_small"``, ``"fixed_large"`` or the model's
    ``"learned"`` one, as :func:`minidiff.sampling.ddpm_sample` takes), x^unknown is instead DDPM's
    own step μ_θ + σ_t z with that σ_t (Ho et al. 2020, Eq. 11), and ``eta`` is unused. A step up (a
    resampling jump, :func:`repaint_timesteps`) is one forward step q(x_t | x_{t−1}) (Ho et al. 2020, Eq. 2).
    ``known`` and ``mask`` broadcast against ``shape``. Returns x₀, or (x₀, [TrajectoryStep, …]).
    """
    schedule = respaced(schedule, steps, spacing)
    variances = ddim_variance(schedule, eta)  # σ_t(η)², Eq. 16
    report, trajectory = _recorder(callback, return_trajectory)
    rng, x = _start(rng, shape, x_T)
    known, mask = checks.float_array(known, "known"), checks.float_array(mask, "mask")
    for name, array in (("known", known), ("mask", mask)):
        checks.broadcasts_to(array, name, x.shape)
    if mask.size and (float(mask.min()) < 0 or float(mask.max()) > 1):  # 0 keep, 1 paint: a blend in between
        raise checks.ArgumentError(f"mask values must lie in [0, 1] (1: paint, 0: keep), got "
                                   f"[{float(mask.min()):.4g}, {float(mask.max()):.4g}]")
    xp = get_array_module(x)
    visited = repaint_timesteps(schedule.T, jump_length, jump_n_sample)
    steps_down = 0  # the index reported: model steps so far, jumps not counted
    for t, t_next in zip(visited[:-1], visited[1:]):
        if t_next > t:  # resampling jump: x_{t+1} ∼ q(x_{t+1} | x_t), Eq. 2
            x = q_step(schedule, x, _timestep_batch(t_next, x), standard_normal(rng, x))
            continue
        t_batch = _timestep_batch(t, x)
        output = call_model(model, schedule, x, t_batch, learned_variance=variance == "learned" or None)
        x0_hat, eps_hat = denoise_output(schedule, x, t_batch, output, prediction, clip_denoised, dynamic_threshold)
        report(steps_down, int(schedule.timesteps[t]), x, x0_hat)
        steps_down += 1
        z = standard_normal(rng, x)
        if variance is None:  # x^unknown ∼ p_θ(x_{t−1} | x_t) by DDIM's step with σ_t(η), Eq. 12
            sigma_squared = extract(variances, t_batch, x)
            unknown = ddim_update(x0_hat, eps_hat, extract(schedule.alphas_cumprod_prev, t_batch, x), sigma_squared)
            unknown = unknown + xp.sqrt(sigma_squared) * z
        else:  # by DDPM's step with its σ_t², Eq. 11 (no noise onto x₀, as in Algorithm 2)
            mean, _, log_variance = p_mean_variance(schedule, x, t_batch, x0_hat, variance,
                                                    model_output_parts(output, x)[1])
            unknown = mean + xp.exp(0.5 * log_variance) * (z if t > 0 else 0.0)
        known_t = known if t == 0 else q_sample(schedule, xp.broadcast_to(known, x.shape), t_batch - 1,
                                                standard_normal(rng, x))  # x^known ∼ q(x_{t−1} | x₀)
        x = (1 - mask) * known_t + mask * unknown  # the known region re-imposed
    return (x, trajectory) if return_trajectory else x


def slerp(a, b, alpha: float):
    """sin((1 − α)θ)/sin θ · a + sin(αθ)/sin θ · b, θ the angle between a and b, per example
    (Shoemake 1985; Song et al. 2021, §5.3, between two x_T).

    Gaussian noise lives near a sphere of radius √dim, which the straight line between two draws
    leaves; the arc keeps every point a plausible x_T. α = 0 and 1 give a and b exactly; (nearly)
    parallel a and b, where the arc is a line, get the line's weights 1 − α and α.
    """
    xp = get_array_module(a)
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    cosine = (flat_a * flat_b).sum(1) / (xp.linalg.norm(flat_a, axis=1) * xp.linalg.norm(flat_b, axis=1))
    theta = xp.arccos(xp.clip(cosine, -1.0, 1.0)).reshape((-1,) + (1,) * (a.ndim - 1))
    sin_theta = xp.sin(theta)
    line = sin_theta < 1e-6
    sin_theta = xp.where(line, 1.0, sin_theta)
    weight_a = xp.where(line, 1.0 - alpha, xp.sin((1.0 - alpha) * theta) / sin_theta)
    weight_b = xp.where(line, alpha, xp.sin(alpha * theta) / sin_theta)
    return (weight_a * a + weight_b * b).astype(a.dtype, copy=False)


def interpolation_path(x_a, x_b, n: int):
    """``n`` points (n, …) on the arc from x_a to x_b (each one example, shaped (1, …)), ends included."""
    return np.concatenate([slerp(x_a, x_b, alpha) for alpha in np.linspace(0.0, 1.0, n)])
