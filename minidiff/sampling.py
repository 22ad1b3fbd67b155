"""Samplers of the reverse process over any callable ``model(x_t, t) -> prediction``.

Each sampler is one visible ``for`` loop over its timesteps whose body is the paper's update:
:func:`ddpm_sample` is Ho et al. 2020, Algorithm 2 (Eq. 11), :func:`ddim_sample` Song et al.
2021, Eq. 12, and :func:`dpm_solver_pp_sample` Lu et al. 2022b, Algorithm 2 (DPM-Solver++(2M)).

They share one signature: ``(model, schedule, shape, steps=…, spacing=…, *, rng, prediction,
clip_denoised, dynamic_threshold, x_T, t_start, callback, return_trajectory)``. ``steps`` timesteps are
chosen from the model's T by ``spacing`` (:func:`minidiff.schedule.space_timesteps`) and the
schedule respaced to them (Nichol & Dhariwal 2021, §4); ``steps=None`` walks the whole chain.

``x_t`` is an (N, …) NumPy or CuPy array and ``t`` an int64 array of shape (N,) holding the
model's own (training) timesteps; the prediction is ε, x₀ or v (``prediction=``). ``t_start``
starts the loop part-way down the respaced chain, at that index, with ``x_T`` the state there
(SDEdit, :mod:`minidiff.editing`); −1 returns ``x_T`` untouched. Class labels
or guidance are the caller's business: close over them in ``model``. A NumPy ``rng`` makes every
sampler reproducible: noise is drawn on the host and moved to the array module of ``x_T``, so
pass a CuPy ``x_T`` to sample on the GPU. Each step's input x_t and its x̂₀ are exposed through
``callback(step_index, t, x_t, x0_hat)`` or ``return_trajectory=True``.

Papers:

- Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (Algorithm 2, Eq. 11).
- Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (respacing).
- Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (Eqs. 12, 14, 16).
- Lu, Zhou, Bao, Chen, Li & Zhu 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models" (Algorithm 2, DPM-Solver++(2M)).
- Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
  Understanding" (dynamic thresholding, §2.3).
- Lin, Liu, Li & Yang 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
  (timestep spacing that starts at the last step).
"""

from collections import namedtuple

import numpy as np

from . import checks
from .backend import get_array_module
from .diffusion import (call_model, denoise, denoise_output, model_output_parts, p_mean_variance,
                        predict_eps_from_x0)
from .schedule import NoiseSchedule, extract, space_timesteps, standard_normal

TrajectoryStep = namedtuple("TrajectoryStep", "index t x_t x0_hat")
TrajectoryStep.__doc__ = "One sampler step: its index, the model timestep t, the input x_t and the model's x̂₀."


def respaced(schedule, steps=None, spacing="uniform"):
    """``schedule`` on ``steps`` of its timesteps chosen by ``spacing``; itself when ``steps`` is None."""
    if not isinstance(schedule, NoiseSchedule):
        raise checks.ArgumentError(f"schedule must be a minidiff NoiseSchedule, got {type(schedule).__name__}")
    if steps is None:
        return schedule
    checks.integer(steps, "steps", 1, schedule.T)
    return schedule.respace(space_timesteps(schedule.T, steps, spacing, schedule.log_snr))


def _start(rng, shape, x_T):
    """The generator and the starting x_T ∼ N(0, I) (or the caller's x_T), each checked."""
    rng = np.random.default_rng() if checks.generator(rng) is None else rng
    shape = checks.shape(shape)
    if x_T is None:
        return rng, rng.standard_normal(shape)
    x_T = checks.finite(checks.float_array(x_T, "x_T"), "x_T")
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    return rng, x_T


def _recorder(callback, return_trajectory):
    """(report, trajectory): ``report(index, t, x_t, x0_hat)`` calls ``callback`` and, when asked,
    appends a TrajectoryStep to ``trajectory``."""
    trajectory = [] if return_trajectory else None
    if callback is not None and not callable(callback):
        raise checks.ArgumentError(f"callback must be a function callback(index, t, x_t, x0_hat), got "
                                   f"{type(callback).__name__}")

    def report(index, t, x_t, x0_hat):
        if callback is not None:
            callback(index, t, x_t, x0_hat)
        if trajectory is not None:
            trajectory.append(TrajectoryStep(index, t, x_t, x0_hat))

    return report, trajectory


def _first_index(schedule, t_start):
    """The respaced index the loop starts at: ``t_start``, by default the last, T − 1."""
    if t_start is None:
        return schedule.T - 1
    if not -1 <= checks.integer(t_start, "t_start", -1) < schedule.T:
        raise ValueError(f"t_start={t_start} is outside [-1, {schedule.T}), the sampler's steps")
    return t_start


def _timestep_batch(t, x):
    xp = get_array_module(x)
    return xp.full(len(x), t, dtype=xp.int64)


# DDPM ------------------------------------------------------------------------------------


def ddpm_sample(model, schedule, shape, steps=None, spacing="uniform", *, rng=None, variance="fixed_small",
                prediction="eps", clip_denoised=True, dynamic_threshold=None, x_T=None, t_start=None, callback=None,
                return_trajectory=False):
    """Ancestral sampling x_T → x₀ (Ho et al. 2020, Algorithm 2), on ``steps`` respaced steps or the whole chain.

    Each step draws x_{t−1} = μ_θ(x_t, t) + σ_t z (Eq. 11). μ_θ is computed in its x₀-form
    μ̃_t(x_t, x̂₀) (Eq. 7), which equals Eq. 11 when x̂₀ comes from ε̂ and also honours a clipped
    x̂₀. σ_t² is β̃_t (``"fixed_small"``) or β_t (``"fixed_large"``), §3.2, or ``"learned"``:
    the model's Σ_θ = exp(v log β_t + (1 − v) log β̃_t) (Nichol & Dhariwal 2021, Eq. 15), between
    the respaced schedule's β and β̃ when ``steps`` respaces it.
    Returns x₀, or (x₀, [TrajectoryStep, …]) with ``return_trajectory=True``.
    """
    schedule = respaced(schedule, steps, spacing)
    report, trajectory = _recorder(callback, return_trajectory)
    rng, x = _start(rng, shape, x_T)  # line 1: x_T ∼ N(0, I)
    for index, t in enumerate(range(_first_index(schedule, t_start), -1, -1)):  # line 2: for t = T, …, 1 (paper steps: code t = step − 1)
        t_batch = _timestep_batch(t, x)
        output = call_model(model, schedule, x, t_batch, learned_variance=variance == "learned" or None)
        x0_hat, _ = denoise_output(schedule, x, t_batch, output, prediction, clip_denoised, dynamic_threshold)
        report(index, int(schedule.timesteps[t]), x, x0_hat)
        z = standard_normal(rng, x) if t > 0 else 0.0  # line 3: z ∼ N(0, I) if step t > 1 (code t > 0), else z = 0
        # μ_θ(x_t, t) = μ̃_t(x_t, x̂₀) (Eq. 7) and log σ_t² (§3.2, or the learned Eq. 15 of Nichol & Dhariwal 2021)
        mean, _, log_variance = p_mean_variance(schedule, x, t_batch, x0_hat, variance, model_output_parts(output, x)[1])
        x = mean + get_array_module(x).exp(0.5 * log_variance) * z  # line 4: x_{t−1} = μ_θ(x_t, t) + σ_t z (Eq. 11)
    return (x, trajectory) if return_trajectory else x  # line 6: return x_0


# DDIM ------------------------------------------------------------------------------------


def ddim_variance(schedule, eta):
    """σ_t(η)² = η² (1 − ᾱ_{t−1})/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−1}) for every index t (Song et al. 2021, Eq. 16).

    η = 1 gives the DDPM posterior variance β̃_t; η = 0 the deterministic DDIM. η is refused
    if negative, or so large that σ_t² exceeds 1 − ᾱ_{t−1} (Eq. 12 would need √ of a negative).
    """
    checks.real(eta, "eta", 0.0)
    alphas_cumprod, alphas_cumprod_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    variance = eta**2 * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod) * (1.0 - alphas_cumprod / alphas_cumprod_prev)
    too_large = np.flatnonzero(variance > (1.0 - alphas_cumprod_prev) * (1.0 + 1e-9))
    if too_large.size:
        raise ValueError(f"eta={eta} is too large: sigma^2 exceeds 1 - alphas_cumprod_prev at t={too_large[0]}")
    return variance


def ddim_update(x0_hat, eps_hat, alphas_cumprod_prev, variance=0.0):
    """√ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ_t²) ε̂: Song et al. 2021, Eq. 12 without its noise term σ_t z.

    "The predicted x₀" plus "the direction pointing to x_t"; with σ_t = 0 it is the whole
    deterministic DDIM step, and DPM-Solver++ and DDIM inversion reuse it.
    """
    xp = get_array_module(x0_hat)
    # At η = 1 rounding can leave 1 − ᾱ − σ² a hair below zero.
    direction = xp.sqrt(xp.maximum(1.0 - alphas_cumprod_prev - variance, 0.0))
    return xp.sqrt(alphas_cumprod_prev) * x0_hat + direction * eps_hat


def ddim_sample(model, schedule, shape, steps=50, spacing="uniform", *, eta=0.0, rng=None, prediction="eps",
                clip_denoised=True, dynamic_threshold=None, x_T=None, t_start=None, callback=None,
                return_trajectory=False):
    """DDIM sampling on ``steps`` timesteps of ``schedule`` (Song et al. 2021, Eq. 12 and §4.2).

    x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z, with σ_t(η) from Eq. 16: η = 0 is
    the deterministic DDIM, η = 1 the DDPM posterior. ``spacing`` is any of
    :data:`minidiff.schedule.SPACINGS`. Returns x₀, or (x₀, [TrajectoryStep, …]) with
    ``return_trajectory=True``.
    """
    schedule = respaced(schedule, steps, spacing)
    variances = ddim_variance(schedule, eta)  # σ_t(η)², Eq. 16
    report, trajectory = _recorder(callback, return_trajectory)
    rng, x = _start(rng, shape, x_T)
    for index, t in enumerate(range(_first_index(schedule, t_start), -1, -1)):
        t_batch = _timestep_batch(t, x)
        x0_hat, eps_hat = denoise(model, schedule, x, t_batch, prediction, clip_denoised, dynamic_threshold)
        report(index, int(schedule.timesteps[t]), x, x0_hat)
        variance = extract(variances, t_batch, x)
        # Eq. 12: x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z
        x = ddim_update(x0_hat, eps_hat, extract(schedule.alphas_cumprod_prev, t_batch, x), variance)
        if eta > 0:
            x = x + get_array_module(x).sqrt(variance) * standard_normal(rng, x)
    return (x, trajectory) if return_trajectory else x


def ddim_encode(model, schedule, x0, steps=50, spacing="uniform", *, prediction="eps", clip_denoised=False):
    """Run the deterministic DDIM ODE forwards, x₀ → x_T (Song et al. 2021, Eq. 14 and §4.3).

    Each step is Eq. 12 with σ = 0 towards the next, noisier retained timestep, using the
    model's (x̂₀, ε̂) at the current one: a first-order Euler step, so ``ddim_sample(...,
    eta=0, x_T=ddim_encode(...))`` reconstructs x₀ up to the discretisation error.
    """
    schedule = respaced(schedule, steps, spacing)
    # x₀ has no timestep of its own: the first step keeps x̂₀ = x₀ and borrows ε̂ from index 0.
    _, eps_hat = denoise(model, schedule, x0, _timestep_batch(0, x0), prediction, clip_denoised)
    x = ddim_update(x0, eps_hat, extract(schedule.alphas_cumprod, _timestep_batch(0, x0), x0))
    for t in range(1, schedule.T):
        x0_hat, eps_hat = denoise(model, schedule, x, _timestep_batch(t - 1, x), prediction, clip_denoised)
        x = ddim_update(x0_hat, eps_hat, extract(schedule.alphas_cumprod, _timestep_batch(t, x), x))
    return x


# DPM-Solver++ ------------------------------------------------------------------------------


def dpm_solver_pp_sample(model, schedule, shape, steps=20, spacing="uniform", *, rng=None, prediction="eps",
                         clip_denoised=True, dynamic_threshold=None, lower_order_final=True, x_T=None, t_start=None,
                         callback=None, return_trajectory=False):
    """DPM-Solver++(2M) sampling on ``steps`` timesteps of ``schedule`` (Lu et al. 2022b, Algorithm 2).

    In DPM-Solver's letters α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t) (not DDPM's α_t nor DDIM's σ_t). With
    λ = ½ log SNR = log(α/σ), h = λ_{t−1} − λ_t and r = (λ_t − λ_{t+1})/h, each step forms
    the data estimate D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_last from this and the previous step's
    x̂₀ and moves x_{t−1} = (σ_{t−1}/σ_t) x_t − α_{t−1}(e^{−h} − 1) D, which is exactly the η = 0
    DDIM update (Song et al. 2021, Eq. 12) with D for x̂₀. The first step (no x̂₀_last yet) and
    the final one to x₀ (λ_{−1} = ∞) are first order, D = x̂₀; ``lower_order_final=True`` makes
    the step onto the last retained timestep first order too ("lower_order_final" in Lu et al.'s
    code and diffusers): with few steps it spans a wide interval of λ, where the multistep
    extrapolation of x̂₀ overshoots. It is on by default: without it uniform spacing is less
    accurate than DDIM on exact denoisers, with it more (``benchmarks/sampler_accuracy.py``), and
    uniform spacing scored the best FID on a trained MNIST model at 10 and 20 steps, where the
    quadratic spacing that is most accurate on exact denoisers scored worse (docs/experiments.md).
    ``rng`` only draws x_T.
    Returns x₀, or (x₀, [TrajectoryStep, …]) with ``return_trajectory=True``.
    """
    schedule = respaced(schedule, steps, spacing)
    lambdas = 0.5 * schedule.log_snr  # λ_t = log(α_t/σ_t)
    report, trajectory = _recorder(callback, return_trajectory)
    _, x = _start(rng, shape, x_T)
    x0_hat_last = None
    for index, t in enumerate(range(_first_index(schedule, t_start), -1, -1)):
        t_batch = _timestep_batch(t, x)
        x0_hat, _ = denoise(model, schedule, x, t_batch, prediction, clip_denoised, dynamic_threshold)
        report(index, int(schedule.timesteps[t]), x, x0_hat)
        data_estimate = x0_hat  # D: first order
        if x0_hat_last is not None and t > int(lower_order_final):  # Algorithm 2: the multistep second-order correction
            h = lambdas[t - 1] - lambdas[t]
            r = (lambdas[t] - lambdas[t + 1]) / h
            data_estimate = (1.0 + 0.5 / r) * x0_hat - (0.5 / r) * x0_hat_last
        # x_{t−1} = (σ_{t−1}/σ_t) x_t − α_{t−1}(e^{−h} − 1) D, written as Eq. 12 of DDIM with D for x̂₀
        eps_estimate = predict_eps_from_x0(schedule, x, t_batch, data_estimate)
        x = ddim_update(data_estimate, eps_estimate, extract(schedule.alphas_cumprod_prev, t_batch, x))
        x0_hat_last = x0_hat
    return (x, trajectory) if return_trajectory else x
