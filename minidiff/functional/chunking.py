"""Working memory for the convolutions: batches cut into cache-sized chunks, buffers reused.

A convolution expands its input (im2col 9×, Winograd's tiles 4×); done for the whole batch at
once, that expansion leaves the cache before the GEMM reads it back. Cut into chunks of a few
images, it is written and read while still in cache, and the chunks are independent: they run
side by side on worker threads (:func:`map_chunks`), each on one core with its own buffers.
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np

from .. import backend

# Columns for this many bytes at a time: small enough that a chunk's columns (or transformed
# tiles) stay in one core's L2 cache between the kernel that writes them and the GEMM that
# reads them, large enough that each GEMM is still big. Measured on the mnist U-Net
# (2 cores, 2 MiB L2 each) when chunks first ran on threads: forward 0.37 s with 1 MiB,
# 0.38 s with 2 MiB, 0.42 s with 512 KiB or 4 MiB, 0.49 s with 8 MiB; later re-checks between
# 256 KiB and 2 MiB found nothing better than 1 MiB.
COLUMN_CHUNK_BYTES = 1 << 20

# Chunk counts are rounded up to a multiple of this, so 2 or 4 threads get equal shares.
CHUNK_MULTIPLE = 4

# A batch that fits one chunk is still cut in two or more when each piece keeps at least this
# many bytes: then a second core gets work worth handing over (a hand-over to a worker costs
# 20-50 µs). Without it a batch of 4 ran its 14×14 and 7×7 convolutions on one core, and its
# forward was 0.89× PyTorch's.
MIN_SPLIT_BYTES = 1 << 18

# A memory-bound kernel over a whole batch outside the convolutions' maps (GroupNorm, nearest
# upsampling) runs on the chunk threads in pieces of whole images from this many values on,
# instead of on the OpenMP team: OpenMP's idle threads sleep (backend.extension says why), and
# waking one cost ~80 µs per call, while the chunk threads are mostly still polling from the
# last map. GroupNorm this way: training step −4.7 %, forward −2.6 % (batch 64, Intel Xeon).
SHARED_KERNEL_ELEMENTS = 1 << 18

_scratch: dict = {}


def scratch(name: str, shape, dtype, xp):
    """A reusable buffer of ``shape`` for column matrices, kept between calls.

    Every chunk of every conv needs a column matrix (or transformed tiles) of up to
    COLUMN_CHUNK_BYTES; reusing one buffer keeps it in cache and out of the allocator. The
    columns never outlive the call that fills them, so one buffer per name (and per thread)
    serves all.
    """
    size = math.prod(shape)
    key = (name, dtype, xp, threading.get_ident())
    buffer = _scratch.get(key)
    if buffer is None or buffer.size < size:
        buffer = _scratch[key] = xp.empty(size, dtype=dtype)
    return buffer[:size].reshape(shape)


def image_chunks(n: int, column_rows: int, positions: int, itemsize: int, on_gpu: bool):
    """Slices of a batch of ``n`` images whose column matrices (column_rows × chunk·positions)
    fit in COLUMN_CHUNK_BYTES, and at least two when each keeps MIN_SPLIT_BYTES. A GPU has the
    memory bandwidth to take the whole batch at once.

    The number of chunks is rounded up to a multiple of CHUNK_MULTIPLE and the images spread
    evenly over them, so that 2 or 4 threads get equal shares; the chunks never depend on the
    thread count (the results must not either).
    """
    if n == 1 or on_gpu:
        return [slice(0, n)]
    per_image = column_rows * positions * itemsize
    size = max(1, min(n, COLUMN_CHUNK_BYTES // max(per_image, 1)))
    count = -(-n // size)
    if count == 1 and n * per_image >= 2 * MIN_SPLIT_BYTES:
        count = 2
    if count > 1:
        count = min(n, -(-count // CHUNK_MULTIPLE) * CHUNK_MULTIPLE)
    bounds = [k * n // count for k in range(count + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def batch_pieces(n: int, size: int, minimum: int) -> list:
    """Slices of a batch of ``n`` images for a memory-bound kernel: min(n, CHUNK_MULTIPLE) even
    pieces when its arrays' ``size`` is at least ``minimum`` (in the same unit), else the whole batch."""
    count = min(n, CHUNK_MULTIPLE) if size >= minimum else 1
    return [slice(k * n // count, (k + 1) * n // count) for k in range(count)]


def sum_shares(shares):
    """Per-chunk tuples of partial sums (or ``None``s) → one tuple of totals, added in chunk order."""
    totals = []
    for parts in zip(*shares):
        total = None if parts[0] is None else parts[0].copy()
        for part in parts[1:] if total is not None else ():
            total += part
        totals.append(total)
    return tuple(totals)


def map_chunks(work, chunks, xp):
    """``[work(chunk) for chunk in chunks]``, the chunks shared out over ``backend.num_threads()`` threads.

    The calling thread takes the first share and worker threads the others, each share a
    contiguous run of chunks. While they run, every thread's kernels use one OpenMP thread (and
    BLAS has one inside :func:`~minidiff.backend.performance_settings`), so a chunk stays in one
    core's cache and no two thread pools contend for the cores; NumPy's GEMMs and the Cython
    kernels release the GIL. The results come back in chunk order, and the chunks do not depend
    on the thread count, so sums over them do not either.

    With ``MINIDIFF_KERNELS=reference`` (or on a GPU) every chunk runs on the calling thread
    and no worker is started, so a debugger's breakpoint stays on the main thread.
    """
    if xp is not np or backend.kernel_mode() == "reference":
        return [work(chunk) for chunk in chunks]
    total = backend.num_threads()
    threads = min(total, len(chunks))
    if threads == 1:  # one thread, or one chunk whose kernels may share out its planes over the cores
        _set_kernel_threads(total)
        return [work(chunk) for chunk in chunks]
    shares = [chunks[k * len(chunks) // threads : (k + 1) * len(chunks) // threads] for k in range(threads)]
    workers = _workers(threads - 1)
    for worker, share in zip(workers, shares[1:]):
        worker.hand(work, share)
    _set_kernel_threads(1)
    try:
        results = _run(work, shares[0])
    finally:
        _set_kernel_threads(total)  # for the kernels called outside the chunks, like GroupNorm
        outcomes = [worker.outcome_when_done() for worker in workers]  # every worker's, even after an error here
    for ok, value in outcomes:
        if not ok:
            raise value
        results += value
    return results


def _run(work, share):
    return [work(chunk) for chunk in share]


# How long a thread waiting for a hand-over polls before it sleeps (threads.pxi says why). The
# gaps between two maps of a batch-64 forward are 70-900 µs (10th-90th percentile, median
# 250-290 µs, Intel Xeon), so a worker mostly finds its next share while it still polls.
POLL_SECONDS = 1e-3

_started: list = []


class _Worker:
    """A chunk thread, handed one share of a map at a time by :func:`map_chunks`.

    ``counters`` = [shares handed over, shares done], written by the caller and by the worker
    respectively, and polled by the other without the GIL (``poll_counter``) before it sleeps on
    its Event. The worker publishes a share as done only once it has let go of the GIL, so the
    caller that sees it can take the GIL at once.
    """

    def __init__(self, index: int):
        self.counters = np.zeros(2, dtype=np.int64)
        self.handed, self.finished = threading.Event(), threading.Event()
        self.share = self.outcome = None
        self.thread = threading.Thread(target=self._serve, name=f"minidiff-{index}", daemon=True)
        self.thread.start()

    def hand(self, work, share):
        self.share = (work, share)
        _store(self.counters, 0, int(self.counters[0]) + 1)
        self.handed.set()

    def outcome_when_done(self):
        """(True, the share's results) or (False, the exception it raised), once it is done."""
        handed = int(self.counters[0])
        while int(self.counters[1]) != handed:
            if not _poll(self.counters, 1, handed - 1):
                # the worker sets `finished` just before it publishes: a wait may end early,
                # never miss the share (the timeout covers a worker descheduled in between)
                self.finished.wait(10 * POLL_SECONDS)
                self.finished.clear()
        outcome, self.outcome, self.share = self.outcome, None, None
        return outcome

    def stop(self):
        self.hand(None, None)
        self.thread.join()

    def _serve(self):
        _set_kernel_threads(1)
        done = 0
        while True:
            while int(self.counters[0]) == done:
                if not _poll(self.counters, 0, done):
                    self.handed.wait()
                    self.handed.clear()
            work, share = self.share
            if work is None:
                return
            try:
                self.outcome = (True, _run(work, share))
            except BaseException as error:  # raised again on the calling thread
                self.outcome = (False, error)
            done += 1
            self.finished.set()
            _poll(self.counters, 0, done, publish=(1, done))  # done, announced without the GIL


def _poll(counters, index: int, value: int, publish=None) -> bool:
    """Whether counters[index] != value within POLL_SECONDS (at once, without the extension);
    first counters[publish[0]] = publish[1]."""
    extension = backend.extension()
    if extension is None:
        if publish is not None:
            counters[publish[0]] = publish[1]
        return bool(counters[index] != value)
    published, new_value = publish if publish is not None else (-1, 0)
    return extension.poll_counter(counters, index, value, POLL_SECONDS, published, new_value)


def _store(counters, index: int, value: int):
    extension = backend.extension()
    if extension is None:
        counters[index] = value
    else:
        extension.store_counter(counters, index, value)


def _workers(count: int) -> list:
    if len(_started) != count:
        shutdown_workers()
        _started.extend(_Worker(k) for k in range(count))
    return _started


def shutdown_workers():
    """Stop the worker threads and wait for them to end; the next threaded map starts new ones."""
    while _started:
        _started.pop().stop()


def _forget_workers():
    _started.clear()


# a forked child has none of its parent's threads: it must start workers of its own, not hand
# chunks to threads that do not exist there
os.register_at_fork(after_in_child=_forget_workers)


def _set_kernel_threads(count: int):
    """OpenMP threads for the kernels called from this thread (a per-thread setting)."""
    extension = backend.extension()
    if extension is not None:
        extension.set_num_threads(count)
