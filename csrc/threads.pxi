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
