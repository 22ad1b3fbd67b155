"""Semantics that must not drift: bpd needs a KL term, inpainting honours the DDPM variance (learned
too), Min-SNR-γ has a sane range, and a hand-edited config.json is named on resume."""
import json
from pathlib import Path

import numpy as np
import pytest

from minidiff.__main__ import main
from minidiff.config import TrainConfig
from minidiff.editing import repaint_sample
from minidiff.sample import generate
from minidiff.schedule import NoiseSchedule
from minidiff.unet import UNet

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
TINY = ["--preset", "tiny", "--data-dir", str(MNIST_DIR), "--limit-data", "64", "--batch-size", "4",
        "--schedule", "cosine", "--timesteps", "20", "--sample-every", "0", "--log-every", "1"]


def test_bpd_refuses_a_single_timestep_before_reading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bpd", str(tmp_path / "no-such-run"), "--timesteps", "1"])
    assert "--timesteps must be at least 2" in capsys.readouterr().err


def eps_model(x_t, t):
    return 0.1 * x_t


def with_v(v):
    def model(x_t, t):
        return np.concatenate([eps_model(x_t, t), np.full_like(x_t, v)], axis=1)

    model.learned_variance = True
    return model


def test_inpainting_takes_the_ddpm_variance_it_is_given():
    schedule, shape = NoiseSchedule.cosine(20), (2, 1, 6, 6)
    known, mask = np.zeros(shape[1:]), np.zeros(shape[2:])
    mask[:3] = 1

    def inpaint(model, variance):
        return repaint_sample(model, schedule, shape, known=known, mask=mask, variance=variance,
                              rng=np.random.default_rng(0))

    small, large = inpaint(eps_model, "fixed_small"), inpaint(eps_model, "fixed_large")
    assert not np.allclose(small[:, :, :3], large[:, :, :3])
    np.testing.assert_array_equal(small[:, :, 3:], large[:, :, 3:])  # the known pixels stay
    # a learned v of 1 is β_t (Nichol & Dhariwal 2021, Eq. 15), of 0 β̃_t
    np.testing.assert_allclose(inpaint(with_v(1.0), "learned"), large, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(inpaint(with_v(0.0), "learned"), small, rtol=1e-10, atol=1e-12)


def test_generate_passes_the_variance_to_inpainting():
    model = UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(),
                 num_groups=4, image_size=8, rng=np.random.default_rng(0))
    for param in model.parameters():
        param.data += np.random.default_rng(1).normal(0, 0.05, param.shape).astype(param.data.dtype)
    mask = np.zeros((8, 8), np.float32)
    mask[:4] = 1
    options = dict(init=np.zeros((1, 8, 8), np.float32), mask=mask, seed=3)
    small = generate(model, NoiseSchedule.cosine(20), 2, "ddpm", 5, variance="fixed_small", **options)
    large = generate(model, NoiseSchedule.cosine(20), 2, "ddpm", 5, variance="fixed_large", **options)
    assert not np.allclose(small, large)


@pytest.mark.parametrize("gamma", [1e-300, 1e-3, 1e5])
def test_min_snr_gamma_outside_its_range_is_refused_naming_the_flag(tmp_path, gamma):
    with pytest.raises(ValueError, match=r"min_snr_gamma \(--min-snr-gamma\) must be in \[0.01, 10000\]"):
        TrainConfig(min_snr_gamma=gamma, out=str(tmp_path))
    TrainConfig(min_snr_gamma=5.0, out=str(tmp_path))


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}")
@pytest.mark.filterwarnings("ignore:mnist train files not found")
def test_resume_says_in_one_line_that_a_hand_edited_config_is_not_read(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run), "--steps", "2"]) == 0
    assert main(["train", "--resume", str(run), "--steps", "3"]) == 0
    assert "config.json" not in capsys.readouterr().err  # nothing edited, nothing said
    config = json.loads((run / "config.json").read_text())
    config["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line and "config.json" in line]
    assert len(warnings) == 1 and "differs from the checkpoint's config in lr" in warnings[0]
    assert "not read on resume" in warnings[0]
    assert json.loads((run / "config.json").read_text())["lr"] != 0.5  # what the run really used
