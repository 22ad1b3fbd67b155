"""Property testing of schedule identities: the hypothesis strategies and the checks minidiff's
own suite uses, for users who test schedules of their own.

Needs hypothesis (``pip install 'minidiff[test]'``). ``docs/math.md`` ("Property testing your own
schedule") shows a property written with them.

Strategies: :func:`schedules` (every family with random valid parameters, rescaled to zero
terminal SNR and respaced), :func:`respacings`, :func:`timesteps`, :func:`batches` (x₀, t, ε).
Checks (each raises AssertionError, naming what broke): :func:`check_alphas_cumprod`,
:func:`check_snr`, :func:`check_posterior`, :func:`check_round_trips`.
"""
import numpy as np
from hypothesis import strategies as st

from .diffusion import (
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_v,
    predict_x0,
    predict_x0_from_v,
    q_sample,
)
from .schedule import NoiseSchedule, space_timesteps

SPACINGS = ("uniform", "trailing", "quadratic")  # logsnr needs a schedule: see space_timesteps


@st.composite
def respacings(draw, T, min_steps=1):
    """Timesteps a sampler might walk: ``space_timesteps(T, steps, spacing)`` for any steps and spacing."""
    steps = draw(st.integers(min(min_steps, T), T))
    return space_timesteps(T, steps, draw(st.sampled_from(SPACINGS)))


@st.composite
def schedules(draw, allow_zero_terminal_snr=True, min_T=2, max_T=200):
    """Any schedule the library can build: named ones, random βs, rescaled and respaced ones."""
    T = draw(st.integers(min_T, max_T))
    kind = draw(st.sampled_from(["linear", "scaled_linear", "cosine", "sigmoid", "random"]))
    if kind == "random":
        seed = draw(st.integers(0, 2**32 - 1))
        # β up to 0.5 keeps ᾱ far above 1e-16 over 200 steps; beyond that 1 − ᾱ_t/ᾱ_{t−1}
        # rounds to 1 and no β-based schedule can represent the chain.
        high = draw(st.sampled_from([1e-3, 0.05, 0.2]))
        schedule = NoiseSchedule(np.random.default_rng(seed).uniform(1e-5, high, T))
    elif kind == "linear":
        schedule = NoiseSchedule.linear(T, scale_to_T=T >= 50 and draw(st.booleans()))
    else:
        schedule = getattr(NoiseSchedule, kind)(T)
    # Zero terminal SNR needs two steps: with one, ᾱ_0 = 0 would leave no signal at all.
    zero_terminal_snr = allow_zero_terminal_snr and T >= 2 and draw(st.booleans())
    if zero_terminal_snr:
        schedule = schedule.rescale_zero_terminal_snr()
    if draw(st.booleans()):
        schedule = schedule.respace(draw(respacings(T, min_steps=max(min_T, 2) if zero_terminal_snr else min_T)))
    return schedule


def timesteps(schedule, size, min_t=0):
    """int64 arrays of ``size`` timesteps in [min_t, T) of ``schedule``."""
    return st.lists(st.integers(min_t, schedule.T - 1), min_size=size, max_size=size).map(
        lambda ts: np.array(ts, dtype=np.int64))


@st.composite
def batches(draw, schedule, min_t=0):
    """(x₀, t, ε) float64 for a random batch shape and seed, t in [min_t, T)."""
    shape = draw(st.sampled_from([(5,), (3, 4), (2, 1, 3, 3)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t = rng.integers(min_t, schedule.T, size=shape[0])
    return rng.standard_normal(shape), t, rng.standard_normal(shape)


# Identities ----------------------------------------------------------------------------------


def check_alphas_cumprod(schedule):
    """ᾱ_t = ∏_{s≤t} (1 − β_s) (Ho et al. 2020, Eq. 4), float64, strictly decreasing, in [0, 1]."""
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1.0 - schedule.betas), rtol=1e-12,
                               err_msg="alphas_cumprod is not the product of 1 - betas")
    assert schedule.alphas_cumprod.dtype == np.float64, "alphas_cumprod is not float64"
    assert np.all(np.diff(schedule.alphas_cumprod) < 0), "alphas_cumprod does not strictly decrease"
    assert 0 < schedule.alphas_cumprod[0] <= 1 and schedule.alphas_cumprod[-1] >= 0, "alphas_cumprod leaves [0, 1]"


def check_snr(schedule):
    """SNR_t = ᾱ_t/(1 − ᾱ_t) (Kingma et al. 2021, Eq. 2), strictly decreasing, and so is log SNR."""
    np.testing.assert_allclose(schedule.snr, schedule.alphas_cumprod / (1 - schedule.alphas_cumprod),
                               err_msg="snr is not alphas_cumprod / (1 - alphas_cumprod)")
    assert np.all(np.diff(schedule.snr) < 0), "snr does not strictly decrease"
    assert np.all(np.diff(schedule.log_snr) < 0), "log_snr does not strictly decrease"


def check_posterior(schedule):
    """q(x_{t−1} | x_t, x₀) (Ho et al. 2020, Eqs. 6–7) agrees with the marginals q(x_{t−1} | x₀).

    Averaging μ̃_t over x_t ∼ q(x_t | x₀) gives √ᾱ_{t−1} x₀; the law of total variance gives
    c₂²(1 − ᾱ_t) + β̃_t = 1 − ᾱ_{t−1}; and 0 = β̃_0 ≤ β̃_t ≤ β_t.
    """
    mean_of_mean = schedule.posterior_mean_coef1 + schedule.posterior_mean_coef2 * schedule.sqrt_alphas_cumprod
    np.testing.assert_allclose(mean_of_mean, np.sqrt(schedule.alphas_cumprod_prev), rtol=1e-10, atol=1e-14,
                               err_msg="posterior mean coefficients do not reproduce the previous mean")
    total_variance = schedule.posterior_mean_coef2**2 * (1 - schedule.alphas_cumprod) + schedule.posterior_variance
    np.testing.assert_allclose(total_variance, 1 - schedule.alphas_cumprod_prev, rtol=1e-10, atol=1e-15,
                               err_msg="posterior variance does not complete the previous variance")
    assert schedule.posterior_variance[0] == 0, "posterior variance at t = 0 is not 0"
    assert np.all(schedule.posterior_variance >= 0), "negative posterior variance"
    assert np.all(schedule.posterior_variance <= schedule.betas * (1 + 1e-12)), "posterior variance above beta"


def check_round_trips(schedule, x0, t, eps):
    """ε, x₀ and v (Ho et al. 2020, Eq. 4; Salimans & Ho 2022, §4) convert into each other exactly.

    Exactly means to the arrays' precision: the tolerances are float64's (1e-9, 1e-6 for ε from x₀)
    or, for float32 arrays, 100 rounding errors of the largest value, since the coefficients are then
    float32 too. A conversion that divides by √(1 − ᾱ_t) or √ᾱ_t gets a tolerance that grows with
    it; x₀ from ε is checked only where ᾱ > 0.
    """
    unit = np.finfo(np.result_type(x0, eps)).eps * max(1.0, float(np.abs(x0).max()), float(np.abs(eps).max()))

    def tol(float64_atol, gain=1.0):
        return max(float64_atol, 100 * unit * gain)

    x_t = q_sample(schedule, x0, t, eps)
    v = predict_v(schedule, x0, t, eps)
    np.testing.assert_allclose(predict_x0_from_v(schedule, x_t, t, v), x0, atol=tol(1e-9), err_msg="x0 from v")
    np.testing.assert_allclose(predict_eps_from_v(schedule, x_t, t, v), eps, atol=tol(1e-9), err_msg="eps from v")
    np.testing.assert_allclose(predict_eps_from_x0(schedule, x_t, t, x0), eps,
                               atol=tol(1e-6, 1 / schedule.sqrt_one_minus_alphas_cumprod[t].min()), err_msg="eps from x0")
    for prediction, output in (("x0", x0), ("v", v)):
        np.testing.assert_allclose(predict_x0(schedule, x_t, t, output, prediction), x0, atol=tol(1e-9),
                                   err_msg=f"x0 from a {prediction} prediction")
    if schedule.alphas_cumprod[-1] > 0:
        gain = 1 / schedule.sqrt_alphas_cumprod[t].min()
        np.testing.assert_allclose(predict_x0(schedule, x_t, t, eps, "eps"), x0, atol=tol(1e-9 * gain, gain),
                                   err_msg="x0 from eps")
