"""Properties of the samplers (DDPM, DDIM, DPM-Solver++) and an analytic end-to-end check:
fed the optimal ε̂ for Gaussian data, every sampler must reproduce that Gaussian."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_diffusion import gaussian_oracle

from minidiff.diffusion import predict_v, q_sample
from minidiff.sampling import (
    ddim_encode,
    ddim_sample,
    ddim_variance,
    ddpm_sample,
    dpm_solver_pp_sample,
)
from minidiff.oracles import model_alphas_cumprod
from minidiff.schedule import SPACINGS, NoiseSchedule, space_timesteps
from minidiff.testing import schedules


def point_mass_oracle(schedule, x0):
    """The exact ε̂ when the data is the single point x₀: ε̂ = (x_t − √ᾱ_t x₀)/√(1 − ᾱ_t)."""
    alphas_cumprod = model_alphas_cumprod(schedule)

    def model(x_t, t):
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        alpha_bar = alphas_cumprod[t].reshape(shape)
        return (x_t - np.sqrt(alpha_bar) * x0) / np.sqrt(1 - alpha_bar)

    return model


# Single steps ---------------------------------------------------------------------------------------


def one_step(sampler, model, schedule, x_t, t, rng, **kwargs):
    """x_{t−1}: the first step of ``sampler`` started at index t with x_t (on the schedule cut to
    indices 0..t, which keeps every β), read off the callback of the second step."""
    seen = []
    out = sampler(model, schedule.respace(np.arange(t + 1)), x_t.shape, t + 1, x_T=x_t, rng=rng,
                  callback=lambda index, model_t, x, x0_hat: seen.append(x), **kwargs)
    return seen[1] if t > 0 else out



@given(schedules(allow_zero_terminal_snr=False), st.data())
def test_a_ddpm_step_is_ho_et_al_algorithm_2(schedule, data):
    t = data.draw(st.integers(0, schedule.T - 1))
    seed = data.draw(st.integers(0, 2**32 - 1))
    x_t = np.random.default_rng(seed).standard_normal((4, 3))
    eps_hat = np.random.default_rng(seed + 1).standard_normal((4, 3))
    x_prev = one_step(ddpm_sample, lambda *_: eps_hat, schedule, x_t, t, np.random.default_rng(7), clip_denoised=False)
    alpha, beta, alpha_bar = schedule.alphas[t], schedule.betas[t], schedule.alphas_cumprod[t]
    expected = (x_t - beta / math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(alpha)
    if t > 0:
        expected = expected + math.sqrt(schedule.posterior_variance[t]) * np.random.default_rng(7).standard_normal(x_t.shape)
    np.testing.assert_allclose(x_prev, expected, rtol=1e-7, atol=1e-7)


@given(schedules(), st.data())
def test_ddim_with_eta_1_on_consecutive_steps_is_the_ddpm_posterior(schedule, data):
    np.testing.assert_allclose(ddim_variance(schedule, 1.0), schedule.posterior_variance, rtol=1e-10, atol=1e-300)
    t = data.draw(st.integers(0, schedule.T - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x_t, x0_hat = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))

    def model(*_):
        return x0_hat

    ddim = one_step(ddim_sample, model, schedule, x_t, t, np.random.default_rng(3), eta=1.0, prediction="x0",
                    clip_denoised=False)
    ddpm = one_step(ddpm_sample, model, schedule, x_t, t, np.random.default_rng(3), prediction="x0", clip_denoised=False)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-8, atol=1e-8)


@given(schedules(), st.data())
def test_ddim_eta_0_with_the_true_x0_returns_it_for_any_step_subset(schedule, data):
    subset = np.array(sorted(data.draw(st.sets(st.integers(0, schedule.T - 1), min_size=1))))
    respaced = schedule.respace(subset)
    x0 = np.random.default_rng(0).uniform(-1, 1, (3, 2))
    out = ddim_sample(
        lambda x_t, t: x0, respaced, x0.shape, steps=respaced.T, prediction="x0", rng=np.random.default_rng(1)
    )
    np.testing.assert_array_equal(out, x0)
    if schedule.alphas_cumprod[-1] > 0:  # ε-prediction needs ᾱ > 0 to recover x₀
        oracle = point_mass_oracle(schedule, x0)
        out = ddim_sample(oracle, respaced, x0.shape, steps=respaced.T, rng=np.random.default_rng(1))
        np.testing.assert_allclose(out, x0, atol=1e-6)


@given(schedules(), st.data(), st.floats(0.0, 1.0))
def test_a_ddim_step_with_the_true_x0_preserves_the_marginal_for_any_eta(schedule, data, eta):
    # x_t ~ q(x_t | x₀) and the exact (x₀, ε) must give x_{t−1} ~ q(x_{t−1} | x₀) for every η.
    t = data.draw(st.integers(0, schedule.T - 1))
    n, x0_value = 20_000, 0.4
    x0 = np.full((n,), x0_value)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x_t = q_sample(schedule, x0, np.full(n, t), rng.standard_normal(n))
    x_prev = one_step(ddim_sample, lambda *_: x0, schedule, x_t, t, rng, eta=eta, prediction="x0", clip_denoised=False)
    mean = math.sqrt(schedule.alphas_cumprod_prev[t]) * x0_value
    variance = 1 - schedule.alphas_cumprod_prev[t]
    assert abs(x_prev.mean() - mean) <= 5 * math.sqrt(variance / n) + 1e-12
    assert abs(x_prev.var() - variance) <= 5 * variance * math.sqrt(2 / n) + 1e-12


@pytest.mark.parametrize("eta", [0.3, 0.5, 0.8])
def test_ddim_noise_at_fractional_eta_is_eta_squared_times_the_ddpm_posterior_variance(eta):
    # Song et al. 2021, Eq. 16 on consecutive steps: σ_t(η)² = η² β̃_t. Given x_t, the step's only
    # randomness is σ_t z, so x_{t−1} has that variance about √ᾱ_{t−1} x₀ + √(1 − ᾱ_{t−1} − σ_t²) ε.
    schedule = NoiseSchedule.linear(100)
    np.testing.assert_allclose(ddim_variance(schedule, eta), eta**2 * schedule.posterior_variance, rtol=1e-12)
    t, n, x0_value = 60, 40_000, 0.4
    x_t = np.full(n, 0.7)
    x_prev = one_step(ddim_sample, lambda *_: np.full(n, x0_value), schedule, x_t, t, np.random.default_rng(3),
                      eta=eta, prediction="x0", clip_denoised=False)
    variance = eta**2 * schedule.posterior_variance[t]
    eps = (0.7 - math.sqrt(schedule.alphas_cumprod[t]) * x0_value) / math.sqrt(1 - schedule.alphas_cumprod[t])
    mean = math.sqrt(schedule.alphas_cumprod_prev[t]) * x0_value + math.sqrt(
        1 - schedule.alphas_cumprod_prev[t] - variance) * eps
    assert abs(x_prev.mean() - mean) <= 5 * math.sqrt(variance / n)
    assert abs(x_prev.var() - variance) <= 5 * variance * math.sqrt(2 / n)


def test_eta_is_refused_just_past_the_largest_sigma_the_step_allows():
    # σ_t(η)² ≤ 1 − ᾱ_{t−1} (Eq. 12 takes its complement's root): η_max is where the first step reaches it.
    schedule = NoiseSchedule.linear(100).respace([0, 40, 99])
    ratio = ddim_variance(schedule, 1.0)[1:] / (1 - schedule.alphas_cumprod_prev[1:])  # t = 0: both are 0
    eta_max = 1 / math.sqrt(ratio.max())
    ddim_variance(schedule, eta_max)  # at the bound, up to rounding: accepted
    with pytest.raises(ValueError, match="too large"):
        ddim_variance(schedule, eta_max * (1 + 1e-6))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm_solver_pp"])
def test_t_start_runs_from_that_index_and_minus_1_returns_x_T(name):
    schedule, x_T = NoiseSchedule.linear(50), np.random.default_rng(0).standard_normal((2, 3))
    model = gaussian_oracle(schedule, 0.2, 0.5)

    def sample(**kw):
        return SAMPLERS[name](model, schedule, x_T.shape, x_T=x_T, rng=np.random.default_rng(1), **kw)

    top = 49 if name == "ddpm" else 6  # the respaced chain's last index
    np.testing.assert_array_equal(sample(t_start=top), sample())
    np.testing.assert_array_equal(sample(t_start=-1), x_T)
    with pytest.raises(ValueError, match=rf"t_start={top + 1} is outside \[-1, {top + 1}\)"):
        sample(t_start=top + 1)
    with pytest.raises(ValueError, match=r"t_start must be an integer in \[-1, "):
        sample(t_start=-2)


def test_ddim_inversion_of_a_point_mass_keeps_its_first_eps():
    # With the exact ε̂ of data that is one point x₀, every DDIM step keeps ε̂ = e₀, the ε̂ at x₀ itself
    # (index 0, where x̂₀ = x₀): x_T = √ᾱ_T x₀ + √(1 − ᾱ_T) e₀ exactly (Song et al. 2021, Eq. 14).
    schedule, x0 = NoiseSchedule.linear(100), np.array([[0.4, -0.7]])
    cut = schedule.respace(space_timesteps(100, 10))
    e0 = (1 - math.sqrt(cut.alphas_cumprod[0])) / math.sqrt(1 - cut.alphas_cumprod[0]) * x0
    x_T = ddim_encode(point_mass_oracle(schedule, x0), schedule, x0, steps=10)
    np.testing.assert_allclose(x_T, math.sqrt(cut.alphas_cumprod[-1]) * x0 + math.sqrt(1 - cut.alphas_cumprod[-1]) * e0,
                               rtol=1e-10)


def test_dpm_solver_pp_first_step_is_the_ddim_step():
    # Its first step is first order: exactly DDIM's (Lu et al. 2022, Algorithm 2 with λ = ½ log SNR).
    schedule = NoiseSchedule.cosine(100)
    model, x_T = gaussian_oracle(schedule, 0.2, 0.5), np.random.default_rng(0).standard_normal((3, 4))
    second = {}
    for name, sampler in (("ddim", ddim_sample), ("dpm", dpm_solver_pp_sample)):
        sampler(model, schedule, x_T.shape, steps=8, x_T=x_T, clip_denoised=False,
                callback=lambda index, t, x, x0_hat, name=name: second.setdefault(name, x) if index == 1 else None)
    np.testing.assert_allclose(second["dpm"], second["ddim"], rtol=1e-10)


def test_default_step_counts_are_50_for_ddim_and_its_inversion_and_20_for_dpm_solver_pp():
    calls = []

    def model(x_t, t):
        calls.append(int(t[0]))
        return np.zeros_like(x_t)

    schedule, x = NoiseSchedule.linear(200), np.zeros((1, 2))
    for sampler, steps in ((ddim_sample, 50), (dpm_solver_pp_sample, 20)):
        calls.clear()
        sampler(model, schedule, x.shape, rng=np.random.default_rng(0))
        assert len(calls) == steps and calls[0] == 199
    calls.clear()
    ddim_encode(model, schedule, x)
    assert len(set(calls)) == 49  # 49 steps between the 50 timesteps, up from t = 0


# Whole samplers: reproducibility, trajectories, respacing ------------------------------------------------

SAMPLERS = {
    "ddpm": lambda model, schedule, shape, **kw: ddpm_sample(model, schedule, shape, **kw),
    "ddim": lambda model, schedule, shape, **kw: ddim_sample(model, schedule, shape, steps=7, eta=0.5, **kw),
    "dpm_solver_pp": lambda model, schedule, shape, **kw: dpm_solver_pp_sample(model, schedule, shape, steps=7, **kw),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_are_reproducible_from_the_rng(name):
    schedule = NoiseSchedule.cosine(20)
    model = gaussian_oracle(schedule, 0.2, 0.5)
    sample = SAMPLERS[name]
    a = sample(model, schedule, (4, 3), rng=np.random.default_rng(5))
    b = sample(model, schedule, (4, 3), rng=np.random.default_rng(5))
    c = sample(model, schedule, (4, 3), rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", SAMPLERS)
def test_callback_and_trajectory_expose_each_step(name):
    schedule = NoiseSchedule.cosine(20)
    model_calls, callbacks = [], []

    def model(x_t, t):
        model_calls.append(t.copy())
        return np.zeros_like(x_t)

    x_T = np.random.default_rng(0).standard_normal((2, 3))
    out, trajectory = SAMPLERS[name](
        model, schedule, x_T.shape, x_T=x_T, rng=np.random.default_rng(1), return_trajectory=True,
        callback=lambda *args: callbacks.append(args),
    )
    assert len(trajectory) == len(callbacks) == len(model_calls)
    np.testing.assert_array_equal(trajectory[0].x_t, x_T)
    for step, (index, t, x_t, x0_hat), t_batch in zip(trajectory, callbacks, model_calls):
        assert step.index == index and step.t == t
        assert step.x_t is x_t and step.x0_hat is x0_hat
        np.testing.assert_array_equal(t_batch, np.full(2, t))
    ts = [step.t for step in trajectory]
    assert ts == sorted(ts, reverse=True) and ts[0] == 19 and ts[-1] == 0
    assert [step.index for step in trajectory] == list(range(len(trajectory)))


def test_respaced_ddpm_calls_the_model_with_original_timesteps():
    schedule = NoiseSchedule.linear(100).respace(space_timesteps(100, 5))
    seen = []
    ddpm_sample(lambda x, t: seen.append(int(t[0])) or np.zeros_like(x), schedule, (1,), rng=np.random.default_rng(0))
    assert seen == [99, 74, 50, 25, 0]


def test_clipping_and_dynamic_thresholding_bound_x0_hat():
    schedule = NoiseSchedule.cosine(10)

    def wild(x_t, t):
        return 5 * np.ones_like(x_t)

    _, trajectory = ddpm_sample(wild, schedule, (3, 8), prediction="x0", rng=np.random.default_rng(0), return_trajectory=True)
    assert all(np.abs(step.x0_hat).max() <= 1 for step in trajectory)
    _, trajectory = ddim_sample(
        lambda x_t, t: np.linspace(-4, 4, 8) * np.ones_like(x_t), schedule, (3, 8), steps=3, prediction="x0",
        dynamic_threshold=0.9, rng=np.random.default_rng(0), return_trajectory=True,
    )
    for step in trajectory:
        assert np.abs(step.x0_hat).max() <= 1 + 1e-12
        # Dynamic thresholding rescales rather than saturates: the ordering survives.
        assert np.all(np.diff(step.x0_hat, axis=1) > 0)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_models_sample_like_the_equivalent_eps_model(prediction):
    schedule = NoiseSchedule.cosine(30)
    eps_model = gaussian_oracle(schedule, 0.2, 0.5)

    def converted(x_t, t):
        eps = eps_model(x_t, t)
        alpha_bar = schedule.alphas_cumprod[t]
        x0 = (x_t - np.sqrt(1 - alpha_bar) * eps) / np.sqrt(alpha_bar)
        return x0 if prediction == "x0" else predict_v(schedule, x0, t, eps)

    for sample in SAMPLERS.values():
        a = sample(eps_model, schedule, (6,), rng=np.random.default_rng(2), clip_denoised=False)
        b = sample(converted, schedule, (6,), rng=np.random.default_rng(2), clip_denoised=False, prediction=prediction)
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8)


def test_zero_terminal_snr_samples_with_v_prediction():
    schedule = NoiseSchedule.cosine(50).rescale_zero_terminal_snr()
    model = gaussian_oracle(schedule, 0.2, 0.5)

    def v_model(x_t, t):
        eps = model(x_t, t)
        x0 = 0.2 + 0.25 * np.sqrt(schedule.alphas_cumprod[t]) * (x_t - np.sqrt(schedule.alphas_cumprod[t]) * 0.2) / (
            0.25 * schedule.alphas_cumprod[t] + 1 - schedule.alphas_cumprod[t]
        )
        return predict_v(schedule, x0, t, eps)

    for sample in SAMPLERS.values():
        assert np.all(np.isfinite(sample(v_model, schedule, (8,), prediction="v", rng=np.random.default_rng(0))))
    with pytest.raises(ValueError, match="prediction='eps' cannot recover x0"):
        ddim_sample(model, schedule, (8,), steps=5, rng=np.random.default_rng(0))


def test_ddim_encode_then_decode_reconstructs_x0():
    schedule = NoiseSchedule.linear(1000)
    model = gaussian_oracle(schedule, 0.1, 0.5)
    x0 = np.random.default_rng(0).normal(0.1, 0.5, 200)
    errors = []
    for steps in (20, 200):
        x_T = ddim_encode(model, schedule, x0, steps=steps)
        assert abs(x_T.std() - 1) < 0.2  # encoded into (roughly) the prior
        back = ddim_sample(model, schedule, x0.shape, steps=steps, x_T=x_T, clip_denoised=False)
        errors.append(np.abs(back - x0).max())
    assert errors[1] < errors[0] / 5 and errors[1] < 0.05


# Bad input -------------------------------------------------------------------------------------------------


def test_bad_sampler_arguments_are_refused():
    schedule = NoiseSchedule.linear(10)
    model = gaussian_oracle(schedule, 0.0, 1.0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, inf\], got -0.1"):
        ddim_sample(model, schedule, (2,), steps=5, eta=-0.1, rng=rng)
    with pytest.raises(ValueError, match="eta=3.0 is too large"):
        ddim_sample(model, schedule, (2,), steps=5, eta=3.0, rng=rng)
    for steps in (0, 11):
        with pytest.raises(ValueError, match=rf"\[1, 10\], got {steps}"):
            ddim_sample(model, schedule, (2,), steps=steps, rng=rng)
        with pytest.raises(ValueError, match=rf"\[1, 10\], got {steps}"):
            dpm_solver_pp_sample(model, schedule, (2,), steps=steps, rng=rng)
    with pytest.raises(ValueError, match="unknown variance 'fixed_medium'"):
        ddpm_sample(model, schedule, (2,), variance="fixed_medium", rng=rng)
    with pytest.raises(ValueError, match="variance 'learned' is the model's"):  # the oracle outputs no v
        ddpm_sample(model, schedule, (2,), variance="learned", rng=rng)
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        ddpm_sample(model, schedule, (2,), prediction="score", rng=rng)
    with pytest.raises(ValueError, match="unknown spacing 'log'"):
        ddim_sample(model, schedule, (2,), steps=5, spacing="log", rng=rng)
    with pytest.raises(ValueError, match=r"x_T has shape \(3,\), expected \(2,\)"):
        ddpm_sample(model, schedule, (2,), x_T=np.zeros(3), rng=rng)
    for steps in (0, 11):
        with pytest.raises(ValueError, match=rf"\[1, 10\], got {steps}"):
            ddpm_sample(model, schedule, (2,), steps=steps, rng=rng)


# Analytic end-to-end: Gaussian data ---------------------------------------------------------------------------

MU, S, N = 0.3, 0.5, 4000
END_TO_END = {
    "ddpm fixed_small": lambda m, sch, rng: ddpm_sample(m, sch, (N,), rng=rng, clip_denoised=False),
    "ddpm fixed_large": lambda m, sch, rng: ddpm_sample(m, sch, (N,), rng=rng, variance="fixed_large", clip_denoised=False),
    # Few-step DDIM is biased for N(μ, s²) data (see the convergence test); these step
    # counts keep the bias below the sampling error.
    "ddim eta=0": lambda m, sch, rng: ddim_sample(m, sch, (N,), steps=100, spacing="quadratic", rng=rng, clip_denoised=False),
    "ddim eta=1": lambda m, sch, rng: ddim_sample(
        m, sch, (N,), steps=250, eta=1.0, spacing="quadratic", rng=rng, clip_denoised=False
    ),
    "dpm_solver_pp": lambda m, sch, rng: dpm_solver_pp_sample(
        m, sch, (N,), steps=25, spacing="quadratic", rng=rng, clip_denoised=False
    ),
}


@pytest.mark.parametrize("name", END_TO_END)
def test_samplers_reproduce_gaussian_data_from_the_optimal_denoiser(name):
    schedule = NoiseSchedule.linear(1000)
    samples = END_TO_END[name](gaussian_oracle(schedule, MU, S), schedule, np.random.default_rng(0))
    mean_se, var_se = S / math.sqrt(N), S**2 * math.sqrt(2 / (N - 1))
    assert abs(samples.mean() - MU) < 4 * mean_se
    assert abs(samples.var(ddof=1) - S**2) < 4 * var_se


def test_deterministic_samplers_converge_at_their_order():
    # With one x_T, the error against a 1000-step run isolates the discretisation error:
    # first order for DDIM (Song et al. 2021, Eq. 14 is Euler), second for DPM-Solver++(2M).
    schedule = NoiseSchedule.linear(1000)
    model = gaussian_oracle(schedule, MU, S)
    x_T = np.random.default_rng(0).standard_normal(2000)

    def error(sampler, steps):
        kwargs = dict(x_T=x_T, spacing="quadratic", clip_denoised=False)
        reference = sampler(model, schedule, x_T.shape, steps=1000, **kwargs)
        return np.abs(sampler(model, schedule, x_T.shape, steps=steps, **kwargs) - reference).max()

    ddim_ratio = error(ddim_sample, 20) / error(ddim_sample, 80)
    dpm_ratio = error(dpm_solver_pp_sample, 20) / error(dpm_solver_pp_sample, 80)
    assert 2.5 < ddim_ratio < 6  # ≈ 4 for first order
    assert dpm_ratio > 10  # ≈ 16 for second order
    assert error(dpm_solver_pp_sample, 20) < error(ddim_sample, 20) / 3


def test_dpm_solver_pp_is_at_least_as_accurate_as_ddim_at_few_steps():
    # The Gaussian oracle, one x_T, error against a 1000-step run of the same sampler. Uniform
    # spacing without a first-order final step is the configuration that lost to DDIM (its last
    # second-order step spans a wide λ interval); every spacing with lower_order_final wins.
    schedule = NoiseSchedule.linear(1000)
    model = gaussian_oracle(schedule, MU, S)
    x_T = np.random.default_rng(0).standard_normal(2000)

    def error(sampler, steps, **kwargs):
        reference = sampler(model, schedule, x_T.shape, steps=1000, x_T=x_T, clip_denoised=False, **kwargs)
        return np.abs(sampler(model, schedule, x_T.shape, steps=steps, x_T=x_T, clip_denoised=False, **kwargs)
                      - reference).max()

    for steps in (10, 20):
        ddim_default = error(ddim_sample, steps)
        assert error(dpm_solver_pp_sample, steps) <= ddim_default  # the defaults: uniform, lower_order_final
        for spacing in SPACINGS:
            assert error(dpm_solver_pp_sample, steps, spacing=spacing) <= error(ddim_sample, steps, spacing=spacing)
    old = error(dpm_solver_pp_sample, 20, spacing="uniform", lower_order_final=False)
    assert old > error(ddim_sample, 20, spacing="uniform")
