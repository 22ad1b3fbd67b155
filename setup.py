"""Build the Cython kernels (csrc/*.pyx) into ``minidiff._C`` with -O3 and OpenMP.

Everything else lives in pyproject.toml. ``-march=native`` is never used by default, so a
wheel built here runs on any x86-64; set ``MINIDIFF_NATIVE=1`` to opt in on your own machine.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-adds, so compiled arithmetic rounds like the NumPy
# reference (except in the arithmetic-bound GroupNorm+SiLU loops: MINIDIFF_CLONES_WIDE in csrc/_C.pyx); -fno-math-errno: sqrt and friends need not set errno, so they inline and vectorise.
compile_args = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
if os.environ.get("MINIDIFF_NATIVE") == "1":
    compile_args.append("-march=native")

extensions = [
    Extension(
        "minidiff._C",
        sources=["csrc/_C.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=["-fopenmp"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
