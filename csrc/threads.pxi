# How many OpenMP threads a kernel's parallel loop uses. Waking a sleeping OpenMP thread (the
# pool waits passively, see backend.extension) costs more than a small kernel's
# whole run: at batch 1 every kernel paid it, and a forward pass took 22 ms on two threads
# against 13 on one. So a kernel over fewer than `parallel_min_elements` values (of its
# image-sized array) runs on the calling thread alone, and a larger one on all the threads
# set_num_threads gave it. Measured on 2 cores, GroupNorm+SiLU and the Winograd input transform
# with 2 threads against 1: a parallel region costs about 80 µs more than the work it shares
# out saves up to ~2·10⁵ values (25,088 values: 92 against 30 µs; 200,704: 219 against 300 µs
# and 189 against 213 µs). Each task computes the same values whichever thread runs it, so the
# result does not depend on the choice.
cimport openmp

cdef Py_ssize_t parallel_min_elements = 1 << 18


cdef inline int threads_for(Py_ssize_t elements) noexcept nogil:
    """OpenMP threads for a kernel that reads or writes about ``elements`` values."""
    return 1 if elements < parallel_min_elements else openmp.omp_get_max_threads()


def set_parallel_min_elements(Py_ssize_t elements):
    """Below this many values a kernel runs on one thread; returns the previous setting (tests set 0)."""
    global parallel_min_elements
    previous, parallel_min_elements = parallel_min_elements, elements
    return previous


# map_chunks's hand-overs between threads (functional/chunking.py). A thread that sleeps,
# on an Event or on the GIL, is woken 40-80 µs after the signal on the 2-core VMs measured;
# a batch-64 forward hands work over ~65 times each way. So the waiting side polls a counter
# without the GIL for a while first, yielding the core at every turn, and a worker that has
# finished a share publishes it from here, after it has let go of the GIL: the caller polling
# for it then takes the GIL back without having to sleep on it.
from libc.stdint cimport int64_t

cdef extern from *:
    """
    #include <sched.h>
    #include <stdint.h>
    #include <time.h>
    static double minidiff_monotonic(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec + 1e-9 * t.tv_nsec;
    }
    static int minidiff_poll(const int64_t *counter, int64_t value, double seconds) {
        const double deadline = minidiff_monotonic() + seconds;
        for (unsigned turn = 0;; turn++) {
            if (__atomic_load_n(counter, __ATOMIC_ACQUIRE) != value) return 1;
            if (turn % 16 == 15 && minidiff_monotonic() > deadline) return 0;
            sched_yield();
        }
    }
    static void minidiff_store(int64_t *counter, int64_t value) { __atomic_store_n(counter, value, __ATOMIC_RELEASE); }
    """
    int minidiff_poll(const int64_t* counter, int64_t value, double seconds) noexcept nogil
    void minidiff_store(int64_t* counter, int64_t value) noexcept nogil


def store_counter(int64_t[::1] counters, Py_ssize_t index, int64_t value):
    """counters[index] = value, a store that the polling threads see after every write before it."""
    if not 0 <= index < counters.shape[0]:
        raise IndexError(f"counter {index} of {counters.shape[0]}")
    minidiff_store(&counters[index], value)


def poll_counter(int64_t[::1] counters, Py_ssize_t watched, int64_t value, double seconds,
                 Py_ssize_t published=-1, int64_t new_value=0):
    """Whether counters[watched] differs from ``value`` within ``seconds``, polled without the
    GIL; first, with ``published`` ≥ 0, counters[published] = new_value, stored after the GIL is let go."""
    if not 0 <= watched < counters.shape[0] or not -1 <= published < counters.shape[0]:
        raise IndexError(f"counters {watched} and {published} of {counters.shape[0]}")
    cdef int changed
    with nogil:
        if published >= 0:
            minidiff_store(&counters[published], new_value)
        changed = minidiff_poll(&counters[watched], value, seconds)
    return bool(changed)
