"""The bits/dim estimators of minidiff.likelihood on a case with known terms: data that is one point
x₀, its exact denoiser and σ_t² = β_t ("fixed_large"). Then x̂₀ = x₀ at every t, and each KL term
L_{t−1} (t ≥ 1) compares two Gaussians with the same mean and variances β̃_t and β_t: a constant,
c_t = ½ (β̃_t/β_t − 1 − log(β̃_t/β_t)) nats per dimension (Ho et al. 2020, Eq. 5), whatever x_t is."""

import math

import numpy as np
import pytest

from minidiff.diffusion import q_sample, vb_terms_bpd
from minidiff.likelihood import bpd_estimate, calc_bpd_loop, pilot_probabilities, prior_bpd
from minidiff.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(10, beta_start=0.01, beta_end=0.5)
X0 = np.full((6, 1, 2, 2), 0.3)
KWARGS = dict(variance="fixed_large", clip_denoised=False)


def exact_denoiser(x_t, t):
    alpha_bar = SCHEDULE.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return (x_t - np.sqrt(alpha_bar) * 0.3) / np.sqrt(1 - alpha_bar)


def kl_bits():
    """c_t in bits per dimension for t = 1, …, T − 1."""
    ratio = SCHEDULE.posterior_variance[1:] / SCHEDULE.betas[1:]
    return 0.5 * (ratio - 1 - np.log(ratio)) / math.log(2)


def decoder_bits(seed_draws):
    """L_0 = −log p(x₀ | x_1) in bits/dim, x_1 drawn as the estimators do after ``seed_draws(rng)``."""
    rng = np.random.default_rng(0)
    seed_draws(rng)
    t = np.zeros(len(X0), dtype=np.int64)
    x_1 = q_sample(SCHEDULE, X0, t, rng.standard_normal(X0.shape))
    return vb_terms_bpd(SCHEDULE, X0, x_1, t, X0, "fixed_large")


def test_the_prior_term_is_the_kl_to_the_standard_normal_in_bits():
    mean, variance = math.sqrt(SCHEDULE.alphas_cumprod[-1]) * 0.3, 1 - SCHEDULE.alphas_cumprod[-1]
    expected = 0.5 * (variance + mean**2 - 1 - math.log(variance)) / math.log(2)
    np.testing.assert_allclose(prior_bpd(SCHEDULE, X0), expected, rtol=1e-12)


def test_the_full_loop_adds_the_prior_and_every_term():
    result = calc_bpd_loop(exact_denoiser, SCHEDULE, X0, rng=np.random.default_rng(0), **KWARGS)
    np.testing.assert_allclose(result["vb"][:, 1:], np.broadcast_to(kl_bits(), (6, 9)), rtol=1e-9)
    np.testing.assert_allclose(result["total_bpd"], result["vb"].sum(axis=1) + result["prior_bpd"], rtol=1e-12)
    again = calc_bpd_loop(exact_denoiser, SCHEDULE, X0, rng=np.random.default_rng(0), **KWARGS)
    np.testing.assert_array_equal(again["total_bpd"], result["total_bpd"])  # x_t drawn from the generator given


@pytest.mark.parametrize("num_timesteps", [2, 4, 10])
def test_uniform_draws_are_scaled_by_T_minus_1_over_K(num_timesteps):
    # K = num_timesteps − 1 ≥ 1 distinct t ∈ {1, …, 9} per example, each term weighted (T − 1)/K.
    k = num_timesteps - 1
    draws = []
    decoder = decoder_bits(lambda rng: draws.append(rng.random((6, 9))))
    drawn = np.argsort(draws[0], axis=1)[:, :k] + 1
    expected = prior_bpd(SCHEDULE, X0) + decoder + 9 / max(k, 1) * kl_bits()[drawn - 1].sum(axis=1)
    estimate = bpd_estimate(exact_denoiser, SCHEDULE, X0, num_timesteps, np.random.default_rng(0), **KWARGS)
    np.testing.assert_allclose(estimate, expected, rtol=1e-9)


def test_importance_draws_are_weighted_by_one_over_K_p_t():
    p = np.arange(1, 10) / 45.0
    draws = []
    decoder = decoder_bits(lambda rng: draws.append(rng.choice(np.arange(1, 10), size=(6, 3), p=p)))
    expected = prior_bpd(SCHEDULE, X0) + decoder + (kl_bits()[draws[0] - 1] / (3 * p[draws[0] - 1])).sum(axis=1)
    estimate = bpd_estimate(exact_denoiser, SCHEDULE, X0, 4, np.random.default_rng(0), probabilities=p, **KWARGS)
    np.testing.assert_allclose(estimate, expected, rtol=1e-9)


def test_pilot_probabilities_follow_the_root_mean_square_term_mixed_with_uniform():
    # Terms known at t = 1, 5, 9 and interpolated linearly in between; then 90 % of that, 10 % uniform.
    p = pilot_probabilities(exact_denoiser, SCHEDULE, X0, [0, 1, 5, 9, 12], np.random.default_rng(0), **KWARGS)
    rms = np.interp(np.arange(1, 10), [1, 5, 9], kl_bits()[[0, 4, 8]])
    np.testing.assert_allclose(p, 0.9 * rms / rms.sum() + 0.1 / 9, rtol=1e-9)
    assert p.sum() == pytest.approx(1)


@pytest.mark.parametrize("bad, message", [(1, r"an integer in \[2, 10\], got 1"),
                                          (11, r"an integer in \[2, 10\], got 11"), (2.5, "an integer, got float 2.5")])
def test_a_number_of_timesteps_outside_2_to_T_is_refused(bad, message):
    with pytest.raises(ValueError, match=f"num_timesteps must be {message}"):
        bpd_estimate(exact_denoiser, SCHEDULE, X0, bad, np.random.default_rng(0))
