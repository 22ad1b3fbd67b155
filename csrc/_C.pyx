# cython: language_level=3
"""minidiff's compiled CPU kernels, one .pxi per family; each mirrors a function of
minidiff/kernels/reference.py and is tested against it."""

include "im2col.pxi"
include "groupnorm.pxi"
