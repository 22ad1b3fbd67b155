"""Samplers of the reverse process over any callable ``model(x_t, t) -> prediction``.

``x_t`` is an (N, …) NumPy or CuPy array and ``t`` an int64 array of shape (N,) holding the
model's own (training) timesteps; the prediction is ε, x₀ or v (``prediction=``). Class labels
or guidance are the caller's business: close over them in ``model``.

All samplers walk a schedule from index T−1 down to 0. DDIM and DPM-Solver++ first respace
the schedule to ``steps`` indices, so one step from index i to i−1 is one jump between the
retained timesteps. A NumPy ``rng`` makes every sampler reproducible: noise is drawn on the
host and moved to the array module of ``x_T``, so pass a CuPy ``x_T`` to sample on the GPU.
Each step's input x_t and its x̂₀ are exposed through ``callback(step_index, t, x_t, x0_hat)``
or ``return_trajectory=True``.

Papers:

- Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (Algorithm 2, Eq. 11).
- Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (respacing).
- Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (Eqs. 12, 14, 16).
- Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models" (Algorithm 2, DPM-Solver++(2M)).
- Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
  Understanding" (dynamic thresholding, §2.3).
- Lin, Liu, Li & Yang 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
  (timestep spacing that starts at the last step).
"""

from collections import namedtuple

import numpy as np

from .diffusion import denoise, p_mean_variance, predict_eps_from_x0
from .backend import get_array_module
from .schedule import extract, space_timesteps, standard_normal

TrajectoryStep = namedtuple("TrajectoryStep", "index t x_t x0_hat")
TrajectoryStep.__doc__ = "One sampler step: its index, the model timestep t, the input x_t and the model's x̂₀."


def _timestep_batch(t, x):
    xp = get_array_module(x)
    return xp.full(len(x), t, dtype=xp.int64)


def _start(rng, shape, x_T):
    """The generator and the starting x_T ∼ N(0, I) (or the caller's x_T)."""
    rng = np.random.default_rng() if rng is None else rng
    if x_T is None:
        return rng, rng.standard_normal(shape)
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    return rng, x_T


def _denoising_loop(step, schedule, x, callback, return_trajectory):
    """Apply ``step(x_t, t) -> (x_{t−1}, x̂₀)`` for t = T−1, …, 0, reporting each step."""
    trajectory = []
    for index, t in enumerate(range(schedule.T - 1, -1, -1)):
        x_prev, x0_hat = step(x, t)
        model_t = int(schedule.timesteps[t])
        if callback is not None:
            callback(index, model_t, x, x0_hat)
        if return_trajectory:
            trajectory.append(TrajectoryStep(index, model_t, x, x0_hat))
        x = x_prev
    return (x, trajectory) if return_trajectory else x


# DDPM ------------------------------------------------------------------------------------


def p_sample(model, schedule, x_t, t, rng, variance="fixed_small", prediction="eps", clip_denoised=True,
             dynamic_threshold=None):
    """One ancestral step x_{t−1} = μ_θ(x_t, t) + σ_t z, z ∼ N(0, I) (Ho et al. 2020, Algorithm 2 / Eq. 11).

    μ_θ is computed in its x₀-form μ̃_t(x_t, x̂₀) (Eq. 7), which equals Eq. 11 when x̂₀ comes
    from ε̂ and also honours a clipped x̂₀. σ_t² is β̃_t (``"fixed_small"``) or β_t
    (``"fixed_large"``); no noise is added at t = 0. ``t`` is an int index into ``schedule``.
    Returns (x_{t−1}, x̂₀).
    """
    t_batch = _timestep_batch(t, x_t)
    x0_hat, _ = denoise(model, schedule, x_t, t_batch, prediction, clip_denoised, dynamic_threshold)
    mean, _, log_variance = p_mean_variance(schedule, x_t, t_batch, x0_hat, variance)
    if t == 0:
        return mean, x0_hat
    return mean + get_array_module(x_t).exp(0.5 * log_variance) * standard_normal(rng, x_t), x0_hat


def ddpm_sample(model, schedule, shape, rng=None, variance="fixed_small", prediction="eps", clip_denoised=True,
                dynamic_threshold=None, x_T=None, callback=None, return_trajectory=False):
    """Ancestral sampling x_T → x₀ with :func:`p_sample` at every index of ``schedule`` (Ho et al. 2020, Algorithm 2).

    Pass ``schedule.respace(...)`` to sample on fewer steps (Nichol & Dhariwal 2021, §4).
    Returns x₀, or (x₀, [TrajectoryStep, …]) with ``return_trajectory=True``.
    """
    rng, x = _start(rng, shape, x_T)

    def step(x_t, t):
        return p_sample(model, schedule, x_t, t, rng, variance, prediction, clip_denoised, dynamic_threshold)

    return _denoising_loop(step, schedule, x, callback, return_trajectory)


# DDIM ------------------------------------------------------------------------------------


def ddim_variance(schedule, eta):
    """σ_t(η)² = η² (1 − ᾱ_{t−1})/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−1}) for every index t (Song et al. 2021, Eq. 16).

    η = 1 gives the DDPM posterior variance β̃_t; η = 0 the deterministic DDIM. η is refused
    if negative, or so large that σ_t² exceeds 1 − ᾱ_{t−1} (Eq. 12 would need √ of a negative).
    """
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got eta={eta}")
    alphas_cumprod, alphas_cumprod_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    variance = eta**2 * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod) * (1.0 - alphas_cumprod / alphas_cumprod_prev)
    too_large = np.flatnonzero(variance > (1.0 - alphas_cumprod_prev) * (1.0 + 1e-9))
    if too_large.size:
        raise ValueError(f"eta={eta} is too large: sigma^2 exceeds 1 - alphas_cumprod_prev at t={too_large[0]}")
    return variance


def _ddim_combine(x0_hat, eps_hat, alphas_cumprod_to, variance):
    """√ᾱ_to x̂₀ + √(1 − ᾱ_to − σ²) ε̂: the deterministic part of Song et al. 2021, Eq. 12."""
    xp = get_array_module(x0_hat)
    # At η = 1 rounding can leave 1 − ᾱ − σ² a hair below zero.
    direction = xp.sqrt(xp.maximum(1.0 - alphas_cumprod_to - variance, 0.0))
    return xp.sqrt(alphas_cumprod_to) * x0_hat + direction * eps_hat


def ddim_step(model, schedule, x_t, t, rng=None, eta=0.0, prediction="eps", clip_denoised=True,
              dynamic_threshold=None):
    """x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z (Song et al. 2021, Eq. 12), σ_t from Eq. 16.

    ``t`` is an int index into ``schedule`` (respace it first to skip steps). η = 0 draws no
    noise. Returns (x_{t−1}, x̂₀).
    """
    t_batch = _timestep_batch(t, x_t)
    x0_hat, eps_hat = denoise(model, schedule, x_t, t_batch, prediction, clip_denoised, dynamic_threshold)
    variance = extract(ddim_variance(schedule, eta), t_batch, x_t)
    x_prev = _ddim_combine(x0_hat, eps_hat, extract(schedule.alphas_cumprod_prev, t_batch, x_t), variance)
    if eta > 0:
        x_prev = x_prev + get_array_module(x_t).sqrt(variance) * standard_normal(rng, x_t)
    return x_prev, x0_hat


def ddim_sample(model, schedule, shape, steps=50, eta=0.0, spacing="uniform", rng=None, prediction="eps",
                clip_denoised=True, dynamic_threshold=None, x_T=None, callback=None, return_trajectory=False):
    """DDIM sampling on ``steps`` timesteps of ``schedule`` (Song et al. 2021, Eq. 12 and §4.2).

    ``spacing`` is ``"uniform"`` or ``"quadratic"`` (:func:`minidiff.schedule.space_timesteps`).
    Returns x₀, or (x₀, [TrajectoryStep, …]) with ``return_trajectory=True``.
    """
    respaced = schedule.respace(space_timesteps(schedule.T, steps, spacing))
    rng, x = _start(rng, shape, x_T)

    def step(x_t, t):
        return ddim_step(model, respaced, x_t, t, rng, eta, prediction, clip_denoised, dynamic_threshold)

    return _denoising_loop(step, respaced, x, callback, return_trajectory)


def ddim_encode(model, schedule, x0, steps=50, spacing="uniform", prediction="eps", clip_denoised=False):
    """Run the deterministic DDIM ODE forwards, x₀ → x_T (Song et al. 2021, Eq. 14 and §4.3).

    Each step is Eq. 12 with σ = 0 towards the next, noisier retained timestep, using the
    model's (x̂₀, ε̂) at the current one: a first-order Euler step, so ``ddim_sample(...,
    eta=0, x_T=ddim_encode(...))`` reconstructs x₀ up to the discretisation error.
    """
    respaced = schedule.respace(space_timesteps(schedule.T, steps, spacing))
    # x₀ has no timestep of its own: the first step keeps x̂₀ = x₀ and borrows ε̂ from index 0.
    _, eps_hat = denoise(model, respaced, x0, _timestep_batch(0, x0), prediction, clip_denoised)
    x = _ddim_combine(x0, eps_hat, extract(respaced.alphas_cumprod, _timestep_batch(0, x0), x0), 0.0)
    for t in range(1, respaced.T):
        x0_hat, eps_hat = denoise(model, respaced, x, _timestep_batch(t - 1, x), prediction, clip_denoised)
        x = _ddim_combine(x0_hat, eps_hat, extract(respaced.alphas_cumprod, _timestep_batch(t, x), x), 0.0)
    return x


# DPM-Solver++ ------------------------------------------------------------------------------


def dpm_solver_pp_step(model, schedule, x_t, t, x0_hat_last=None, prediction="eps", clip_denoised=True,
                       dynamic_threshold=None):
    """One DPM-Solver++(2M) step from index t to t−1 (Lu et al. 2022, Algorithm 2).

    With λ = ½ log SNR, h = λ_{t−1} − λ_t and r = (λ_t − λ_{t+1})/h, the data estimate
    D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_last enters x_{t−1} = (σ_{t−1}/σ_t) x_t − α_{t−1}(e^{−h} − 1) D,
    which is exactly the η = 0 DDIM update (Song et al. 2021, Eq. 12) with D for x̂₀.
    It falls back to first order (D = x̂₀) without ``x0_hat_last`` (the x̂₀ of index t+1) and
    on the final step to x₀, where λ_{−1} = ∞. Returns (x_{t−1}, x̂₀).
    """
    t_batch = _timestep_batch(t, x_t)
    x0_hat, _ = denoise(model, schedule, x_t, t_batch, prediction, clip_denoised, dynamic_threshold)
    data_estimate = x0_hat
    if x0_hat_last is not None and t > 0:
        lambdas = 0.5 * schedule.log_snr
        h = lambdas[t - 1] - lambdas[t]
        r = (lambdas[t] - lambdas[t + 1]) / h
        data_estimate = (1.0 + 0.5 / r) * x0_hat - (0.5 / r) * x0_hat_last
    eps_estimate = predict_eps_from_x0(schedule, x_t, t_batch, data_estimate)
    x_prev = _ddim_combine(data_estimate, eps_estimate, extract(schedule.alphas_cumprod_prev, t_batch, x_t), 0.0)
    return x_prev, x0_hat


def dpm_solver_pp_sample(model, schedule, shape, steps=20, spacing="uniform", rng=None, prediction="eps",
                         clip_denoised=True, dynamic_threshold=None, x_T=None, callback=None,
                         return_trajectory=False):
    """DPM-Solver++(2M) sampling on ``steps`` timesteps of ``schedule`` (Lu et al. 2022, Algorithm 2).

    Multistep second order in the data prediction: each step reuses the previous step's x̂₀.
    Returns x₀, or (x₀, [TrajectoryStep, …]) with ``return_trajectory=True``.
    """
    respaced = schedule.respace(space_timesteps(schedule.T, steps, spacing))
    rng, x = _start(rng, shape, x_T)
    x0_hat_last = None

    def step(x_t, t):
        nonlocal x0_hat_last
        x_prev, x0_hat_last = dpm_solver_pp_step(
            model, respaced, x_t, t, x0_hat_last, prediction, clip_denoised, dynamic_threshold
        )
        return x_prev, x0_hat_last

    return _denoising_loop(step, respaced, x, callback, return_trajectory)
