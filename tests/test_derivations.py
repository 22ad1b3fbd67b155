"""docs/derivations.md, step by step: each test checks one numbered step of one derivation numerically,
on minidiff's own functions wherever the step ends at a code line. Float64 throughout, and identities
to rounding error, not inequalities.

Indexing: code index i holds the papers' step i + 1 (``betas[i]`` = β_{i+1}); the docstrings of the
tests say which index they use.
"""
import math

import numpy as np
import pytest

from minidiff import Tensor
from minidiff.diffusion import (UniformSampler, normal_kl, p_mean_variance, predict_eps_from_v, predict_v,
                                predict_x0_from_eps, predict_x0_from_v, q_posterior_mean_variance, q_sample, q_step,
                                training_loss, vb_terms_bpd)
from minidiff.guidance import guided_denoiser
from minidiff.oracles import GaussianMixture, mixture_denoiser
from minidiff.sampling import ddim_update, ddim_variance
from minidiff.schedule import NoiseSchedule
from minidiff.sde import integrated_betas, probability_flow_velocity, score_from_eps

SCHEDULES = {"linear": NoiseSchedule.linear(50, scale_to_T=True), "cosine": NoiseSchedule.cosine(50)}


@pytest.fixture(params=SCHEDULES, ids=str)
def schedule(request):
    return SCHEDULES[request.param]


def log_normal(x, mean, variance):
    """log N(x; mean, variance) per element."""
    return -0.5 * (np.log(2 * np.pi * variance) + (x - mean) ** 2 / variance)


def log_mixture_density(mixture, x):
    """log Σ_k π_k N(x; m_k, C_k) for points x (N, D)."""
    centred = x[:, None, :] - mixture.means[None]
    whitened = np.einsum("kij,nkj->nki", np.linalg.inv(mixture.covariances), centred)
    _, logdets = np.linalg.slogdet(2 * np.pi * mixture.covariances)
    log_terms = np.log(mixture.weights) - 0.5 * (logdets + np.einsum("nki,nki->nk", centred, whitened))
    top = log_terms.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(log_terms - top).sum(axis=1, keepdims=True)))[:, 0]


def numerical_gradient(f, x, h=1e-5):
    """Central differences of a function of points x (N, D) returning (N,)."""
    gradient = np.empty_like(x)
    for d in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, d] = h
        gradient[:, d] = (f(x + step) - f(x - step)) / (2 * h)
    return gradient


# D1. q(x_t | x₀) from Eq. 2, by induction ---------------------------------------------------------


def test_d1_2_one_step_variance_adds_up(schedule):
    """D1.2: α_t (1 − ᾱ_{t−1}) + β_t = 1 − ᾱ_t and α_t ᾱ_{t−1} = ᾱ_t at every code index (ᾱ before index 0 is 1)."""
    np.testing.assert_allclose(schedule.alphas * (1 - schedule.alphas_cumprod_prev) + schedule.betas,
                               1 - schedule.alphas_cumprod, rtol=1e-13)
    np.testing.assert_allclose(schedule.alphas * schedule.alphas_cumprod_prev, schedule.alphas_cumprod, rtol=1e-13)


def test_d1_3_chaining_q_step_is_q_sample(schedule):
    """D1.3: q_step applied t + 1 times leaves x₀ with coefficient √ᾱ_t and independent noises whose
    coefficients' squares sum to 1 − ᾱ_t: q_sample's two coefficients, at every code index t.

    q_step is linear in (x_{t−1}, ε), so it runs on coefficient vectors over [x₀, ε₀, …, ε_{T−1}].
    """
    T = schedule.T
    state = np.zeros((1, T + 1))
    state[0, 0] = 1.0  # x₀ = 1·x₀
    for t in range(T):
        noise = np.zeros((1, T + 1))
        noise[0, t + 1] = 1.0  # the fresh ε of this step
        state = q_step(schedule, state, np.array([t]), noise)
        np.testing.assert_allclose(state[0, 0], schedule.sqrt_alphas_cumprod[t], rtol=1e-12)
        np.testing.assert_allclose((state[0, 1:] ** 2).sum(), 1 - schedule.alphas_cumprod[t], rtol=1e-12)
    x0, eps = np.array([[0.3]]), np.array([[-1.2]])  # all the noise folded into one ε: Eq. 4
    np.testing.assert_allclose(q_sample(schedule, x0, np.array([T - 1]), eps),
                               schedule.sqrt_alphas_cumprod[-1] * x0 + schedule.sqrt_one_minus_alphas_cumprod[-1] * eps)


# D2. The posterior q(x_{t−1} | x_t, x₀), Eqs. 6–7 --------------------------------------------------


def test_d2_1_bayes_gives_a_gaussian_with_the_posterior_moments(schedule):
    """D2.1–D2.3: log q(x_t | x_{t−1}) + log q(x_{t−1} | x₀) − log N(x_{t−1}; μ̃_t, β̃_t) does not depend on
    x_{t−1}: the posterior is that Gaussian, with q_posterior_mean_variance's moments (code index t ≥ 1)."""
    x0, x_t = np.array([[0.4]]), np.array([[-0.7]])
    grid = np.linspace(-3, 3, 61)[:, None]
    for t in range(1, schedule.T):
        index = np.array([t])
        mean, variance, _ = q_posterior_mean_variance(schedule, x0, x_t, index)
        forward = log_normal(x_t, np.sqrt(schedule.alphas[t]) * grid, schedule.betas[t])
        marginal = log_normal(grid, schedule.sqrt_alphas_cumprod[t - 1] * x0, 1 - schedule.alphas_cumprod[t - 1])
        difference = forward + marginal - log_normal(grid, mean, variance)
        np.testing.assert_allclose(difference, np.full_like(difference, difference[0, 0]), atol=1e-9)


def test_d2_2_precisions_add(schedule):
    """D2.2: 1/β̃_t = α_t/β_t + 1/(1 − ᾱ_{t−1}) (code index t ≥ 1)."""
    t = slice(1, None)
    np.testing.assert_allclose(1 / schedule.posterior_variance[t],
                               schedule.alphas[t] / schedule.betas[t] + 1 / (1 - schedule.alphas_cumprod_prev[t]),
                               rtol=1e-12)


def test_d2_3_the_mean_is_the_precision_weighted_average(schedule):
    """D2.3: μ̃_t = β̃_t (√α_t x_t/β_t + √ᾱ_{t−1} x₀/(1 − ᾱ_{t−1})): posterior_mean_coef2 and coef1."""
    t = slice(1, None)
    np.testing.assert_allclose(schedule.posterior_mean_coef2[t],
                               schedule.posterior_variance[t] * np.sqrt(schedule.alphas[t]) / schedule.betas[t],
                               rtol=1e-12)
    np.testing.assert_allclose(schedule.posterior_mean_coef1[t], schedule.posterior_variance[t]
                               * np.sqrt(schedule.alphas_cumprod_prev[t]) / (1 - schedule.alphas_cumprod_prev[t]),
                               rtol=1e-12)


# D3. The ELBO → Eq. 5 → Eq. 12 → L_simple -------------------------------------------------------


def test_d3_2_the_forward_chain_factorises_backwards():
    """D3.2: Σ_t log q(x_t | x_{t−1}) = log q(x_T | x₀) + Σ_{t≥2} log q(x_{t−1} | x_t, x₀) on any path
    (paper steps 1..T = code indices 0..T−1): the identity that turns Eq. 3 into Eq. 5's KLs."""
    schedule, rng = NoiseSchedule.linear(6, beta_start=0.05, beta_end=0.3), np.random.default_rng(0)
    path = [np.array([[0.5]])]
    for t in range(schedule.T):
        path.append(q_step(schedule, path[-1], np.array([t]), rng.standard_normal((1, 1))))
    forward = sum(log_normal(path[t + 1], np.sqrt(schedule.alphas[t]) * path[t], schedule.betas[t])
                  for t in range(schedule.T))
    backward = log_normal(path[-1], schedule.sqrt_alphas_cumprod[-1] * path[0], 1 - schedule.alphas_cumprod[-1])
    for t in range(1, schedule.T):  # code index t: the posterior of path[t] (paper x_t) given path[t + 1]
        mean, variance, _ = q_posterior_mean_variance(schedule, path[0], path[t + 1], np.array([t]))
        backward = backward + log_normal(path[t], mean, variance)
    np.testing.assert_allclose(forward, backward, rtol=1e-12)


def test_d3_3_a_gaussian_kl_is_a_squared_distance_plus_c():
    """D3.3: KL(N(μ̃, β̃) ‖ N(μ, σ²)) = (μ̃ − μ)²/(2σ²) + C, C = ½(β̃/σ² − 1 − log(β̃/σ²)) (normal_kl; Eq. 8)."""
    mean1, mean2, variance1, variance2 = 0.3, -0.2, 0.01, 0.02
    c = 0.5 * (variance1 / variance2 - 1 - math.log(variance1 / variance2))
    np.testing.assert_allclose(normal_kl(mean1, math.log(variance1), mean2, math.log(variance2)),
                               (mean1 - mean2) ** 2 / (2 * variance2) + c, rtol=1e-13)


def test_d3_4_the_mean_error_is_the_noise_error(schedule):
    """D3.4: with μ_θ = μ̃_t(x_t, x̂₀(ε̂)) (Eq. 11), μ̃_t − μ_θ = β_t/(√α_t √(1 − ᾱ_t)) (ε̂ − ε) (code index t)."""
    rng = np.random.default_rng(1)
    x0, eps, eps_hat = rng.standard_normal((3, 4, 5))
    t = np.arange(4) * (schedule.T // 4) + 1
    x_t = q_sample(schedule, x0, t, eps)
    true_mean, _, _ = q_posterior_mean_variance(schedule, x0, x_t, t)
    model_mean, _, _ = p_mean_variance(schedule, x_t, t, predict_x0_from_eps(schedule, x_t, t, eps_hat))
    coefficient = schedule.betas[t] / np.sqrt(schedule.alphas[t] * (1 - schedule.alphas_cumprod[t]))
    np.testing.assert_allclose(true_mean - model_mean, coefficient[:, None] * (eps_hat - eps), atol=1e-12)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_d3_5_vb_terms_are_eq_12_plus_c(schedule, variance):
    """D3.5: vb_terms_bpd at code index t ≥ 1 is mean over dimensions of β_t²/(2σ_t² α_t (1 − ᾱ_t)) (ε − ε̂)²,
    plus C, in bits: C = 0 for fixed_small (σ_t² = β̃_t), C > 0 for fixed_large (σ_t² = β_t); and a clipped
    x̂₀ breaks the identity."""
    rng = np.random.default_rng(2)
    x0, eps, eps_hat = rng.standard_normal((3, 4, 6)) * 0.5
    t = np.array([1, 10, 25, schedule.T - 1])
    x_t = q_sample(schedule, x0, t, eps)
    x0_hat = predict_x0_from_eps(schedule, x_t, t, eps_hat)
    sigma2 = schedule.posterior_variance[t] if variance == "fixed_small" else schedule.betas[t]
    ratio = schedule.posterior_variance[t] / sigma2
    c = 0.5 * (ratio - 1 - np.log(ratio))
    weight = schedule.betas[t] ** 2 / (2 * sigma2 * schedule.alphas[t] * (1 - schedule.alphas_cumprod[t]))
    eq_12 = (weight[:, None] * (eps - eps_hat) ** 2).mean(axis=1)
    np.testing.assert_allclose(vb_terms_bpd(schedule, x0, x_t, t, x0_hat, variance), (eq_12 + c) / math.log(2),
                               rtol=1e-10)
    assert (c == 0).all() if variance == "fixed_small" else (c > 0).all()
    clipped = np.clip(x0_hat, -1, 1)
    assert not np.allclose(vb_terms_bpd(schedule, x0, x_t, t, clipped, variance), (eq_12 + c) / math.log(2))


def test_d3_6_l_simple_drops_the_weight_and_c():
    """D3.6: training_loss's per-example loss is mean((ε − ε_θ(x_t, t))²), Eq. 14, with no weight and no C."""
    schedule, x0 = NoiseSchedule.linear(20, scale_to_T=True), np.random.default_rng(3).standard_normal((4, 1, 2, 2))

    def model(x_t, t):  # any ε_θ: here 0.5 x_t
        return x_t * 0.5

    draw = training_loss(model, schedule, x0.astype(np.float32), np.random.default_rng(4))
    rng = np.random.default_rng(4)  # replay the draws: t (Algorithm 1, line 3), then ε (line 4)
    t, _ = UniformSampler(schedule.T).sample(len(x0), rng)
    eps = rng.standard_normal(x0.shape, dtype=np.float32)
    x_t = q_sample(schedule, x0.astype(np.float32), t, eps)
    np.testing.assert_array_equal(draw.t, t)
    np.testing.assert_allclose(draw.per_example, ((eps - 0.5 * x_t) ** 2).reshape(4, -1).mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(float(draw.loss.data), draw.per_example.mean(), rtol=1e-6)


# D4. ε-prediction is −√(1 − ᾱ_t) × the score (Tweedie) ----------------------------------------------

MIXTURE = GaussianMixture.isotropic([[-1.0, 0.5], [1.0, -0.25]], std=0.3, weights=[0.3, 0.7])


def test_d4_1_the_conditional_score_is_minus_eps_over_sigma(schedule):
    """D4.1: ∇_{x_t} log q(x_t | x₀) = −(x_t − √ᾱ_t x₀)/(1 − ᾱ_t) = −ε/√(1 − ᾱ_t)."""
    rng, t = np.random.default_rng(5), 20
    x0, eps = rng.standard_normal((2, 3, 2))
    x_t = q_sample(schedule, x0, np.full(3, t), eps)
    gradient = numerical_gradient(lambda x: log_normal(x, schedule.sqrt_alphas_cumprod[t] * x0,
                                                       1 - schedule.alphas_cumprod[t]).sum(axis=1), x_t)
    np.testing.assert_allclose(gradient, -eps / schedule.sqrt_one_minus_alphas_cumprod[t], rtol=1e-6)


def test_d4_2_the_marginal_score_is_the_posterior_mean_of_the_conditional_score(schedule):
    """D4.2: ∇ log p(x_t) = E[∇ log q(x_t | x₀) | x_t]; for two data points x₀ ∈ {a, b} the expectation is
    a weighted sum with weights p(x₀ | x_t)."""
    t, points, weights = 30, np.array([[-0.8], [0.6]]), np.array([0.4, 0.6])
    a, v = schedule.sqrt_alphas_cumprod[t], 1 - schedule.alphas_cumprod[t]
    x_t = np.linspace(-2, 2, 9)[:, None]
    log_joint = np.log(weights) + log_normal(x_t, a * points.T, v)  # (N, 2)
    posterior = np.exp(log_joint - np.logaddexp(log_joint[:, :1], log_joint[:, 1:]))
    expected_score = (posterior * (-(x_t - a * points.T) / v)).sum(axis=1, keepdims=True)
    marginal = numerical_gradient(lambda x: np.logaddexp(*(np.log(weights) + log_normal(x, a * points.T, v)).T), x_t)
    np.testing.assert_allclose(marginal, expected_score, rtol=1e-6, atol=1e-9)


def test_d4_3_the_optimal_eps_gives_the_score_and_tweedie(schedule):
    """D4.3: with ε̂ = E[ε | x_t] (the mixture oracle), score_from_eps(ε̂) = ∇ log p(x_t), and
    predict_x0_from_eps(ε̂) = (x_t + (1 − ᾱ_t) ∇ log p(x_t))/√ᾱ_t, Tweedie's formula (code index t)."""
    t = 25
    x_t = np.random.default_rng(6).standard_normal((5, 2))
    eps_hat = mixture_denoiser(MIXTURE, schedule)(x_t, np.full(5, t))
    score = numerical_gradient(lambda x: log_mixture_density(MIXTURE.noised(schedule.alphas_cumprod[t]), x), x_t)
    np.testing.assert_allclose(score_from_eps(schedule, x_t, np.full(5, t), eps_hat), score, rtol=1e-6, atol=1e-8)
    tweedie = (x_t + (1 - schedule.alphas_cumprod[t]) * score) / schedule.sqrt_alphas_cumprod[t]
    np.testing.assert_allclose(predict_x0_from_eps(schedule, x_t, np.full(5, t), eps_hat), tweedie, rtol=1e-6,
                               atol=1e-8)


# D5. DDIM's Eq. 12 from the non-Markovian forward process; its limit ODE ----------------------------


def ddim_posterior_mean(schedule, x0, x_t, t, variance):
    """DDIM's Eq. 7 at code index t: √ᾱ_{t−1} x₀ + √(1 − ᾱ_{t−1} − σ²) (x_t − √ᾱ_t x₀)/√(1 − ᾱ_t)."""
    previous = schedule.alphas_cumprod_prev[t]
    return np.sqrt(previous) * x0 + np.sqrt(1 - previous - variance) * (
        x_t - schedule.sqrt_alphas_cumprod[t] * x0) / schedule.sqrt_one_minus_alphas_cumprod[t]


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_d5_1_the_ddim_posterior_keeps_the_marginals(schedule, eta):
    """D5.1: averaging DDIM's posterior over x_t ∼ q(x_t | x₀) gives mean √ᾱ_{t−1} x₀ and variance
    (1 − ᾱ_{t−1} − σ_t²) + σ_t² = 1 − ᾱ_{t−1}: q(x_{t−1} | x₀) for every σ_t(η) (code index t ≥ 1)."""
    t = np.arange(1, schedule.T)
    variance = ddim_variance(schedule, eta)[t]
    previous = schedule.alphas_cumprod_prev[t]
    # the posterior mean is c₀ x₀ + c₁ x_t with x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε
    c1 = np.sqrt(1 - previous - variance) / schedule.sqrt_one_minus_alphas_cumprod[t]
    c0 = np.sqrt(previous) - c1 * schedule.sqrt_alphas_cumprod[t]
    np.testing.assert_allclose(c0 + c1 * schedule.sqrt_alphas_cumprod[t], np.sqrt(previous), rtol=1e-12)
    np.testing.assert_allclose(c1**2 * (1 - schedule.alphas_cumprod[t]) + variance, 1 - previous, rtol=1e-12)


def test_d5_2_eq_12_is_the_posterior_with_the_model_s_guesses(schedule):
    """D5.2: ddim_update(x̂₀, ε̂, ᾱ_{t−1}, σ²) is DDIM's Eq. 7 mean with x̂₀ for x₀, since (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t) = ε̂."""
    rng, t = np.random.default_rng(7), np.array([3, 17, 33])
    x_t, eps_hat = rng.standard_normal((2, 3, 4))
    x0_hat = predict_x0_from_eps(schedule, x_t, t, eps_hat)
    variance = ddim_variance(schedule, 0.7)[t][:, None]
    np.testing.assert_allclose(ddim_update(x0_hat, eps_hat, schedule.alphas_cumprod_prev[t][:, None], variance),
                               ddim_posterior_mean(schedule, x0_hat, x_t, t[:, None], variance), atol=1e-12)


def test_d5_3_eta_one_is_the_ddpm_posterior(schedule):
    """D5.3: σ_t(1)² = β̃_t, and then DDIM's posterior mean is μ̃_t (Ho et al. 2020, Eq. 7)."""
    np.testing.assert_allclose(ddim_variance(schedule, 1.0), schedule.posterior_variance, rtol=1e-12, atol=1e-300)
    rng, t = np.random.default_rng(8), np.array([1, 20, 40])
    x0, x_t = rng.standard_normal((2, 3, 4))
    mean, variance, _ = q_posterior_mean_variance(schedule, x0, x_t, t)
    np.testing.assert_allclose(ddim_posterior_mean(schedule, x0, x_t, t[:, None], variance), mean, atol=1e-12)


def test_d5_4_eta_zero_is_an_euler_step_in_scaled_coordinates(schedule):
    """D5.4: at η = 0, x_{t−1}/√ᾱ_{t−1} − x_t/√ᾱ_t = (σ̄_{t−1} − σ̄_t) ε̂ with σ̄ = √((1 − ᾱ)/ᾱ)
    (DDIM's Eqs. 13–14: dx̄ = ε̂ dσ̄)."""
    rng, t = np.random.default_rng(9), np.array([2, 25, 49])
    x_t, eps_hat = rng.standard_normal((2, 3, 4))
    x0_hat = predict_x0_from_eps(schedule, x_t, t, eps_hat)
    x_prev = ddim_update(x0_hat, eps_hat, schedule.alphas_cumprod_prev[t][:, None])
    sigma_bar = np.sqrt((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod)
    sigma_bar_prev = np.sqrt((1 - schedule.alphas_cumprod_prev) / schedule.alphas_cumprod_prev)
    np.testing.assert_allclose(x_prev / np.sqrt(schedule.alphas_cumprod_prev[t])[:, None]
                               - x_t / schedule.sqrt_alphas_cumprod[t][:, None],
                               (sigma_bar_prev[t] - sigma_bar[t])[:, None] * eps_hat, atol=1e-12)


def test_d5_5_the_ddim_ode_is_the_probability_flow_ode():
    """D5.5: in the clock B = ∫β (ᾱ = e^{−B}), dx/dB along DDIM's ODE is −½(x + ∇ log p) =
    probability_flow_velocity: a DDIM step over ΔB, divided by −ΔB, tends to it as ΔB → 0 (error O(ΔB))."""
    schedule = NoiseSchedule.linear(1000)
    t, x_t = 400, np.random.default_rng(10).standard_normal((3, 2))
    eps_hat = mixture_denoiser(MIXTURE, schedule)(x_t, np.full(3, t))
    velocity = probability_flow_velocity(x_t, score_from_eps(schedule, x_t, np.full(3, t), eps_hat))
    errors = []
    for delta in (1e-3, 1e-4):  # ᾱ_{t−1} = ᾱ_t e^{ΔB}: a step of ΔB down the clock
        previous = schedule.alphas_cumprod[t] * math.exp(delta)
        x0_hat = predict_x0_from_eps(schedule, x_t, np.full(3, t), eps_hat)
        quotient = (ddim_update(x0_hat, eps_hat, previous) - x_t) / -delta
        errors.append(np.abs(quotient - velocity).max())
    assert errors[1] < 2e-4 * np.abs(velocity).max() and errors[0] / errors[1] == pytest.approx(10, rel=0.05)
    np.testing.assert_allclose(integrated_betas(schedule), -np.log(1 - schedule.betas))  # the clock's steps


# D6. v-prediction ----------------------------------------------------------------------------------


def test_d6_v_is_the_velocity_of_the_angle_and_converts_both_ways(schedule):
    """D6.1–D6.3: with √ᾱ = cos φ and √(1 − ᾱ) = sin φ, x_t = cos φ x₀ + sin φ ε and v = dx_t/dφ =
    cos φ ε − sin φ x₀ (predict_v); x₀ = cos φ x_t − sin φ v, ε = sin φ x_t + cos φ v (the inverse rotation);
    ‖ε − ε̂‖² = SNR ‖x₀ − x̂₀‖² and ‖v − v̂‖² = (1 + SNR) ‖x₀ − x̂₀‖² at fixed x_t (Min-SNR's conversions)."""
    rng, t = np.random.default_rng(11), np.array([5, 30])
    x0, eps, x0_hat = rng.standard_normal((3, 2, 3))
    phi = np.arccos(schedule.sqrt_alphas_cumprod[t])[:, None]
    h = 1e-6
    derivative = ((np.cos(phi + h) - np.cos(phi - h)) * x0 + (np.sin(phi + h) - np.sin(phi - h)) * eps) / (2 * h)
    v = predict_v(schedule, x0, t, eps)
    np.testing.assert_allclose(v, derivative, atol=1e-8)
    x_t = q_sample(schedule, x0, t, eps)
    np.testing.assert_allclose(predict_x0_from_v(schedule, x_t, t, v), x0, atol=1e-12)
    np.testing.assert_allclose(predict_eps_from_v(schedule, x_t, t, v), eps, atol=1e-12)
    eps_hat = (x_t - schedule.sqrt_alphas_cumprod[t][:, None] * x0_hat) / schedule.sqrt_one_minus_alphas_cumprod[t][:, None]
    v_hat = predict_v(schedule, x0_hat, t, eps_hat)
    snr = schedule.snr[t]
    x0_error = ((x0 - x0_hat) ** 2).sum(axis=1)
    np.testing.assert_allclose(((eps - eps_hat) ** 2).sum(axis=1), snr * x0_error, rtol=1e-10)
    np.testing.assert_allclose(((v - v_hat) ** 2).sum(axis=1), (1 + snr) * x0_error, rtol=1e-10)


# D7. Classifier-free guidance is the score of p(x | c)^(1+w) / p(x)^w --------------------------------


class ClassOracle:
    """The optimal conditional ε-model of a two-class mixture: label k → component k alone, label 2 (∅) → the mixture."""

    null_label = 2

    def __init__(self, mixture, schedule):
        self.components = [GaussianMixture(mixture.means[k:k + 1], mixture.covariances[k:k + 1]) for k in range(2)]
        self.denoisers = [mixture_denoiser(c, schedule) for c in self.components] + [mixture_denoiser(mixture, schedule)]

    def __call__(self, x, t, labels):
        out = np.empty_like(x)
        for label, denoiser in enumerate(self.denoisers):
            rows = labels == label
            if rows.any():
                out[rows] = denoiser(x[rows], t[rows])
        return Tensor(out)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_d7_guided_eps_is_the_score_of_the_tilted_density(schedule, w):
    """D7.1–D7.2: guided_denoiser's ε̃ = −√(1 − ᾱ_t) ∇[(1 + w) log p(x_t | c) − w log p(x_t)] (code index t)."""
    t, label = 20, 1
    alpha_bar = schedule.alphas_cumprod[t]
    x_t = np.random.default_rng(12).standard_normal((4, 2))
    oracle = ClassOracle(MIXTURE, schedule)
    guided = guided_denoiser(oracle, np.full(4, label), guidance=w)(x_t, np.full(4, t))

    def tilted(x):
        return ((1 + w) * log_mixture_density(oracle.components[label].noised(alpha_bar), x)
                - w * log_mixture_density(MIXTURE.noised(alpha_bar), x))

    np.testing.assert_allclose(guided, -np.sqrt(1 - alpha_bar) * numerical_gradient(tilted, x_t), rtol=1e-6,
                               atol=1e-8)


def test_d7_3_the_tilt_is_an_implicit_classifier(schedule):
    """D7.3: log p(x | c)^(1+w)/p(x)^w = log p(x | c) + w log p(c | x) − w log p(c): the same gradient."""
    t, label, w = 20, 0, 2.0
    alpha_bar = schedule.alphas_cumprod[t]
    x = np.random.default_rng(13).standard_normal((4, 2))
    noised = MIXTURE.noised(alpha_bar)
    conditional = GaussianMixture(noised.means[label:label + 1], noised.covariances[label:label + 1])
    log_p_c_given_x = np.log(noised.responsibilities(x)[:, label])
    left = (1 + w) * log_mixture_density(conditional, x) - w * log_mixture_density(noised, x)
    right = log_mixture_density(conditional, x) + w * log_p_c_given_x - w * np.log(MIXTURE.weights[label])
    np.testing.assert_allclose(left, right, rtol=1e-12)
