"""Consistency models against exact answers: for Gaussian data N(μ, s²) the consistency function is
closed form, f*(x, σ) = μ + (x − μ)·√(σ_min² + s²)/√(σ² + s²); with the exact teacher the CD loss is the
Heun step's truncation error; and the iCT schedule, the boundary condition and Algorithm 1 hold."""
import math

import numpy as np
import pytest

from minidiff import consistency as cm
from minidiff.autograd import Tensor
from minidiff.oracles import gaussian_edm_denoiser, gaussian_edm_ode

MU, S = 0.3, 0.7


def exact_consistency_function(x, sigma):
    """f*(x, σ) = μ + (x − μ)·√(σ_min² + s²)/√(σ² + s²): the ODE's map from σ down to σ_min."""
    sigma = np.asarray(sigma, dtype=np.float64).reshape((-1,) + (1,) * (x.ndim - 1))
    return MU + (x - MU) * math.sqrt(cm.SIGMA_MIN**2 + S**2) / np.sqrt(sigma**2 + S**2)


def test_boundary_condition_holds_for_any_network():
    c_skip, c_out = cm.boundary_scalings(cm.SIGMA_MIN, sigma_data=0.5)
    assert c_skip == 1.0 and c_out == 0.0
    f = cm.consistency_function(lambda x, label: np.full_like(x, 123.0), sigma_data=0.5)
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4))
    np.testing.assert_array_equal(f(x, np.full(3, cm.SIGMA_MIN)), x)
    assert not np.allclose(f(x, np.full(3, 1.0)), x)


def test_closed_form_is_the_consistency_function_of_the_gaussian_ode():
    rng = np.random.default_rng(1)
    x = MU + 3.0 * rng.standard_normal((5, 2))
    sigmas = cm.consistency_sigmas(18)
    for sigma, lower in zip(sigmas[1:], sigmas[:-1]):  # constant along every exact ODE trajectory
        on_trajectory = gaussian_edm_ode(x, sigma, lower, MU, S)
        np.testing.assert_allclose(exact_consistency_function(on_trajectory, np.full(5, lower)),
                                   exact_consistency_function(x, np.full(5, sigma)), rtol=1e-12)
    np.testing.assert_allclose(exact_consistency_function(x, np.full(5, cm.SIGMA_MIN)), x)  # f*(x, σ_min) = x


def test_cd_loss_with_the_exact_teacher_is_the_heun_truncation_error():
    rng_draws = np.random.default_rng(2)
    x0 = MU + S * rng_draws.standard_normal((256, 3))
    sigmas = cm.consistency_sigmas(10)
    teacher = gaussian_edm_denoiser(MU, S)
    draw = cm.consistency_loss(exact_consistency_function, x0, np.random.default_rng(3), sigmas=sigmas,
                               teacher=teacher, metric="l2")
    rng = np.random.default_rng(3)  # the loss's own draws, repeated
    n = rng.choice(len(sigmas) - 1, size=len(x0))
    z = rng.standard_normal(x0.shape, dtype=np.float32)
    sigma, sigma_next = sigmas[n][:, None], sigmas[n + 1][:, None]
    x_next = x0 + sigma_next * z
    error = cm.heun_step(teacher, x_next, sigmas[n + 1], sigmas[n]) - gaussian_edm_ode(x_next, sigma_next, sigma, MU, S)
    truncation = (cm.SIGMA_MIN**2 + S**2) / (sigma[:, 0] ** 2 + S**2) * np.sum(error**2, axis=1)
    np.testing.assert_array_equal(draw.t, n)
    np.testing.assert_allclose(draw.per_example, truncation, rtol=1e-9, atol=1e-20)  # f ~ 1: differences round at ~1e-16
    assert truncation.max() > 0  # Heun is not exact on this ODE: the loss is its error, nothing more


def test_cd_loss_shrinks_with_the_heun_local_error():
    """Halving the steps' width (twice the levels) divides a local error of order h³, squared, by ~64."""
    x0 = MU + S * np.random.default_rng(4).standard_normal((2000, 1))
    losses = [cm.consistency_loss(exact_consistency_function, x0, np.random.default_rng(5),
                                  sigmas=cm.consistency_sigmas(N, rho=1.0, sigma_max=2.0),
                                  teacher=gaussian_edm_denoiser(MU, S), metric="l2").per_example.mean()
              for N in (41, 81)]
    assert 30 < losses[0] / losses[1] < 130


def test_multistep_sampling_with_the_exact_function_stays_on_the_data():
    """Algorithm 1 with f*: every step maps N(μ, s² + τ²) to N(μ, s² + σ_min²) exactly."""
    z = np.random.default_rng(6).standard_normal((20000, 1))
    taus = cm.sampling_sigmas(4)
    samples = cm.sample(exact_consistency_function, taus, taus[0] * z, rng=np.random.default_rng(7))
    assert abs(samples.mean() - MU) < 4 * S / math.sqrt(len(z))
    expected = math.sqrt(S**2 + cm.SIGMA_MIN**2) * taus[0] / math.sqrt(taus[0] ** 2 + S**2) if len(taus) == 1 else S
    assert abs(samples.std() - expected) < 0.02


def test_ict_schedule_doubles_from_11_to_1281_levels():
    K = 800  # K′ = ⌊800/8⌋ = 100
    assert [cm.ict_grid_size(k, K) for k in (0, 99, 100, 250, 699, 700, 799)] == [11, 11, 21, 41, 641, 1281, 1281]
    sigmas = cm.consistency_sigmas(11)
    assert sigmas[0] == pytest.approx(cm.SIGMA_MIN) and sigmas[-1] == pytest.approx(cm.SIGMA_MAX)
    p = cm.lognormal_pair_probabilities(sigmas)
    assert p.shape == (10,) and p.sum() == pytest.approx(1.0) and np.all(p > 0)
    # p(n) is the chance that ln σ ∼ N(P_mean, P_std²), given it falls on the grid, falls in (σ_n, σ_{n+1}].
    draws = np.exp(cm.P_MEAN + cm.P_STD * np.random.default_rng(9).standard_normal(400_000))
    pair = np.searchsorted(sigmas, draws[(draws > sigmas[0]) & (draws <= sigmas[-1])]) - 1
    frequencies = np.bincount(pair, minlength=10) / len(pair)
    np.testing.assert_allclose(frequencies, p, atol=4 * np.sqrt(p * (1 - p) / len(pair)).max())


def test_ct_loss_differentiates_through_the_online_branch_only():
    rng = np.random.default_rng(8)
    weight = Tensor(np.ones((1,), np.float32), requires_grad=True)
    f = cm.consistency_function(lambda x, label: x * weight, sigma_data=0.5)
    draw = cm.consistency_loss(f, rng.standard_normal((4, 1, 2, 2)).astype(np.float32), rng,
                               sigmas=cm.consistency_sigmas(11))
    draw.loss.backward()
    assert np.isfinite(draw.loss.item()) and weight.grad is not None and np.all(np.isfinite(weight.grad))
