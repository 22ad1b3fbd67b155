"""metrics: Fréchet distance, Inception Score and precision/recall against closed forms and
limiting cases; the feature classifier on MNIST t10k (accuracy, cache); ``eval`` end to end."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from minidiff import metrics
from minidiff.__main__ import main
from minidiff.checkpoint import build_model
from minidiff.datasets import load_dataset
from minidiff.files import load_npz as load_state_dict_file, save_npz as save_state_dict

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}")
pytestmark = pytest.mark.filterwarnings("ignore:mnist train files not found")  # only t10k is at hand
QUICK_STEPS = 150  # enough for ≥ 90 % held-out accuracy; the default trains longer


def random_covariance(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d


# --------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(6), random_covariance(rng, 6)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_symmetric_and_non_negative():
    rng = np.random.default_rng(2)
    for d in (1, 3, 8):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_covariance(rng, d), random_covariance(rng, d)
        forward, backward = metrics.frechet_distance(mu1, s1, mu2, s2), metrics.frechet_distance(mu2, s2, mu1, s1)
        assert forward >= 0 and forward == pytest.approx(backward, rel=1e-8)
    singular = np.outer(np.ones(4), np.ones(4))  # rank 1: square roots of zero eigenvalues
    assert metrics.frechet_distance(np.zeros(4), singular, np.zeros(4), singular) == pytest.approx(0, abs=1e-7)


def test_fid_is_small_for_one_distribution_and_large_for_a_shifted_one():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2000, 8)), rng.standard_normal((2000, 8))
    same = metrics.fid_from_features(a, b)
    shifted = metrics.fid_from_features(a, b + 1.0)  # ‖Δμ‖² = 8
    assert same < 0.1 and shifted == pytest.approx(8, rel=0.05)


# --------------------------------------------------------------------- Inception Score
def test_inception_score_is_the_class_count_for_confident_even_predictions():
    probs = np.eye(10)[np.arange(200) % 10]
    assert metrics.inception_score(probs) == pytest.approx(10)
    assert metrics.inception_score(probs, splits=4) == pytest.approx(10, rel=0.05)


def test_inception_score_is_one_when_every_prediction_is_the_same():
    probs = np.tile(np.random.default_rng(4).dirichlet(np.ones(10)), (50, 1))
    assert metrics.inception_score(probs) == pytest.approx(1)


# --------------------------------------------------------------------- precision / recall
def test_precision_and_recall_of_identical_sets_are_one():
    feats = np.random.default_rng(5).standard_normal((300, 16))
    assert metrics.precision_recall(feats, feats.copy(), k=3, chunk=64) == (1.0, 1.0)


def test_precision_and_recall_of_far_apart_sets_are_zero():
    rng = np.random.default_rng(6)
    real, fake = rng.standard_normal((200, 16)), rng.standard_normal((150, 16)) + 100
    assert metrics.precision_recall(real, fake, k=3, chunk=64) == (0.0, 0.0)


def test_precision_without_recall_for_a_collapsed_generator():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((500, 2))
    fake = 0.1 * rng.standard_normal((500, 2))  # good samples, one small region of the real data
    precision, recall = metrics.precision_recall(real, fake)
    assert precision > 0.9 and recall < 0.3


# --------------------------------------------------------------------- the classifier
@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """An $XDG_CACHE_HOME holding a classifier trained for QUICK_STEPS (shared by the tests below)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def classifier(cache_home):
    return metrics.feature_classifier("mnist", MNIST_DIR, cache_home / "minidiff", train_steps=QUICK_STEPS)


@needs_mnist
def test_classifier_learns_mnist(classifier):
    assert classifier.accuracy >= 0.90


@needs_mnist
@pytest.mark.slow
def test_classifier_with_the_default_steps_reaches_95_percent(tmp_path):
    assert metrics.feature_classifier("mnist", MNIST_DIR, tmp_path).accuracy >= 0.95


@needs_mnist
def test_classifier_cache_round_trip(classifier, cache_home, monkeypatch):
    path = cache_home / "minidiff" / "classifier-mnist.npz"
    assert path.is_file()
    monkeypatch.setattr(metrics, "train_classifier", lambda *a, **k: pytest.fail("retrained despite the cache"))
    again = metrics.feature_classifier("mnist", MNIST_DIR, path.parent, train_steps=QUICK_STEPS)
    assert again.accuracy == classifier.accuracy
    for (name, a), (_, b) in zip(classifier.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)


@needs_mnist
def test_corrupt_cache_is_named_and_retrained(classifier, cache_home, tmp_path, monkeypatch):
    (tmp_path / "classifier-mnist.npz").write_bytes(b"not an npz")
    monkeypatch.setattr(metrics, "train_classifier", lambda *a, **k: classifier)
    message = f"classifier cache {tmp_path / 'classifier-mnist.npz'} is unreadable or of another classifier"
    with pytest.warns(UserWarning, match=re.escape(message)):
        metrics.feature_classifier("mnist", MNIST_DIR, tmp_path, train_steps=QUICK_STEPS)
    assert metrics.feature_classifier("mnist", MNIST_DIR, tmp_path, train_steps=QUICK_STEPS).accuracy == classifier.accuracy


@needs_mnist
def test_scores_of_real_digits_beat_those_of_noise(classifier):
    images, _ = load_dataset("mnist", "auto", MNIST_DIR)
    real_vs_real = metrics.evaluate_samples(images[:500], classifier, images[500:1000])
    noise = np.random.default_rng(8).uniform(-1, 1, (500, 1, 28, 28)).astype(np.float32)
    noise_vs_real = metrics.evaluate_samples(noise, classifier, images[500:1000])
    assert real_vs_real["fid"] * 10 < noise_vs_real["fid"]
    assert real_vs_real["inception_score"] > 5 and real_vs_real["precision"] > 0.5 and real_vs_real["recall"] > 0.5
    # noise covers none of the digits; its precision is no test, as noise features bunch up
    # inside the wide k-NN balls of a few outlying real digits
    assert noise_vs_real["recall"] < 0.05 and noise_vs_real["inception_score"] < 2
    assert sum(real_vs_real["class_histogram"]) == real_vs_real["n"] == 500


# --------------------------------------------------------------------- the eval command
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny checkpoint: two training steps on 64 digits, a 20-step cosine chain."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--timesteps", "20",
                 "--schedule", "cosine", "--limit-data", "64", "--data-dir", str(MNIST_DIR),
                 "--sample-every", "0", "--out", str(out)]) == 0
    return out


@needs_mnist
def test_eval_command_scores_a_checkpoint_and_saved_samples(run, classifier, cache_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))  # the classifier trained above
    capsys.readouterr()
    out = tmp_path / "scores.json"
    assert main(["eval", str(run), "--n", "16", "--steps", "5", "--classifier-steps", str(QUICK_STEPS),
                 "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert {"fid", "inception_score", "precision", "recall", "class_histogram", "classifier_accuracy"} <= printed.keys()
    assert printed["n"] == 16 and printed["steps"] == 5 and printed["dataset"] == "mnist" and printed["fid"] > 0
    # the floor: real held-out digits scored the same way at the same N, better than 2-step samples
    assert set(printed["floor"]) == {"fid", "inception_score", "precision", "recall"}
    assert 0 < printed["floor"]["fid"] < printed["fid"]
    assert "only the test (t10k) split" in printed["real_images"]

    # the samples `sample` saves with the same seed score the same
    samples = tmp_path / "samples.npy"
    assert main(["sample", str(run), "--n", "16", "--steps", "5", "--npy", str(samples),
                 "--out", str(tmp_path / "grid.png")]) == 0
    capsys.readouterr()
    assert main(["eval", "--samples", str(samples), "--data-dir", str(MNIST_DIR),
                 "--classifier-steps", str(QUICK_STEPS)]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(printed["fid"])


def expect_error(capsys, argv, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@needs_mnist
def test_eval_refuses_a_model_of_other_images(run, tmp_path, capsys):
    flat = load_state_dict_file(run / "checkpoint.npz")
    config = json.loads(str(flat["config"]))
    config["model"]["in_channels"] = 3
    weights = build_model(config).state_dict()
    flat.update({prefix + name: value for name, value in weights.items() for prefix in ("model.", "ema.shadow.")})
    save_state_dict({**flat, "config": json.dumps(config)}, tmp_path / "rgb.npz")
    expect_error(capsys, ["eval", str(tmp_path / "rgb.npz"), "--n", "4"], "makes 3-channel 28×28 images")


def test_eval_refuses_bad_arguments_and_samples(tmp_path, capsys):
    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 28, 28), np.float32))
    expect_error(capsys, ["eval"], "give a checkpoint")
    expect_error(capsys, ["eval", "--samples", str(tmp_path / "rgb.npy")], "rgb.npy: expected an array of shape (N, 1, 28, 28), got (4, 3, 28, 28)")
    expect_error(capsys, ["eval", "--samples", str(tmp_path / "missing.npy")], "missing.npy: cannot read it")
    expect_error(capsys, ["eval", "--samples", str(tmp_path / "rgb.npy"), "--n", "1"], "--n must be at least 4")
    expect_error(capsys, ["eval", "--samples", str(tmp_path / "rgb.npy"), "--classifier-steps", "0"],
                 "--classifier-steps must be at least 1")


def test_real_image_splits_keep_reference_floor_and_classifier_images_apart():
    real = metrics.real_image_splits("mnist", MNIST_DIR) if MNIST_DIR.exists() else pytest.skip("no MNIST")
    assert len(real.reference) == len(real.floor) == 5000 and len(real.train) == 5000
    floor = {image.tobytes() for image in real.floor}
    assert not floor & {image.tobytes() for image in real.reference}
    assert not floor & {image.tobytes() for image in real.train}


@needs_mnist
def test_bpd_command_reports_the_bound_with_its_standard_error(run, capsys):
    capsys.readouterr()
    assert main(["bpd", str(run), "--n", "6", "--timesteps", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 6 and printed["timesteps_sampled"] == 4 and printed["T"] == 20
    assert printed["bpd"] > 0 and printed["stderr"] > 0 and printed["variance"] == "fixed_small"
    with pytest.raises(SystemExit):
        main(["bpd", str(run), "--timesteps", "21"])
    assert "--timesteps 21 is outside [2, 20]" in capsys.readouterr().err
