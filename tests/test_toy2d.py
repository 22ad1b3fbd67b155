"""examples/toy2d.py on tiny settings (figures only where matplotlib is installed), and the
checkerboard it draws from."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidiff.toy import checkerboard

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy2d.py"


@pytest.fixture(scope="module")
def toy2d():
    spec = importlib.util.spec_from_file_location("toy2d", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(toy2d):
    return toy2d.run(steps=3, n=40)


def test_the_example_computes_every_picture(toy2d, results):
    assert set(results["samples"]) == set(toy2d.DATASETS)
    for name, samples in results["samples"].items():
        assert samples.shape == (40, 2) and np.isfinite(samples).all(), name
        assert len(results["forward"][name]) == 5
    learned, exact = next(iter(results["scores"].values()))
    assert learned.shape == exact.shape == results["grid"].shape
    assert set(results["paths"]) == {"reverse SDE", "probability-flow ODE"}
    assert set(results["flow_samples"]) == set(toy2d.DATASETS)
    assert all(samples.shape == (40, 2) and np.isfinite(samples).all() for samples in results["flow_samples"].values())
    vp, straight = results["flow_paths"].values()
    assert vp.shape[1:] == straight.shape[1:] == (16, 2)
    t, x_t, x0_hat = results["modes"]
    assert t[0] == toy2d.T - 1 and t[-1] == 0
    # E[x₀ | x_T] is the data mean (the origin); at the end it sits on one of the 8 modes.
    assert np.linalg.norm(x0_hat[0] - toy2d.EIGHT_GAUSSIANS.mean()) < 0.2  # the modes are 1 away
    assert np.linalg.norm(toy2d.EIGHT_GAUSSIANS.means - x0_hat[-1], axis=1).min() < 0.2


def test_the_example_writes_its_figures(toy2d, results, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'minidiff[plot]')")
    paths = toy2d.save_figures(results, tmp_path)
    assert [path.name for path in paths] == [f"toy2d_{name}.png" for name in
                                             ("forward", "score", "trajectories", "samples", "modes", "flow")]
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        # A drawn figure, not a blank canvas: many colours, and ink on both halves of it.
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, path.name
        ink = (pixels < 200).any(axis=2)
        assert ink[:, : ink.shape[1] // 2].any() and ink[:, ink.shape[1] // 2 :].any(), path.name
    with Image.open(paths[0]) as forward:  # 5 times across, 4 data sets down
        assert forward.width > forward.height


def test_the_exact_score_is_the_eight_gaussian_mixtures(toy2d, results):
    # q(x_t) = (1/8) Σ_k N(√ᾱ_t μ_k, (ᾱ_t s² + 1 − ᾱ_t) I), so ∇ log q(x_t) = Σ_k r_k (√ᾱ_t μ_k − x)/v_t
    # with r_k the responsibilities: the field drawn beside the learned one.
    schedule, grid, mixture = results["schedule"], results["grid"], toy2d.EIGHT_GAUSSIANS
    for t, (_, exact) in results["scores"].items():
        alpha_bar = schedule.alphas_cumprod[t]
        variance = alpha_bar * 0.05**2 + 1 - alpha_bar
        means = np.sqrt(alpha_bar) * mixture.means
        log_density = -((grid[:, None] - means[None]) ** 2).sum(-1) / (2 * variance)
        r = np.exp(log_density - log_density.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        expected = (r[..., None] * (means[None] - grid[:, None])).sum(1) / variance
        np.testing.assert_allclose(exact, expected, rtol=1e-6, atol=1e-9)


def test_straightness_is_one_on_a_line_and_more_on_a_bend(toy2d):
    line = np.linspace(0, 1, 5)[:, None, None] * np.array([[3.0, 4.0]])
    bend = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])
    np.testing.assert_allclose(toy2d.straightness(line), [1.0])
    np.testing.assert_allclose(toy2d.straightness(bend), [np.sqrt(2.0)])


def test_checkerboard_points_lie_on_the_dark_squares():
    points = checkerboard(5000, squares=4, rng=1)
    cells = np.floor((points + 1) / 2 * 4).astype(int)
    assert points.dtype == np.float32 and np.all(np.abs(points) <= 1)
    assert np.all(cells.sum(axis=1) % 2 == 0)
    assert len(np.unique(cells, axis=0)) == 8
    with pytest.raises(ValueError, match="even"):
        checkerboard(10, squares=3)
