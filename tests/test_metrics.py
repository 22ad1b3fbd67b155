"""metrics: Fréchet distance, Inception Score and precision/recall against closed forms and
limiting cases; the feature classifier on MNIST t10k (accuracy, cache); ``eval`` end to end."""
import json
import math
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


def test_fid_needs_two_feature_vectors_on_each_side():
    for a, b in ((np.zeros((1, 3)), np.zeros((5, 3))), (np.zeros((5, 3)), np.zeros((1, 3)))):
        with pytest.raises(ValueError, match="at least 2 feature vectors on each side"):
            metrics.fid_from_features(a, b)
    assert metrics.fid_from_features(np.eye(2), np.eye(2)) == pytest.approx(0, abs=1e-12)  # two rows are enough


def test_fid_fits_the_unbiased_covariance():
    # In one dimension FID = (μ1 − μ2)² + (σ1 − σ2)². Rows [−1, 1] have unbiased variance 2 (biased 1),
    # rows [2, 4, 6] mean 4 and unbiased variance 4 (biased 8/3).
    a, b = np.array([[-1.0], [1.0]]), np.array([[2.0], [4.0], [6.0]])
    assert metrics.fid_from_features(a, b) == pytest.approx(16 + (math.sqrt(2) - 2) ** 2, rel=1e-12)


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


def brute_force_precision_recall(real, fake, k):
    """Kynkäänniemi et al. 2019, Eqs. 1–2 from the full distance matrices: a point's radius is the distance to
    its k-th nearest other point of its own set (column 0 of the sorted row is the point itself)."""
    def in_manifold(queries, feats):
        radii = np.sort(np.linalg.norm(feats[:, None] - feats[None], axis=-1), axis=1)[:, k]
        return (np.linalg.norm(queries[:, None] - feats[None], axis=-1) <= radii).any(axis=1).mean()

    return in_manifold(fake, real), in_manifold(real, fake)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_and_recall_equal_their_definition(k):
    rng = np.random.default_rng(8)
    real, fake = rng.standard_normal((120, 3)), 0.7 * rng.standard_normal((90, 3)) + 1.5
    precision, recall = metrics.precision_recall(real, fake, k=k, chunk=25)
    expected = brute_force_precision_recall(real, fake, k)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    assert (precision, recall) == pytest.approx(expected, abs=1e-12)
    if k == 3:  # Kynkäänniemi et al. 2019's k, the default
        assert metrics.precision_recall(real, fake) == pytest.approx(expected, abs=1e-12)


def test_the_balls_are_closed():
    # Kynkäänniemi et al. 2019, Eq. 1: φ is in the manifold when ‖φ − φ_r‖ ≤ its k-NN radius. Real points 0..3 on
    # a line have radius 1 at k = 1; a sample at −1 lies exactly on the ball around 0, one at −1.5 on none.
    real = np.arange(4.0)[:, None]
    assert metrics.precision_recall(real, np.array([[-1.0], [-1.5]]), k=1)[0] == 0.5


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 1, 28, 28), np.uint8), "expected float images in \\[-1, 1\\], got dtype uint8"),
    (np.zeros((2, 28, 28)), r"expected an array of shape \(N, 1, 28, 28\), got \(2, 28, 28\)"),
    (np.zeros((2, 3, 28, 28)), r"expected an array of shape \(N, 1, 28, 28\), got \(2, 3, 28, 28\)"),
    (np.full((2, 1, 28, 28), np.nan), "1568 values are NaN or infinite"),
    (np.full((2, 1, 28, 28), -1.0011), r"values lie in \[-1.001, -1.001\]"),
    (np.full((2, 1, 28, 28), 1.0011), r"values lie in \[1.001, 1.001\]"),
])
def test_samples_that_cannot_be_scored_are_refused(images, message):
    with pytest.raises(ValueError, match=f"samples: {message}"):
        metrics.check_sample_images(images)


def test_samples_up_to_the_slack_around_minus_1_and_1_are_scored():
    edge = np.full((2, 1, 28, 28), 1 + metrics.SAMPLE_RANGE_SLACK)
    edge[0] = -1 - metrics.SAMPLE_RANGE_SLACK
    metrics.check_sample_images(edge)
    assert metrics.SAMPLE_RANGE_SLACK == 1e-3


class FeatureClassifier:
    """Stands in for the digit classifier: an image's features are its first two pixels and its class
    probabilities one-hot on round(10 × its third pixel) mod 10, so evaluate_samples runs without MNIST."""

    accuracy = 0.875

    def embed(self, images, progress=False):
        flat = images.reshape(len(images), -1)
        classes = np.round(10 * flat[:, 2]).astype(int) % 10
        return flat[:, :2].astype(np.float64), np.eye(10)[classes]


def test_evaluate_samples_scores_the_samples_against_the_real_images():
    # Real features spread out, fake ones crowded in a corner of them: precision and recall differ,
    # and the classes differ too, so real and fake put in each other's place would show everywhere.
    rng = np.random.default_rng(9)
    real = rng.uniform(-1, 1, (60, 1, 28, 28)).astype(np.float32)
    fake = rng.uniform(-0.6, 0.9, (40, 1, 28, 28)).astype(np.float32)
    fake.reshape(40, -1)[:, 2] = 0.3  # every sample in class 3
    classifier = FeatureClassifier()
    scores = metrics.evaluate_samples(fake, classifier, real)  # k = 3 nearest neighbours by default
    (real_feats, _), (fake_feats, fake_probs) = classifier.embed(real), classifier.embed(fake)
    precision, recall = brute_force_precision_recall(real_feats, fake_feats, 3)
    assert precision != recall and recall != brute_force_precision_recall(real_feats, fake_feats, 4)[1]
    assert scores["precision"] == pytest.approx(precision, abs=1e-12)
    assert scores["recall"] == pytest.approx(recall, abs=1e-12)
    assert scores["fid"] == pytest.approx(metrics.fid_from_features(real_feats, fake_feats), rel=1e-12)
    assert scores["inception_score"] == pytest.approx(1.0) and scores["class_histogram"] == [0, 0, 0, 40] + [0] * 6
    assert scores["n"] == 40 and scores["classifier_accuracy"] == 0.875


# --------------------------------------------------------------------- the classifier without MNIST
def bars(n, seed):
    """(n, 1, 28, 28) images of one bright bar, horizontal (class 0) or vertical (class 1), with labels."""
    rng = np.random.default_rng(seed)
    images, labels = np.full((n, 1, 28, 28), -1.0, np.float32), np.arange(n) % 2
    for image, label, at in zip(images, labels, rng.integers(4, 24, n)):
        image[0, at - 2 : at + 2, 4:24] = 1.0 if label == 0 else -1.0
        image[0, 4:24, at - 2 : at + 2] = 1.0 if label == 1 else -1.0
    return images, labels


@pytest.fixture(scope="module")
def bar_images():
    (train, train_labels), (test, test_labels) = bars(64, 0), bars(40, 1)
    return metrics.RealImages(train, train_labels, test[:20], test[20:], test_labels[20:], "bars")


def test_the_classifier_is_trained_cached_and_reused_only_for_the_same_settings(bar_images, tmp_path):
    classifier = metrics.feature_classifier("bars", cache_dir=tmp_path, train_steps=40, real=bar_images)
    assert classifier.accuracy == 1.0  # on the floor images, never trained on
    assert classifier.accuracy == metrics.classifier_accuracy(classifier, bar_images.floor, bar_images.floor_labels)
    features, probs = classifier.embed(bar_images.floor, batch_size=7)  # batches that do not divide N
    assert features.shape == (20, metrics.FEATURE_DIM) and np.all(features >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    path = tmp_path / "classifier-bars.npz"
    settings = json.loads(str(np.load(path)["settings"]))
    assert settings == {"dataset": "bars", "train_steps": 40, "seed": 0, "train_images": 64, "accuracy": 1.0}
    cached = metrics.feature_classifier("bars", cache_dir=tmp_path, train_steps=40, real=bar_images)
    assert cached.accuracy == 1.0 and np.array_equal(cached.fc.weight.data, classifier.fc.weight.data)
    stamp = path.stat().st_mtime_ns
    other = metrics.feature_classifier("bars", cache_dir=tmp_path, train_steps=41, real=bar_images)
    assert path.stat().st_mtime_ns != stamp and not np.array_equal(other.fc.weight.data, classifier.fc.weight.data)
    path.write_text("not an archive")
    with pytest.warns(UserWarning, match=f"classifier cache {path} is unreadable"):
        metrics.feature_classifier("bars", cache_dir=tmp_path, train_steps=40, real=bar_images)
    with pytest.raises(ValueError, match=r"images of shape \(N, 1, 28, 28\), got \(3, 28, 28\)"):
        classifier.embed(np.zeros((3, 28, 28)))


def test_the_classifier_is_the_documented_network_trained_in_batches_of_128(monkeypatch):
    # conv 3×3/2 (1→16) → conv 3×3/2 (16→32) → linear 1568→128 → linear 128→10; the features are the 128.
    classifier = metrics.DigitClassifier()
    shapes = {name: value.shape for name, value in classifier.state_dict().items()}
    assert shapes == {"conv1.weight": (16, 1, 3, 3), "conv1.bias": (16,), "conv2.weight": (32, 16, 3, 3),
                      "conv2.bias": (32,), "fc.weight": (128, 1568), "fc.bias": (128,), "head.weight": (10, 128),
                      "head.bias": (10,)}
    assert [(c.stride, c.padding) for c in (classifier.conv1, classifier.conv2)] == [(2, 1), (2, 1)]
    sizes = []

    class Recording(metrics.Batcher):
        def __init__(self, *args, batch_size, **kwargs):
            sizes.append(batch_size)
            super().__init__(*args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(metrics, "Batcher", Recording)
    images, labels = bars(130, 2)
    seeded = metrics.train_classifier(images, labels, steps=1)
    assert sizes == [128]
    np.testing.assert_array_equal(seeded.fc.weight.data, metrics.train_classifier(images, labels, 1, seed=0).fc.weight.data)


def test_real_image_splits_without_mnist(tmp_path, monkeypatch):
    # The toy dataset of test_data: 6 training images and 4 test images.
    from test_data import Toy
    from minidiff import datasets

    toy = Toy(tmp_path)
    monkeypatch.setitem(datasets.DATASETS, "toy", toy.info)
    test_only = metrics.real_image_splits("toy", toy.copy("test", tmp_path / "t"))
    assert len(test_only.train) == len(test_only.reference) == len(test_only.floor) == 2
    np.testing.assert_array_equal(test_only.train, test_only.reference)
    assert "only the test (t10k) split" in test_only.source
    both = metrics.real_image_splits("toy", toy.copy("train", toy.copy("test", tmp_path / "b")))
    assert len(both.train) == 6 and both.train_labels.tolist() == list(range(6))
    np.testing.assert_array_equal(both.floor, test_only.floor)
    assert both.floor_labels.tolist() == [2, 3] and "classifier on the train split" in both.source


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
