"""How convolutions share out a batch: chunk boundaries, the thread count, results in chunk
order, in-place sums of the chunks' shares."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from minidiff import backend
from minidiff.functional import chunking
from minidiff.functional.chunking import image_chunks, map_chunks, sum_shares


def covers(chunks, n):
    """The slices tile 0…n in order, without gaps or overlaps."""
    return [c.start for c in chunks] == [0] + [c.stop for c in chunks[:-1]] and chunks[-1].stop == n


@pytest.mark.parametrize("n", [1, 3, 7, 64, 65])
@pytest.mark.parametrize("per_image_rows", [1, 100, 10_000, 10**7])
def test_chunks_cover_the_batch_in_a_multiple_of_four_even_pieces(n, per_image_rows):
    chunks = image_chunks(n, per_image_rows, 49, 4, on_gpu=False)
    assert covers(chunks, n)
    sizes = [c.stop - c.start for c in chunks]
    assert max(sizes) - min(sizes) <= 1  # even shares for 2 or 4 threads
    assert len(chunks) in (1, n) or len(chunks) % chunking.CHUNK_MULTIPLE == 0
    budget = chunking.COLUMN_CHUNK_BYTES // (per_image_rows * 49 * 4)
    assert max(sizes) <= max(1, budget)  # never more than the cache budget, unless one image is bigger
    assert image_chunks(n, per_image_rows, 49, 4, on_gpu=True) == [slice(0, n)]


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_a_batch_that_fits_one_chunk_is_split_when_both_halves_are_worth_a_core(n):
    """Under 2·MIN_SPLIT_BYTES in all, one chunk; from there, at least two (a multiple of four
    where the batch allows), each within the cache budget."""
    per_image = -(-2 * chunking.MIN_SPLIT_BYTES // n)  # bytes per image (1 row × 1 position × itemsize 1), rounded up
    assert image_chunks(n, per_image - 1, 1, 1, on_gpu=False) == [slice(0, n)]
    split = image_chunks(n, per_image, 1, 1, on_gpu=False)
    assert covers(split, n) and len(split) == min(n, chunking.CHUNK_MULTIPLE)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_map_chunks_returns_results_in_chunk_order_and_uses_the_calling_thread(monkeypatch, threads):
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", threads)
    chunks = [slice(k, k + 1) for k in range(9)]
    seen = []

    def work(chunk):
        seen.append(threading.current_thread() is threading.main_thread())
        return chunk.start

    assert map_chunks(work, chunks, np) == list(range(9))
    assert seen.count(True) == (9 if threads == "1" else 9 // int(threads))  # the first share is the caller's


@pytest.mark.skipif(backend.extension() is None, reason="minidiff._C (the Cython kernels) is not built")
@pytest.mark.parametrize("threads, chunk_count, inside, after", [("1", 4, [1] * 4, 1), ("2", 1, [2], 2), ("2", 4, [1] * 4, 2)])
def test_kernels_get_the_configured_openmp_threads(monkeypatch, threads, chunk_count, inside, after):
    """MINIDIFF_NUM_THREADS=1 means one OpenMP thread too; a lone chunk may use every core; after a
    threaded map the calling thread's kernels (GroupNorm, …) get all the configured threads."""
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", threads)
    extension = backend.extension()
    seen = map_chunks(lambda chunk: extension.get_num_threads(), [slice(k, k + 1) for k in range(chunk_count)], np)
    assert seen == inside
    assert extension.get_num_threads() == after


def test_map_chunks_runs_every_chunk_on_the_calling_thread_on_the_plain_path(monkeypatch):
    monkeypatch.setenv("MINIDIFF_KERNELS", "reference")
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "4")
    threads = map_chunks(lambda chunk: threading.current_thread(), [slice(k, k + 1) for k in range(8)], np)
    assert threads == [threading.current_thread()] * 8


def test_map_chunks_passes_a_worker_error_on():
    def work(chunk):
        if chunk.start == 5:
            raise ValueError("chunk 5 failed")
        return chunk.start

    with pytest.raises(ValueError, match="chunk 5 failed"):
        map_chunks(work, [slice(k, k + 1) for k in range(8)], np)


def test_sum_shares_adds_in_chunk_order_without_touching_the_shares():
    shares = [(np.full(3, float(k)), None, np.ones(2)) for k in range(4)]
    total, nothing, ones = sum_shares(shares)
    np.testing.assert_array_equal(total, [6.0, 6.0, 6.0])
    assert nothing is None
    np.testing.assert_array_equal(ones, [4.0, 4.0])
    np.testing.assert_array_equal(shares[0][0], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("value, expected", [("3", 3), ("1", 1)])
def test_num_threads_reads_minidiff_num_threads_first(monkeypatch, value, expected):
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", value)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert backend.num_threads() == expected


def test_num_threads_falls_back_to_omp_then_the_cpus(monkeypatch):
    monkeypatch.delenv("MINIDIFF_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert backend.num_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert backend.num_threads() >= 1


@pytest.mark.parametrize("variable", backend.LOCAL_RANKS_VARIABLES)
def test_mpi_ranks_on_one_machine_share_its_cores(monkeypatch, variable):
    for name in ("MINIDIFF_NUM_THREADS", "OMP_NUM_THREADS", *backend.LOCAL_RANKS_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    cpus = backend.num_threads()
    monkeypatch.setenv(variable, "2")
    assert backend.num_threads() == max(1, cpus // 2)
    monkeypatch.setenv(variable, str(4 * cpus))  # more ranks than cores: one thread each
    assert backend.num_threads() == 1
    monkeypatch.setenv(variable, "garbled")  # not ours to refuse: every core, as without MPI
    assert backend.num_threads() == cpus
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "3")  # an explicit count wins
    assert backend.num_threads() == 3


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_named(monkeypatch, value):
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", value)
    with pytest.raises(ValueError, match=f"MINIDIFF_NUM_THREADS='{value}'"):
        backend.num_threads()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_its_chunks_with_a_pool_of_its_own(monkeypatch):
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "2")
    chunks = [slice(k, k + 1) for k in range(8)]
    assert map_chunks(lambda c: c.start, chunks, np) == list(range(8))  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its chunks ran (an alarm ends a hang)
        signal.alarm(20)
        os._exit(0 if map_chunks(lambda c: c.start, chunks, np) == list(range(8)) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.skipif(backend.extension() is None, reason="minidiff._C (the Cython kernels) is not built")
def test_poll_counter_sees_a_change_publishes_first_and_gives_up_in_time():
    extension = backend.extension()
    counters = np.array([3, 0], dtype=np.int64)
    assert extension.poll_counter(counters, 0, 2, 1.0)  # already different: at once
    start = time.perf_counter()
    assert not extension.poll_counter(counters, 0, 3, 0.02, 1, 7)
    assert 0.02 <= time.perf_counter() - start < 1.0 and counters[1] == 7  # published before it polled
    threading.Timer(0.01, extension.store_counter, (counters, 0, 4)).start()
    assert extension.poll_counter(counters, 0, 3, 5.0) and counters[0] == 4
    with pytest.raises(IndexError, match="counter 2 of 2"):
        extension.store_counter(counters, 2, 0)
    with pytest.raises(IndexError, match="counters 0 and 5 of 2"):
        extension.poll_counter(counters, 0, 0, 0.0, 5, 0)


@pytest.mark.parametrize("threads", ["2", "3"])
def test_hand_overs_neither_lose_nor_mix_up_shares(monkeypatch, threads):
    """Maps back to back (the workers still polling), after pauses (the workers asleep), after a
    failed share and with shares of very different lengths: every map gets its own results."""
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", threads)

    def fail_on_the_last_chunk(chunk):  # a worker's
        if chunk.start == len(chunks) - 1:
            raise ValueError("the last chunk failed")
        return chunk.start

    def hung(signum, frame):
        raise TimeoutError("a hand-over was lost: map_chunks hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        for round_ in range(300):
            chunks = [slice(k, k + 1) for k in range(round_ % 7 + 2)]
            if round_ % 50 == 7:
                time.sleep(5 * chunking.POLL_SECONDS)
            if round_ % 37 == 3:
                with pytest.raises(ValueError, match="last chunk failed"):
                    map_chunks(fail_on_the_last_chunk, chunks, np)
            slow = round_ % 11 == 5

            def work(chunk, round_=round_):
                if slow and chunk.start == len(chunks) - 1:
                    time.sleep(3 * chunking.POLL_SECONDS)  # the caller's wait outlasts its poll
                return (round_, chunk.start)

            assert map_chunks(work, chunks, np) == [(round_, k) for k in range(len(chunks))]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_shutdown_workers_ends_the_threads_and_a_later_map_starts_new_ones(monkeypatch):
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "2")
    chunks = [slice(k, k + 1) for k in range(4)]
    assert map_chunks(lambda c: c.start, chunks, np) == [0, 1, 2, 3]
    workers = [t for t in threading.enumerate() if t.name.startswith("minidiff-")]
    assert workers
    chunking.shutdown_workers()
    assert not any(t.is_alive() for t in workers)
    assert map_chunks(lambda c: c.start, chunks, np) == [0, 1, 2, 3]
