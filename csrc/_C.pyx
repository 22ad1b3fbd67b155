# cython: language_level=3
"""minidiff's compiled CPU kernels, one .pxi per family; each mirrors a function of
minidiff/kernels/reference.py and is tested against it."""

include "im2col.pxi"
include "groupnorm.pxi"
include "winograd.pxi"


cimport openmp


def set_num_threads(int n):
    """OpenMP threads for the kernels this (Python) thread calls; other threads keep their own setting."""
    openmp.omp_set_num_threads(n)


def get_num_threads():
    """OpenMP threads the kernels called from this (Python) thread would use."""
    return openmp.omp_get_max_threads()
