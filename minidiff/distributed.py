"""Data-parallel runs on MPI: which process this is, and the few collectives minidiff needs.

``mpirun -n N python -m minidiff train …`` starts N processes (ranks) of the same program. Each
one draws the same *global* batch, t and ε from the same seeded streams and keeps its own rows
of them (:meth:`World.rows`), so N ranks compute exactly the terms one process would, split N
ways. One ``Allreduce`` per step then sums the gradients — all of them and the loss packed in
one flat float32 buffer, reduced in place, never pickled — and every rank divides by N and takes
the same optimiser and EMA step: the weights stay bitwise identical across ranks, and rank 0
alone writes the run folder. ``sample`` and ``eval`` split their images the same way and gather
them on rank 0.

A process that no MPI launcher started is a world of one (:class:`World`): its collectives
return their input and mpi4py is never imported. Under MPI, an exception on any rank ends the
whole job (``MPI_Abort``) after printing it, rather than leaving the others waiting forever in
the next collective.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
import traceback

import numpy as np

from .backend import get_array_module, to_numpy

# What MPI launchers put in the environment of every process they start: MPICH's Hydra and
# Slurm's PMI (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), PMIx launchers (PMIX_RANK).
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
# Debug mode: hash the parameters every M steps and stop if the ranks disagree (0: never).
SYNC_CHECK_VARIABLE = "MINIDIFF_SYNC_CHECK_EVERY"
# How long the other ranks give rank 0 to save its checkpoint after a Ctrl-C before ending the job.
INTERRUPT_GRACE_S = 30
OUTPUT_GRACE_S = 1.0  # before an Abort, for the launcher to forward what this rank printed


class World:
    """A single process: rank 0 of 1. The collectives return their input."""

    rank, size = 0, 1

    @property
    def is_root(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's share of ``n`` rows: consecutive, sizes differing by at most one."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def average_gradients(self, params, loss: float) -> float:
        """Replace each gradient by its mean over the ranks; returns the mean of ``loss``."""
        return loss

    def gather_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The ranks' ``rows`` (their :meth:`rows` shares) stacked in rank order on rank 0; None elsewhere."""
        return rows

    def check_identical(self, params, what: str) -> None:
        """Raise if the ``params`` arrays are not bitwise the same on every rank."""

    def end_job(self, status: int, interrupted: bool = False) -> None:
        """Called by a rank about to exit with ``status``: a failure ends every rank (MPI_Abort),
        since the others may be waiting for it in a collective. Nothing to end in one process.

        Ctrl-C (``interrupted``) reaches every rank, and rank 0 saves a checkpoint on its way out:
        the others leave the ending to it (or to the grace period, should it be stuck).
        """


class MPIWorld(World):
    """One rank of an MPI job (``comm`` is mpi4py's ``COMM_WORLD``)."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()

    def average_gradients(self, params, loss: float) -> float:
        from mpi4py import MPI

        # Every rank built the same graph, so the same parameters have gradients, in the same order.
        grads = [param for param in params if param.grad is not None]
        buffer = np.concatenate([to_numpy(param.grad).ravel() for param in grads]
                                + [np.array([loss], dtype=np.float32)]).astype(np.float32, copy=False)
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        # MPI hands every rank the same sum (MPICH's reductions do; MINIDIFF_SYNC_CHECK_EVERY
        # verifies it), and the same division of it gives every rank the same bits.
        buffer /= self.size
        start = 0
        for param in grads:
            size = param.grad.size
            param.grad = get_array_module(param.grad).asarray(buffer[start : start + size].reshape(param.grad.shape))
            start += size
        return float(buffer[-1])

    def gather_rows(self, rows: np.ndarray) -> np.ndarray | None:
        rows = np.ascontiguousarray(rows)
        counts = np.array(self.comm.allgather(len(rows)))  # a few bytes; the rows go by Gatherv
        if not self.is_root:
            self.comm.Gatherv(rows, None, root=0)
            return None
        gathered = np.empty((counts.sum(), *rows.shape[1:]), rows.dtype)
        self.comm.Gatherv(rows, (gathered, counts * int(np.prod(rows.shape[1:]))), root=0)
        return gathered

    def check_identical(self, params, what: str) -> None:
        digest = hashlib.blake2b(digest_size=16)
        for param in params:
            digest.update(np.ascontiguousarray(to_numpy(param.data)).view(np.uint8))
        digests = self.comm.allgather(digest.hexdigest())  # a few bytes each, debug mode only
        if len(set(digests)) > 1:
            listed = ", ".join(f"rank {rank}: {value[:12]}" for rank, value in enumerate(digests))
            raise RuntimeError(f"{what}: the parameters differ across ranks ({listed})")

    def end_job(self, status: int, interrupted: bool = False) -> None:
        if not status:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards each rank's output through a pipe and stops forwarding once a rank
        # aborts: a moment's wait lets the reason reach the terminal (it was lost on a busy machine).
        time.sleep(INTERRUPT_GRACE_S if interrupted and not self.is_root else OUTPUT_GRACE_S)
        self.comm.Abort(status)


@functools.cache
def world() -> World:
    """This process's :class:`World`: an :class:`MPIWorld` when an MPI launcher started it."""
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        return World()
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(f"started by an MPI launcher, but mpi4py is missing ({exc}); "
                           "install it with pip install 'minidiff[mpi]'") from None
    mpi_world = MPIWorld(MPI.COMM_WORLD)
    if mpi_world.size > 1:
        sys.excepthook = functools.partial(_abort_on_exception, mpi_world)
    return mpi_world


def _abort_on_exception(mpi_world: MPIWorld, kind, value, tb) -> None:
    # The reason first, on one line: another rank's Abort may end this process mid-traceback.
    print(f"minidiff: rank {mpi_world.rank} of {mpi_world.size} failed ({kind.__name__}: {value}); "
          "ending the MPI job", file=sys.stderr, flush=True)
    traceback.print_exception(kind, value, tb)
    mpi_world.end_job(1)


def sync_check_every() -> int:
    """Steps between two parameter-hash checks (``MINIDIFF_SYNC_CHECK_EVERY``; 0, the default: never)."""
    value = os.environ.get(SYNC_CHECK_VARIABLE, "0").strip() or "0"
    if not value.isdigit():
        raise ValueError(f"{SYNC_CHECK_VARIABLE}={value!r}: expected a number of steps (0: never)")
    return int(value)


class RowsOf:
    """The rows ``rows`` of draws made for all ``n`` rows of a batch, from the Generator ``rng``.

    A rank sampling its share of n images hands this to a sampler in place of ``rng``: every
    draw is made at full size and sliced, so the rank's noise is exactly the single process's
    for those rows, and ``rng`` advances the same on every rank.
    """

    def __init__(self, rng: np.random.Generator, n: int, rows: slice):
        self.rng, self.n, self.rows = rng, n, rows

    def standard_normal(self, size, dtype=np.float64):
        return self.rng.standard_normal((self.n, *size[1:]), dtype=dtype)[self.rows]

    def random(self, size):
        return self.rng.random((self.n, *size[1:]))[self.rows]

    def choice(self, a, size, p=None):
        return self.rng.choice(a, size=(self.n, *size[1:]), p=p)[self.rows]


def batch_shares(n: int, batch: int, rows: slice) -> list[tuple[int, range, range]]:
    """(k, batch k's rows, its rows within ``rows``) for the batches of ``batch`` of n rows that meet ``rows``.

    A rank's share of work drawn in batches: batch k draws its random numbers for all its rows from a
    generator seeded by k (:class:`RowsOf`), so a row's draws do not depend on how the rows are split.
    """
    batches = [range(start, min(start + batch, n)) for start in range(0, n, batch)]
    wanted = range(n)[rows]
    shares = [(k, rows_k, range(max(rows_k.start, wanted.start), min(rows_k.stop, wanted.stop)))
              for k, rows_k in enumerate(batches)]
    return [(k, rows_k, share) for k, rows_k, share in shares if len(share)]
