"""EDM and flow matching against exact answers: the identities of their coordinates, every new
sampler fed the ideal denoiser or velocity, the samplers' orders of convergence, and DDIM, EDM's
ODE and the flow-matching ODE as one ODE in different coordinates."""

import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff.diffusion import predict_v
from minidiff.objectives import OdeOptions, OdeSampler, edm, flow
from minidiff.objectives.conversions import (eps_from_velocity, flow_sigma, flow_time, velocity_from_denoiser,
                                             velocity_from_x0_eps, vp_sigma, vp_v_from_velocity, x0_from_velocity)
from minidiff.oracles import (GaussianMixture, assert_samples_match_mixture, gaussian_edm_denoiser, gaussian_edm_ode,
                              gaussian_flow_ode, gaussian_flow_velocity, mixture_denoiser, mixture_edm_denoiser,
                              mixture_flow_velocity)
from minidiff.sampling import ddim_sample, respaced
from minidiff.schedule import NoiseSchedule
from minidiff.sde import probability_flow_sample

from test_oracles import MIXTURE, N

sigmas = st.floats(1e-3, 100.0)
times = st.floats(1e-3, 1 - 1e-3)


# The coordinates ----------------------------------------------------------------------------------


@given(sigmas, st.floats(0.1, 2.0))
def test_edm_preconditioning_identities(sigma, sigma_data):
    c_skip, c_out, c_in, c_noise = edm.precondition(sigma, sigma_data)
    np.testing.assert_allclose(edm.loss_weight(sigma, sigma_data) * c_out**2, 1.0, rtol=1e-12)  # λ c_out² = 1
    np.testing.assert_allclose(c_in**2 * (sigma**2 + sigma_data**2), 1.0, rtol=1e-12)  # unit-variance input
    # Unit-variance target: E[((x₀ − c_skip (x₀ + σε))/c_out)²] = 1 for E[x₀²] = σ_d².
    np.testing.assert_allclose(((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2, 1.0, rtol=1e-9)
    np.testing.assert_allclose(np.exp(4 * c_noise), sigma, rtol=1e-12)


@given(sigmas, st.floats(0.1, 2.0))
def test_the_ideal_denoiser_of_centred_data_at_sigma_data_is_the_skip_connection(sigma, sigma_data):
    x = np.random.default_rng(0).standard_normal((3, 4))
    c_skip = edm.precondition(sigma, sigma_data)[0]
    np.testing.assert_allclose(gaussian_edm_denoiser(0.0, sigma_data)(x, np.full(3, sigma)), c_skip * x, rtol=1e-12)


@given(times)
def test_flow_conversions_round_trip_and_match_the_vp_v_prediction(t):
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 3, 5))
    t_batch = np.full(3, t)
    x_t = flow.path(x0, t_batch, eps)
    v = velocity_from_x0_eps(x0, eps)
    np.testing.assert_allclose(x0_from_velocity(x_t, t_batch, v), x0, atol=1e-12)
    np.testing.assert_allclose(eps_from_velocity(x_t, t_batch, v), eps, atol=1e-12)
    np.testing.assert_allclose(flow_time(flow_sigma(t)), t, rtol=1e-12)
    # The same state as a VP state: x_VP = x_t/n with ᾱ = (1 − t)²/n², n² = (1 − t)² + t².
    alpha_bar = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    schedule = NoiseSchedule.from_alphas_cumprod(np.array([alpha_bar]))
    np.testing.assert_allclose(vp_v_from_velocity(x_t, t_batch, v), predict_v(schedule, x0, np.zeros(3, int), eps),
                               atol=1e-12)
    np.testing.assert_allclose(vp_sigma(alpha_bar), flow_sigma(t), rtol=1e-9)


def test_the_mixture_oracles_of_one_gaussian_are_the_closed_forms():
    gaussian = GaussianMixture.isotropic([[0.3, -0.2]], 0.4)
    x = np.random.default_rng(2).standard_normal((6, 2))
    levels = np.array([0.01, 0.3, 0.3, 1.0, 5.0, 80.0])
    np.testing.assert_allclose(mixture_edm_denoiser(gaussian)(x, levels),
                               gaussian_edm_denoiser(gaussian.means[0], 0.4)(x, levels), rtol=1e-10)
    t = np.array([0.0, 0.1, 0.5, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(mixture_flow_velocity(gaussian)(x, t),
                               gaussian_flow_velocity(gaussian.means[0], 0.4)(x, t), rtol=1e-10, atol=1e-12)


def test_the_closed_form_odes_solve_their_odes():
    mean, std, h = 0.3, 0.4, 1e-6
    x, z = np.array([[1.5]]), np.array([[0.7]])
    sigma = 2.0  # d/dσ of the EDM solution is (x − D*)/σ
    numeric = (gaussian_edm_ode(x, 1.0, sigma + h, mean, std) - gaussian_edm_ode(x, 1.0, sigma - h, mean, std)) / (2 * h)
    here = gaussian_edm_ode(x, 1.0, sigma, mean, std)
    np.testing.assert_allclose(numeric, (here - gaussian_edm_denoiser(mean, std)(here, [sigma])) / sigma, rtol=1e-7)
    t = 0.4  # d/dt of the flow is v*
    numeric = (gaussian_flow_ode(z, t + h, mean, std) - gaussian_flow_ode(z, t - h, mean, std)) / (2 * h)
    np.testing.assert_allclose(numeric, gaussian_flow_velocity(mean, std)(gaussian_flow_ode(z, t, mean, std), [t]),
                               rtol=1e-7)
    np.testing.assert_allclose(gaussian_flow_ode(z, 1.0, mean, std), z)
    np.testing.assert_allclose(gaussian_flow_ode(z, 0.0, mean, std), mean + std * z)


def test_the_grids_and_their_refusals():
    sigmas = edm.karras_sigmas(18)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002) and sigmas[-1] == 0
    assert np.all(np.diff(sigmas) < 0)
    np.testing.assert_allclose(flow.flow_times(4), [1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(flow.flow_times(4, shift=3.0)[1:-1], 3 * np.array([0.75, 0.5, 0.25]) /
                               (1 + 2 * np.array([0.75, 0.5, 0.25])))
    for options, message in [(dict(sigma_max=1.0, sigma_min=2.0), "--sigma-max 1.0 must exceed --sigma-min 2.0"),
                             (dict(rho=0.0), "--rho must be a positive"), (dict(time_shift=0.0), "--time-shift"),
                             (dict(S_churn=-1.0), "--s-churn")]:
        with pytest.raises(ValueError, match=message):
            OdeOptions(**options).check()
    with pytest.raises(ValueError, match="--time-shift applies to flow checkpoints"):
        OdeSampler.build("edm", "heun", 4, options=OdeOptions(time_shift=2.0))
    with pytest.raises(ValueError, match="--rho sets EDM's sampler"):
        OdeSampler.build("flow", "heun", 4, options=OdeOptions(rho=3.0))
    with pytest.raises(ValueError, match="--sampler midpoint cannot sample a checkpoint trained with --objective edm"):
        OdeSampler.build("edm", "midpoint", 4)


# Every new sampler fed the exact answer reproduces the data -------------------------------------


def edm_run(solver, steps, **churn):
    sampler = OdeSampler.build("edm", solver, steps, options=OdeOptions(**churn))
    x = sampler.noised(0.0, np.random.default_rng(0).standard_normal((N, 2)), 0)
    return sampler.run(mixture_edm_denoiser(MIXTURE), x, rng=np.random.default_rng(1))


def flow_run(solver, steps, shift=1.0):
    sampler = OdeSampler.build("flow", solver, steps, options=OdeOptions(time_shift=shift))
    return sampler.run(mixture_flow_velocity(MIXTURE), np.random.default_rng(0).standard_normal((N, 2)))


def bridge_run(solver, steps):
    schedule = NoiseSchedule.linear(1000)
    sampler = OdeSampler.build("ddpm", solver, steps, schedule=schedule)
    x = sampler.noised(0.0, np.random.default_rng(0).standard_normal((N, 2)), 0)
    model_function = sampler.model_function(mixture_denoiser(MIXTURE, schedule), clip_denoised=False)
    return sampler.run(model_function, x)


SAMPLERS = {
    "edm heun": lambda: edm_run("heun", 32),
    "edm euler": lambda: edm_run("euler", 200),
    "edm heun with churn": lambda: edm_run("heun", 64, S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003),
    "flow euler": lambda: flow_run("euler", 200),
    "flow heun": lambda: flow_run("heun", 32),
    "flow midpoint": lambda: flow_run("midpoint", 32, shift=3.0),
    "ddpm heun (the VP bridge)": lambda: bridge_run("heun", 32),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_new_sampler_fed_the_exact_answer_reproduces_the_mixture(name):
    assert_samples_match_mixture(SAMPLERS[name](), MIXTURE)


# Orders of convergence --------------------------------------------------------------------------

MEAN, STD = 0.3, 0.5
STEPS = np.array([8, 16, 32, 64])


def slope(errors):
    """The least-squares slope of log error against log steps: −order."""
    return np.polyfit(np.log(STEPS), np.log(errors), 1)[0]


def edm_error(solver, steps):
    """Max error at σ_min of the sampler from σ_max = 80, against the closed-form ODE solution."""
    sigmas = edm.karras_sigmas(steps)[:-1]  # stop at σ_min: Heun's correction on every step
    z = np.random.default_rng(3).standard_normal((200, 1)) * 80.0
    x = edm.sample(gaussian_edm_denoiser(MEAN, STD), sigmas, z, solver=solver)
    return np.abs(x - gaussian_edm_ode(z, 80.0, sigmas[-1], MEAN, STD)).max()


def flow_error(solver, steps):
    """Max error at t = 0 of the sampler from t = 1, against the map z ↦ μ + s z."""
    z = np.random.default_rng(3).standard_normal((200, 1))
    x = flow.sample(gaussian_flow_velocity(MEAN, STD), flow.flow_times(steps), z, solver=solver)
    return np.abs(x - (MEAN + STD * z)).max()


@pytest.mark.parametrize("error", [edm_error, flow_error], ids=["edm", "flow"])
@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2)])
def test_measured_orders_of_convergence(error, solver, order):
    measured = -slope([error(solver, steps) for steps in STEPS])
    assert abs(measured - order) < 0.25, f"{solver}: measured order {measured:.2f}, expected {order}"


# One ODE in different coordinates ------------------------------------------------------------------


def test_ddim_edm_euler_and_flow_euler_on_a_vp_model_take_the_same_steps():
    """DDIM's update is Euler's step on the probability-flow ODE written in EDM's coordinates
    (x/√ᾱ against σ), and in flow matching's (x·(1 − t)/√ᾱ against t = σ/(1 + σ))."""
    schedule = NoiseSchedule.cosine(1000)
    model = mixture_denoiser(MIXTURE, schedule)
    x_T = np.random.default_rng(4).standard_normal((64, 2))
    ddim = ddim_sample(model, schedule, (64, 2), steps=20, x_T=x_T, clip_denoised=False)

    chain = respaced(schedule, 20)
    sigmas = np.append(vp_sigma(chain.alphas_cumprod)[::-1], 0.0)  # the 20 retained levels, then σ = 0
    denoise = edm.vp_denoiser(model, chain)
    x_edm = x_T / np.sqrt(chain.alphas_cumprod[-1])
    np.testing.assert_allclose(edm.sample(denoise, sigmas, x_edm, solver="euler"), ddim, atol=1e-10)

    times = flow_time(sigmas)
    x_flow = x_edm * (1 - times[0])
    np.testing.assert_allclose(flow.sample(velocity_from_denoiser(denoise), times, x_flow, solver="euler"), ddim,
                               atol=1e-10)


def test_the_probability_flow_sampler_is_heun_in_edm_coordinates():
    schedule = NoiseSchedule.linear(1000)
    model = mixture_denoiser(MIXTURE, schedule)
    x_T = np.random.default_rng(5).standard_normal((64, 2))
    chain = respaced(schedule, 30)
    sigmas = np.append(vp_sigma(chain.alphas_cumprod)[::-1], 0.0)
    heun = edm.sample(edm.vp_denoiser(model, chain), sigmas, x_T / np.sqrt(chain.alphas_cumprod[-1]))
    np.testing.assert_allclose(probability_flow_sample(model, schedule, (64, 2), steps=30, x_T=x_T,
                                                       clip_denoised=False), heun, atol=1e-10)


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_encoding_runs_the_ode_backwards_to_the_noise_the_sampler_decodes(objective):
    sampler = OdeSampler.build(objective, "heun", 64)
    model_function = (gaussian_flow_velocity(MEAN, STD) if objective == "flow" else gaussian_edm_denoiser(MEAN, STD))
    images = MEAN + STD * np.random.default_rng(6).standard_normal((50, 3))
    z = sampler.encode(model_function, images)
    expected = (images - MEAN) / STD  # the exact ODE maps z to μ + s z (for EDM up to σ_max ≫ s)
    np.testing.assert_allclose(z, expected, atol=2e-2 if objective == "edm" else 1e-3)
    np.testing.assert_allclose(sampler.run(model_function, sampler.noised(0 * z, z, 0)), images, atol=2e-2)


@given(st.floats(0.01, 0.99))
def test_eq_13_in_integrated_beta_time_is_edm_ode_after_the_change_of_variables(alpha_bar):
    """dx/dB = −½(x + ∇ log p) with B = −log ᾱ (Song et al. 2021b, Eq. 13) becomes dx̃/dσ = ε̂ for
    x̃ = x/√ᾱ = x e^{B/2} and σ = √(e^B − 1), whose dσ/dB = e^B/(2σ)."""
    from minidiff.sde import probability_flow_velocity

    x, eps = np.random.default_rng(7).standard_normal((2, 4, 3))
    B, sigma = -np.log(alpha_bar), vp_sigma(alpha_bar)
    dx_dB = probability_flow_velocity(x, -eps / np.sqrt(1 - alpha_bar))  # score = −ε̂/√(1 − ᾱ)
    dxtilde_dsigma = np.exp(B / 2) * (dx_dB + 0.5 * x) / (np.exp(B) / (2 * sigma))
    np.testing.assert_allclose(dxtilde_dsigma, eps, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------- exact laws and edges the mutation run asked for
def test_flow_times_follow_their_laws_exactly():
    u = flow.sample_t(5, np.random.default_rng(3))
    np.testing.assert_array_equal(u, np.random.default_rng(3).random(5))  # U[0, 1], the generator's own draws
    t = flow.sample_t(5, np.random.default_rng(4), "logit-normal")
    z = np.random.default_rng(4).standard_normal(5)
    np.testing.assert_allclose(t, 1 / (1 + np.exp(-z)), rtol=1e-15)  # sigmoid of N(0, 1) (Esser et al. 2024, §3.1)
    np.testing.assert_allclose(np.log(t / (1 - t)), z, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown t distribution 'normal'; choose one of uniform, logit-normal"):
        flow.sample_t(5, np.random.default_rng(0), "normal")


def test_the_edm_grid_refuses_its_boundaries_exactly():
    edm.check_grid(0.002, 0.0021, 7)  # just inside
    for sigma_min, sigma_max, message in ((0.0, 80.0, "--sigma-min must be a positive"),
                                          (1.0, 1.0, "--sigma-max 1.0 must exceed --sigma-min 1.0")):
        with pytest.raises(ValueError, match=message):
            edm.check_grid(sigma_min, sigma_max, 7)


def test_inpainting_replaces_exactly_the_known_pixels_of_x0_hat():
    from minidiff.objectives.conversions import replace_known
    x0_hat, known = np.full((1, 1, 2, 2), 0.5), np.full((1, 1, 2, 2), -0.25)
    mask = np.array([[1.0, 0.0], [0.0, 1.0]])  # 1: repaint (keep the estimate), 0: known
    np.testing.assert_array_equal(replace_known(x0_hat, known, mask)[0, 0], [[0.5, -0.25], [-0.25, 0.5]])
    assert replace_known(x0_hat) is x0_hat


def test_churn_raises_sigma_by_gamma_and_adds_exactly_that_much_noise():
    # Karras et al. 2022, Algorithm 2, lines 4–8, one step from σ_0 = 2 onto σ_1 = 0 with D ≡ 0 and Euler:
    # γ = min(S_churn/N, √2 − 1) = √2 − 1 inside [S_tmin, S_tmax], σ̂ = √2·σ_0, x̂ = x + √(σ̂² − σ_0²)·S_noise·ε
    # = x + σ_0·S_noise·ε, and the Euler step onto 0 lands on D = 0 after reporting x̂ and σ̂.
    seen = []
    x = np.ones((2, 1, 2, 2))
    edm.sample(lambda x, sigma: np.zeros_like(x), np.array([2.0, 0.0]), x, solver="euler", S_churn=10.0,
               S_tmin=2.0, S_tmax=2.0, S_noise=0.5, rng=np.random.default_rng(7),
               callback=lambda index, t, x_t, x0_hat: seen.append((t, x_t)))
    eps = np.random.default_rng(7).standard_normal(x.shape)
    np.testing.assert_allclose(seen[0][1], x + 2.0 * 0.5 * eps, rtol=1e-12)
    assert seen[0][0] == pytest.approx(2.0 * np.sqrt(2.0), rel=1e-12)
    default = []  # S_noise = 1 unless asked (Algorithm 2): the added noise is σ_0·ε
    edm.sample(lambda x, sigma: np.zeros_like(x), np.array([2.0, 0.0]), x, solver="euler", S_churn=10.0,
               rng=np.random.default_rng(7), callback=lambda index, t, x_t, x0_hat: default.append((t, x_t)))
    np.testing.assert_allclose(default[0][1], x + 2.0 * eps, rtol=1e-12)
    outside = []  # σ_0 = 2 outside [S_tmin, S_tmax] = [0, 1.9]: no churn, x unchanged
    edm.sample(lambda x, sigma: np.zeros_like(x), np.array([2.0, 0.0]), x, solver="euler", S_churn=10.0,
               S_tmax=1.9, rng=np.random.default_rng(7), callback=lambda index, t, x_t, x0_hat: outside.append((t, x_t)))
    np.testing.assert_array_equal(outside[0][1], x)
    with pytest.raises(ValueError, match="unknown EDM solver 'rk4'; choose one of"):
        edm.sample(lambda x, sigma: x, np.array([2.0, 0.0]), x, solver="rk4")


def test_the_flow_velocity_is_constrained_through_its_x0_hat():
    from minidiff.objectives.conversions import clip_x0, constrained_velocity
    np.testing.assert_array_equal(clip_x0(np.array([-3.0, -0.5, 0.5, 3.0])), [-1.0, -0.5, 0.5, 1.0])
    x, t = np.array([[0.0, 0.0]]), np.array([0.5])
    velocity = lambda x, t: np.array([[4.0, -1.0]])  # x̂₀ = x − t v̂ = (−2, 0.5)
    unconstrained = constrained_velocity(velocity, clip_denoised=False)
    assert unconstrained is velocity  # nothing to constrain: the model's own velocity
    # x̂₀ clipped to (−1, 0.5), then v̂ = (x − x̂₀)/t = (2, −1)
    np.testing.assert_allclose(constrained_velocity(velocity)(x, t), [[2.0, -1.0]], rtol=1e-12)
    # inpainting alone (no clipping): pixel 0 known to be 0.25, so x̂₀ = (0.25, 0.5) and v̂ = (−0.5, −1)
    known, mask = np.array([[0.25, 0.0]]), np.array([0.0, 1.0])
    np.testing.assert_allclose(constrained_velocity(velocity, False, None, known, mask)(x, t), [[-0.5, -1.0]],
                               rtol=1e-12)


def test_the_edm_defaults_are_the_papers():
    # ln σ ∼ N(−1.2, 1.2²) in training (Karras et al. 2022, Table 1); S_noise = 1 unless asked (Algorithm 2).
    assert (edm.P_MEAN, edm.P_STD) == (-1.2, 1.2)
    assert inspect.signature(edm.sample).parameters["S_noise"].default == 1.0
