"""Bits per dimension of held-out images under the variational bound (Ho et al. 2020, Eqs. 3 and
5): every term once (:func:`calc_bpd_loop`), or an unbiased estimate from a subset of the terms
(:func:`bpd_estimate`), uniform or importance-sampled (Nichol & Dhariwal 2021, Eq. 18). The terms
themselves are :func:`minidiff.diffusion.vb_terms_bpd`, named by code index t as there: L_t =
KL(q(x_t | x_{t+1}, x₀) ‖ p_θ(x_t | x_{t+1})) for t = 1, …, T−1 (the papers' x's: code index t is
their step t + 1), the decoder L_0 = −log p_θ(x₀ | x₁), and the prior L_T = KL(q(x_T | x₀) ‖ N(0, I)).
"""

import math

import numpy as np

from . import checks
from .backend import get_array_module, to_numpy
from .diffusion import (call_model, denoise_output, mean_flat, model_output_parts, normal_kl, q_mean_variance,
                        q_sample, vb_terms_bpd)
from .schedule import standard_normal


def prior_bpd(schedule, x0):
    """L_T = KL(q(x_T | x₀) ‖ N(0, I)) per example, in bits per dimension (Ho et al. 2020, Eq. 5).

    The papers' x_T is the code's last index, T − 1."""
    xp = get_array_module(x0)
    t = xp.full(len(x0), schedule.T - 1, dtype=xp.int64)
    mean, _, log_variance = q_mean_variance(schedule, x0, t)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)


def calc_bpd_loop(model, schedule, x0, rng=None, prediction="eps", variance="fixed_small", clip_denoised=True):
    """The full variational bound −log p(x₀) ≤ L_T + Σ_{t=1}^{T−1} L_t + L_0 (Ho et al. 2020, Eq. 3), in bits per dimension.

    Every term of Ho et al. 2020, Eq. 5 evaluated once with a fresh x_t ∼ q(x_t | x₀) (a
    one-sample estimate of each expectation), as improved-diffusion's ``calc_bpd_loop``
    (``GaussianDiffusion`` in ``gaussian_diffusion.py``) does. Returns ``{"total_bpd", "prior_bpd", "vb"}`` with
    shapes (N,), (N,) and (N, T).
    """
    rng = np.random.default_rng() if rng is None else rng
    xp = get_array_module(x0)
    steps = xp.arange(schedule.T)[None, :].repeat(len(x0), axis=0)
    vb = vb_terms_at(model, schedule, x0, steps, rng, prediction, variance, clip_denoised)
    prior = prior_bpd(schedule, x0)
    return {"total_bpd": vb.sum(axis=1) + prior, "prior_bpd": prior, "vb": vb}


def vb_terms_at(model, schedule, x0, timesteps, rng, prediction="eps", variance="fixed_small", clip_denoised=True):
    """The terms L_t at code index t (:func:`minidiff.diffusion.vb_terms_bpd`; Ho et al. 2020, Eq. 5) at ``timesteps`` (N, K) of each example, in bits/dim, shape (N, K).

    Column k evaluates example i's term at ``timesteps[i, k]`` with a fresh x_t ∼ q(x_t | x₀): one
    model call per column. A learned-variance model's v is used when ``variance="learned"``.
    """
    columns = []
    for k in range(timesteps.shape[1]):
        t = timesteps[:, k]
        x_t = q_sample(schedule, x0, t, standard_normal(rng, x0))
        output = call_model(model, schedule, x_t, t)
        x0_hat, _ = denoise_output(schedule, x_t, t, output, prediction, clip_denoised)
        columns.append(vb_terms_bpd(schedule, x0, x_t, t, x0_hat, variance, model_output_parts(output, x_t)[1]))
    return get_array_module(x0).stack(columns, axis=1)


def bpd_estimate(model, schedule, x0, num_timesteps, rng, prediction="eps", variance="fixed_small",
                 clip_denoised=True, probabilities=None):
    """An unbiased estimate of :func:`calc_bpd_loop`'s ``total_bpd`` from ``num_timesteps`` of its T terms per example.

    L = L_T + L_0 + Σ_{t=1}^{T−1} L_t (Ho et al. 2020, Eq. 5, zero-indexed): the prior L_T and
    the decoder L_0, the largest single term, are computed exactly; the T − 1 KL terms are
    estimated from K = ``num_timesteps`` − 1 timesteps per example, as E_{t∼p_t}[L_t/p_t]
    (Nichol & Dhariwal 2021, Eq. 18): drawn uniformly without replacement and scaled by
    (T − 1)/K, or, given ``probabilities`` p_t over t = 1, …, T−1, drawn from them with
    replacement and weighted 1/(K p_t) (importance sampling). With ``num_timesteps = T`` and
    uniform draws it is every term once, as the full loop. ``num_timesteps`` must be at least 2
    (1 on a one-step chain, which has no KL term): with the decoder alone, every KL term would be
    dropped and the "bound" would be far too low. Returns (N,) float64.
    """
    T = schedule.T
    num_timesteps = checks.integer(num_timesteps, "num_timesteps", min(2, T), T)
    rng = np.random.default_rng() if checks.generator(rng) is None else rng
    x0 = checks.float_array(x0, "x0")
    n, k = len(x0), num_timesteps - 1
    if probabilities is not None:
        probabilities = checks.probabilities(probabilities, "probabilities (over t = 1, ..., T-1)", T - 1)
    if probabilities is None:
        drawn = np.argsort(rng.random((n, T - 1)), axis=1)[:, :k] + 1  # K distinct t ∈ {1, …, T−1} per example
        weights = np.full((n, k), (T - 1) / max(k, 1))
    else:
        drawn = rng.choice(np.arange(1, T), size=(n, k), p=probabilities)
        weights = 1.0 / (k * probabilities[drawn - 1])
    timesteps = np.concatenate([np.zeros((n, 1), dtype=np.int64), drawn], axis=1)
    xp = get_array_module(x0)
    terms = to_numpy(vb_terms_at(model, schedule, x0, xp.asarray(timesteps), rng, prediction, variance,
                                 clip_denoised)).astype(np.float64)
    kl_sum = (terms[:, 1:] * weights).sum(axis=1)
    return to_numpy(prior_bpd(schedule, x0)).astype(np.float64) + terms[:, 0] + kl_sum


def pilot_probabilities(model, schedule, x0, grid, rng, prediction="eps", variance="fixed_small",
                        clip_denoised=True, uniform_mix=0.1):
    """p_t ∝ √E[L_t²] over t = 1, …, T−1 from a pilot run: the terms at ``grid`` timesteps of the
    examples ``x0``, interpolated linearly in t, mixed with ``uniform_mix`` of the uniform
    distribution (Nichol & Dhariwal 2021, Eq. 18, whose p_t this is; the mixture bounds the weights)."""
    grid = np.unique(np.clip(np.asarray(grid), 1, schedule.T - 1))
    xp = get_array_module(x0)
    terms = to_numpy(vb_terms_at(model, schedule, x0, xp.asarray(np.tile(grid, (len(x0), 1))), rng, prediction,
                                 variance, clip_denoised)).astype(np.float64)
    rms = np.interp(np.arange(1, schedule.T), grid, np.sqrt(np.mean(terms**2, axis=0)))
    p = rms / rms.sum()
    return (1.0 - uniform_mix) * p + uniform_mix / (schedule.T - 1)
