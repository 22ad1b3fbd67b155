"""Classifier-free guidance and editing on arrays: the guided forward against two separate ones,
w = 0 against plain conditional sampling, the null row of the class embedding, t_start in every
sampler, SDEdit, RePaint's known pixels and jump schedule, and slerp's endpoints."""

import json

import numpy as np
import pytest
from test_diffusion import gaussian_oracle

from minidiff.checkpoint import load_checkpoint, load_model, save_checkpoint
from minidiff.diffusion import predict_eps_from_v, predict_eps_from_x0
from minidiff.editing import interpolation_path, repaint_sample, repaint_timesteps, sdedit_start, slerp
from minidiff.guidance import drop_labels, guided_denoiser
from minidiff.sample import SAMPLER_FUNCTIONS, generate, sampler_steps, seed_noise
from minidiff.sampling import ddpm_sample, respaced
from minidiff.schedule import NoiseSchedule
from minidiff.backbones import as_denoiser
from minidiff.unet import UNet

SMALL = dict(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
             num_groups=2, image_size=8)


def guided_model(dtype=np.float32, **overrides):
    """A small conditional UNet with a null row, its zero-initialised layers perturbed so it is not ε̂ = 0."""
    rng = np.random.default_rng(0)
    model = UNet(**{**SMALL, "num_classes": 3, "null_class": True, **overrides}, rng=rng, dtype=dtype)
    for param in model.parameters():
        param.data[...] += 0.1 * rng.standard_normal(param.shape).astype(dtype)
    return model.eval()


class Counting:
    """``model`` that records the batch size of each call."""

    def __init__(self, model):
        self.model, self.null_label, self.batches = model, model.null_label, []

    def __call__(self, x, t, y):
        self.batches.append(len(x))
        return self.model(x, t, y)


def test_null_row_is_one_more_embedding_row_and_label_k_is_accepted():
    model = guided_model()
    assert model.label_embed.shape[0] == 4 and model.null_label == 3 and model.config["null_class"] is True
    model(np.zeros((1, 1, 8, 8)), np.array([5]), np.array([3]))
    with pytest.raises(ValueError, match=r"class labels y must lie in \[0, 4\)"):
        model(np.zeros((1, 1, 8, 8)), np.array([5]), np.array([4]))
    with pytest.raises(ValueError, match=r"class labels y must lie in \[0, 3\)"):
        guided_model(null_class=False)(np.zeros((1, 1, 8, 8)), np.array([5]), np.array([3]))
    with pytest.raises(ValueError, match="null_class=True needs num_classes"):
        UNet(**SMALL, null_class=True)


def test_drop_labels_uses_the_null_label_at_rate_p():
    labels = np.arange(20000) % 10
    dropped = drop_labels(labels, 0.1, 10, np.random.default_rng(0))
    kept = dropped != 10
    assert abs((~kept).mean() - 0.1) < 0.01 and np.array_equal(dropped[kept], labels[kept])
    assert np.array_equal(drop_labels(labels, 0.1, 10, np.random.default_rng(0)), dropped)  # seeded


def test_batched_guided_forward_equals_two_separate_forwards():
    model = guided_model(np.float64)
    rng = np.random.default_rng(1)
    x, t, y, w = rng.standard_normal((3, 1, 8, 8)), np.array([3, 40, 999]), np.array([0, 2, 1]), 2.5
    counting = Counting(model)
    guided = guided_denoiser(counting, y, w)(x, t)
    conditional = as_denoiser(model, y)(x, t)
    unconditional = as_denoiser(model, np.full(3, model.null_label))(x, t)
    np.testing.assert_allclose(guided, (1 + w) * conditional - w * unconditional, rtol=1e-10, atol=1e-12)
    assert counting.batches == [6]  # one forward of 2N
    assert not np.allclose(guided, conditional)


def test_a_learned_variance_is_not_guided():
    model = guided_model(np.float64, learn_sigma=True)
    rng = np.random.default_rng(3)
    x, t, y, w = rng.standard_normal((2, 1, 8, 8)), np.array([5, 500]), np.array([0, 2]), 3.0
    guided = guided_denoiser(model, y, w)(x, t)
    conditional = as_denoiser(model, y)(x, t)
    unconditional = as_denoiser(model, np.full(2, model.null_label))(x, t)
    np.testing.assert_allclose(guided[:, :1], (1 + w) * conditional[:, :1] - w * unconditional[:, :1], rtol=1e-10)
    np.testing.assert_allclose(guided[:, 1:], conditional[:, 1:], rtol=1e-12, atol=1e-14)  # v: the conditional branch's


def test_guidance_zero_is_plain_conditional_and_skips_the_unconditional_branch():
    model = guided_model()
    counting = Counting(model)
    x, t, y = np.random.default_rng(2).standard_normal((2, 1, 8, 8)), np.array([7, 8]), np.array([1, 2])
    np.testing.assert_array_equal(guided_denoiser(counting, y, 0.0)(x, t), as_denoiser(model, y)(x, t))
    np.testing.assert_array_equal(guided_denoiser(counting, y)(x, t), as_denoiser(model, y)(x, t))  # w = 0 by default
    assert counting.batches == [2, 2]
    schedule = NoiseSchedule.linear(100)
    plain = generate(model, schedule, 3, "ddim", 5, labels=np.array([0, 1, 2]))
    np.testing.assert_array_equal(generate(model, schedule, 3, "ddim", 5, labels=np.array([0, 1, 2]), guidance=0.0),
                                  plain)
    assert not np.array_equal(generate(model, schedule, 3, "ddim", 5, labels=np.array([0, 1, 2]), guidance=3.0), plain)


def test_guidance_needs_a_null_row_and_labels():
    with pytest.raises(ValueError, match="needs a model with a null class"):
        guided_denoiser(guided_model(null_class=False), np.array([0]), 1.0)
    with pytest.raises(ValueError, match="needs class labels"):
        guided_denoiser(guided_model(), None, 1.0)


@pytest.mark.parametrize("to_eps", [predict_eps_from_x0, predict_eps_from_v], ids=["x0", "v"])
def test_guiding_x0_or_v_outputs_is_guiding_eps(to_eps):
    """Guiding the raw output, then converting, equals converting both branches, then guiding ε."""
    schedule = NoiseSchedule.cosine(50)
    rng = np.random.default_rng(3)
    x_t, t = rng.standard_normal((4, 1, 8, 8)), np.array([0, 10, 30, 49])
    (conditional, unconditional), w = rng.standard_normal((2, 4, 1, 8, 8)), 4.0
    guided_output = (1 + w) * conditional - w * unconditional
    eps_guided = (1 + w) * to_eps(schedule, x_t, t, conditional) - w * to_eps(schedule, x_t, t, unconditional)
    np.testing.assert_allclose(to_eps(schedule, x_t, t, guided_output), eps_guided, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", list(SAMPLER_FUNCTIONS))
def test_t_start_at_the_top_changes_nothing_and_minus_one_returns_x_T(sampler):
    schedule = NoiseSchedule.linear(40)
    model = gaussian_oracle(schedule, 0.3, 0.5)
    steps = sampler_steps(sampler, 10, schedule.T)
    x_T = np.random.default_rng(4).standard_normal((3, 1, 4, 4))
    run = SAMPLER_FUNCTIONS[sampler]
    default = run(model, schedule, x_T.shape, steps, rng=np.random.default_rng(5), x_T=x_T)
    top = run(model, schedule, x_T.shape, steps, rng=np.random.default_rng(5), x_T=x_T, t_start=steps - 1)
    np.testing.assert_array_equal(top, default)
    np.testing.assert_array_equal(run(model, schedule, x_T.shape, steps, x_T=x_T, t_start=-1), x_T)
    with pytest.raises(ValueError, match="t_start=10 is outside"):
        run(model, schedule, x_T.shape, steps, x_T=x_T, t_start=steps)


def test_sdedit_noises_to_the_matching_step_and_strength_zero_returns_the_image():
    schedule = respaced(NoiseSchedule.linear(100), 20)
    x0, noise = np.ones((2, 1, 4, 4)), np.zeros((2, 1, 4, 4))
    x_t, t_start = sdedit_start(schedule, x0, 0.6, noise)
    assert t_start == 11  # 12 of the 20 steps left to run
    np.testing.assert_allclose(x_t, schedule.sqrt_alphas_cumprod[11] * x0)
    assert sdedit_start(schedule, x0, 0.0, noise) == (x0, -1)
    with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\]"):
        sdedit_start(schedule, x0, 1.2, noise)
    model, init = guided_model(), np.random.default_rng(6).uniform(-1, 1, (1, 8, 8)).astype(np.float32)
    for sampler in ("ddim", "ddpm", "pc"):
        same = generate(model, NoiseSchedule.linear(100), 2, sampler, 5, labels=np.array([0, 1]), init=init, strength=0)
        np.testing.assert_array_equal(same, np.broadcast_to(init, (2, 1, 8, 8)))
    edited = generate(model, NoiseSchedule.linear(100), 2, "ddim", 5, labels=np.array([0, 1]), init=init,
                      strength=0.4, guidance=1.0)
    assert edited.shape == (2, 1, 8, 8) and not np.allclose(edited, init)


def test_sdedit_at_the_smallest_strength_still_noises_to_t_0():
    # strength·T rounding to one step: t₀ = 0, one step of noise (β_0), then one sampler step.
    schedule, rng = NoiseSchedule.linear(10), np.random.default_rng(4)
    x0, noise = rng.uniform(-1, 1, (2, 1, 4, 4)), rng.standard_normal((2, 1, 4, 4))
    x_t, t_start = sdedit_start(schedule, x0, 0.1, noise)
    assert t_start == 0
    np.testing.assert_allclose(x_t, np.sqrt(1 - schedule.betas[0]) * x0 + np.sqrt(schedule.betas[0]) * noise, rtol=1e-12)


def test_repaint_timesteps_walk_down_with_jumps_back_up():
    assert repaint_timesteps(4) == [3, 2, 1, 0, -1]
    visited = repaint_timesteps(10, jump_length=2, jump_n_sample=3)
    assert visited[0] == 9 and visited[-1] == -1
    assert all(abs(b - a) == 1 for a, b in zip(visited, visited[1:]))
    steps_down = sum(b < a for a, b in zip(visited, visited[1:]))
    assert steps_down == 10 + 2 * 2 * 4  # every jump of 2 at t = 0, 2, 4, 6 is walked down again, twice
    with pytest.raises(ValueError, match="at least 1"):
        repaint_timesteps(10, jump_length=0)


@pytest.mark.parametrize("jumps", [(1, 1), (3, 2)])
def test_inpainting_returns_the_known_pixels_exactly(jumps):
    schedule = NoiseSchedule.linear(60)
    rng = np.random.default_rng(7)
    known = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 3:7] = 1.0
    out = repaint_sample(as_denoiser(guided_model(), np.array([1, 2])), schedule, (2, 1, 8, 8), 12, known=known,
                         mask=mask, jump_length=jumps[0], jump_n_sample=jumps[1], rng=rng)
    keep = np.broadcast_to(mask == 0, out.shape)
    np.testing.assert_array_equal(out[keep], np.broadcast_to(known, out.shape)[keep])
    assert np.abs(out[~keep] - np.broadcast_to(known, out.shape)[~keep]).max() > 0.1


@pytest.mark.parametrize("jump_length, jump_n_sample", [(1, 1), (2, 3)])
def test_repaint_known_region_follows_q_xt_given_x0_at_every_step(jump_length, jump_n_sample):
    # With every pixel known, x after each step down to t − 1 is x^known ∼ q(x_{t−1} | x₀), and a jump
    # up to t + 1 adds q(x_{t+1} | x_t) (Eq. 2, with β_{t+1}): each x_t a step sees must then have the marginal
    # q(x_t | x₀) = N(√ᾱ_t x₀, 1 − ᾱ_t) (Ho et al. 2020, Eq. 4). x_T itself is N(0, I) and is left out.
    schedule, n, x0_value = NoiseSchedule.linear(1000), 40_000, 0.8
    cut = respaced(schedule, 6)
    index_of = {int(timestep): index for index, timestep in enumerate(cut.timesteps)}
    seen = []
    repaint_sample(lambda x, t: np.zeros_like(x), schedule, (n, 1), 6, known=np.full((1, 1), x0_value),
                   mask=np.zeros((1, 1)), jump_length=jump_length, jump_n_sample=jump_n_sample,
                   rng=np.random.default_rng(0), callback=lambda index, t, x, x0_hat: seen.append((index_of[t], x)))
    assert len(seen) == 6 + (jump_n_sample - 1) * jump_length * len(range(0, 6 - jump_length, jump_length))
    for t, x in seen[1:]:
        variance = 1 - cut.alphas_cumprod[t]
        assert abs(x.mean() - np.sqrt(cut.alphas_cumprod[t]) * x0_value) <= 5 * np.sqrt(variance / n), t
        assert abs(x.var() - variance) <= 5 * variance * np.sqrt(2 / n), t


def test_repaint_of_an_all_unknown_image_samples_the_data_and_reports_each_step_once():
    # With nothing known, RePaint is the ancestral sampler (η = 1, Ho et al. 2020, Algorithm 2): fed the same
    # model it draws from DDPM's law on the same 20 steps; with the default jump_n_sample = 1 it takes each once.
    schedule, n = NoiseSchedule.linear(1000), 40_000
    model, indices = gaussian_oracle(schedule, 0.3, 0.5), []
    out = repaint_sample(model, schedule, (n, 1), 20, known=np.zeros((1, 1)), mask=np.ones((1, 1)),
                         rng=np.random.default_rng(0), clip_denoised=False,
                         callback=lambda index, t, x, x0_hat: indices.append(index))
    assert indices == list(range(20))
    ddpm = ddpm_sample(model, schedule, (n, 1), 20, rng=np.random.default_rng(1), clip_denoised=False)
    assert abs(out.mean() - ddpm.mean()) < 5 * np.sqrt(2 * ddpm.var() / n)
    assert abs(out.var() / ddpm.var() - 1) < 5 * np.sqrt(4 / n)


def test_inpainting_through_generate_refuses_other_samplers():
    with pytest.raises(ValueError, match="use sampler ddpm, ddim, heun, euler or midpoint, not pf-ode"):
        generate(guided_model(), NoiseSchedule.linear(20), 1, "pf-ode", 3, labels=np.array([0]),
                 init=np.zeros((1, 8, 8)), mask=np.ones((8, 8)))


def test_slerp_endpoints_are_exact_and_the_arc_keeps_the_norm():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 1, 1, 16, 16)).astype(np.float32)
    path = interpolation_path(a, b, 5)
    np.testing.assert_array_equal(path[0], a[0])
    np.testing.assert_array_equal(path[-1], b[0])
    norms = np.linalg.norm(path.reshape(5, -1), axis=1)
    assert norms.min() > 0.95 * min(norms[0], norms[-1])  # no dip in the middle ...
    assert norms[2] > 1.3 * np.linalg.norm((a + b) / 2)  # ... where the straight line's is about 1/√2
    np.testing.assert_allclose(slerp(a, a, 0.3), a, rtol=1e-6)  # parallel: the line


def test_slerp_walks_the_arc_at_constant_angular_speed_per_example():
    # Unit vectors at angles 0 and θ: slerp(α) is the unit vector at angle αθ, with θ = 90° and 135° in one batch.
    angles = np.array([np.pi / 2, 3 * np.pi / 4])
    a = np.tile([1.0, 0.0], (2, 1))
    b = 2 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # the length of b scales its weight, not the angle
    for alpha in (1 / 3, 0.5):
        weight_b = np.sin(alpha * angles) / np.sin(angles)
        expected = np.sin((1 - alpha) * angles)[:, None] / np.sin(angles)[:, None] * a + weight_b[:, None] * b
        np.testing.assert_allclose(slerp(a, b, alpha), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(slerp(a[:1], 2 * a[:1] + 1e-9, 0.25), 1.25 * a[:1], atol=1e-9)  # parallel: the line


def test_repaint_goes_back_up_jump_length_steps_jump_n_sample_minus_1_times_at_each_multiple():
    # T = 6, jumps of 2 at t = 0 and 2 (the multiples of 2 below T − 2), once each (jump_n_sample = 2).
    assert repaint_timesteps(6, jump_length=2, jump_n_sample=2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    # T = 4, jumps of 1 at t = 0, 1 and 2, twice each.
    assert repaint_timesteps(4, jump_length=1, jump_n_sample=3) == [3, 2, 3, 2, 3, 2, 1, 2, 1, 2, 1, 0, 1, 0, 1, 0, -1]
    for bad in (dict(jump_length=0), dict(jump_n_sample=0)):
        with pytest.raises(ValueError, match="must be at least 1"):
            repaint_timesteps(4, **bad)
    assert repaint_timesteps(3, jump_length=1, jump_n_sample=1) == [2, 1, 0, -1]


def test_interpolation_endpoints_equal_the_two_seeds_samples():
    model, schedule = guided_model(), NoiseSchedule.linear(50)
    ends = [seed_noise(seed, (1, 8, 8)) for seed in (11, 12)]
    frames = generate(model, schedule, 4, "ddim", 5, labels=np.full(4, 2), x_T=interpolation_path(*ends, 4))
    for frame, seed in ((frames[0], 11), (frames[-1], 12)):
        alone = generate(model, schedule, 1, "ddim", 5, labels=np.array([2]), seed=seed)[0]
        # The same x_T; float32 convolutions of a batch of 4 and of 1 differ in the last bits.
        np.testing.assert_allclose(frame, alone, rtol=0, atol=1e-5)


def test_a_checkpoint_without_null_class_loads_unguided(tmp_path):
    """Checkpoints written before null_class existed: same model, no null row, guidance refused."""
    model = guided_model(null_class=False)
    config = {"schedule": "linear", "timesteps": 50, "prediction": "eps", "model": dict(model.config)}
    del config["model"]["null_class"]
    weights = model.state_dict()
    path = save_checkpoint(tmp_path / "old.npz", config=json.loads(json.dumps(config)), step=1, model=weights,
                           ema={"num_updates": np.array(1), **{f"shadow.{k}": v for k, v in weights.items()}},
                           optimizer={"lr": np.array(1e-3)}, batcher={"position": np.array(0)},
                           rng={"train": np.random.default_rng(0)})
    assert load_checkpoint(path).config["model"]["null_class"] is False
    loaded, _, _ = load_model(path)
    assert loaded.null_label is None and loaded.label_embed.shape[0] == 3
    with pytest.raises(ValueError, match="needs a model with a null class"):
        guided_denoiser(loaded, np.array([0]), 1.0)
