"""The Gaussian-mixture oracle, and every sampler fed it: each must reproduce the mixture's
weights, means and covariances within sampling error."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff.diffusion import q_sample
from minidiff.oracles import GaussianMixture, assert_samples_match_mixture, mixture_denoiser
from minidiff.sampling import ddim_sample, ddpm_sample, dpm_solver_pp_sample
from minidiff.schedule import NoiseSchedule
from minidiff.sde import predictor_corrector_sample, probability_flow_sample, reverse_sde_sample
from minidiff.testing import timesteps

# Three well-separated components with unequal weights and correlated, unequal covariances.
MIXTURE = GaussianMixture(
    means=[[-0.6, 0.3], [0.5, 0.5], [0.1, -0.6]],
    covariances=[[[0.02, 0.01], [0.01, 0.015]], [[0.01, 0.0], [0.0, 0.04]], [[0.005, 0.0], [0.0, 0.005]]],
    weights=[0.5, 0.3, 0.2],
)
N = 4000
SAMPLERS = {
    "ddpm": lambda m, sch, rng: ddpm_sample(m, sch, (N, 2), rng=rng, clip_denoised=False),
    "ddim eta=0": lambda m, sch, rng: ddim_sample(m, sch, (N, 2), steps=100, spacing="quadratic", rng=rng,
                                                  clip_denoised=False),
    "ddim eta=1": lambda m, sch, rng: ddim_sample(m, sch, (N, 2), steps=250, eta=1.0, spacing="quadratic", rng=rng,
                                                  clip_denoised=False),
    "dpm-solver++": lambda m, sch, rng: dpm_solver_pp_sample(m, sch, (N, 2), steps=25, spacing="quadratic", rng=rng,
                                                             clip_denoised=False),
    "reverse sde": lambda m, sch, rng: reverse_sde_sample(m, sch, (N, 2), rng=rng, clip_denoised=False),
    "probability flow": lambda m, sch, rng: probability_flow_sample(m, sch, (N, 2), steps=50, spacing="quadratic",
                                                                    rng=rng, clip_denoised=False),
    "predictor-corrector": lambda m, sch, rng: predictor_corrector_sample(m, sch, (N, 2), steps=500, rng=rng,
                                                                          clip_denoised=False),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_fed_the_exact_denoiser_reproduces_the_mixture(name):
    schedule = NoiseSchedule.linear(1000)
    samples = SAMPLERS[name](mixture_denoiser(MIXTURE, schedule), schedule, np.random.default_rng(0))
    assert_samples_match_mixture(samples, MIXTURE)


def test_the_moment_check_catches_a_wrong_weight_mean_or_covariance():
    samples, _ = MIXTURE.sample(N, 1)
    assert_samples_match_mixture(samples, MIXTURE)
    for wrong in (
        GaussianMixture(MIXTURE.means, MIXTURE.covariances, [0.45, 0.35, 0.2]),
        GaussianMixture(MIXTURE.means + [0.0, 0.02], MIXTURE.covariances, MIXTURE.weights),
        GaussianMixture(MIXTURE.means, MIXTURE.covariances * 1.15, MIXTURE.weights),
    ):
        with pytest.raises(AssertionError):
            assert_samples_match_mixture(samples, wrong)


def test_the_noised_mixture_is_the_law_of_q_sample():
    schedule = NoiseSchedule.cosine(100)
    x0, _ = MIXTURE.sample(20000, 2)
    t = np.full(len(x0), 60)
    x_t = q_sample(schedule, x0, t, np.random.default_rng(3).standard_normal(x0.shape))
    alpha_bar = schedule.alphas_cumprod[60]
    noised = MIXTURE.noised(alpha_bar)
    np.testing.assert_allclose(x_t.mean(axis=0), noised.mean(), atol=0.02)
    second_moment = np.einsum("k,kij->ij", noised.weights,
                              noised.covariances + np.einsum("ki,kj->kij", noised.means, noised.means))
    np.testing.assert_allclose(x_t.T @ x_t / len(x_t), second_moment, atol=0.02)


def test_the_score_is_the_gradient_of_the_log_density():
    x = np.random.default_rng(4).standard_normal((5, 2))

    def log_density(points):
        diffs = points[:, None, :] - MIXTURE.means[None]
        quad = np.einsum("nki,kij,nkj->nk", diffs, np.linalg.inv(MIXTURE.covariances), diffs)
        norm = np.sqrt(np.linalg.det(2 * np.pi * MIXTURE.covariances))
        return np.log((MIXTURE.weights * np.exp(-0.5 * quad) / norm).sum(axis=1))

    h = 1e-6
    numeric = np.stack([(log_density(x + h * e) - log_density(x - h * e)) / (2 * h) for e in np.eye(2)], axis=1)
    np.testing.assert_allclose(MIXTURE.score(x), numeric, rtol=1e-6, atol=1e-6)


@given(st.data())
def test_the_denoiser_treats_each_example_at_its_own_timestep(data):
    schedule = NoiseSchedule.linear(50, scale_to_T=True)
    model = mixture_denoiser(MIXTURE, schedule)
    t = data.draw(timesteps(schedule, 6))
    x_t = np.random.default_rng(5).standard_normal((6, 2))
    one_at_a_time = np.concatenate([model(x_t[i:i + 1], t[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(model(x_t, t), one_at_a_time, rtol=1e-12)


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="summing to 1"):
        GaussianMixture([[0.0], [1.0]], [[[1.0]], [[1.0]]], [0.5, 0.6])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
