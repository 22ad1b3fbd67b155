"""The run folder of a training run, and keeping it whole under faults.

A run lives in one folder::

    config.json             the TrainConfig and the model's constructor arguments
    checkpoint.npz          everything needed to resume exactly (see minidiff.checkpoint)
    log.jsonl               one JSON line every --log-every steps
    samples_step<N>.png     preview grids drawn with the EMA weights
    .lock                   held (an OS file lock) while a trainer writes here

Every file is written atomically (:mod:`minidiff.files`), so the checkpoint is always the last
complete one, and it is the source of truth: on resume the log is cut back to its step. Only one
trainer may write to a folder at a time; the lock is the kernel's, so it disappears with its
process, even one killed by ``kill -9``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME
from .files import atomic_write, remove_stale_parts

LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
LOCK_NAME = ".lock"
PREVIEW_PATTERN = re.compile(r"samples_step\d+\.png")


def run_file_owner(path) -> Path | None:
    """The run folder whose own file ``path`` is (its checkpoint, config, log, lock or a preview grid),
    else None: what no command but ``train`` may write over. A run folder is one holding a
    checkpoint or a config."""
    path = Path(path)
    folder = path.parent
    if not any((folder / name).is_file() for name in (CHECKPOINT_NAME, CONFIG_NAME)):
        return None
    own = path.name in (CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, LOCK_NAME) or PREVIEW_PATTERN.fullmatch(path.name)
    return folder if own else None


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class RunFolder:
    """The files of one run: ``config.json``, ``checkpoint.npz``, ``log.jsonl`` and preview grids."""

    def __init__(self, path):
        self.path = Path(path)
        self.checkpoint_file = self.path / CHECKPOINT_NAME
        self.log_file = self.path / LOG_NAME
        self.config_file = self.path / CONFIG_NAME
        self._lock_fd = None

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    # ----------------------------------------------------------------- ownership
    def acquire(self) -> None:
        """Create the folder, take its lock, and remove what killed writers left behind.

        Raises :class:`RunFolderBusy` naming the folder when another process trains into it.
        """
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path} is in use by another training process") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        remove_stale_parts(self.path)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # ----------------------------------------------------------------- files
    def write_config(self, config: dict) -> None:
        with atomic_write(self.config_file) as f:
            f.write(json.dumps(config, indent=2).encode() + b"\n")

    def config_edits(self, config: dict) -> list[str]:
        """The top-level fields in which ``config.json`` differs from ``config`` (a checkpoint's), or a
        word on why it cannot be compared; empty when they agree or there is no ``config.json``."""
        if not self.config_file.exists():
            return []
        try:
            on_disk = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return ["(it is not valid JSON)"]
        if not isinstance(on_disk, dict):
            return ["(it is not a JSON object)"]
        saved = json.loads(json.dumps(config))  # tuples as lists, as in the file
        return sorted(key for key in set(on_disk) | set(saved) if on_disk.get(key) != saved.get(key))

    def append_log(self, record: dict) -> None:
        """One line of ``log.jsonl``, flushed at once so that a crash loses no logged step."""
        with open(self.log_file, "a") as log:
            log.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Keep only the log lines up to ``step``, the checkpoint's.

        A run resumed from an earlier checkpoint than its last log line redoes those steps and
        must not log them twice. A line that is torn (a crash mid-write) or lacks a step cannot
        be trusted: it is dropped with a warning naming the file, since the checkpoint, not the
        log, is what the run resumes from.
        """
        if not self.log_file.exists():
            return
        kept, dropped = [], 0
        for line in self.log_file.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                line_step = record["step"]
                valid = isinstance(record, dict) and isinstance(line_step, int) and not isinstance(line_step, bool)
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                dropped += line.strip() != ""
                continue
            if line_step <= step:
                kept.append(line + "\n")
        if dropped:
            warnings.warn(f"{self.log_file}: dropped {dropped} unreadable line(s); the log now ends at "
                          f"the checkpoint's step {step}", RuntimeWarning, stacklevel=2)
        with atomic_write(self.log_file) as f:
            f.write("".join(kept).encode())

    def preview_file(self, step: int) -> Path:
        return self.path / f"samples_step{step}.png"  # matches PREVIEW_PATTERN


@contextmanager
def sigint_deferred():
    """Hold a Ctrl-C until the block ends, then raise KeyboardInterrupt.

    A training step changes the weights, the Adam moments, the EMA, the random generators and
    the log together; interrupted halfway, the checkpoint saved on interrupt would mix two steps.
    Only the main thread receives signals, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt
