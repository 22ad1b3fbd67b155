"""Tests of minidiff.datasets, batching, toy and files: the IDX reader, the data directory chain, checksums, downloads
(from file:// mirrors, never the network), the t10k fallback, the Batcher and the toy sets."""

import dataclasses
import gzip
import hashlib
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from minidiff import batching, datasets, files, idx
from minidiff import toy as toy_sets
from minidiff.datasets import DataError, DataWarning, load_dataset, read_idx

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


# ---------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray, type_code: int | None = None) -> bytes:
    """Encode ``array`` as IDX: the magic, big-endian sizes, big-endian data."""
    if type_code is None:
        type_code = next(c for c, dt in idx.IDX_DTYPES.items() if dt.newbyteorder("=") == array.dtype)
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(idx.IDX_DTYPES[type_code]).tobytes()


def write(path: Path, payload: bytes) -> Path:
    """Write ``payload``, gzipped when the name ends in .gz."""
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Let urlopen reach file:// URLs only: no test may touch the network."""
    real_urlopen = urllib.request.urlopen

    def urlopen(url, *args, **kwargs):
        if not url.startswith("file://"):
            raise urllib.error.URLError("network disabled in tests")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no data environment variables, so the chain is predictable."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINIDIFF_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "home"


class Toy:
    """A tiny registered dataset 'toy' (train: 6 images, test: 4) whose archives sit in a
    'mirror' directory, reachable as a file:// URL."""

    counts = {"train": 6, "test": 4}

    def __init__(self, root: Path):
        self.mirror = root / "mirror"
        self.mirror.mkdir()
        rng = np.random.default_rng(0)
        files = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            n = self.counts[split]
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            images[0, 0, :2] = (0, 255)  # so both ends of [−1, 1] occur
            for kind, array in (("images-idx3", images), ("labels-idx1", np.arange(n, dtype=np.uint8))):
                name = f"{prefix}-{kind}-ubyte"
                payload = idx_bytes(array)
                archive = write(self.mirror / f"{name}.gz", payload).read_bytes()
                files[name] = (md5(archive), md5(payload))
        self.info = datasets.DatasetInfo("toy", (self.mirror.as_uri() + "/",), datasets._splits(files))

    def copy(self, split: str, directory: Path) -> Path:
        """Put ``split``'s two archives into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for file in self.info.splits[split]:
            (directory / file.archive_name).write_bytes((self.mirror / file.archive_name).read_bytes())
        return directory


@pytest.fixture
def toy(tmp_path, monkeypatch, home):
    toy = Toy(tmp_path)
    monkeypatch.setitem(datasets.DATASETS, "toy", toy.info)
    return toy


def offline(toy: Toy, monkeypatch) -> None:
    """Point the toy dataset at a mirror that does not exist."""
    dead = dataclasses.replace(toy.info, mirrors=((toy.mirror / "gone").as_uri() + "/",))
    monkeypatch.setitem(datasets.DATASETS, "toy", dead)


# ---------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = np.arange(-7, 23).reshape(2, 3, 5).astype(dtype)  # uint8 wraps the negatives
    path = write(tmp_path / f"x.idx{suffix}", idx_bytes(array))
    back = read_idx(path)
    assert back.dtype == dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # writable, not a view of the file's bytes


def test_truncated_data_names_file_and_byte_counts(tmp_path):
    payload = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    path = write(tmp_path / "short-idx3-ubyte.gz", payload[:-100])
    with pytest.raises(DataError, match=r"short-idx3-ubyte\.gz: expected 7840 bytes of data after the header .* found 7740"):
        read_idx(path)


def test_extra_data_is_refused(tmp_path):
    path = write(tmp_path / "long", idx_bytes(np.zeros(5, np.uint8)) + b"\0")
    with pytest.raises(DataError, match="expected 5 bytes .* found 6"):
        read_idx(path)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00"])
def test_bad_magic_is_refused(tmp_path, magic):
    path = write(tmp_path / "bad", magic + bytes(8))
    with pytest.raises(DataError, match=r"bad.*(magic|0 dimensions)"):
        read_idx(path)


def test_header_shorter_than_its_dimensions(tmp_path):
    path = write(tmp_path / "labels", bytes([0, 0, 8, 3]) + np.array([5], ">u4").tobytes())
    with pytest.raises(DataError, match="declares 3 dimensions .* only 8 bytes"):
        read_idx(path)


def test_wrong_ndim_shows_as_a_size_mismatch(tmp_path):
    labels = idx_bytes(np.arange(60, dtype=np.uint8))
    lying = labels[:3] + bytes([2]) + labels[4:]  # claims 2-D: the first 4 labels become a size
    with pytest.raises(DataError, match=r"shape \(60, 66051\), found 56"):
        read_idx(write(tmp_path / "lying", lying))


def test_too_short_for_magic(tmp_path):
    with pytest.raises(DataError, match="2 bytes, too short"):
        read_idx(write(tmp_path / "tiny", b"\0\0"))


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"x" * 1000)[:20]])
def test_bad_gzip_is_refused(tmp_path, content):
    path = tmp_path / "broken.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"broken\.gz: not a valid gzip file"):
        read_idx(path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------------------------------
# registry and the real MNIST t10k files


def test_registry_names_and_published_md5s():
    mnist = datasets.DATASETS["mnist"].splits
    assert [f.archive_name for f in mnist["train"] + mnist["test"]] == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
    ]
    assert [f.archive_md5 for f in mnist["train"] + mnist["test"]] == [
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c",
    ]
    assert datasets.search_dirs("fashion-mnist")[-1] == Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def shared_mnist():
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the shared MNIST t10k files are not in {SHARED_MNIST}")
    return SHARED_MNIST


def test_real_mnist_t10k(shared_mnist):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit test split must not warn
        images, labels = load_dataset("mnist", "test", data_dir=shared_mnist)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() == 1.0
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(10))
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]


@pytest.mark.parametrize("split", ["auto", "train"])
def test_real_mnist_falls_back_to_t10k_with_one_warning(shared_mnist, split):
    with pytest.warns(DataWarning) as record:
        images, _ = load_dataset("mnist", split, data_dir=shared_mnist)
    assert len(record) == 1
    message = str(record[0].message)
    assert "train files not found" in message and str(shared_mnist) in message
    assert "training on the 10,000 t10k images" in message
    assert ("download failed" in message) == (split == "train")
    assert images.shape == (10000, 1, 28, 28)


def test_real_mnist_all_is_strict(shared_mnist):
    with pytest.raises(DataError, match="mnist train files not found"):
        load_dataset("mnist", "all", data_dir=shared_mnist)


# ---------------------------------------------------------------------------------------
# directory chain


def test_default_chain(home):
    assert datasets.search_dirs("mnist") == [home / ".cache" / "minidiff" / "mnist"]


def test_chain_with_environment(home, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.search_dirs("fashion-mnist") == [
        tmp_path / "data" / "fashion-mnist",
        tmp_path / "xdg" / "minidiff" / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]


def test_explicit_dir_is_the_only_one(home, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    assert datasets.search_dirs("mnist", tmp_path) == [tmp_path]


def test_explicit_missing_dir_is_one_line_error(toy, tmp_path):
    with pytest.raises(DataError, match=r"^data directory .*nowhere does not exist$"):
        load_dataset("toy", data_dir=tmp_path / "nowhere")


def test_each_split_comes_from_the_first_dir_holding_it(toy, home, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    toy.copy("test", tmp_path / "data" / "toy")
    toy.copy("train", home / ".cache" / "minidiff" / "toy")
    images, labels = load_dataset("toy", "all")
    assert images.shape == (10, 1, 28, 28)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]


def test_uncompressed_copies_are_found_and_verified(toy, tmp_path):
    directory = tmp_path / "plain"
    toy.copy("test", directory)
    for archive in directory.glob("*.gz"):
        archive.with_suffix("").write_bytes(gzip.decompress(archive.read_bytes()))
        archive.unlink()
    images, labels = load_dataset("toy", "test", data_dir=directory)
    assert images.shape == (4, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3]


def test_pixels_0_to_255_become_minus_1_to_1_exactly(toy, tmp_path):
    # [0, 255] → [−1, 1] as x/127.5 − 1 (Ho et al. 2020, §3.3): byte 0 is −1 and byte 255 is +1 exactly, and
    # every byte in between lands on its one of 256 evenly spaced levels.
    images, _ = load_dataset("toy", "test", data_dir=toy.copy("test", tmp_path / "d"))
    bytes_ = gzip.decompress((toy.mirror / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    raw = np.frombuffer(bytes_, np.uint8).reshape(4, 1, 28, 28)
    assert images.dtype == np.float32 and images[0, 0, 0, :2].tolist() == [-1.0, 1.0]
    np.testing.assert_allclose(images, raw / 127.5 - 1, rtol=0, atol=1e-7)


def test_recompressed_archive_is_accepted(toy, tmp_path):
    """Debian's .gz files are re-compressed: their archive MD5 differs, their content not."""
    directory = toy.copy("test", tmp_path / "debian")
    archive = directory / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(gzip.compress(gzip.decompress(archive.read_bytes()), compresslevel=1, mtime=1))
    assert md5(archive.read_bytes()) != toy.info.splits["test"][0].archive_md5
    assert load_dataset("toy", "test", data_dir=directory)[0].shape == (4, 1, 28, 28)


def test_local_md5_mismatch_names_file_and_both_sums(toy, tmp_path):
    directory = toy.copy("test", tmp_path / "d")
    write(directory / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.array([9, 9, 9, 9], np.uint8)))
    expected = toy.info.splits["test"][1].content_md5
    found = md5(idx_bytes(np.array([9, 9, 9, 9], np.uint8)))
    with pytest.raises(DataError, match=f"t10k-labels-idx1-ubyte.gz: MD5 .* is {found}, expected {expected}"):
        load_dataset("toy", "test", data_dir=directory)


def test_corrupt_train_files_are_refused_not_skipped(toy, tmp_path):
    directory = toy.copy("test", toy.copy("train", tmp_path / "d"))
    (directory / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: not a valid gzip"):
        load_dataset("toy", data_dir=directory)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist, fashion-mnist"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("mnist", "val")


# ---------------------------------------------------------------------------------------
# the t10k fallback


def test_auto_prefers_train_without_warning(toy, tmp_path):
    directory = toy.copy("test", toy.copy("train", tmp_path / "d"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels = load_dataset("toy", "auto", data_dir=directory)
    assert len(images) == 6


def test_auto_falls_back_without_trying_to_download(toy, tmp_path, monkeypatch):
    directory = toy.copy("test", tmp_path / "d")

    def no_download(*args):
        raise AssertionError("split='auto' must not download while t10k is at hand")

    monkeypatch.setattr(datasets, "_download_file", no_download)
    with pytest.warns(DataWarning, match="training on the 4 t10k images"):
        images, _ = load_dataset("toy", data_dir=directory)
    assert len(images) == 4


def test_train_downloads_before_falling_back(toy, tmp_path):
    directory = toy.copy("test", tmp_path / "d")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, _ = load_dataset("toy", "train", data_dir=directory)
    assert len(images) == 6 and (directory / "train-images-idx3-ubyte.gz").is_file()


def test_train_falls_back_when_download_fails(toy, tmp_path, monkeypatch):
    offline(toy, monkeypatch)
    directory = toy.copy("test", tmp_path / "d")
    with pytest.warns(DataWarning, match="download failed.*training on the 4 t10k images"):
        images, _ = load_dataset("toy", "train", data_dir=directory)
    assert len(images) == 4


# ---------------------------------------------------------------------------------------
# downloads


def test_download_tries_mirrors_in_order_into_the_cache(toy, home, monkeypatch):
    mirrors = ((toy.mirror / "gone").as_uri() + "/",) + toy.info.mirrors
    monkeypatch.setitem(datasets.DATASETS, "toy", dataclasses.replace(toy.info, mirrors=mirrors))
    images, labels = load_dataset("toy", "all")
    cache = home / ".cache" / "minidiff" / "toy"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f.archive_name for split in ("train", "test") for f in toy.info.splits[split]
    )
    assert images.shape == (10, 1, 28, 28)


def test_download_goes_to_the_minidiff_data_folder(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDIFF_DATA", str(tmp_path / "data"))
    assert datasets.download_dataset("toy", "test") == tmp_path / "data" / "toy"
    assert (tmp_path / "data" / "toy" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_download_checksum_mismatch_is_refused_and_leaves_nothing(toy, tmp_path):
    (toy.mirror / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"tampered"))
    directory = tmp_path / "d"
    directory.mkdir()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: MD5 of the download is"):
        load_dataset("toy", "test", data_dir=directory)
    assert list(directory.iterdir()) == []


def test_offline_error_names_files_md5s_mirrors_and_dirs(toy, home, monkeypatch):
    offline(toy, monkeypatch)
    with pytest.raises(DataError) as caught:
        load_dataset("toy", "test")
    message = str(caught.value)
    cache = home / ".cache" / "minidiff" / "toy"
    for file in toy.info.splits["test"]:
        assert f"{file.archive_name}  md5 {file.archive_md5}" in message
    assert toy.mirror.as_uri() in message and f"into {cache}" in message
    assert "download failed" in message
    assert not any(cache.iterdir())  # no half-written file left


def test_no_download_when_disabled(toy, home):
    with pytest.raises(DataError, match="download=False"):
        load_dataset("toy", "test", download=False)
    assert not (home / ".cache").exists()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with files.atomic_write(target) as out:
            out.write(b"new, half")
            raise RuntimeError
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with files.atomic_write(target) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------------------------------
# Batcher


def batches(batcher, k):
    return [next(batcher) for _ in range(k)]


def test_batcher_is_reproducible_and_drops_the_last_partial_batch():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    first = batches(batching.Batcher(x, y, batch_size=3, rng=7), 6)
    again = batches(batching.Batcher(x, y, batch_size=3, rng=7), 6)
    for (xa, ya), (xb, yb) in zip(first, again, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa[:, 0], ya)  # rows stay paired
    epoch = np.concatenate([b[1] for b in first[:3]])
    assert len(set(epoch.tolist())) == 9  # 3 full batches of distinct rows, one row dropped
    assert batching.Batcher(x, batch_size=3, rng=8).batches_per_epoch == 3


def test_batcher_resumes_exactly_from_a_saved_state(tmp_path):
    x = np.arange(20)
    original = batching.Batcher(x, batch_size=6, rng=1)
    batches(original, 4)  # into the second epoch
    np.savez(tmp_path / "state.npz", **original.state_dict())
    expected = batches(original, 7)

    resumed = batching.Batcher(x, batch_size=6, rng=99)
    with np.load(tmp_path / "state.npz") as state:
        resumed.load_state_dict(dict(state))
    assert resumed.epoch == 1
    for (a,), (b,) in zip(expected, batches(resumed, 7), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_size", [0, -1, 11])
def test_batcher_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=f"batch_size={batch_size} "):
        batching.Batcher(np.zeros(10), batch_size=batch_size)


def test_batcher_rejects_unequal_lengths():
    with pytest.raises(ValueError, match=r"equal lengths, got \[10, 9\]"):
        batching.Batcher(np.zeros(10), np.zeros(9), batch_size=2)


# ---------------------------------------------------------------------------------------
# toy 2-D sets


@pytest.mark.parametrize("make", [toy_sets.two_moons, toy_sets.gaussian_mixture, toy_sets.swiss_roll])
def test_toy_sets(make):
    points = make(500, rng=3)
    assert points.shape == (500, 2) and points.dtype == np.float32
    assert np.all(np.abs(points) < 2)
    np.testing.assert_array_equal(points, make(500, rng=3))
    assert not np.array_equal(points, make(500, rng=4))
