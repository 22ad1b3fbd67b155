"""Checking a command's output paths before it does any work.

A command that samples for a minute and then refuses its ``--out`` has thrown the minute away;
one that writes its samples over the checkpoint it read has destroyed the run. So every command
calls :func:`check_outputs` with all the paths it will write, and all the files it reads, right
after parsing its flags; it refuses in one line naming the flag when

- a file's name does not end in a suffix the command writes (``--out s.jpg`` for a PNG);
- the path is a folder where a file is expected, or a file where a folder is;
- nothing can be written there: the nearest folder that exists above it is not writable (or is
  a file). Missing folders below it are created when the output is written;
- two outputs name the same file;
- an output is one of the command's inputs (the checkpoint, ``--init``, ``--samples`` …), or one
  of a run folder's own files (its checkpoint, config, log, lock or preview grids,
  :func:`minidiff.runfolder.run_file_owner`), which only ``train`` writes.

Paths are compared after resolving symbolic links, so a link to the checkpoint is the checkpoint.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .runfolder import run_file_owner


@dataclass(frozen=True)
class Output:
    """One path a command writes: the ``flag`` that names it, the path (None: not asked for), and
    the suffixes its file may end in (empty: the output is a folder)."""

    flag: str
    path: str | os.PathLike | None
    suffixes: tuple[str, ...] = ()

    @property
    def is_folder(self) -> bool:
        return not self.suffixes


def check_outputs(outputs, inputs=()) -> None:
    """Refuse, in one line naming the flag, any of ``outputs`` (:class:`Output`) that the command could
    not write or must not write; ``inputs`` are ``(flag, path)`` pairs of what it reads (None: not given)."""
    read = {_resolved(path): flag for flag, path in inputs if path is not None}
    seen = {}
    for output in outputs:
        if output.path is None:
            continue
        path = Path(output.path)
        where = f"{output.flag} {path}"
        if str(output.path).strip() == "":
            raise ValueError(f"{output.flag} is empty; give a {'folder' if output.is_folder else 'file'} name")
        _check_kind(output, path, where)
        _check_writable(path if output.is_folder else path.parent, where)
        resolved = _resolved(path)
        if resolved in read:
            raise ValueError(f"{where} is {read[resolved]}, which this command reads; writing there would destroy "
                             "it: choose another path")
        owner = None if output.is_folder else run_file_owner(resolved)
        if owner is not None:
            raise ValueError(f"{where} is a file of the run folder {owner}, which only `train` writes: "
                             "choose another name")
        if resolved in seen:
            raise ValueError(f"{seen[resolved]} and {output.flag} name the same file {path}; give each its own")
        seen[resolved] = output.flag


def _check_kind(output: Output, path: Path, where: str) -> None:
    if output.is_folder:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{where} is a file; expected a folder")
        return
    if path.suffix.lower() not in output.suffixes:
        raise ValueError(f"{where}: the file is written as {' or '.join(output.suffixes)}; "
                         f"give a name ending in {output.suffixes[0]}")
    if path.is_dir():
        raise ValueError(f"{where} is a folder; expected a file name")


def _check_writable(folder: Path, where: str) -> None:
    """The nearest existing folder at or above ``folder`` must be a writable folder (the rest is created)."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{where}: cannot write there, {existing} is a file, not a folder")
    try:  # a real file, not os.access: root passes every permission test, yet cannot write in /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ValueError(f"{where}: cannot write there, the folder {existing} is not writable "
                         f"({exc.strerror or exc})") from None


def _resolved(path) -> str:
    return os.path.realpath(os.path.abspath(path))
