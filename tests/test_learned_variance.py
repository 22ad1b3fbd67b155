"""Learned variances (Nichol & Dhariwal 2021, Eq. 15), L_hybrid's vlb term (Eq. 16) and the
subset-of-timesteps bits/dim estimate."""
import numpy as np
import pytest

from minidiff.autograd import Tensor
from minidiff.checkpoint import build_model, load_model, save_checkpoint
from minidiff.diffusion import (UniformSampler, hybrid_vlb_term, learned_log_variance, model_output_parts, predict_x0,
                               q_sample, training_loss, vb_terms_bpd)
from minidiff.likelihood import bpd_estimate, calc_bpd_loop, pilot_probabilities
from minidiff.gradcheck import gradcheck
from minidiff.sampling import ddpm_sample
from minidiff.schedule import NoiseSchedule
from minidiff.train import TrainConfig
from minidiff.unet import UNet
from test_diffusion import FixedSampler, gaussian_oracle

MU, S = 0.3, 0.5


def with_v(model, v):
    """``model`` as a learned-variance network: its ε̂ and a constant v stacked on the channel axis."""
    def learned(x_t, t):
        eps = model(x_t, t)
        return np.concatenate([eps, np.full_like(eps, v)], axis=1)

    return learned


def test_learned_log_variance_interpolates_the_respaced_schedules_ends():
    schedule = NoiseSchedule.linear(1000).respace([0, 250, 500, 750, 999])
    t, like = np.arange(5), np.zeros((5, 1))
    np.testing.assert_allclose(learned_log_variance(schedule, t, like).ravel(), schedule.posterior_log_variance_clipped)
    np.testing.assert_allclose(learned_log_variance(schedule, t, like + 1).ravel(), np.log(schedule.betas))
    half = learned_log_variance(schedule, t, like + 0.5).ravel()
    np.testing.assert_allclose(half, 0.5 * (np.log(schedule.betas) + schedule.posterior_log_variance_clipped))
    assert schedule.betas[1] > 50 * NoiseSchedule.linear(1000).betas[250]  # the respaced β, not the original


@pytest.mark.parametrize("v, fixed", [(0.0, "fixed_small"), (1.0, "fixed_large")])
def test_ddpm_with_a_constant_v_is_the_fixed_variance_it_names(v, fixed):
    schedule = NoiseSchedule.linear(1000)
    model = gaussian_oracle(schedule, MU, S)
    x_T = np.random.default_rng(0).standard_normal((8, 1, 2, 2))
    kwargs = dict(steps=20, x_T=x_T, clip_denoised=False)
    learned = ddpm_sample(with_v(model, v), schedule, x_T.shape, variance="learned", rng=np.random.default_rng(1), **kwargs)
    fixed = ddpm_sample(model, schedule, x_T.shape, variance=fixed, rng=np.random.default_rng(1), **kwargs)
    np.testing.assert_allclose(learned, fixed, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 3])
def test_an_output_of_twice_the_channels_is_prediction_then_v(channels):
    x_t = np.zeros((2, channels, 4, 4))
    output = np.arange(2 * 2 * channels * 16, dtype=float).reshape(2, 2 * channels, 4, 4)
    prediction, v = model_output_parts(output, x_t)
    np.testing.assert_array_equal(prediction, output[:, :channels])
    np.testing.assert_array_equal(v, output[:, channels:])
    plain, none = model_output_parts(output[:, :channels], x_t)  # the same channels as x_t: all prediction
    assert none is None and plain.shape == x_t.shape


def test_hybrid_vlb_term_gradient_reaches_v_only():
    schedule = NoiseSchedule.cosine(50)
    rng = np.random.default_rng(0)
    x0 = np.clip(rng.standard_normal((4, 1, 3, 3)) * 0.5, -1, 1)
    t = np.array([0, 1, 20, 49])  # the decoder term at t = 0 and KL terms
    x_t = q_sample(schedule, x0, t, rng.standard_normal(x0.shape))
    eps = rng.standard_normal(x0.shape)
    v = rng.uniform(-0.5, 1.5, x0.shape)
    assert gradcheck(lambda v: hybrid_vlb_term(schedule, x0, x_t, t, Tensor(eps), v).sum(), v)
    # The stop-gradient: no gradient flows into the mean's channels through L_vlb.
    output, v_tensor = Tensor(eps, requires_grad=True), Tensor(v, requires_grad=True)
    term = hybrid_vlb_term(schedule, x0, x_t, t, output, v_tensor)
    term.sum().backward()
    assert output.grad is None or not np.any(output.grad)
    assert np.any(v_tensor.grad)
    # It is λ T L_t: with the optimal variance (v that makes σ² = β̃, the true posterior's) and the
    # true mean, the KL terms vanish.
    x0_eps = (x_t - np.sqrt(schedule.alphas_cumprod[t])[:, None, None, None] * x0) / np.sqrt(
        1 - schedule.alphas_cumprod[t])[:, None, None, None]
    exact = hybrid_vlb_term(schedule, x0, x_t, t, Tensor(x0_eps), Tensor(np.zeros_like(v))).numpy()
    np.testing.assert_allclose(exact[1:], 0, atol=1e-10)
    assert exact[0] > 0  # the decoder's −log p(x₀ | x₁) stays


@pytest.mark.parametrize("sampler", ["uniform", "importance"])
def test_training_loss_adds_lambda_T_vlb_weighted_like_the_simple_loss(sampler):
    schedule = NoiseSchedule.cosine(20)
    model = UNet.from_preset("tiny", learn_sigma=True, rng=np.random.default_rng(0))
    plain = UNet.from_preset("tiny", rng=np.random.default_rng(0))
    assert model.config["learn_sigma"] and model.out[1].weight.shape[0] == 2
    # Far from uniform, so that the importance weights 1/(T p_t) differ from 1 (Nichol & Dhariwal 2021, Eq. 18).
    sampler = UniformSampler(schedule.T) if sampler == "uniform" else FixedSampler(np.arange(1, schedule.T + 1) ** 2)
    x0 = np.random.default_rng(1).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    hybrid = training_loss(model, schedule, x0, np.random.default_rng(2), timestep_sampler=sampler).loss
    simple = training_loss(plain, schedule, x0, np.random.default_rng(2), timestep_sampler=sampler).loss
    # Both start with a zero output conv: ε̂ = 0 and v = 0 (σ² = β̃, the fixed small variance), so the
    # difference is the batch mean of w_t · λ T L_t with λ = 0.001 (Eq. 16), t and ε drawn as training_loss does.
    rng = np.random.default_rng(2)
    t, weights = sampler.sample(len(x0), rng)
    x_t = q_sample(schedule, x0, t, rng.standard_normal(x0.shape, dtype=np.float32))
    x0_hat = predict_x0(schedule, x_t, t, np.zeros_like(x_t))
    vlb = 0.001 * schedule.T * vb_terms_bpd(schedule, x0, x_t, t, x0_hat, "fixed_small")
    assert np.mean(weights * vlb) > 1e-3 * simple.item()  # well above float32 rounding of the sum
    assert hybrid.item() - simple.item() == pytest.approx(np.mean(weights * vlb), rel=1e-4)
    hybrid.backward()
    assert np.any(model.out[1].weight.grad[1])  # v's output channel learns


def test_learn_sigma_checkpoints_round_trip_and_old_ones_load(tmp_path):
    config = TrainConfig(preset="tiny", learn_sigma=True, out=str(tmp_path / "run")).run_config()
    model = build_model(config, rng=np.random.default_rng(0))
    state = {"shadow." + k: v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "new.npz", config=config, step=1, model=model.state_dict(), ema=state,
                    optimizer={"lr": 1.0}, batcher={"epoch": 0}, rng={"train": np.random.default_rng(0)})
    loaded, _, _ = load_model(tmp_path / "new.npz")
    assert loaded.config["learn_sigma"] and loaded.out[1].weight.shape[0] == 2
    old = TrainConfig(preset="tiny", out=str(tmp_path / "run")).run_config()
    del old["model"]["learn_sigma"], old["zero_terminal_snr"]  # written before these fields existed
    plain = build_model(TrainConfig(preset="tiny", out=str(tmp_path / "run")).run_config())
    state = {"shadow." + k: v for k, v in plain.state_dict().items()}
    save_checkpoint(tmp_path / "old.npz", config=old, step=1, model=plain.state_dict(), ema=state,
                    optimizer={"lr": 1.0}, batcher={"epoch": 0}, rng={"train": np.random.default_rng(0)})
    loaded, schedule, config = load_model(tmp_path / "old.npz")
    assert not loaded.config["learn_sigma"] and not config["zero_terminal_snr"]
    assert schedule.alphas_cumprod[-1] > 0


def test_bpd_estimate_is_unbiased_and_exact_with_every_timestep():
    schedule = NoiseSchedule.linear(10, beta_start=0.01, beta_end=0.5)
    model = gaussian_oracle(schedule, MU, S)
    x0 = np.full((4000, 1, 2, 2), 0.3)
    full = calc_bpd_loop(model, schedule, x0, rng=np.random.default_rng(0), clip_denoised=False)["total_bpd"]
    subset = bpd_estimate(model, schedule, x0, 3, np.random.default_rng(1), clip_denoised=False)
    every = bpd_estimate(model, schedule, x0, 10, np.random.default_rng(2), clip_denoised=False)
    se = np.hypot(full.std(), subset.std()) / np.sqrt(len(x0))
    assert abs(subset.mean() - full.mean()) < 4 * se
    assert subset.std() > every.std()  # fewer terms: more variance
    assert abs(every.mean() - full.mean()) < 4 * np.hypot(full.std(), every.std()) / np.sqrt(len(x0))
    p = pilot_probabilities(model, schedule, x0[:8], [1, 5, 9], np.random.default_rng(3), clip_denoised=False)
    assert p.shape == (9,) and np.isclose(p.sum(), 1) and p.min() >= 0.1 / 9
    weighted = bpd_estimate(model, schedule, x0, 3, np.random.default_rng(4), clip_denoised=False, probabilities=p)
    assert abs(weighted.mean() - full.mean()) < 4 * np.hypot(full.std(), weighted.std()) / np.sqrt(len(x0))
    with pytest.raises(ValueError, match=r"num_timesteps must be an integer in \[2, 10\], got 11"):
        bpd_estimate(model, schedule, x0, 11, np.random.default_rng(0))
