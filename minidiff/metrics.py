"""Sample quality: a small digit classifier trained with minidiff itself, and the scores read
off its features — Fréchet distance (FID), Kernel Inception Distance (KID) with its standard
error, Inception Score, k-NN precision/recall and the fraction of samples read confidently.

The published scores use an ImageNet Inception-v3; 28×28 digits are scored here with
:class:`DigitClassifier` instead (two 3×3 convolutions of 32 and 64 channels, each pooled, and a
128-wide feature layer), trained on real images of the dataset the diffusion model learnt. The
numbers are therefore comparable between runs scored with the same classifier — same dataset,
architecture, training steps and seed — not with scores published for other networks.

Which real images play which part (:func:`real_image_splits`): three disjoint sets. The classifier
trains on the first; the samples are compared with the *reference* images; the *floor* images are
real digits scored exactly like samples, against the same reference at the same N: the best score
a sample set of that size can hope for. Neither the reference nor the floor was seen by the
classifier, so real digits and samples are both unseen to it, and its held-out accuracy is
measured on them. Where the dataset's train split is on disk, the classifier trains on it and
the test split's halves are the reference and the floor (N up to 5,000). Where only the test
split is at hand (``../shared/data/mnist`` holds t10k only), a fixed permutation of it is cut
into 5,000 classifier / 2,500 reference / 2,500 floor images (N up to 2,500); the output says so.
The diffusion model may itself have trained on all of t10k then.

Reading the scores at small N: FID is biased upwards, by roughly c/N (Chong & Forsyth 2020), as
both covariances are estimated from N feature vectors; only a score beside its floor at the same
N means anything. KID is the unbiased estimate of a squared MMD, so at any N its expectation is 0
for samples of the data's distribution; it comes with a standard error, and can be slightly
negative. IS, precision and recall are read against their floors too.

The classifier is trained once (a few minutes on two CPU cores) and cached in
``$XDG_CACHE_HOME/minidiff/classifier-<dataset>-<architecture>.npz`` (by default ``~/.cache/minidiff``),
together with the settings it was trained with and its held-out accuracy. A cache file trained
with other settings or images is replaced; an unreadable one too, with a warning naming it: a cache
holds nothing that retraining cannot rebuild.

The classifier, the real images it and the scores use, and the scores themselves are one
yardstick, kept in one place.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from . import functional as F
from . import nn
from .autograd import Tensor, no_grad
from .backend import device_of, performance_settings, to_device
from .batching import Batcher
from .datasets import DataError, load_dataset
from .datasets import cache_dir as default_cache_dir
from .files import load_npz, save_npz
from .optim import Adam

NUM_CLASSES = 10  # MNIST digits and Fashion-MNIST garments alike
IMAGE_SHAPE = (1, 28, 28)  # what the classifier reads: one 28×28 grey image
FEATURE_DIM = 128
ARCHITECTURE = "conv32-pool-conv64-pool-fc128"  # names the cache file: other classifiers keep their own
TRAIN_STEPS = 1500
BATCH_SIZE = 128
LEARNING_RATE = 2e-3
MAX_SHIFT = 2  # training images are shifted by up to this many pixels each way (augmentation)
# Only t10k on disk: a fixed permutation of it is cut into the classifier's images, then the reference,
# then the floor (real_image_splits).
T10K_SPLIT = (5000, 2500, 2500)
SPLIT_SEED = 0


class DigitClassifier(nn.Module):
    """conv 3×3 (1→32) → ReLU → avg-pool 2 → conv 3×3 (32→64) → ReLU → avg-pool 2 → linear 3136→128 → ReLU
    → linear 128→10.

    The 128 post-ReLU activations before the last layer are the features the scores compare,
    as FID takes the last pooling layer of Inception-v3 (Heusel et al. 2017).
    """

    def __init__(self, rng=None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, rng=rng)  # 28 → 28, pooled to 14
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, rng=rng)  # 14 → 14, pooled to 7
        self.fc = nn.Linear(64 * 7 * 7, FEATURE_DIM, rng=rng)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES, rng=rng)
        self.accuracy = None  # on the held-out images, set by feature_classifier

    def features(self, x):
        h = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        h = F.avg_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(F.flatten(h, 1)))

    def forward(self, x):
        """Class logits."""
        return self.head(self.features(x))

    def embed(self, images, batch_size: int = 500, progress: bool = False):
        """(features (N, 128), class probabilities (N, 10)), float64 NumPy, of images (N, 1, 28, 28) in [−1, 1]."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"the feature classifier takes images of shape (N, 1, 28, 28), got {images.shape}")
        device = device_of(self.fc.weight.data)
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="features", unit="batch", leave=False, dynamic_ncols=True)
        features, probs = [], []
        with no_grad():
            for start in starts:
                x = to_device(images[start : start + batch_size].astype(np.float32), device)
                h = self.features(Tensor(x))
                features.append(h.numpy().astype(np.float64))
                probs.append(F.softmax(self.head(h), axis=-1).numpy().astype(np.float64))
        return np.concatenate(features), np.concatenate(probs)


def random_shifts(images, rng, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Each image (N, C, H, W) moved by its own random offset in [−max_shift, max_shift]² pixels,
    the background (−1) filling in: the light augmentation the classifier trains with."""
    n, _, height, width = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)), constant_values=-1)
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    rows = dy[:, None] + np.arange(height)[None, :]  # (N, H) rows of the padded image each output row reads
    cols = dx[:, None] + np.arange(width)[None, :]
    return padded[np.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)


def train_classifier(images, labels, steps: int = TRAIN_STEPS, seed: int = 0, progress: bool = False) -> DigitClassifier:
    """A :class:`DigitClassifier` trained for ``steps`` Adam steps of cross-entropy on batches of 128
    randomly shifted images (:func:`random_shifts`), the learning rate decayed to 0 on a cosine."""
    rng = np.random.default_rng(seed)
    model = DigitClassifier(rng=rng)
    optimizer = Adam(model, lr=LEARNING_RATE)
    batches = Batcher(images, labels, batch_size=min(BATCH_SIZE, len(images)), rng=rng)
    steps_iter = range(steps)
    if progress:
        from tqdm import tqdm

        steps_iter = tqdm(steps_iter, desc="training classifier", unit="step", leave=False, dynamic_ncols=True)
    with performance_settings():  # a training loop, tuned as Trainer's is
        for step in steps_iter:
            x, y = next(batches)
            optimizer.lr = LEARNING_RATE * 0.5 * (1 + np.cos(np.pi * step / steps))
            loss = F.cross_entropy(model(Tensor(random_shifts(x, rng))), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def classifier_accuracy(classifier: DigitClassifier, images, labels) -> float:
    """The fraction of ``images`` whose most probable class is their label."""
    _, probs = classifier.embed(images)
    return float(np.mean(probs.argmax(axis=1) == labels))


class RealImages:
    """The real images of an evaluation (:func:`real_image_splits`), three disjoint sets: the classifier's
    training images and labels, the reference images the samples are compared with, and the floor
    images scored like samples; the labels of the last two (``held_out_labels``, reference then
    floor) measure the classifier; ``source`` is a line saying where they came from."""

    def __init__(self, train, train_labels, reference, floor, held_out_labels, source):
        self.train, self.train_labels, self.reference, self.floor = train, train_labels, reference, floor
        self.held_out_labels, self.source = held_out_labels, source

    @property
    def max_n(self) -> int:
        """The largest N an evaluation can compare: as many reference as floor images are needed."""
        return min(len(self.reference), len(self.floor))


def real_image_splits(dataset: str = "mnist", data_dir=None) -> RealImages:
    """The three disjoint sets of real images of an evaluation (module docstring).

    With a train split on disk the classifier trains on it and the test split is cut into halves,
    reference | floor. With the test split alone (MNIST's t10k here), a fixed permutation of it
    (seed :data:`SPLIT_SEED`, so both writer populations of t10k are in every part) is cut into
    :data:`T10K_SPLIT` = classifier | reference | floor.
    """
    test, test_labels = load_dataset(dataset, "test", data_dir, download=False)
    try:  # "all" is train then test, and refuses (rather than falls back) when train is absent
        everything, labels = load_dataset(dataset, "all", data_dir, download=False)
    except DataError:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(test))
        sizes = np.cumsum([round(len(test) * part / sum(T10K_SPLIT)) for part in T10K_SPLIT])
        train, reference, floor = np.split(order, sizes[:2])
        source = (f"{dataset}: only the test (t10k) split is on disk; a fixed permutation of it cut into "
                  f"{len(train)} classifier / {len(reference)} reference / {len(floor)} floor images")
        return RealImages(test[train], test_labels[train], test[reference], test[floor],
                          test_labels[np.concatenate([reference, floor])], source)
    half = len(test) // 2
    source = f"{dataset}: classifier on the train split, reference test[:{half}], floor test[{half}:]"
    return RealImages(everything[: -len(test)], labels[: -len(test)], test[:half], test[half:], test_labels, source)


def feature_classifier(dataset: str = "mnist", data_dir=None, cache_dir=None, train_steps: int = TRAIN_STEPS,
                       seed: int = 0, progress: bool = False, real: RealImages | None = None) -> DigitClassifier:
    """The :class:`DigitClassifier` of ``dataset``: from the cache, else trained and cached.

    It trains on ``real.train`` (:func:`real_image_splits` by default) and its ``.accuracy`` is
    measured on the reference and floor images, which it never saw. The cache file
    ``<cache_dir>/classifier-<dataset>-<ARCHITECTURE>.npz`` is written atomically (named by the
    network, so minidiff versions with other classifiers keep their own); it is used only when it
    was trained with the same ``train_steps``, ``seed`` and images (a digest of them), and retrained
    with a warning when unreadable.
    """
    real = real_image_splits(dataset, data_dir) if real is None else real
    path = Path(cache_dir or default_cache_dir()) / f"classifier-{dataset}-{ARCHITECTURE}.npz"
    digest = hashlib.sha256(np.ascontiguousarray(real.train).tobytes() + real.train_labels.tobytes()).hexdigest()
    settings = {"dataset": dataset, "architecture": ARCHITECTURE, "train_steps": train_steps, "seed": seed,
                "train_images": digest[:16]}
    if path.exists():
        try:
            return _load_classifier(path, settings)
        except _OtherSettings:
            pass
        except (ValueError, KeyError, RuntimeError):  # not an .npz, no settings, other layer shapes
            warnings.warn(f"classifier cache {path} is unreadable or of another classifier; retraining it")
    classifier = train_classifier(real.train, real.train_labels, train_steps, seed, progress)
    held_out = np.concatenate([real.reference, real.floor])
    classifier.accuracy = classifier_accuracy(classifier, held_out, real.held_out_labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz({**classifier.state_dict(), "settings": json.dumps({**settings, "accuracy": classifier.accuracy})},
                       path)
    return classifier


class _OtherSettings(Exception):
    """A readable cache file trained with other settings than those asked for."""


def _load_classifier(path: Path, settings: dict) -> DigitClassifier:
    state = load_npz(path)  # ValueError naming the file when it is not an .npz
    saved = json.loads(str(state.pop("settings")))
    if any(saved.get(key) != value for key, value in settings.items()):
        raise _OtherSettings
    classifier = DigitClassifier()
    classifier.load_state_dict(state)
    classifier.accuracy = float(saved["accuracy"])
    return classifier.eval()


# --------------------------------------------------------------------- scores
def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix, by eigendecomposition."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (Heusel et al. 2017, Eq. 2):

    .. math:: d^2 = \\lVert μ_1 − μ_2 \\rVert^2 + \\mathrm{Tr}\\big(Σ_1 + Σ_2 − 2 (Σ_1 Σ_2)^{1/2}\\big)

    Σ1Σ2 is not symmetric, but it has the eigenvalues of the symmetric PSD matrix √Σ1 Σ2 √Σ1
    (AB and BA share them, with A = √Σ1, B = √Σ1 Σ2), so Tr (Σ1Σ2)^{1/2} is the sum of the square
    roots of that matrix's eigenvalues: two ``eigh`` calls, no general matrix square root.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(distance, 0.0))  # rounding must not turn a distance of 0 negative


def fid_from_features(a, b) -> float:
    """FID: the Fréchet distance of Gaussians fitted (mean, unbiased covariance) to the rows of ``a`` and ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors on each side, got {len(a)} and {len(b)}")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


KID_GROUPS = 10  # the groups KID's standard error leaves out one at a time (delete-a-group jackknife)


def polynomial_kernel(a, b) -> np.ndarray:
    """k(x, y) = (xᵀy/d + 1)³ for every row x of ``a`` and y of ``b`` (d features): KID's kernel
    (Bińkowski et al. 2018, "Demystifying MMD GANs"), the cubic polynomial kernel."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_u(sum_xx, sum_yy, sum_xy, m, n):
    """MMD²_u from its three kernel sums (the first two without their diagonals) over m x's and n y's."""
    return sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * sum_xy / (m * n)


def mmd2_unbiased(x, y) -> float:
    """The unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012, Lemma 6):

    .. math:: \\mathrm{MMD}^2_u = \\frac{1}{m(m-1)} \\sum_{i \\ne j} k(x_i, x_j)
              + \\frac{1}{n(n-1)} \\sum_{i \\ne j} k(y_i, y_j) − \\frac{2}{mn} \\sum_{i, j} k(x_i, y_j)

    with :func:`polynomial_kernel`. Its expectation is the MMD² of the two distributions, 0 when they
    are equal, so it is negative about half the time for samples of one distribution.
    """
    k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    return float(_mmd2_u(k_xx.sum() - np.trace(k_xx), k_yy.sum() - np.trace(k_yy), polynomial_kernel(x, y).sum(),
                         len(x), len(y)))


def kernel_inception_distance(a, b, groups: int = KID_GROUPS) -> tuple[float, float]:
    """KID of feature sets ``a`` and ``b`` (Bińkowski et al. 2018): :func:`mmd2_unbiased` of all their
    rows, and its standard error.

    The error is the delete-a-group jackknife's (Efron & Tibshirani 1993, §11.5): each set is cut in
    order into ``groups`` parts (fewer when a part would hold fewer than 2 rows), MMD²_u recomputed
    with part g of both left out, for each g, and SE² = (G − 1)/G · Σ_g (θ_(g) − θ̄)². The sums of the
    kernel matrices by pairs of parts give every θ_(g) at the cost of one MMD²_u. The estimate is
    unbiased at every N, unlike FID, and is negative about half the time for two samples of one
    distribution.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    groups = min(groups, len(a) // 2, len(b) // 2)
    if groups < 2:
        raise ValueError(f"KID needs at least 4 feature vectors on each side, got {len(a)} and {len(b)}")
    # one-hot group membership (G, rows): part g of a set is rows g·len/G … (g+1)·len/G
    in_a = np.eye(groups)[np.repeat(np.arange(groups), [len(p) for p in np.array_split(a, groups)])].T
    in_b = np.eye(groups)[np.repeat(np.arange(groups), [len(p) for p in np.array_split(b, groups)])].T
    k_aa, k_bb = polynomial_kernel(a, a), polynomial_kernel(b, b)
    np.fill_diagonal(k_aa, 0)
    np.fill_diagonal(k_bb, 0)
    # kernel sums by pairs of parts (G, G), and each part's sums with everything, its own pairs counted once
    sums = [in_a @ k_aa @ in_a.T, in_b @ k_bb @ in_b.T, in_a @ polynomial_kernel(a, b) @ in_b.T]
    whole = [s.sum() for s in sums]
    left_out = [s.sum(axis=1) + s.sum(axis=0) - np.diag(s) for s in sums]
    m_g, n_g = in_a.sum(axis=1), in_b.sum(axis=1)
    thetas = _mmd2_u(*(w - lo for w, lo in zip(whole, left_out)), len(a) - m_g, len(b) - n_g)
    se = np.sqrt((groups - 1) / groups * np.sum((thetas - thetas.mean()) ** 2))
    return float(_mmd2_u(*whole, len(a), len(b))), float(se)


def inception_score(probs, splits: int = 1) -> float:
    """IS = exp(E_x KL(p(y|x) ‖ p(y))) (Salimans et al. 2016, §4), averaged over ``splits`` equal parts.

    ``probs`` (N, K) are the classifier's p(y|x); p(y) is their mean over each part. It lies in
    [1, K]: K for confident predictions spread evenly over the K classes, 1 when all agree.
    """
    probs = np.asarray(probs, np.float64)
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        # 0·log 0 = 0; where p(y|x) > 0, p(y) > 0 too
        log_ratio = np.log(np.where(part > 0, part, 1)) - np.log(np.where(part > 0, marginal, 1))
        scores.append(np.exp(np.mean(np.sum(part * log_ratio, axis=1))))
    return float(np.mean(scores))


def _distance_chunks(a: np.ndarray, b: np.ndarray, chunk: int):
    """Euclidean distances from ``chunk`` rows of ``a`` at a time to all of ``b``: (start, (rows, len(b)))."""
    b_sq = np.sum(b * b, axis=1)
    for start in range(0, len(a), chunk):
        rows = a[start : start + chunk]
        squared = np.sum(rows * rows, axis=1)[:, None] + b_sq[None, :] - 2 * rows @ b.T
        yield start, np.sqrt(np.clip(squared, 0, None))


def _knn_radii(feats: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (position k, as position 0 is itself)."""
    radii = np.empty(len(feats))
    for start, d in _distance_chunks(feats, feats, chunk):
        radii[start : start + len(d)] = np.partition(d, k, axis=1)[:, k]
    return radii


def _in_manifold(queries: np.ndarray, feats: np.ndarray, radii: np.ndarray, chunk: int) -> np.ndarray:
    """For each query, whether it lies in some ball B(φ, radius(φ)) around a row φ of ``feats``."""
    inside = np.empty(len(queries), dtype=bool)
    for start, d in _distance_chunks(queries, feats, chunk):
        inside[start : start + len(d)] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real_feats, fake_feats, k: int = 3, chunk: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eqs. 1–2).

    Each set's manifold is the union of balls around its points, each reaching that point's
    k-th nearest neighbour in the set. Precision is the fraction of fake samples inside the real
    manifold (quality), recall the fraction of real samples inside the fake one (coverage).
    Distances are computed ``chunk`` rows at a time, so memory stays O(chunk · N).
    """
    real, fake = np.asarray(real_feats, np.float64), np.asarray(fake_feats, np.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real)} and {len(fake)}")
    precision = _in_manifold(fake, real, _knn_radii(real, k, chunk), chunk).mean()
    recall = _in_manifold(real, fake, _knn_radii(fake, k, chunk), chunk).mean()
    return float(precision), float(recall)


# Samples come clipped to [−1, 1]; a little slack admits float noise, not images in [0, 255] or [0, 1] by mistake.
SAMPLE_RANGE_SLACK = 1e-3


def check_sample_images(images, source: str = "samples") -> None:
    """Refuse what cannot be scored as digits: not a real float array of shape (N, 1, 28, 28), or
    values that are not finite or outside [−1, 1] (images in [0, 255] or uint8 would score nonsense)."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{source}: expected float images in [-1, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{source}: expected an array of shape (N, 1, 28, 28), got {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError(f"{source}: {int((~np.isfinite(images)).sum())} values are NaN or infinite")
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low < -1 - SAMPLE_RANGE_SLACK or high > 1 + SAMPLE_RANGE_SLACK:
        raise ValueError(f"{source}: values lie in [{low:.4g}, {high:.4g}], expected [-1, 1] "
                         "(the range `sample --npy` writes)")


CONFIDENCE = 0.9  # a sample is read confidently when the classifier's top probability reaches this


def evaluate_samples(images, classifier: DigitClassifier, real_images, k: int = 3, progress: bool = False) -> dict:
    """Every score of ``images`` against ``real_images`` (both (N, 1, 28, 28) in [−1, 1]), as a JSON-ready dict
    (:func:`scores_of_features`)."""
    check_sample_images(images)
    real_feats, _ = classifier.embed(real_images, progress=progress)
    return scores_of_features(real_feats, *classifier.embed(images, progress=progress), classifier.accuracy, k)


def scores_of_features(real_feats, fake_feats, fake_probs, classifier_accuracy=None, k: int = 3) -> dict:
    """Every score of samples whose classifier features and class probabilities are ``fake_feats`` and
    ``fake_probs``, against real images whose features are ``real_feats``, as a JSON-ready dict.

    ``confident`` is the fraction of samples the classifier gives a top probability of at least
    :data:`CONFIDENCE`, whatever the class; ``class_histogram`` counts the samples it puts in each
    class: a mode-dropping model shows empty classes there before its FID says why.
    """
    precision, recall = precision_recall(real_feats, fake_feats, k=k)
    kid, kid_se = kernel_inception_distance(real_feats, fake_feats)
    return {
        "fid": fid_from_features(real_feats, fake_feats),
        "kid": kid,
        "kid_se": kid_se,
        "inception_score": inception_score(fake_probs),
        "precision": precision,
        "recall": recall,
        "confident": float(np.mean(fake_probs.max(axis=1) >= CONFIDENCE)),
        "class_histogram": np.bincount(fake_probs.argmax(axis=1), minlength=NUM_CLASSES).tolist(),
        "classifier_accuracy": classifier_accuracy,
        "n": len(fake_feats),
    }


FLOOR_SCORES = ("fid", "kid", "kid_se", "inception_score", "precision", "recall", "confident")


def evaluate_with_floor(images, classifier: DigitClassifier, real: RealImages, progress: bool = False) -> dict:
    """:func:`evaluate_samples` of ``images`` against the first N reference images, and under ``"floor"``
    the same scores of the first N floor images: real digits the classifier never saw, the best a set
    of N samples can expect. Every score is read against its floor (module docstring)."""
    n = len(images)
    if n > real.max_n:
        raise ValueError(f"{n} images are more than the {real.max_n} real images each of the reference and the "
                         f"floor holds ({real.source})")
    check_sample_images(images)
    reference_feats, _ = classifier.embed(real.reference[:n], progress=progress)
    scores = scores_of_features(reference_feats, *classifier.embed(images, progress=progress), classifier.accuracy)
    floor = scores_of_features(reference_feats, *classifier.embed(real.floor[:n]))
    return {**scores, "floor": {key: floor[key] for key in FLOOR_SCORES}}


__all__ = [
    "DigitClassifier", "train_classifier", "classifier_accuracy", "feature_classifier",
    "frechet_distance", "fid_from_features", "kernel_inception_distance", "mmd2_unbiased", "inception_score",
    "precision_recall", "evaluate_samples", "evaluate_with_floor", "real_image_splits",
]
