"""The VP-SDE samplers: their steps against the DDPM chain and the ODE's order of accuracy, the
Langevin corrector against a known target, and the shared sampler conventions (the
Gaussian-mixture end-to-end checks are in test_oracles.py)."""

import numpy as np
import pytest
from hypothesis import given
from test_diffusion import gaussian_oracle

from minidiff.sampling import ddpm_sample
from minidiff.schedule import NoiseSchedule, space_timesteps
from minidiff.sde import (
    integrated_betas,
    langevin_correct,
    predictor_corrector_sample,
    probability_flow_sample,
    reverse_sde_sample,
)
from minidiff.testing import schedules

SDE_SAMPLERS = {"reverse sde": reverse_sde_sample, "probability flow": probability_flow_sample,
                "predictor-corrector": predictor_corrector_sample}


@given(schedules(allow_zero_terminal_snr=False))
def test_integrated_betas_add_up_to_minus_log_alphas_cumprod(schedule):
    np.testing.assert_allclose(np.cumsum(integrated_betas(schedule)), -np.log(schedule.alphas_cumprod), rtol=1e-9)


def test_a_reverse_sde_step_is_the_ddpm_step_to_first_order_in_beta():
    # Song et al. 2021, §4.1: ancestral sampling (with σ_t² = β_t) is one discretisation of the reverse VP SDE.
    schedule = NoiseSchedule.linear(1000)
    model = gaussian_oracle(schedule, 0.3, 0.5)
    x_T = np.random.default_rng(0).standard_normal(1000)
    for t in (100, 500, 999):
        cut = schedule.respace(np.arange(t + 1))
        steps = {}
        for name, sampler, kwargs in (("ddpm", ddpm_sample, dict(variance="fixed_large")), ("sde", reverse_sde_sample, {})):
            seen = []
            sampler(model, cut, x_T.shape, x_T=x_T, rng=np.random.default_rng(1), clip_denoised=False,
                    callback=lambda index, model_t, x, x0_hat: seen.append(x), **kwargs)
            steps[name] = seen[1]
        # x_{t−1} − x_t is O(√β); the two discretisations differ by O(β^1.5).
        beta = schedule.betas[t]
        assert np.abs(steps["sde"] - steps["ddpm"]).max() < 2 * beta**1.5


def test_the_probability_flow_ode_solver_is_second_order():
    schedule = NoiseSchedule.linear(1000)
    model = gaussian_oracle(schedule, 0.3, 0.5)
    x_T = np.random.default_rng(0).standard_normal(2000)

    def error(steps):
        kwargs = dict(x_T=x_T, spacing="quadratic", clip_denoised=False)
        reference = probability_flow_sample(model, schedule, x_T.shape, steps=1000, **kwargs)
        return np.abs(probability_flow_sample(model, schedule, x_T.shape, steps=steps, **kwargs) - reference).max()

    assert error(20) / error(80) > 10  # ≈ 16 for Heun's second order


def test_langevin_steps_keep_the_target_distribution():
    # Target N(0, s²): score −x/s². Started on the target, the corrector must stay on it.
    s, n = 0.5, 20000
    rng = np.random.default_rng(2)
    x = s * rng.standard_normal(n)
    for _ in range(200):
        x = langevin_correct(x, -x / s**2, rng.standard_normal(n), 1.0, snr=0.16)
    assert abs(x.var() / s**2 - 1) < 0.08  # the step is 2(0.16 s)²: a bias of ~ε/(4s²) ≈ 1 %
    # ... and started off it, it must move there.
    x = 3 * s * rng.standard_normal(n)
    for _ in range(400):
        x = langevin_correct(x, -x / s**2, rng.standard_normal(n), 1.0, snr=0.16)
    assert abs(x.var() / s**2 - 1) < 0.08


def test_the_corrector_is_a_langevin_step_with_step_size_from_alpha_i():
    # Song et al. 2021b, Algorithm 5: ε = 2 α_i (r ‖z‖/‖s‖)², with α_i = 1 − β_i of the (respaced) step,
    # then x + ε s + √(2ε) z. The first corrector step acts on x_T, before any predictor step.
    schedule, snr = NoiseSchedule.linear(1000), 0.16
    model = gaussian_oracle(schedule, 0.3, 0.5)
    x_T = np.random.default_rng(0).standard_normal((3, 50))
    seen = []
    predictor_corrector_sample(model, schedule, x_T.shape, steps=5, x_T=x_T, rng=np.random.default_rng(1),
                               clip_denoised=False, snr=snr, callback=lambda index, t, x, x0_hat: seen.append(x))
    previous, last = space_timesteps(1000, 5)[-2:]
    alpha = schedule.alphas_cumprod[last] / schedule.alphas_cumprod[previous]  # α of the respaced last step
    score = -model(x_T, np.full(3, last)) / np.sqrt(1 - schedule.alphas_cumprod[last])
    z = np.random.default_rng(1).standard_normal(x_T.shape)
    norm = lambda a: np.linalg.norm(a, axis=1).mean()  # noqa: E731 -- averaged over the batch, as the paper suggests
    step = 2 * alpha * (snr * norm(z) / norm(score)) ** 2
    np.testing.assert_allclose(seen[0], x_T + step * score + np.sqrt(2 * step) * z, rtol=1e-10)


def test_the_reverse_sde_adds_noise_on_every_step_but_the_last():
    # Song et al. 2021b, Appendix G / Ho et al. 2020, Algorithm 2: z ∼ N(0, I) for t > 0, none on the step to x₀.
    schedule = NoiseSchedule.linear(100)
    model, x_T = gaussian_oracle(schedule, 0.3, 0.5), np.zeros((2, 8))

    def from_index(t_start, seed):
        return reverse_sde_sample(model, schedule, x_T.shape, steps=10, x_T=x_T, t_start=t_start,
                                  rng=np.random.default_rng(seed), clip_denoised=False)

    np.testing.assert_array_equal(from_index(0, 1), from_index(0, 2))  # the last step alone: deterministic
    assert not np.allclose(from_index(1, 1), from_index(1, 2))  # the step before it is not
    # ... and it is the Euler step x + ∫β (½ x + ∇ log p) with ∫β = −log(1 − β_0) and no noise term.
    score = -model(x_T, np.zeros(2, dtype=np.int64)) / np.sqrt(1 - schedule.alphas_cumprod[0])
    np.testing.assert_allclose(from_index(0, 1), x_T - np.log1p(-schedule.betas[0]) * (0.5 * x_T + score), rtol=1e-12)


def test_the_probability_flow_ode_takes_50_heun_steps_by_default_and_euler_to_x0():
    # Two model calls per step (Heun), one on the last step to ᾱ = 1: 2 · 49 + 1.
    calls = []
    schedule = NoiseSchedule.linear(200)
    oracle = gaussian_oracle(schedule, 0.2, 0.5)
    probability_flow_sample(lambda x, t: calls.append(t) or oracle(x, t), schedule, (2, 3), rng=np.random.default_rng(0))
    assert len(calls) == 2 * 49 + 1


@pytest.mark.parametrize("name", SDE_SAMPLERS)
def test_sde_samplers_are_reproducible_and_report_every_step(name):
    schedule = NoiseSchedule.cosine(20)
    model = gaussian_oracle(schedule, 0.2, 0.5)
    sample = SDE_SAMPLERS[name]
    a, trajectory = sample(model, schedule, (4, 3), steps=7, rng=np.random.default_rng(5), return_trajectory=True)
    b = sample(model, schedule, (4, 3), steps=7, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, sample(model, schedule, (4, 3), steps=7, rng=np.random.default_rng(6)))
    ts = [step.t for step in trajectory]
    assert len(ts) == 7 and ts == sorted(ts, reverse=True) and ts[0] == 19 and ts[-1] == 0


@pytest.mark.parametrize("name", SDE_SAMPLERS)
def test_sde_samplers_refuse_a_zero_terminal_snr_schedule(name):
    schedule = NoiseSchedule.cosine(20).rescale_zero_terminal_snr()
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        SDE_SAMPLERS[name](gaussian_oracle(schedule, 0.0, 1.0), schedule, (2,), steps=5, rng=np.random.default_rng(0))
