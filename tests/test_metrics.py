"""metrics: Fréchet distance, KID, Inception Score and precision/recall against closed forms and
limiting cases; the feature classifier on MNIST t10k (accuracy, cache, the three disjoint splits);
the yardstick's ranking of real, degraded and noise images; ``eval`` end to end."""
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from minidiff import metrics
from minidiff.__main__ import main
from minidiff.checkpoint import build_model
from minidiff.files import load_npz as load_state_dict_file, save_npz as save_state_dict

MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST t10k not found at {MNIST_DIR}")
pytestmark = pytest.mark.filterwarnings("ignore:mnist train files not found")  # only t10k is at hand
QUICK_STEPS = 120  # enough for ≥ 93 % held-out accuracy and the ranking; the default trains longer


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


# --------------------------------------------------------------------- KID
def test_mmd2_unbiased_matches_the_direct_double_sum():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / (7 * 5)
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def repeated_kids(rng, shift, repeats=200):
    """(KID, s.e.) of `repeats` independent pairs of 200 Gaussian feature vectors, the second shifted."""
    return np.array([metrics.kernel_inception_distance(rng.standard_normal((200, 8)),
                                                       rng.standard_normal((200, 8)) + shift)
                     for _ in range(repeats)]).T


def test_kid_is_unbiased_for_one_distribution_and_its_standard_error_is_the_spread_of_repeats():
    rng = np.random.default_rng(12)
    kids, errors = repeated_kids(rng, 0.0)
    assert abs(kids.mean()) < 3 * kids.std() / np.sqrt(len(kids))  # E[KID] = 0: no small-n bias
    assert (kids < 0).mean() > 0.25  # an unbiased estimate of 0 goes negative
    # the jackknife errs on the safe side where the distributions are equal (a degenerate U-statistic) …
    assert kids.std() < errors.mean() < 2 * kids.std()
    kids, errors = repeated_kids(rng, 0.3)
    assert errors.mean() == pytest.approx(kids.std(), rel=0.2)  # … and is the estimate's spread elsewhere


def test_kid_is_mmd2_unbiased_of_all_rows():
    rng = np.random.default_rng(15)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((37, 4)) + 0.2
    assert metrics.kernel_inception_distance(a, b)[0] == pytest.approx(metrics.mmd2_unbiased(a, b), rel=1e-12)


def test_kid_grows_with_the_shift_and_needs_two_subsets_of_two():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((500, 8))
    near, far = (metrics.kernel_inception_distance(a, rng.standard_normal((500, 8)) + shift) for shift in (0.5, 1.5))
    assert near[0] - 3 * near[1] > 0 and far[0] - 3 * far[1] > near[0] + 3 * near[1]
    with pytest.raises(ValueError, match="KID needs at least 4 feature vectors on each side, got 3 and 500"):
        metrics.kernel_inception_distance(a[:3], a)


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
    assert classifier.accuracy >= 0.93


@needs_mnist
@pytest.mark.slow
def test_classifier_with_the_default_steps_reaches_99_percent(tmp_path):
    assert metrics.feature_classifier("mnist", MNIST_DIR, tmp_path).accuracy >= 0.99


def test_random_shifts_move_each_image_within_the_frame():
    images = -np.ones((50, 1, 28, 28), np.float32)
    images[:, 0, 13, 13] = 1  # one bright pixel in the middle
    shifted = metrics.random_shifts(images, np.random.default_rng(14), max_shift=2)
    rows, cols = np.nonzero(shifted[:, 0] == 1)[1:]
    assert shifted.shape == images.shape and (shifted == 1).sum() == 50 and (shifted[shifted != 1] == -1).all()
    assert set(rows) == set(cols) == set(range(11, 16))  # every offset in [-2, 2] turns up


@needs_mnist
def test_classifier_cache_round_trip_and_other_settings_retrain(classifier, cache_home, monkeypatch):
    path = cache_home / "minidiff" / f"classifier-mnist-{metrics.ARCHITECTURE}.npz"
    assert path.is_file()
    monkeypatch.setattr(metrics, "train_classifier", lambda *a, **k: pytest.fail("retrained despite the cache"))
    again = metrics.feature_classifier("mnist", MNIST_DIR, path.parent, train_steps=QUICK_STEPS)
    assert again.accuracy == classifier.accuracy
    for (name, a), (_, b) in zip(classifier.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(pytest.fail.Exception, match="retrained despite the cache"):  # other settings: retrained
        metrics.feature_classifier("mnist", MNIST_DIR, path.parent, train_steps=QUICK_STEPS, seed=1)


@needs_mnist
def test_corrupt_cache_is_named_and_retrained(classifier, cache_home, tmp_path, monkeypatch):
    path = tmp_path / f"classifier-mnist-{metrics.ARCHITECTURE}.npz"
    path.write_bytes(b"not an npz")
    monkeypatch.setattr(metrics, "train_classifier", lambda *a, **k: classifier)
    message = f"classifier cache {path} is unreadable or of another classifier"
    with pytest.warns(UserWarning, match=re.escape(message)):
        metrics.feature_classifier("mnist", MNIST_DIR, tmp_path, train_steps=QUICK_STEPS)
    assert metrics.feature_classifier("mnist", MNIST_DIR, tmp_path, train_steps=QUICK_STEPS).accuracy == classifier.accuracy


@pytest.fixture(scope="module")
def yardstick():
    """benchmarks/yardstick.py, whose ranking the test below asserts."""
    spec = importlib.util.spec_from_file_location("yardstick", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "yardstick.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_mnist
def test_the_yardstick_ranks_real_blurred_noised_and_noise_with_gaps_wider_than_the_errors(classifier, yardstick):
    """real digits < lightly blurred or noised < heavily noised < noise, in KID (each gap more than twice
    its standard error) and FID; real digits the classifier never saw land at the floor."""
    real = metrics.real_image_splits("mnist", MNIST_DIR)
    scores = yardstick.ranking(classifier, real, n=1000)
    real_digits = scores["real digits"]
    floor = real_digits["floor"]

    assert abs(real_digits["kid"] - floor["kid"]) < 2 * np.hypot(real_digits["kid_se"], floor["kid_se"])
    for kid in (real_digits, floor):
        assert abs(kid["kid"]) < 2 * kid["kid_se"]  # KID is unbiased: real digits score 0
    assert real_digits["fid"] < 1.5 * floor["fid"]  # FID's small-N bias keeps both above 0
    order = [("real digits",), ("blurred 3×3", "noised σ = 0.2"), ("noised σ = 0.8",), ("uniform noise",)]
    for betters, worses in zip(order, order[1:]):
        for better in betters:
            for worse in worses:
                low, high = scores[better], scores[worse]
                assert high["kid"] - low["kid"] > 2 * np.hypot(high["kid_se"], low["kid_se"]), (worse, better)
                assert high["fid"] > low["fid"], (worse, better)
    assert scores["uniform noise"]["recall"] < 0.05 and scores["uniform noise"]["confident"] < real_digits["confident"]
    assert sum(real_digits["class_histogram"]) == real_digits["n"] == 1000
    with pytest.raises(ValueError, match="2501 images are more than the 2500 real images"):
        metrics.evaluate_with_floor(np.zeros((2501, 1, 28, 28), np.float32), classifier, real)


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
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads(out.read_text())
    scores = {"fid", "kid", "kid_se", "inception_score", "precision", "recall", "confident"}
    assert scores | {"class_histogram", "classifier_accuracy"} <= printed.keys()
    assert printed["n"] == 16 and printed["steps"] == 5 and printed["dataset"] == "mnist" and printed["fid"] > 0
    assert printed["sampler"] == "dpm-solver++"
    # the floor: real held-out digits scored the same way at the same N, better than 2-step samples
    assert set(printed["floor"]) == scores
    assert 0 < printed["floor"]["fid"] < printed["fid"] and printed["floor"]["kid"] < printed["kid"]
    assert "only the test (t10k) split" in printed["real_images"]
    assert re.search(r"KID +-?[0-9.]+ ± [0-9.]+ +floor +-?[0-9.]+ ± [0-9.]+", captured.err), captured.err

    # the samples `sample` saves with the same seed score the same
    samples = tmp_path / "samples.npy"
    assert main(["sample", str(run), "--n", "16", "--sampler", "dpm-solver++", "--steps", "5", "--npy", str(samples),
                 "--out", str(tmp_path / "grid.png")]) == 0
    capsys.readouterr()
    assert main(["eval", "--samples", str(samples), "--data-dir", str(MNIST_DIR),
                 "--classifier-steps", str(QUICK_STEPS)]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(printed["fid"])
    # --n with --samples scores the first N of them, and refuses more than the file holds
    np.save(tmp_path / "first8.npy", np.load(samples)[:8])
    scores = []
    for argv in (["--samples", str(samples), "--n", "8"], ["--samples", str(tmp_path / "first8.npy")]):
        assert main(["eval", *argv, "--data-dir", str(MNIST_DIR), "--classifier-steps", str(QUICK_STEPS)]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0]["n"] == 8 and scores[0]["fid"] == scores[1]["fid"] != pytest.approx(printed["fid"])
    expect_error(capsys, ["eval", "--samples", str(samples), "--n", "17", "--data-dir", str(MNIST_DIR)],
                 f"--n 17 asks for more than the 16 images --samples {samples} holds")


@needs_mnist
def test_eval_guidance_scores_what_sample_guidance_draws(run, classifier, cache_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    guided = tmp_path / "guided"
    assert main(["train", "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--timesteps", "20",
                 "--schedule", "cosine", "--limit-data", "64", "--data-dir", str(MNIST_DIR), "--num-classes", "10",
                 "--p-uncond", "0.5", "--sample-every", "0", "--out", str(guided)]) == 0
    capsys.readouterr()
    quick = ["--n", "16", "--steps", "5", "--classifier-steps", str(QUICK_STEPS)]
    assert main(["eval", str(guided), *quick, "--guidance", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["guidance"] == 2.0
    samples = tmp_path / "guided.npy"
    assert main(["sample", str(guided), "--n", "16", "--sampler", "dpm-solver++", "--steps", "5", "--guidance", "2",
                 "--npy", str(samples), "--out", str(tmp_path / "grid.png")]) == 0
    capsys.readouterr()
    assert main(["eval", "--samples", str(samples), "--data-dir", str(MNIST_DIR),
                 "--classifier-steps", str(QUICK_STEPS)]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(printed["fid"])
    expect_error(capsys, ["eval", str(run), *quick, "--guidance", "2"],
                 "--guidance needs a checkpoint trained with --num-classes and --p-uncond; this one is unconditional")
    expect_error(capsys, ["eval", str(guided), *quick, "--guidance", "nan"], "--guidance must be a finite number")


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


@needs_mnist
def test_finite_weights_that_make_nan_images_are_refused_naming_the_checkpoint_and_the_step(run, tmp_path, capsys):
    """An overflowing first convolution (weights 1e38, finite) makes the model's output NaN at the first step:
    ``sample``, ``eval`` and ``figures`` each refuse in one line and write nothing."""
    flat = load_state_dict_file(run / "checkpoint.npz")
    for prefix in ("model.", "ema.shadow."):
        flat[prefix + "input_blocks.0.0.weight"] = np.full_like(flat[prefix + "input_blocks.0.0.weight"], 1e38)
    folder = tmp_path / "overflow"
    folder.mkdir()
    save_state_dict(flat, folder / "checkpoint.npz")
    message = (f"checkpoint {folder / 'checkpoint.npz'} makes non-finite images: the model returned 3136 NaN or "
               "infinite values (of 3136) at timestep t=19; sampling stopped; nothing written")
    commands = [["sample", str(folder), "--n", "4", "--steps", "5", "--npy", str(tmp_path / "never" / "s.npy")],
                ["eval", str(folder), "--n", "4", "--steps", "5", "--json", str(tmp_path / "never" / "s.json")]]
    if importlib.util.find_spec("matplotlib"):
        commands.append(["figures", str(folder), "--n", "4", "--steps", "5", "--out", str(tmp_path / "never")])
    for argv in commands:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(argv)
        lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip() and "%|" not in line]
        assert info.value.code == 2 and len(lines) == 1 and message in lines[0], lines  # the progress bar aside
    assert sorted(path.name for path in folder.iterdir()) == ["checkpoint.npz"] and not (tmp_path / "never").exists()


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
    assert (len(real.train), len(real.reference), len(real.floor)) == metrics.T10K_SPLIT == (5000, 2500, 2500)
    assert real.max_n == 2500 and len(real.held_out_labels) == 5000
    parts = [{image.tobytes() for image in part} for part in (real.train, real.reference, real.floor)]
    assert len(set().union(*parts)) == 10_000  # t10k's images are all distinct: the parts are disjoint
    assert np.bincount(real.train_labels).min() > 400 and np.bincount(real.held_out_labels).min() > 400


@needs_mnist
def test_eval_refuses_more_samples_than_the_split_holds_before_drawing_them(run, capsys, monkeypatch):
    monkeypatch.setattr("minidiff.commands.evaluate._draw", lambda *a: pytest.fail("sampled before refusing --n"))
    expect_error(capsys, ["eval", str(run), "--n", "2501"], "--n 2501 is more than the 2500 real images")


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
