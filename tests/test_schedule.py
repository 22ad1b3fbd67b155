"""Properties of NoiseSchedule: the product ᾱ = ∏(1 − β), the posterior coefficients,
respacing, zero terminal SNR, timestep spacing and the refusal of bad input."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minidiff.schedule import SPACINGS, NoiseSchedule, extract, gather, schedule_by_name, space_timesteps
from minidiff.testing import check_alphas_cumprod, check_posterior, check_snr, schedules


# ᾱ, β and SNR -----------------------------------------------------------------------------


@given(schedules())
def test_alphas_cumprod_is_the_product_of_alphas_strictly_decreasing_in_0_1(schedule):
    check_alphas_cumprod(schedule)


@given(schedules())
def test_betas_round_trip_through_alphas_cumprod(schedule):
    rebuilt = NoiseSchedule.from_alphas_cumprod(schedule.alphas_cumprod)
    np.testing.assert_allclose(rebuilt.betas, schedule.betas, rtol=1e-9, atol=1e-15)


@given(schedules())
def test_snr_is_strictly_decreasing(schedule):
    check_snr(schedule)


@given(schedules())
def test_derived_arrays_match_their_definitions(schedule):
    ac = schedule.alphas_cumprod
    np.testing.assert_allclose(schedule.alphas_cumprod_prev, np.append(1.0, ac[:-1]))
    np.testing.assert_allclose(schedule.alphas_cumprod_next, np.append(ac[1:], 0.0))
    np.testing.assert_allclose(schedule.sqrt_alphas_cumprod**2, ac, rtol=1e-12)
    np.testing.assert_allclose(schedule.sqrt_one_minus_alphas_cumprod**2, 1 - ac, rtol=1e-12)
    np.testing.assert_allclose(np.exp(schedule.log_one_minus_alphas_cumprod), 1 - ac, rtol=1e-12)
    positive = ac > 0
    np.testing.assert_allclose(schedule.sqrt_recip_alphas_cumprod[positive] ** -2, ac[positive], rtol=1e-12)
    np.testing.assert_allclose(
        schedule.sqrt_recipm1_alphas_cumprod[positive] ** 2, 1 / ac[positive] - 1, rtol=1e-9, atol=1e-15
    )


# The posterior q(x_{t−1} | x_t, x₀) (Ho et al. 2020, Eqs. 6–7) ------------------------------


@given(schedules())
def test_posterior_is_consistent_with_the_marginals(schedule):
    check_posterior(schedule)


@given(schedules())
def test_posterior_log_variance_is_clipped_to_log_beta_tilde_1_at_t0(schedule):
    np.testing.assert_allclose(
        schedule.posterior_log_variance_clipped[1:], np.log(schedule.posterior_variance[1:]), rtol=1e-12
    )
    assert schedule.posterior_log_variance_clipped[0] == schedule.posterior_log_variance_clipped[1]


# Respacing and zero terminal SNR ------------------------------------------------------------


@given(schedules(allow_zero_terminal_snr=True), st.data())
def test_respacing_keeps_alphas_cumprod_on_the_subset(schedule, data):
    subset = np.array(sorted(data.draw(st.sets(st.integers(0, schedule.T - 1), min_size=1))))
    respaced = schedule.respace(subset)
    assert respaced.T == len(subset)
    np.testing.assert_allclose(respaced.alphas_cumprod, schedule.alphas_cumprod[subset], rtol=1e-6, atol=1e-300)
    np.testing.assert_array_equal(respaced.timesteps, schedule.timesteps[subset])


def test_respacing_twice_remembers_the_original_timesteps():
    schedule = NoiseSchedule.linear(100)
    twice = schedule.respace(np.arange(0, 100, 2)).respace([0, 10, 49])
    np.testing.assert_array_equal(twice.timesteps, [0, 20, 98])
    np.testing.assert_allclose(twice.alphas_cumprod, schedule.alphas_cumprod[[0, 20, 98]], rtol=1e-12)


@given(schedules(allow_zero_terminal_snr=False))
def test_zero_terminal_snr_ends_at_zero_and_keeps_the_first_alphas_cumprod(schedule):
    rescaled = schedule.rescale_zero_terminal_snr()
    assert rescaled.alphas_cumprod[-1] == 0
    assert rescaled.betas[-1] == 1
    assert rescaled.snr[-1] == 0 and rescaled.log_snr[-1] == -np.inf
    np.testing.assert_allclose(rescaled.alphas_cumprod[0], schedule.alphas_cumprod[0], rtol=1e-12)
    np.testing.assert_array_equal(rescaled.timesteps, schedule.timesteps)
    for name in ("posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_log_variance_clipped"):
        assert np.all(np.isfinite(getattr(rescaled, name))), name


# Named schedules, locked down (zero-indexed t) ------------------------------------------------


def test_linear_schedule_is_zero_indexed():
    schedule = NoiseSchedule.linear()
    assert schedule.T == 1000
    assert schedule.betas[0] == 1e-4 and schedule.betas[-1] == 0.02
    assert schedule.alphas_cumprod[0] == 1 - 1e-4
    assert schedule.alphas_cumprod_prev[0] == 1
    np.testing.assert_allclose(schedule.alphas_cumprod[-1], 4.0358e-5, rtol=1e-4)


def test_linear_schedule_scales_to_T_only_when_asked():
    assert NoiseSchedule.linear(250).betas[0] == 1e-4
    scaled = NoiseSchedule.linear(250, scale_to_T=True)
    np.testing.assert_allclose([scaled.betas[0], scaled.betas[-1]], [4e-4, 0.08])


def test_scaled_linear_is_linear_in_sqrt_beta():
    schedule = NoiseSchedule.scaled_linear(T=10)
    np.testing.assert_allclose(np.diff(np.sqrt(schedule.betas), 2), 0, atol=1e-15)
    np.testing.assert_allclose(schedule.betas[[0, -1]], [0.00085, 0.012])


def test_cosine_schedule_follows_nichol_dhariwal_eq_17():
    T, s = 1000, 0.008

    def f(tau):
        return math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2

    schedule = NoiseSchedule.cosine(T)
    expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
    unclipped = schedule.betas < 0.999
    np.testing.assert_allclose(schedule.alphas_cumprod[unclipped], expected[unclipped], rtol=1e-10)
    assert schedule.betas.max() == 0.999


def test_sigmoid_schedule_goes_from_clean_to_noise():
    schedule = NoiseSchedule.sigmoid(T=1000)
    assert schedule.alphas_cumprod[0] > 0.999 and schedule.alphas_cumprod[-1] < 1e-3
    assert np.all(np.diff(schedule.alphas_cumprod) < 0)


@pytest.mark.parametrize("start, end, tau", [(-3.0, 3.0, 1.0), (-3.0, 3.0, 0.7), (0.0, 3.0, 1.1), (-3.0, 3.0, 0.3)])
def test_sigmoid_schedule_follows_chen_2023_algorithm_1(start, end, tau):
    # Chen 2023, Algorithm 1, written out with math.exp: every sigmoid, the ends v_start and v_end
    # included, is taken at its argument divided by τ (τ ≠ 1 is where dropping that shows).
    T = 200

    def sigmoid(z):
        return 1 / (1 + math.exp(-z))

    def alpha_bar(time):
        v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
        return (v_end - sigmoid((time * (end - start) + start) / tau)) / (v_end - v_start)

    # ᾱ clipped below at clip_min, and β = 1 − ᾱ(τ_{t+1})/ᾱ(τ_t) at max_beta = 0.999, as the cosine's. With
    # clip_min = ᾱ(τ_{T−1})/20 the last β is 0.95, below max_beta: ᾱ's own scale, not only its ratios, shows there.
    clip_min = alpha_bar((T - 1) / T) / 20
    alpha_bars = [max(alpha_bar(t / T), clip_min) for t in range(T + 1)]
    expected = np.minimum([1 - alpha_bars[t + 1] / alpha_bars[t] for t in range(T)], 0.999)
    assert alpha_bar(1) < clip_min < alpha_bar((T - 1) / T) and expected[-1] < 0.99
    np.testing.assert_allclose(NoiseSchedule.sigmoid(T, start, end, tau, clip_min).betas, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name, explicit", [
    ("linear", lambda: NoiseSchedule.linear(1000, 1e-4, 0.02, scale_to_T=False)),  # Ho et al. 2020, §4
    ("scaled_linear", lambda: NoiseSchedule.scaled_linear(1000, 0.00085, 0.012)),  # Rombach et al. 2022
    ("cosine", lambda: NoiseSchedule.cosine(1000, s=0.008, max_beta=0.999)),  # Nichol & Dhariwal 2021, §3.2
    ("sigmoid", lambda: NoiseSchedule.sigmoid(1000, -3.0, 3.0, 1.0, clip_min=1e-9, max_beta=0.999)),  # Chen 2023
])
def test_constructors_default_to_their_papers_settings(name, explicit):
    np.testing.assert_array_equal(getattr(NoiseSchedule, name)().betas, explicit().betas)


@pytest.mark.parametrize("name, ends", [("linear", (1e-4, 0.02)), ("scaled_linear", (0.00085, 0.012))])
def test_named_linear_schedules_scale_their_betas_by_1000_over_T(name, ends):
    # improved-diffusion's get_named_beta_schedule: a chain of T steps keeps the 1000-step chain's total noise.
    for T in (50, 1000):
        schedule = schedule_by_name(name, T)
        assert schedule.T == T
        np.testing.assert_allclose(schedule.betas[[0, -1]], np.array(ends) * 1000 / T, rtol=1e-12)
    np.testing.assert_array_equal(schedule_by_name("cosine", 40).betas, NoiseSchedule.cosine(40).betas)
    assert schedule_by_name("sigmoid", 40, zero_terminal_snr=True).alphas_cumprod[-1] == 0
    assert schedule_by_name("sigmoid", 40).alphas_cumprod[-1] > 0


# Timestep spacing --------------------------------------------------------------------------


@given(st.integers(1, 2000), st.data(), st.sampled_from(SPACINGS))
def test_space_timesteps_gives_distinct_sorted_steps_ending_at_T_minus_1(T, data, spacing):
    steps = data.draw(st.integers(1, T))
    log_snr = NoiseSchedule.cosine(T).log_snr if T > 1 else None
    if spacing == "logsnr" and T == 1:
        return
    timesteps = space_timesteps(T, steps, spacing, log_snr)
    assert timesteps.dtype == np.int64 and len(timesteps) == steps
    assert np.all(np.diff(timesteps) > 0)
    assert timesteps[-1] == T - 1
    starts_at_zero = steps == 1 or timesteps[0] == 0
    assert timesteps[0] >= 0 and (spacing == "trailing" or starts_at_zero)


def test_quadratic_spacing_crowds_the_low_noise_end():
    uniform, quadratic = space_timesteps(1000, 10), space_timesteps(1000, 10, "quadratic")
    np.testing.assert_array_equal(uniform, [0, 111, 222, 333, 444, 555, 666, 777, 888, 999])
    assert np.all(quadratic[1:-1] < uniform[1:-1])
    # (T − 1)·(i/(steps − 1))², rounded (Song et al. 2021, §D.2); the first two round to 0 and 12, distinct.
    np.testing.assert_array_equal(quadratic, [0, 12, 49, 111, 197, 308, 444, 604, 789, 999])


def test_trailing_spacing_counts_down_from_the_last_step():
    # Lin et al. 2023, Table 2: trailing with T = 1000, 10 steps.
    np.testing.assert_array_equal(space_timesteps(1000, 10, "trailing"), [99, 199, 299, 399, 499, 599, 699, 799, 899, 999])


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000),
                                      NoiseSchedule.linear(1000).rescale_zero_terminal_snr()])
def test_logsnr_spacing_is_nearly_uniform_in_lambda(schedule):
    timesteps = space_timesteps(1000, 12, "logsnr", schedule.log_snr)
    lambdas = 0.5 * schedule.log_snr[timesteps[:-1]]  # the last is kept at T−1 even when λ = −∞
    gaps = -np.diff(lambdas)
    assert timesteps[0] == 0 and timesteps[-1] == 999
    assert gaps.max() < 1.3 * np.median(gaps)  # uniform up to rounding onto integer t
    uniform_gaps = -np.diff(0.5 * schedule.log_snr[space_timesteps(1000, 12)[:-1]])
    assert uniform_gaps.max() > 2 * uniform_gaps.min()  # which uniform spacing is not


@pytest.mark.parametrize("name, steps", [("linear", 7), ("linear", 12), ("cosine", 7)])
def test_logsnr_spacing_takes_the_timestep_nearest_each_target_lambda(name, steps):
    # Targets λ_0 − f (λ_0 − λ_{T−1}) for f evenly spaced in [0, 1] (Lu et al. 2022, §3.3); each becomes the t
    # whose λ_t is nearest, the earlier t on a tie, and the last is T − 1.
    schedule = getattr(NoiseSchedule, name)(1000)
    lambdas = 0.5 * schedule.log_snr
    targets = lambdas[0] - np.linspace(0, 1, steps) * (lambdas[0] - lambdas[-1])
    nearest = np.abs(lambdas[None, :] - targets[:, None]).argmin(axis=1)
    nearest[-1] = 999
    assert np.all(np.diff(nearest) > 0)  # distinct already: no lifting involved
    np.testing.assert_array_equal(space_timesteps(1000, steps, "logsnr", schedule.log_snr), nearest)


def test_logsnr_spacing_needs_the_schedule():
    with pytest.raises(ValueError, match="logsnr spacing needs the schedule's log_snr"):
        space_timesteps(100, 10, "logsnr")
    with pytest.raises(ValueError, match="unknown spacing 'cubic'"):
        space_timesteps(100, 10, "cubic")


# gather / extract ------------------------------------------------------------------------------


def test_extract_broadcasts_to_the_batch_and_follows_dtype():
    schedule = NoiseSchedule.linear(10)
    x = np.zeros((3, 2, 4, 4), dtype=np.float32)
    values = extract(schedule.alphas_cumprod, np.array([0, 5, 9]), x)
    assert values.shape == (3, 1, 1, 1) and values.dtype == np.float32
    np.testing.assert_allclose(values.ravel(), schedule.alphas_cumprod[[0, 5, 9]].astype(np.float32))
    assert (values * x).shape == x.shape


@pytest.mark.parametrize("t", [-1, 10, 1000])
def test_timesteps_outside_the_schedule_are_refused(t):
    with pytest.raises(ValueError, match=rf"t={t} is outside \[0, 10\)"):
        gather(np.zeros(10), np.array([0, t]))


def test_non_integer_timesteps_are_refused():
    with pytest.raises(ValueError, match="integers"):
        gather(np.zeros(10), np.array([0.5]))


# Bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, np.nan])
def test_betas_outside_0_1_are_refused(bad):
    with pytest.raises(ValueError, match=rf"betas\[1\]={bad}"):
        NoiseSchedule([0.1, bad, 0.2])


@pytest.mark.parametrize("shape", [(0,), (2, 3), ()])
def test_betas_that_are_not_a_non_empty_vector_are_refused(shape):
    with pytest.raises(ValueError, match=rf"betas must be a non-empty 1-D array, got shape \({', '.join(map(str, shape))}"):
        NoiseSchedule(np.full(shape, 0.1))
    with pytest.raises(ValueError, match="alphas_cumprod must be a non-empty 1-D array"):
        NoiseSchedule.from_alphas_cumprod(np.full(shape, 0.5))


def test_beta_of_one_is_only_allowed_at_the_end():
    NoiseSchedule([0.1, 0.2, 1.0])
    with pytest.raises(ValueError, match=r"only allowed as the terminal beta.*betas\[1\]=1.0"):
        NoiseSchedule([0.1, 1.0, 0.2])


@pytest.mark.parametrize(
    "alphas_cumprod, message",
    [
        ([0.9, 0.9, 0.5], r"strictly decreasing.*alphas_cumprod\[1\]=0.9"),
        ([0.9, 0.5, 0.7], r"strictly decreasing.*alphas_cumprod\[2\]=0.7"),
        ([1.0, 0.5], r"alphas_cumprod\[0\] must be < 1, got 1.0"),
        ([0.9, 0.0, 0.0], r"strictly decreasing"),
        ([0.9, -0.1], r"strictly decreasing|>= 0"),
    ],
)
def test_alphas_cumprod_that_do_not_strictly_decrease_are_refused(alphas_cumprod, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule.from_alphas_cumprod(alphas_cumprod)


@pytest.mark.parametrize("steps", [0, 11, 2.5])
def test_step_counts_outside_1_to_T_are_refused(steps):
    with pytest.raises(ValueError, match=rf"integer in \[1, 10\], got {steps}"):
        space_timesteps(10, steps)


def test_respace_refuses_bad_subsets():
    schedule = NoiseSchedule.linear(10)
    with pytest.raises(ValueError, match=r"\[1, 10\], got 0"):
        schedule.respace([])
    with pytest.raises(ValueError, match="strictly increasing"):
        schedule.respace([3, 3])
    with pytest.raises(ValueError, match=r"t=10 is outside \[0, 10\)"):
        schedule.respace([0, 10])


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown spacing 'cubic'"):
        space_timesteps(10, 5, "cubic")
    with pytest.raises(ValueError, match="T must be a positive integer, got 0"):
        NoiseSchedule.linear(0)
    with pytest.raises(ValueError, match="needs T >= 2, got T=1"):
        NoiseSchedule.linear(1).rescale_zero_terminal_snr()
