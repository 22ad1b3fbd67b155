"""The Python API's edges (minidiff.checks): wrong dtypes, types, shapes and ranges are refused in the
caller's terms, never turned into a silent wrong result; and minidiff.testing's own edges."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minidiff.autograd import Tensor
from minidiff.checks import ArgumentError
from minidiff.diffusion import q_posterior_mean_variance, q_sample, q_step, snr_loss_weight, training_loss, \
    training_target
from minidiff.editing import repaint_sample
from minidiff.guidance import guided_denoiser
from minidiff.likelihood import bpd_estimate
from minidiff.sampling import ddim_sample, ddpm_sample, dpm_solver_pp_sample
from minidiff.schedule import NoiseSchedule, extract
from minidiff.sde import predictor_corrector_sample, probability_flow_sample, reverse_sde_sample
from minidiff.testing import batches, check_alphas_cumprod, check_posterior, check_round_trips, schedules
from minidiff.unet import UNet

SCHEDULE = NoiseSchedule.linear(10)
SHAPE = (2, 1, 4, 4)
X = np.random.default_rng(0).standard_normal(SHAPE)
T = np.array([3, 7])


def zeros(x_t, t):
    return np.zeros_like(x_t)


def with_output(make):
    """A model returning ``make(x_t)`` whatever it is asked."""
    return lambda x_t, t: make(x_t)


def repaint(model, schedule, shape, steps=None, **kwargs):
    return repaint_sample(model, schedule, shape, steps, known=np.zeros(shape[1:]), mask=np.ones(shape[2:]), **kwargs)


SAMPLERS = [ddpm_sample, ddim_sample, dpm_solver_pp_sample, reverse_sde_sample, probability_flow_sample,
            predictor_corrector_sample, repaint]


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, bool, np.complex64])
def test_an_x0_that_is_not_floating_point_is_refused_not_zeroed(dtype):
    x0, noise = np.ones(SHAPE, dtype), np.ones(SHAPE)
    for call in (lambda: q_sample(SCHEDULE, x0, T, noise), lambda: training_target(SCHEDULE, x0, T, noise, "v"),
                 lambda: q_step(SCHEDULE, x0, T, noise), lambda: q_posterior_mean_variance(SCHEDULE, x0, noise, T),
                 lambda: training_loss(with_output(lambda x: Tensor(np.zeros(x.shape))), SCHEDULE, x0,
                                       np.random.default_rng(0))):
        with pytest.raises(ArgumentError, match=f"(x0|x_prev) has dtype {np.dtype(dtype)}; it must be"):
            call()
    with pytest.raises(ArgumentError, match="must be floating point"):
        extract(SCHEDULE.sqrt_alphas_cumprod, T, x0)  # the safety net under every coefficient


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: getattr(f, "__name__", "repaint"))
def test_every_sampler_refuses_an_integer_x_T(sampler):
    with pytest.raises(ArgumentError, match="x_T has dtype int64"):
        sampler(zeros, SCHEDULE, SHAPE, 3, x_T=np.zeros(SHAPE, np.int64))


def test_arrays_of_the_wrong_type_are_named():
    with pytest.raises(ArgumentError, match=r"x0 is a minidiff Tensor; pass its array \(x0.data\)"):
        q_sample(SCHEDULE, Tensor(X), T, X)
    for value, words in (([1.0, 2.0], "x0 must be a NumPy or CuPy array of floats, got a list"),
                         (None, "got NoneType None"), (3.0, "got float 3.0")):
        with pytest.raises(ArgumentError, match=words):
            q_sample(SCHEDULE, value, T, X)
    for t, words in ((Tensor(T), "timesteps t must be integers"), (None, "got NoneType None"),
                     (np.array([1.5, 2.0]), "got dtype float64"), (np.array([True, False]), "got dtype bool")):
        with pytest.raises(ArgumentError, match=words):
            q_sample(SCHEDULE, X, t, X)
    np.testing.assert_array_equal(q_sample(SCHEDULE, X, [3, 7], X), q_sample(SCHEDULE, X, T, X))  # a list of ints is fine


BAD_OUTPUTS = {
    "one image for the batch": lambda x: np.zeros((1, *x.shape[1:])),
    "a 0-d array": lambda x: np.zeros(()),
    "one value per image": lambda x: np.zeros((len(x), 1, 1, 1)),
    "three times the channels": lambda x: np.zeros((len(x), 3 * x.shape[1], *x.shape[2:])),
    "transposed": lambda x: np.zeros(x.shape[::-1]),
}


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: getattr(f, "__name__", "repaint"))
@pytest.mark.parametrize("output", list(BAD_OUTPUTS))
def test_a_model_output_of_the_wrong_shape_is_refused_naming_both_shapes(sampler, output):
    with pytest.raises(ArgumentError, match=r"the model returned shape .* for x_t of shape \(2, 1, 4, 4\)"):
        sampler(with_output(BAD_OUTPUTS[output]), SCHEDULE, SHAPE, 3, rng=np.random.default_rng(0))


def test_training_loss_refuses_a_wrong_output_shape_too():
    model = with_output(lambda x: Tensor(np.zeros((1, *x.shape[1:]))))
    with pytest.raises(ArgumentError, match=r"returned shape \(1, 1, 4, 4\) for x_t of shape \(2, 1, 4, 4\)"):
        training_loss(model, SCHEDULE, X, np.random.default_rng(0))


def test_twice_the_channels_only_where_the_caller_said_variances_are_learned():
    doubled = with_output(lambda x: np.zeros((len(x), 2 * x.shape[1], *x.shape[2:])))
    with pytest.raises(ArgumentError, match="twice the channels, as a model that learns its variances does"):
        ddim_sample(doubled, SCHEDULE, SHAPE, 3)
    ddpm_sample(doubled, SCHEDULE, SHAPE, 3, variance="learned", rng=np.random.default_rng(0))  # said so
    doubled.learned_variance = True  # or the model says so (a learn_sigma U-Net's denoiser does)
    ddim_sample(doubled, SCHEDULE, SHAPE, 3)
    learned = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                   num_groups=4, image_size=4, learn_sigma=True, rng=np.random.default_rng(0))
    assert guided_denoiser(learned, None).learned_variance
    ddim_sample(guided_denoiser(learned, None), SCHEDULE, SHAPE, 3)
    with pytest.raises(ValueError, match="variance 'learned' is the model's"):  # learned asked, none given
        ddpm_sample(zeros, SCHEDULE, SHAPE, 3, variance="learned")


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: getattr(f, "__name__", "repaint"))
def test_a_model_returning_nan_stops_the_sampler_naming_the_step_and_the_count(sampler):
    def nan_late(x_t, t):
        out = np.zeros_like(x_t)
        if t[0] < 5:
            out[0, 0, 0, :3] = np.nan
        return out

    with pytest.raises(FloatingPointError, match=r"returned 3 NaN or infinite values \(of 32\) at timestep t=[0-4]"):
        sampler(nan_late, SCHEDULE, SHAPE, None, rng=np.random.default_rng(0))


@pytest.mark.parametrize("rng, words", [(0, r"int 0; for a seed write rng=np.random.default_rng\(0\)"),
                                        ("seed", "str 'seed'"), (np.random.RandomState(0), "a RandomState")])
def test_rng_must_be_a_generator(rng, words):
    for call in (lambda: ddpm_sample(zeros, SCHEDULE, SHAPE, 3, rng=rng),
                 lambda: training_loss(with_output(lambda x: Tensor(np.zeros(x.shape))), SCHEDULE, X, rng),
                 lambda: bpd_estimate(zeros, SCHEDULE, X, 3, rng)):
        with pytest.raises(ArgumentError, match="rng must be a numpy.random.Generator, got " + words):
            call()


@pytest.mark.parametrize("steps, words", [("5", "got str '5'"), (1.5, "got float 1.5"), (True, "got bool True"),
                                          (0, r"in \[1, 10\], got 0"), (11, r"in \[1, 10\], got 11")])
def test_steps_must_be_a_count_of_the_schedules_timesteps(steps, words):
    for sampler in SAMPLERS:
        with pytest.raises(ArgumentError, match="steps must be an integer.*" + words):
            sampler(zeros, SCHEDULE, SHAPE, steps)


@pytest.mark.parametrize("w", ["2", float("nan"), -1.0, None, np.array([1.0, 2.0])])
def test_the_guidance_weight_is_a_finite_number_at_least_0(w):
    model = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                 num_groups=4, image_size=4, num_classes=2, null_class=True, rng=np.random.default_rng(0))
    with pytest.raises(ArgumentError, match="guidance weight w must be"):
        guided_denoiser(model, np.array([0, 1]), w)


def test_eta_shape_and_t_start_are_named():
    with pytest.raises(ArgumentError, match="eta must be a number, got str '1'"):
        ddim_sample(zeros, SCHEDULE, SHAPE, 3, eta="1")
    with pytest.raises(ArgumentError, match="shape must be a tuple of positive integers"):
        ddim_sample(zeros, SCHEDULE, (2, 0, 4, 4), 3)
    with pytest.raises(ArgumentError, match="t_start must be an integer, got float 2.5"):
        ddim_sample(zeros, SCHEDULE, SHAPE, 3, t_start=2.5)


@pytest.mark.parametrize("p, words", [(np.full(9, 0.2), "sum to 1.8"), (np.full(8, 1 / 8), "hold 9 probabilities"),
                                      (np.r_[-0.1, np.full(8, 1.1 / 8)], "minimum of -0.1"),
                                      (np.full(9, np.nan), "must be finite"), ("uniform", "got str")])
def test_bpd_probabilities_must_be_a_distribution_over_the_kl_terms(p, words):
    with pytest.raises(ArgumentError, match=words):
        bpd_estimate(zeros, SCHEDULE, X, 3, np.random.default_rng(0), probabilities=p)


def test_bpd_needs_a_kl_term():
    with pytest.raises(ArgumentError, match=r"num_timesteps must be an integer in \[2, 10\], got 1"):
        bpd_estimate(zeros, SCHEDULE, X, 1, np.random.default_rng(0))


@pytest.mark.parametrize("gamma", [1e-300, 0.0, -1.0, float("inf"), 1e300, "5"])
def test_min_snr_gamma_must_lie_in_a_sane_range(gamma):
    with pytest.raises(ArgumentError, match="min_snr_gamma must be"):
        snr_loss_weight(SCHEDULE, T, "eps", gamma)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(schedules(min_T=1, max_T=4), st.data())
def test_the_schedules_strategy_draws_valid_schedules_from_one_step(schedule, data):
    check_alphas_cumprod(schedule)
    check_posterior(schedule)
    check_round_trips(schedule, *data.draw(batches(schedule)))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(schedules(), st.data())
def test_round_trips_hold_on_float32_arrays_to_float32_precision(schedule, data):
    x0, t, eps = data.draw(batches(schedule))
    check_round_trips(schedule, x0.astype(np.float32), t, eps.astype(np.float32))


def test_shapes_that_would_broadcast_into_a_wrong_answer_are_refused():
    with pytest.raises(ArgumentError, match=r"noise has shape \(1, 1, 4, 4\), x0 \(2, 1, 4, 4\); they must match"):
        q_sample(SCHEDULE, X, T, X[:1])
    with pytest.raises(ArgumentError, match=r"timesteps t of shape \(3,\) do not fit a batch of 2"):
        q_sample(SCHEDULE, X, np.array([1, 2, 3]), X)
    np.testing.assert_array_equal(q_sample(SCHEDULE, X, 3, X), q_sample(SCHEDULE, X, np.array([3, 3]), X))  # one t
    for known, mask, words in ((np.zeros((3, 4, 4)), np.ones((4, 4)), "known has shape"),
                               (np.zeros((1, 4, 4)), np.full((4, 4), 255.0), r"mask values must lie in \[0, 1\]")):
        with pytest.raises(ArgumentError, match=words):
            repaint_sample(zeros, SCHEDULE, SHAPE, known=known, mask=mask)


def test_a_model_that_is_not_a_callable_on_arrays_is_named():
    with pytest.raises(ArgumentError, match="model must be a callable model"):
        ddim_sample(3, SCHEDULE, SHAPE, 3)
    unet = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                num_groups=4, image_size=4, rng=np.random.default_rng(0))
    with pytest.raises(ArgumentError, match=r"returned a minidiff Tensor.*as_denoiser"):
        ddim_sample(unet, SCHEDULE, SHAPE, 3)
    with pytest.raises(ArgumentError, match="schedule must be a minidiff NoiseSchedule, got str"):
        ddim_sample(zeros, "linear", SHAPE, 3)
    with pytest.raises(ArgumentError, match="x_T holds 1 NaN or infinite values"):
        ddim_sample(zeros, SCHEDULE, SHAPE, 3, x_T=np.where(np.arange(32).reshape(SHAPE) == 5, np.nan, 0.0))


def test_generate_refuses_integer_images_and_a_fractional_count():
    from minidiff.sample import generate

    unet = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                num_groups=4, image_size=4, rng=np.random.default_rng(0))
    with pytest.raises(ArgumentError, match="n must be an integer, got float 2.0"):
        generate(unet, SCHEDULE, 2.0, "ddim", 3)
    with pytest.raises(ArgumentError, match="init has dtype uint8"):
        generate(unet, SCHEDULE, 2, "ddim", 3, init=np.zeros((1, 4, 4), np.uint8))


def test_schedule_parameters_callbacks_and_seeds_are_named():
    with pytest.raises(ArgumentError, match="s \\(the cosine schedule's offset\\) must be"):
        NoiseSchedule.cosine(10, s=-1)
    with pytest.raises(ArgumentError, match="tau must be"):
        NoiseSchedule.sigmoid(10, tau=0)
    with pytest.raises(ArgumentError, match="callback must be a function"):
        ddim_sample(zeros, SCHEDULE, SHAPE, 3, callback=3)
    with pytest.raises(ArgumentError, match=r"mask has shape \(5, 5\), which does not broadcast to \(2, 1, 4, 4\)"):
        repaint_sample(zeros, SCHEDULE, SHAPE, known=np.zeros((1, 4, 4)), mask=np.ones((5, 5)))
