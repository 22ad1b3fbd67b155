# cython: language_level=3
"""minidiff's compiled CPU kernels, one .pxi per family; each mirrors a function of
minidiff/kernels/reference.py and is tested against it."""

cdef extern from *:
    """
    /* MINIDIFF_CLONES on a C helper compiles it twice, for AVX2 and for plain x86-64, and the
       loader picks the one the CPU runs: the wheel stays generic, the loops get 8 floats wide. */
    /* MINIDIFF_CLONES_WIDE adds an AVX-512 clone, for the loops it pays in: GroupNorm+SiLU, whose
       exponential and division are arithmetic-bound (20-25 % faster per call, 5 % of a batch-64
       forward on an AMD EPYC). The Winograd transforms, memory-bound, got slower with one.
       These loops alone may also fuse a·b + c into one multiply-add (fp-contract=fast; setup.py
       forbids it elsewhere): the exponential's polynomial is a chain of them, and GroupNorm+SiLU
       then takes a third less time per call (54 → 36 µs for 10⁵ floats, Intel Xeon), a training
       step 4.2 % less (benchmarks/README.md). Their results differ from the NumPy reference in the
       last bits, as the sums' order already made them; the tests compare with a tolerance. */
    #if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    #define MINIDIFF_CLONES __attribute__((target_clones("avx2", "default")))
    #define MINIDIFF_CLONES_WIDE __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=fast")))
    #else
    #define MINIDIFF_CLONES
    #define MINIDIFF_CLONES_WIDE
    #endif

    #include <math.h>
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>

    /* e^x in float, written so that loops calling it vectorise (libm's expf is a scalar call):
       e^x = 2^n · p(r) with n = round(x / ln 2) by the 1.5·2^23 trick, r = x − n·ln 2 with ln 2
       split in two (Cody & Waite) and p Cephes' degree-6 polynomial. Relative error about 1e-7
       inside [−80, 80]; x is clamped there. Wider bounds made the compiler fold the clamped lanes
       into constants like e^88 whose use (a / (1 + e^88)) yields subnormal floats, and every
       subnormal costs a microcode assist: 15x slower. For σ the clamp moves values below 2e-35 only. */
    static inline float minidiff_expf(float x) {
        const float round_magic = 12582912.0f;
        x = x > -80.0f ? x : -80.0f;
        x = x < 80.0f ? x : 80.0f;
        float n = (x * 1.44269504088896341f + round_magic) - round_magic;
        float r = x - n * 0.693359375f + n * 2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        int32_t bits = ((int32_t)n + 127) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
    """

include "threads.pxi"
include "im2col.pxi"
include "groupnorm.pxi"
include "winograd.pxi"
include "winograd4.pxi"
include "optim.pxi"
include "resample.pxi"
include "softmax.pxi"


cimport openmp


def set_num_threads(int n):
    """OpenMP threads for the kernels this (Python) thread calls; other threads keep their own setting."""
    openmp.omp_set_num_threads(n)


def get_num_threads():
    """OpenMP threads the kernels called from this (Python) thread would use."""
    return openmp.omp_get_max_threads()
