"""The image datasets: the IDX file format and MNIST / Fashion-MNIST (find, download, verify,
load). Mini-batches are :mod:`minidiff.batching`; the toy 2-D sets :mod:`minidiff.toy`.

Where ``load_dataset`` looks
----------------------------
A split (``train`` or ``test``) is two files, images and labels, each either gzipped
(``train-images-idx3-ubyte.gz``, as published) or not (``train-images-idx3-ubyte``).
A split is read from the first directory that holds both of its files:

1. ``data_dir``, when given, and nothing else: an explicit directory is a decision, not a
   hint. It must exist; missing files are downloaded into it.
2. Otherwise, in order:

   - ``$MINIDIFF_DATA/<dataset>`` (e.g. ``$MINIDIFF_DATA/mnist``). ``$MINIDIFF_DATA`` is a
     root with one folder per dataset, never the files themselves: MNIST and Fashion-MNIST
     use identical file names, so one folder cannot say which of the two it holds.
   - ``$XDG_CACHE_HOME/minidiff/<dataset>``, by default ``~/.cache/minidiff/<dataset>``.
   - for ``fashion-mnist``, ``/usr/share/datasets/fashion-mnist``, where Debian's package
     ``dataset-fashion-mnist`` installs the four ``.gz`` files.

   Missing files are downloaded into the first of these (created if need be).

Which split you get
-------------------
``split="test"`` and ``split="all"`` (train then test) are strict: their files are found,
downloaded, or a ``DataError`` says what is missing and where to put it.
Training data is asked for with ``split="train"`` or ``split="auto"`` (the default); when the
train files are missing but the t10k files are at hand — as on machines with only the
10,000 t10k images and no route to the mirrors — both load the t10k images instead and emit
one ``DataWarning`` naming what was missing and what is used. They differ only in how hard
they try first: ``"train"`` attempts a download, ``"auto"`` downloads only when neither split
is on disk.

Checksums
---------
Every file is checked, on every load, against the MD5 of its decompressed IDX content, so
the published ``.gz``, a gunzipped copy and Debian's re-compressed ``.gz`` (whose archive MD5
differs from the published one) are all accepted, and anything else is refused. Downloads are
also checked against the published archive MD5 before they are moved into place.

This module runs past 300 lines because finding, falling back, verifying and downloading are
one story (the order above), best read in one file; the IDX format itself is :mod:`minidiff.idx`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.request
import warnings
from pathlib import Path

import numpy as np

from .files import atomic_write
from .idx import DataError, parse_idx, read_idx, read_idx_bytes  # noqa: F401 (read_idx is public here too)


class DataWarning(UserWarning):
    """The data loaded is not quite what was asked for (e.g. t10k instead of train)."""


# ---------------------------------------------------------------------------------------
# Dataset registry


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One file of a dataset: its name without ``.gz`` and two MD5s."""

    name: str
    archive_md5: str  # of the published name.gz, what the mirrors serve
    content_md5: str  # of the decompressed IDX bytes, whatever the compression

    @property
    def archive_name(self) -> str:
        return self.name + ".gz"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset can be downloaded from and the files of each split."""

    name: str
    mirrors: tuple[str, ...]
    splits: dict[str, tuple[IdxFile, IdxFile]]  # split -> (images, labels)
    system_dirs: tuple[Path, ...] = ()
    num_classes: int = 10  # labels 0..num_classes-1 (MNIST: digits; Fashion-MNIST: garments)


def _splits(md5s: dict[str, tuple[str, str]]) -> dict[str, tuple[IdxFile, IdxFile]]:
    """Split -> (images, labels) files from {file name: (archive MD5, content MD5)}."""
    files = {name: IdxFile(name, *sums) for name, sums in md5s.items()}
    return {
        split: (files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"])
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        # file: (MD5 of the published .gz, MD5 of its decompressed content)
        splits=_splits({
            "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
            "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        }),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        splits=_splits({
            "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
            "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        }),
        system_dirs=(Path("/usr/share/datasets/fashion-mnist"),),
    ),
}

SPLITS = ("auto", "train", "test", "all")


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of dataset ``name``; ValueError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order; the first receives downloads.

    An explicit ``data_dir`` is the only one searched, and must exist.
    """
    info = dataset_info(name)
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.exists():
            raise DataError(f"data directory {data_dir} does not exist")
        if not data_dir.is_dir():
            raise DataError(f"data directory {data_dir} is a file, not a folder holding the IDX files")
        return [data_dir]
    dirs = []
    if os.environ.get("MINIDIFF_DATA"):
        dirs.append(Path(os.environ["MINIDIFF_DATA"]).expanduser() / name)
    dirs.append(cache_dir() / name)
    return dirs + list(info.system_dirs)


def cache_dir() -> Path:
    """minidiff's cache folder: ``$XDG_CACHE_HOME/minidiff``, by default ``~/.cache/minidiff``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minidiff"


# ---------------------------------------------------------------------------------------
# Loading


def load_dataset(
    name: str = "mnist",
    split: str = "auto",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 1, 28, 28) scaled to [−1, 1] and labels int64 (N,).

    ``split`` is ``"auto"`` (train, else t10k with a warning), ``"train"`` (the same, but
    tries to download first), ``"test"`` or ``"all"``; see the module docstring for the
    directories searched and the fallback.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; expected one of {', '.join(SPLITS)}")
    dirs = search_dirs(name, data_dir)
    if split in ("train", "auto"):
        return _load_training_data(info, split, dirs, download)
    parts = [
        _read_split(info, part, _obtain_split(info, part, dirs, download)) for part in _parts(split)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def download_dataset(
    name: str = "mnist", split: str = "all", data_dir: str | os.PathLike | None = None
) -> Path:
    """Make sure ``split`` ('train', 'test' or 'all') of ``name`` is on disk, downloading
    what is missing; returns the directory downloads go to."""
    info = dataset_info(name)
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}; expected train, test or all")
    dirs = search_dirs(name, data_dir)
    for part in _parts(split):
        _obtain_split(info, part, dirs, download=True)
    return dirs[0]


def _parts(split: str) -> tuple[str, ...]:
    """The file splits making up ``split``: 'all' is train then test."""
    return ("train", "test") if split == "all" else (split,)


def _load_training_data(info: DatasetInfo, split: str, dirs: list[Path], download: bool):
    """The train split, or the t10k split with one warning when only it is at hand."""
    test_dir = _find_split(info, "test", dirs)
    fetch = download and (split == "train" or test_dir is None)
    try:
        train_dir = _obtain_split(info, "train", dirs, fetch)
    except DataError as err:
        if test_dir is None:
            raise
        images, labels = _read_split(info, "test", test_dir)
        why = " " + str(err).splitlines()[-1].strip() if fetch else ""
        warnings.warn(
            f"{info.name} train files not found in {_list(dirs)}{why}; training on the "
            f"{len(images):,} t10k images from {test_dir} instead",
            DataWarning,
            stacklevel=3,
        )
        return images, labels
    return _read_split(info, "train", train_dir)


def _find_split(info: DatasetInfo, split: str, dirs: list[Path]) -> Path | None:
    """The first directory holding both files of ``split``."""
    for directory in dirs:
        if all(_locate(directory, f) for f in info.splits[split]):
            return directory
    return None


def _locate(directory: Path, file: IdxFile) -> Path | None:
    """``file`` in ``directory``, gzipped or not."""
    for name in (file.archive_name, file.name):
        if (directory / name).is_file():
            return directory / name
    return None


def _obtain_split(info: DatasetInfo, split: str, dirs: list[Path], download: bool) -> Path:
    """The directory holding ``split``, downloading it into ``dirs[0]`` if allowed."""
    found = _find_split(info, split, dirs)
    if found is not None:
        return found
    if not download:
        raise _missing_error(info, split, dirs, "download=False, so no download was attempted")
    target = dirs[0]
    try:
        target.mkdir(parents=True, exist_ok=True)
        for file in info.splits[split]:
            if _locate(target, file) is None:
                _download_file(info.mirrors, file, target)
    except (DataError, OSError) as err:
        raise _missing_error(info, split, dirs, f"download failed: {err}") from None
    return target


def _missing_error(info: DatasetInfo, split: str, dirs: list[Path], why: str) -> DataError:
    """The message for a split found nowhere: what to fetch, from where, where to put it."""
    files = "\n".join(
        f"    {f.archive_name}  md5 {f.archive_md5}" for f in info.splits[split]
    )
    return DataError(
        f"{info.name} {split} files not found; needed:\n{files}\n"
        f"  searched: {_list(dirs)}\n"
        f"  mirrors: {_list(info.mirrors)}\n"
        f"  fetch them from a mirror into {dirs[0]} (or pass data_dir / set $MINIDIFF_DATA)\n"
        f"  ({why})"
    )


def _list(items) -> str:
    return ", ".join(str(item) for item in items)


def _read_split(info: DatasetInfo, split: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read, verify and convert the two files of ``split`` from ``directory``."""
    images, labels = (_read_verified(_locate(directory, f), f) for f in info.splits[split])
    # [0, 255] -> [-1, 1]: the range the diffusion model's data lives in (Ho et al. 2020, §3.3)
    images = (images.astype(np.float32) / np.float32(127.5) - 1)[:, None]
    return images, labels.astype(np.int64)


def _read_verified(path: Path, file: IdxFile) -> np.ndarray:
    """Parse ``path`` and refuse it unless its content MD5 is the registered one."""
    data = read_idx_bytes(path)
    array = parse_idx(data, source=str(path))  # a format error says more than an MD5 one
    found = hashlib.md5(data).hexdigest()
    if found != file.content_md5:
        raise DataError(
            f"{path}: MD5 of the decompressed data is {found}, expected {file.content_md5} "
            f"(the published {file.archive_name} has MD5 {file.archive_md5}); the file is "
            "corrupt or belongs to another dataset"
        )
    return array


# ---------------------------------------------------------------------------------------
# Download


DOWNLOAD_TIMEOUT_S = 30
CHUNK_BYTES = 1 << 16


def _download_file(mirrors: tuple[str, ...], file: IdxFile, directory: Path) -> Path:
    """Fetch ``file.archive_name`` from the first mirror that serves it intact."""
    failures = []
    for mirror in mirrors:
        url = mirror + file.archive_name
        try:
            return _fetch(url, directory / file.archive_name, file.archive_md5)
        except (OSError, DataError) as err:  # URLError and HTTPError are OSErrors
            failures.append(f"{url}: {err}")
    raise DataError("; ".join(failures))


def _fetch(url: str, dest: Path, md5: str) -> Path:
    """Download ``url`` to ``dest``, refusing it unless its MD5 is ``md5``; an interrupted or
    corrupt download leaves nothing behind that could pass for a complete file."""
    with (
        atomic_write(dest) as out,
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
    ):
        digest = _copy_with_progress(response, out, dest.name)
        if digest != md5:
            raise DataError(f"MD5 of the download is {digest}, expected {md5}")
    return dest


def _copy_with_progress(response, out, label: str) -> str:
    """Copy ``response`` to ``out`` with a progress bar; returns the MD5 of the bytes."""
    digest = hashlib.md5()
    total = int(response.headers.get("Content-Length") or 0) or None
    with _progress_bar(total, label) as bar:
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _progress_bar(total: int | None, label: str):
    """A tqdm byte counter on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
