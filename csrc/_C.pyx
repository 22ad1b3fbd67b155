# cython: language_level=3
"""minidiff's compiled CPU kernels, one .pxi per family; each mirrors a function of
minidiff/kernels/reference.py and is tested against it."""

cdef extern from *:
    """
    /* MINIDIFF_CLONES on a C helper compiles it twice, for AVX2 and for plain x86-64, and the
       loader picks the one the CPU runs: the wheel stays generic, the loops get 8 floats wide. */
    #if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    #define MINIDIFF_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define MINIDIFF_CLONES
    #endif
    """

include "im2col.pxi"
include "groupnorm.pxi"
include "winograd.pxi"
include "optim.pxi"


cimport openmp


def set_num_threads(int n):
    """OpenMP threads for the kernels this (Python) thread calls; other threads keep their own setting."""
    openmp.omp_set_num_threads(n)


def get_num_threads():
    """OpenMP threads the kernels called from this (Python) thread would use."""
    return openmp.omp_get_max_threads()
