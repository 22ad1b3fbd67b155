"""Files that survive a crash: atomic writes and checked ``.npz`` archives.

Every file minidiff writes for later (checkpoints, config, logs it rewrites, sample arrays,
downloads) goes through :func:`atomic_write`: the bytes land in a temporary file beside the
destination, are flushed to disk, and only then renamed over it. A crash, a Ctrl-C or a
``kill -9`` at any instant leaves either the old file or the new one, never half of either.
"""
from __future__ import annotations

import contextlib
import glob
import os
import secrets
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

PART_SUFFIX = ".part"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Open a temporary file beside ``path`` for binary writing; it replaces ``path`` only
    when the block completes, and is removed when the block raises.

    The file and then its folder are ``fsync``-ed around the rename, so that after a power cut
    the folder names either the old file or the complete new one. The temporary file is opened
    with a plain ``open`` (not ``mkstemp``, which makes files private), so the result gets the
    usual umask permissions. Its name, ``.<name>.<pid>.<random>.part``, lets
    :func:`remove_stale_parts` find what a killed process left behind: the temporary files of
    earlier writes of the same ``path`` by dead processes are removed before this one starts.
    """
    path = Path(path)
    remove_stale_parts(path.parent, path.name)  # what a killed earlier write of this file left
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PART_SUFFIX}")
    try:
        with open(tmp, "xb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_parts(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` that a killed process left in ``folder``
    (only those of the file ``name``, when given).

    Only files of processes that no longer run are removed, so a writer still at work keeps its
    own. Returns the paths removed.
    """
    removed = []
    pattern = f".{glob.escape(name)}.*{PART_SUFFIX}" if name else f".*{PART_SUFFIX}"
    for part in Path(folder).glob(pattern):
        fields = part.name.split(".")
        pid = fields[-3] if len(fields) >= 4 else ""
        if name is not None and part.name != f".{name}.{pid}.{fields[-2]}{PART_SUFFIX}":
            continue  # another file whose name starts like this one's
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        part.unlink(missing_ok=True)
        removed.append(part)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def save_npz(state, path) -> None:
    """Write ``state`` (name → array or number) to ``path`` as an ``.npz``, atomically."""
    with atomic_write(path) as f:
        # A file object, not a name: np.savez would append ".npz" to a name lacking it.
        np.savez(f, **{name: np.asarray(value) for name, value in state.items()})


def load_npz(path) -> OrderedDict:
    """Read an ``.npz`` written by :func:`save_npz`: name → NumPy array, in file order.

    Pickled objects are refused. Raises ``FileNotFoundError`` or ``ValueError`` naming ``path``
    when it is missing, corrupt or not an ``.npz`` archive.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"state dict file {path!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array")
        with archive:
            # Read every array now: a truncated member only shows itself when read.
            return OrderedDict((name, archive[name]) for name in archive.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"cannot read state dict file {path!r}: not a valid .npz archive ({exc})") from exc
