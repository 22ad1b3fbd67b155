"""``train --objective edm|flow`` and ``sample`` with the ODE samplers, end to end on tiny settings;
checkpoints without an objective sample as DDPM ones did; and each misuse as one line."""
import json

import numpy as np
import pytest
from PIL import Image
from test_cli import MNIST_DIR, TINY, expect_error, train

from minidiff.__main__ import main
from minidiff.checkpoint import load_checkpoint
from minidiff.datasets import load_dataset
from minidiff.files import load_npz, save_npz
from minidiff.objectives.edm import measure_sigma_data

pytestmark = [
    pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}"),
    pytest.mark.filterwarnings("ignore:mnist train files not found"),
]

# TINY without its DDPM chain (--schedule cosine --timesteps 20), which an edm or flow run refuses.
CHAIN = TINY.index("--schedule")
OBJECTIVE_TINY = TINY[:CHAIN] + TINY[CHAIN + 4:]


@pytest.fixture(scope="module", params=["edm", "flow"])
def run(request, tmp_path_factory):
    """Four steps of a class-conditional model with a null class, preview grids at steps 2 and 4."""
    out = tmp_path_factory.mktemp(request.param)
    assert main(["train", *OBJECTIVE_TINY, "--objective", request.param, "--out", str(out), "--steps", "4",
                 "--sample-every", "2", "--num-classes", "10", "--p-uncond", "0.2"]) == 0
    return request.param, out


def test_the_run_records_its_objective(run):
    objective, out = run
    config = json.loads((out / "config.json").read_text())
    assert config["objective"] == objective and (out / "samples_step4.png").is_file()
    if objective == "edm":  # σ_data measured on the training images: their root mean square
        images, _ = load_dataset("mnist", "auto", str(MNIST_DIR))
        assert config["sigma_data"] == measure_sigma_data(images[:64])


def samplers(objective):
    return ("heun", "euler", "midpoint") if objective == "flow" else ("heun", "euler")


def test_every_ode_sampler_draws_and_heun_edits(run, tmp_path):
    objective, out = run
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "init.png")
    Image.fromarray(np.tile(np.array([0, 255], np.uint8).repeat(14), (28, 1))).save(tmp_path / "mask.png")
    edits = [["--guidance", "2"], ["--init", str(tmp_path / "init.png"), "--strength", "0.5"],
             ["--init", str(tmp_path / "init.png"), "--mask", str(tmp_path / "mask.png")],
             ["--interpolate", "1", "2", "--label", "3"]]
    for sampler, edit in [(sampler, []) for sampler in samplers(objective)] + [("heun", edit) for edit in edits]:
        npy = tmp_path / "samples.npy"
        assert main(["sample", str(out), "--n", "3", "--sampler", sampler, "--steps", "3", "--npy", str(npy),
                     "--out", str(tmp_path / "grid.png"), *edit]) == 0, edit
        samples = np.load(npy)
        assert samples.shape == (3, 1, 28, 28) and np.abs(samples).max() <= 1, edit
        if "--mask" in edit:  # the known (black-masked) left half is the white init image, exactly
            np.testing.assert_array_equal(samples[..., :14], 1.0)


def test_a_chain_sampler_is_refused_naming_both(run, capsys):
    objective, out = run
    line = expect_error(capsys, ["sample", str(out), "--sampler", "ddim"])
    assert f"--sampler ddim cannot sample a checkpoint trained with --objective {objective}" in line


def test_resume_refuses_another_objective(run, capsys):
    objective, out = run
    line = expect_error(capsys, ["train", "--resume", str(out), "--objective", "ddpm", "--steps", "9"])
    assert f"--objective ddpm (saved: {objective}): cannot change on --resume" in line


def test_bpd_says_it_is_not_available(run, capsys):
    objective, out = run
    line = expect_error(capsys, ["bpd", str(out)])
    assert f"not available for this --objective {objective} checkpoint" in line


@pytest.mark.parametrize("flags, message", [
    (["--objective", "edm", "--p-std", "-1"], "p_std (--p-std) must be a positive finite number"),
    (["--objective", "flow", "--p-std", "1"], "--p-std applies to --objective edm, not flow"),
    (["--objective", "edm", "--prediction", "v"], "--prediction applies to --objective ddpm, not edm"),
    (["--p-mean", "0"], "--p-mean applies to --objective edm, not ddpm"),
    (["--objective", "edm", "--sigma-data", "0"], "sigma_data (--sigma-data) must be a positive finite number"),
])
def test_flags_of_another_objective_or_out_of_range_are_refused(tmp_path, capsys, flags, message):
    line = expect_error(capsys, ["train", *OBJECTIVE_TINY, "--out", str(tmp_path), *flags])
    assert message in line


@pytest.mark.parametrize("flags, message", [
    (["--sigma-max", "0.001"], "--sigma-max 0.001 must exceed --sigma-min 0.002"),
    (["--rho", "0"], "--rho must be a positive finite number"),
    (["--time-shift", "0"], "--time-shift must be a positive finite number"),
    (["--s-churn", "-1"], "--s-churn must be a finite number >= 0"),
])
def test_ode_sampler_flags_are_checked(run, capsys, flags, message):
    assert message in expect_error(capsys, ["sample", str(run[1]), *flags])


# DDPM checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddpm")
    assert train(out, "--steps", "2", "--sample-every", "0") == 0
    return out


def test_a_checkpoint_without_an_objective_is_a_ddpm_one_and_samples_as_before(ddpm_run, tmp_path):
    flat = dict(load_npz(ddpm_run / "checkpoint.npz"))
    config = json.loads(str(flat["config"]))
    assert config.pop("objective") == "ddpm"
    flat["config"] = np.array(json.dumps(config))
    save_npz(flat, tmp_path / "old.npz")
    assert load_checkpoint(tmp_path / "old.npz").config["objective"] == "ddpm"
    for sampler in ("ddim", "pf-ode", "heun"):  # heun: EDM's sampler through the VP bridge
        drawn = []
        for source in (ddpm_run / "checkpoint.npz", tmp_path / "old.npz"):
            npy = tmp_path / f"{sampler}-{source.stem}.npy"
            assert main(["sample", str(source), "--n", "2", "--sampler", sampler, "--steps", "4", "--npy", str(npy),
                         "--out", str(tmp_path / "grid.png")]) == 0
            drawn.append(np.load(npy))
        np.testing.assert_array_equal(*drawn)


def test_a_ddpm_checkpoint_refuses_the_flow_only_sampler_and_flags(ddpm_run, capsys):
    line = expect_error(capsys, ["sample", str(ddpm_run), "--sampler", "midpoint"])
    assert "--sampler midpoint cannot sample a checkpoint trained with --objective ddpm" in line
    line = expect_error(capsys, ["sample", str(ddpm_run), "--sampler", "heun", "--time-shift", "3"])
    assert "--time-shift applies to flow checkpoints" in line


def test_a_crafted_objective_is_refused(ddpm_run, tmp_path, capsys):
    flat = dict(load_npz(ddpm_run / "checkpoint.npz"))
    flat["config"] = np.array(json.dumps({**json.loads(str(flat["config"])), "objective": "consistency"}))
    save_npz(flat, tmp_path / "crafted.npz")
    line = expect_error(capsys, ["sample", str(tmp_path / "crafted.npz")])
    assert "config field objective must be one of ddpm, edm, flow, got 'consistency'" in line
