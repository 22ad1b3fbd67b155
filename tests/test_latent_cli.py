"""``python -m minidiff autoencoder train``, ``train --backbone dit`` and ``train --latent`` end to end
on tiny settings: run folders, exact resume, sampling with guidance through the decoder, and the
refusals -- a patch size that does not divide the image, a missing or changed autoencoder -- in one line."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minidiff.__main__ import main
from minidiff.checkpoint import load_checkpoint

from test_cli import MNIST_DIR, expect_error

pytestmark = [
    pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}"),
    pytest.mark.filterwarnings("ignore:mnist train files not found"),
]

DATA = ["--data-dir", str(MNIST_DIR), "--limit-data", "64", "--batch-size", "4", "--log-every", "1"]
AE = ["autoencoder", "train", "--preset", "kl-f4-tiny", *DATA, "--sample-n", "4"]
DIFFUSION = ["train", *DATA, "--schedule", "cosine", "--timesteps", "20", "--sample-n", "4", "--sample-steps", "3"]
LATENT_DIT = ["--backbone", "dit", "--preset", "dit-tiny", "--patch-size", "1", "--num-classes", "10", "--p-uncond", "0.2"]


def weights(run):
    return load_checkpoint(run).sections["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    assert main([*AE, "--steps", "4", "--sample-every", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def latent_run(autoencoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("latent")
    assert main([*DIFFUSION, *LATENT_DIT, "--latent", str(autoencoder), "--steps", "4", "--sample-every", "4",
                 "--out", str(out)]) == 0
    return out


def test_autoencoder_run_folder_records_its_scale_factor(autoencoder, capsys):
    for name in ("checkpoint.npz", "config.json", "log.jsonl", "samples_step2.png", "samples_step4.png"):
        assert (autoencoder / name).is_file(), name
    config = load_checkpoint(autoencoder).config
    assert config["kind"] == "autoencoder" and config["model"]["z_channels"] == 4
    assert config["scale_factor"] == pytest.approx(1 / config["latent_std"]) and config["reconstruction_mse"] > 0


def test_autoencoder_resume_is_exact(autoencoder, tmp_path, capsys):
    assert main([*AE, "--steps", "2", "--out", str(tmp_path)]) == 0
    assert main(["autoencoder", "train", "--resume", str(tmp_path), "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "reconstruction MSE" in out and "latent std" in out and "scale factor" in out
    assert_same_weights(tmp_path, autoencoder)


def test_latent_run_records_its_autoencoder_and_resumes_exactly(autoencoder, latent_run, tmp_path):
    config = json.loads((latent_run / "config.json").read_text())
    record = config["autoencoder"]
    assert record["run"] == str(autoencoder.resolve()) and record["latent_shape"] == [4, 7, 7]
    assert record["scale_factor"] == load_checkpoint(autoencoder).config["scale_factor"]
    assert config["backbone"] == "dit" and config["model"]["in_channels"] == 4 and config["model"]["image_size"] == 7
    assert (latent_run / "samples_step4.png").is_file()
    assert main([*DIFFUSION, *LATENT_DIT, "--latent", str(autoencoder), "--steps", "2", "--out", str(tmp_path)]) == 0
    assert main(["train", "--resume", str(tmp_path), "--steps", "4"]) == 0
    assert_same_weights(tmp_path, latent_run)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm-solver++", "pf-ode", "reverse-sde", "pc"])
def test_sampling_a_latent_run_decodes_images_with_guidance(latent_run, tmp_path, sampler):
    npy = tmp_path / "samples.npy"
    assert main(["sample", str(latent_run), "--n", "3", "--sampler", sampler, "--steps", "3", "--label", "7",
                 "--guidance", "2", "--out", str(tmp_path / "s.png"), "--npy", str(npy)]) == 0
    samples = np.load(npy)
    assert samples.shape == (3, 1, 28, 28) and np.abs(samples).max() <= 1


def test_dit_on_pixels_trains_resumes_and_samples(tmp_path):
    dit = ["--backbone", "dit", "--preset", "dit-tiny"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*DIFFUSION, *dit, "--steps", "2", "--sample-every", "0", "--out", str(straight)]) == 0
    assert main([*DIFFUSION, *dit, "--steps", "1", "--sample-every", "0", "--out", str(resumed)]) == 0
    assert main(["train", "--resume", str(resumed), "--steps", "2"]) == 0
    assert_same_weights(straight, resumed)
    assert main(["sample", str(straight), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0


def test_unet_on_latents_trains_and_samples(autoencoder, tmp_path):
    assert main([*DIFFUSION, "--preset", "latent", "--latent", str(autoencoder), "--steps", "1", "--sample-every", "0",
                 "--out", str(tmp_path)]) == 0
    assert main(["sample", str(tmp_path), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0


def test_bad_input_is_refused_in_one_line(autoencoder, latent_run, tmp_path, capsys):
    line = expect_error(capsys, [*DIFFUSION, "--backbone", "dit", "--preset", "dit-tiny", "--patch-size", "3",
                                 "--out", str(tmp_path / "p")])
    assert "patch size 3 does not divide the 28×28 input" in line
    line = expect_error(capsys, [*DIFFUSION, "--latent", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    assert "autoencoder run" in line and "does not exist" in line
    line = expect_error(capsys, [*DIFFUSION, "--backbone", "unet", "--patch-size", "2", "--out", str(tmp_path / "u")])
    assert "patch_size (--patch-size) must be unset for --backbone unet" in line
    line = expect_error(capsys, ["train", "--resume", str(latent_run), "--steps", "9", "--backbone", "unet"])
    assert "--backbone unet (saved: dit): cannot change on --resume" in line
    # the autoencoder moved away, then changed: the latent run refuses both
    moved = tmp_path / "ae-moved"
    shutil.copytree(autoencoder, moved)
    record = json.loads((latent_run / "config.json").read_text())["autoencoder"]
    shutil.rmtree(autoencoder)
    try:
        line = expect_error(capsys, ["sample", str(latent_run), "--n", "1"])
        assert "which is missing" in line
        shutil.copytree(moved, autoencoder)
        assert main(["autoencoder", "train", "--resume", str(autoencoder), "--steps", "5"]) == 0
        line = expect_error(capsys, ["sample", str(latent_run), "--n", "1"])
        assert f"fingerprint {record['fingerprint']}" in line and "retrained or replaced" in line
    finally:
        shutil.rmtree(autoencoder, ignore_errors=True)
        shutil.copytree(moved, autoencoder)


@pytest.mark.parametrize("objective, samplers", [("edm", ("heun", "euler")), ("flow", ("heun", "midpoint"))])
def test_latent_runs_train_and_sample_with_every_objective(autoencoder, tmp_path, objective, samplers):
    assert main(["train", *DATA, *LATENT_DIT, "--latent", str(autoencoder), "--objective", objective, "--steps", "1",
                 "--sample-every", "0", "--out", str(tmp_path)]) == 0
    if objective == "edm":  # σ_data measured on the scaled latents, whose std is about 1
        assert 0.5 < load_checkpoint(tmp_path).config["sigma_data"] < 2
    for sampler in samplers:
        npy = tmp_path / f"{sampler}.npy"
        assert main(["sample", str(tmp_path), "--n", "2", "--sampler", sampler, "--steps", "2", "--label", "1",
                     "--guidance", "1", "--out", str(tmp_path / "s.png"), "--npy", str(npy)]) == 0
        assert np.load(npy).shape == (2, 1, 28, 28)
