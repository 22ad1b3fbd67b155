# Winograd F(2×2, 3×3) tile transforms (reference: kernels/reference.py; Lavin & Gray 2016).
#
# Layout. Transformed tiles are stored as T[4ξ + ν, channel, (i·N + n)·(tW + 1) + j]: 16 planes,
# each channel's tiles contiguous, and within them row i of tiles of the N images side by side,
# each image's row ending in one spare tile (j = tW). So a channel's tiles are one long vector,
# and each transform below is a few loops over all of a channel's tiles at once. Loops over one
# row of tiles at a time ran tW iterations (4 at 7×7), and their overhead cost more than their
# arithmetic. The forward transforms run across the spare tiles and leave junk there, which
# the output transform never reads; the output adjoint writes zeros there, so the GEMM carries
# zeros into ∂V's spare tiles, and the input adjoint relies on that.
#
# Phase planes. A zero-padded plane P is split by the parity of its rows and columns into four
# (tH + 1) × (tW + 1) planes P[r % 2][q % 2][r // 2, q // 2], the images again side by side.
# Tile (i, j) covers rows 2i … 2i+3 of P: even row i, odd row i, even row i + 1, odd row i + 1
# of the phase planes, and likewise its columns. So along either axis a tile's four inputs are
# e[k], o[k], e[k + s], o[k + s], with s one row (N·(tW + 1)) or one column (1) of the flat
# planes: Bᵀ down the rows is one pass over the phase planes, B along the columns one more.
#
# One channel is one task; its thread has private buffers (one malloc for all of the threads,
# checked before the parallel region: MemoryError, never a write through NULL), so no two
# threads write the same element and the result does not depend on the thread count.
cimport openmp
from cython.parallel cimport parallel
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #include <stddef.h>

    /* One axis of Bᵀ d B: t = Bᵀ (d0, d1, d2, d3) with d = (e[k], o[k], e[k + s], o[k + s]),
       every k < len. `restrict` lets the compiler vectorise a loop with four output streams. */
    #define MINIDIFF_BT_PASS(T, NAME)                                                            \\
    MINIDIFF_CLONES static void NAME(const T *restrict e, const T *restrict o, ptrdiff_t s,        \\
                                     ptrdiff_t len, T *restrict t0, T *restrict t1,                \\
                                     T *restrict t2, T *restrict t3) {                             \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            const T d0 = e[k], d1 = o[k], d2 = e[k + s], d3 = o[k + s];                          \\
            t0[k] = d0 - d2; t1[k] = d1 + d2; t2[k] = d2 - d1; t3[k] = d1 - d3;                  \\
        }                                                                                        \\
    }

    /* The transpose of the Bᵀ pass: entry k of e (of o) is d0 (d1) of tile k and d2 (d3) of
       tile k − s, so it sums B g of both; e and o get len + s entries. */
    #define MINIDIFF_B_PASS(T, NAME)                                                             \\
    MINIDIFF_CLONES static void NAME(const T *restrict g0, const T *restrict g1,                   \\
                                     const T *restrict g2, const T *restrict g3, ptrdiff_t s,      \\
                                     ptrdiff_t len, T *restrict e, T *restrict o) {                \\
        for (ptrdiff_t k = 0; k < len; k++) { e[k] = g0[k]; o[k] = g1[k] - g2[k] + g3[k]; }      \\
        for (ptrdiff_t k = len; k < len + s; k++) { e[k] = 0; o[k] = 0; }                        \\
        for (ptrdiff_t k = 0; k < len; k++) { e[k + s] += g1[k] + g2[k] - g0[k]; o[k + s] -= g3[k]; } \\
    }

    /* One axis of Aᵀ M A: (s0, s1) = Aᵀ (m0, m1, m2, m3), every k < len. */
    #define MINIDIFF_AT_PASS(T, NAME)                                                            \\
    MINIDIFF_CLONES static void NAME(const T *restrict m0, const T *restrict m1,                   \\
                                     const T *restrict m2, const T *restrict m3, ptrdiff_t len,    \\
                                     T *restrict s0, T *restrict s1) {                             \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            s0[k] = m0[k] + m1[k] + m2[k]; s1[k] = m1[k] - m2[k] - m3[k];                        \\
        }                                                                                        \\
    }

    /* The transpose of the Aᵀ pass: (h0, h1, h2, h3) = A (g0, g1), every k < len. */
    #define MINIDIFF_A_PASS(T, NAME)                                                             \\
    MINIDIFF_CLONES static void NAME(const T *restrict g0, const T *restrict g1, ptrdiff_t len,    \\
                                     T *restrict h0, T *restrict h1, T *restrict h2,               \\
                                     T *restrict h3) {                                             \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            h0[k] = g0[k]; h1[k] = g0[k] + g1[k]; h2[k] = g0[k] - g1[k]; h3[k] = -g1[k];         \\
        }                                                                                        \\
    }

    /* One output plane, row by row: y[r·width + 2j + b] = (Aᵀ (s0, s1, s2, s3))[b] at tile j,
       + shift (+ residual, same layout), where s_ν is row r / 2 of plane 4·(r % 2) + ν of Aᵀ M
       (planes `tiles` apart, rows `row` apart), for the `width` columns kept: the Aᵀ pass along
       the columns, written out interleaved. One call per plane: a row is 4 to 7 tiles here. */
    #define MINIDIFF_AT_PLANE(T, NAME)                                                           \\
    MINIDIFF_CLONES static void NAME(const T *restrict s, ptrdiff_t tiles, ptrdiff_t row, T shift, \\
                                     const T *restrict residual, ptrdiff_t height, ptrdiff_t width, \\
                                     T *restrict y) {                                              \\
        const ptrdiff_t pairs = width / 2;                                                       \\
        for (ptrdiff_t r = 0; r < height; r++, y += width) {                                     \\
            const T *restrict s0 = s + 4 * (r % 2) * tiles + (r / 2) * row, *restrict s1 = s0 + tiles; \\
            const T *restrict s2 = s1 + tiles, *restrict s3 = s2 + tiles;                        \\
            for (ptrdiff_t j = 0; j < pairs; j++) {                                              \\
                y[2 * j] = s0[j] + s1[j] + s2[j] + shift;                                        \\
                y[2 * j + 1] = s1[j] - s2[j] - s3[j] + shift;                                    \\
            }                                                                                    \\
            if (width % 2) y[width - 1] = s0[pairs] + s1[pairs] + s2[pairs] + shift;             \\
            if (residual)                                                                        \\
                for (ptrdiff_t k = 0; k < width; k++) y[k] += residual[r * width + k];           \\
        }                                                                                        \\
    }

    /* even[j] = src[2j], odd[j] = src[2j + 1]: a row split by the parity of its columns. */
    #define MINIDIFF_DEINTERLEAVE(T, NAME)                                                       \\
    MINIDIFF_CLONES static void NAME(const T *restrict src, ptrdiff_t width, T *restrict even,     \\
                                     T *restrict odd) {                                            \\
        for (ptrdiff_t j = 0; j < width / 2; j++) { even[j] = src[2 * j]; odd[j] = src[2 * j + 1]; } \\
        if (width % 2) even[width / 2] = src[width - 1];                                         \\
    }

    /* dst[2j] = even[j], dst[2j + 1] = odd[j]: the inverse. */
    #define MINIDIFF_INTERLEAVE(T, NAME)                                                         \\
    MINIDIFF_CLONES static void NAME(const T *restrict even, const T *restrict odd,                \\
                                     ptrdiff_t width, T *restrict dst) {                           \\
        for (ptrdiff_t j = 0; j < width / 2; j++) { dst[2 * j] = even[j]; dst[2 * j + 1] = odd[j]; } \\
        if (width % 2) dst[width - 1] = even[width / 2];                                         \\
    }

    /* Σ src[k], k < width, vectorised in T. */
    #define MINIDIFF_ROW_SUM(T, NAME)                                                            \
    MINIDIFF_CLONES static T NAME(const T *restrict src, ptrdiff_t width) {                       \
        T total = 0;                                                                             \
        _Pragma("omp simd reduction(+:total)")                                                   \
        for (ptrdiff_t k = 0; k < width; k++) total += src[k];                                   \
        return total;                                                                            \
    }

    /* u[k·stride + p] = (G g_p Gᵀ)[k / 4, k % 4] for the filters g_p = g[9p … 9p + 8], p < count
       (count ≤ 64): G down the columns of g_p, then Gᵀ along the rows of G g_p, through local
       blocks laid out entry by entry so that every loop runs along the filters (vectorised).
       Read entry by entry, not filter by filter: a strided read the compiler vectorises, 2×
       faster. u is written a row segment at a time: a column of 16 per filter thrashed the
       cache (4× slower than NumPy's product). */
    #define MINIDIFF_FILTER_BLOCK(T, NAME)                                                       \
    MINIDIFF_CLONES static void NAME(const T *restrict g, ptrdiff_t count, ptrdiff_t stride,       \
                                     T *restrict u) {                                              \
        const T half = 0.5;                                                                      \
        T gb[9][64], t[12][64]; /* g's entries; G g_p, entry (i, j) at 3i + j */                 \
        for (int e = 0; e < 9; e++)                                                              \
            for (ptrdiff_t p = 0; p < count; p++) gb[e][p] = g[9 * p + e];                       \
        for (int r = 0; r < 3; r++)                                                              \
            for (ptrdiff_t p = 0; p < count; p++) {                                              \
                const T a = gb[r][p], b = gb[3 + r][p], c = gb[6 + r][p];                        \
                t[r][p] = a; t[3 + r][p] = (a + b + c) * half;                                   \
                t[6 + r][p] = (a - b + c) * half; t[9 + r][p] = c;                               \
            }                                                                                    \
        for (int i = 0; i < 4; i++) {                                                            \
            T *restrict u0 = u + 4 * i * stride, *restrict u1 = u0 + stride;                     \
            T *restrict u2 = u1 + stride, *restrict u3 = u2 + stride;                            \
            for (ptrdiff_t p = 0; p < count; p++) {                                              \
                const T a = t[3 * i][p], b = t[3 * i + 1][p], c = t[3 * i + 2][p];               \
                u0[p] = a; u1[p] = (a + b + c) * half; u2[p] = (a - b + c) * half; u3[p] = c;    \
            }                                                                                    \
        }                                                                                        \
    }

    /* dst[p·ld + k] = src[k·n + p] for k < rows, p < n: a block of channels' transformed tiles
       (rows of n) written as the transposed layout's columns, V[ξ]ᵀ (tiles, C), so that the filter
       gradient's GEMM ∂U[ξ] = ∂M[ξ]·V[ξ]ᵀ reads both operands row-major ("NN"). Element by
       element it costs more than the NN product saves; a block of 16 float rows goes 16 columns
       at a time through an AVX-512 in-register transpose where the CPU has one (a 28×28×32 chunk
       of 4 images: the transposed transform 141 µs against 197 element by element, 84 untransposed). */
    #define MINIDIFF_TRANSPOSE_BLOCK(T, NAME, FAST)                                              \
    static void NAME(const T *restrict src, ptrdiff_t rows, ptrdiff_t n, T *restrict dst,          \
                     ptrdiff_t ld) {                                                               \
        ptrdiff_t p = FAST(src, rows, n, dst, ld);                                               \
        for (; p < n; p++)                                                                       \
            for (ptrdiff_t k = 0; k < rows; k++) dst[p * ld + k] = src[k * n + p];               \
    }

    #if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    #include <immintrin.h>
    /* The 16 × 16 block at src (rows n apart) into dst (rows ld apart): unpack pairs of rows,
       shuffle within 128-bit lanes into columns of 4 rows, then gather the lanes of 4 such. */
    __attribute__((target("avx512f"))) static void transpose16x16_f(const float *src, ptrdiff_t n,
                                                                    float *dst, ptrdiff_t ld) {
        __m512 r[16], t[16], u[16];
        for (int k = 0; k < 16; k++) r[k] = _mm512_loadu_ps(src + k * n);
        for (int k = 0; k < 8; k++) {  /* per lane: (a0 b0 a1 b1), (a2 b2 a3 b3) */
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        for (int g = 0; g < 4; g++) {  /* u[4g + q], lane L: rows 4g … 4g+3 of column 4L + q */
            u[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
            u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
            u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
            u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
        }
        for (int q = 0; q < 4; q++) {  /* column 4L + q: lane L of u[q], u[4 + q], u[8 + q], u[12 + q] */
            __m512 v0 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88), v1 = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xDD);
            __m512 w0 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88), w1 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xDD);
            _mm512_storeu_ps(dst + q * ld, _mm512_shuffle_f32x4(v0, w0, 0x88));
            _mm512_storeu_ps(dst + (8 + q) * ld, _mm512_shuffle_f32x4(v0, w0, 0xDD));
            _mm512_storeu_ps(dst + (4 + q) * ld, _mm512_shuffle_f32x4(v1, w1, 0x88));
            _mm512_storeu_ps(dst + (12 + q) * ld, _mm512_shuffle_f32x4(v1, w1, 0xDD));
        }
    }

    static int transpose_fast_available(void) { return __builtin_cpu_supports("avx512f"); }

    /* y[k] (+ residual[k]) for k < keep (at most 8) from the lanes of v: masked past `keep`. */
    __attribute__((target("avx2"))) static inline void store_first_f(__m256 v, ptrdiff_t keep, const float *residual, float *y) {
        if (keep >= 8) {
            if (residual) v = _mm256_add_ps(v, _mm256_loadu_ps(residual));
            _mm256_storeu_ps(y, v);
        } else if (keep > 0) {
            const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)keep), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            if (residual) v = _mm256_add_ps(v, _mm256_maskload_ps(residual, mask));
            _mm256_maskstore_ps(y, mask, v);
        }
    }

    /* The columns p < the returned count, 16 at a time, when there are 16 rows and AVX-512. */
    static ptrdiff_t transpose_fast_f(const float *src, ptrdiff_t rows, ptrdiff_t n, float *dst, ptrdiff_t ld) {
        ptrdiff_t p = 0;
        if (rows == 16 && transpose_fast_available())
            for (; p + 16 <= n; p += 16) transpose16x16_f(src + p, n, dst + p * ld, ld);
        return p;
    }
    #else
    static int transpose_fast_available(void) { return 0; }
    static ptrdiff_t transpose_fast_f(const float *src, ptrdiff_t rows, ptrdiff_t n, float *dst, ptrdiff_t ld) { return 0; }
    #endif
    static ptrdiff_t transpose_fast_d(const double *src, ptrdiff_t rows, ptrdiff_t n, double *dst, ptrdiff_t ld) { return 0; }

    MINIDIFF_TRANSPOSE_BLOCK(float, transpose_block_f, transpose_fast_f)
    MINIDIFF_TRANSPOSE_BLOCK(double, transpose_block_d, transpose_fast_d)
    MINIDIFF_FILTER_BLOCK(float, winograd_filter_block_f)
    MINIDIFF_FILTER_BLOCK(double, winograd_filter_block_d)
    MINIDIFF_BT_PASS(float, winograd_bt_pass_f)
    MINIDIFF_BT_PASS(double, winograd_bt_pass_d)
    MINIDIFF_B_PASS(float, winograd_b_pass_f)
    MINIDIFF_B_PASS(double, winograd_b_pass_d)
    MINIDIFF_AT_PASS(float, winograd_at_pass_f)
    MINIDIFF_AT_PASS(double, winograd_at_pass_d)
    MINIDIFF_A_PASS(float, winograd_a_pass_f)
    MINIDIFF_A_PASS(double, winograd_a_pass_d)
    MINIDIFF_AT_PLANE(float, winograd_at_plane_scalar_f)
    MINIDIFF_AT_PLANE(double, winograd_at_plane_d)
    MINIDIFF_DEINTERLEAVE(float, deinterleave_f)
    MINIDIFF_DEINTERLEAVE(double, deinterleave_d)
    MINIDIFF_INTERLEAVE(float, interleave_f)
    MINIDIFF_INTERLEAVE(double, interleave_d)
    MINIDIFF_ROW_SUM(float, row_sum_f)
    MINIDIFF_ROW_SUM(double, row_sum_d)

    #if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    /* MINIDIFF_AT_PLANE for float, 8 tiles of a row at once (lane t: tile j + t), the arithmetic
       in the same order; the even and odd outputs are then interleaved in registers and `width`
       of the 16 stored. Rows are read 8 tiles at a time, up to 7 entries past a row's last
       tile: the caller's buffer has room. */
    __attribute__((target("avx2"))) static void winograd_at_plane_avx2_f(const float *s, ptrdiff_t tiles, ptrdiff_t row, float shift,
                                                                          const float *residual, ptrdiff_t height, ptrdiff_t width, float *y) {
        const __m256 sh = _mm256_set1_ps(shift);
        for (ptrdiff_t r = 0; r < height; r++, y += width) {
            const float *s0 = s + 4 * (r % 2) * tiles + (r / 2) * row;
            const float *res = residual ? residual + r * width : NULL;
            for (ptrdiff_t j = 0; 2 * j < width; j += 8) {
                const __m256 m0 = _mm256_loadu_ps(s0 + j), m1 = _mm256_loadu_ps(s0 + tiles + j);
                const __m256 m2 = _mm256_loadu_ps(s0 + 2 * tiles + j), m3 = _mm256_loadu_ps(s0 + 3 * tiles + j);
                const __m256 even = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(m0, m1), m2), sh);
                const __m256 odd = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(m1, m2), m3), sh);
                /* lanes (0 … 3, 4 … 7): tiles (0, 1, 4, 5) and (2, 3, 6, 7), even and odd alternating */
                const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
                const ptrdiff_t left = width - 2 * j;
                store_first_f(_mm256_permute2f128_ps(lo, hi, 0x20), left, res ? res + 2 * j : NULL, y + 2 * j);
                store_first_f(_mm256_permute2f128_ps(lo, hi, 0x31), left - 8, res ? res + 2 * j + 8 : NULL, y + 2 * j + 8);
            }
        }
    }

    static void winograd_at_plane_f(const float *s, ptrdiff_t tiles, ptrdiff_t row, float shift, const float *residual,
                                    ptrdiff_t height, ptrdiff_t width, float *y) {
        if (__builtin_cpu_supports("avx2"))
            winograd_at_plane_avx2_f(s, tiles, row, shift, residual, height, width, y);
        else
            winograd_at_plane_scalar_f(s, tiles, row, shift, residual, height, width, y);
    }
    #else
    #define winograd_at_plane_f winograd_at_plane_scalar_f
    #endif
    """
    void winograd_bt_pass_f(const float* e, const float* o, Py_ssize_t s, Py_ssize_t length,
                            float* t0, float* t1, float* t2, float* t3) noexcept nogil
    void winograd_bt_pass_d(const double* e, const double* o, Py_ssize_t s, Py_ssize_t length,
                            double* t0, double* t1, double* t2, double* t3) noexcept nogil
    void winograd_b_pass_f(const float* g0, const float* g1, const float* g2, const float* g3,
                           Py_ssize_t s, Py_ssize_t length, float* e, float* o) noexcept nogil
    void winograd_b_pass_d(const double* g0, const double* g1, const double* g2, const double* g3,
                           Py_ssize_t s, Py_ssize_t length, double* e, double* o) noexcept nogil
    void winograd_at_pass_f(const float* m0, const float* m1, const float* m2, const float* m3,
                            Py_ssize_t length, float* s0, float* s1) noexcept nogil
    void winograd_at_pass_d(const double* m0, const double* m1, const double* m2, const double* m3,
                            Py_ssize_t length, double* s0, double* s1) noexcept nogil
    void winograd_a_pass_f(const float* g0, const float* g1, Py_ssize_t length,
                           float* h0, float* h1, float* h2, float* h3) noexcept nogil
    void winograd_a_pass_d(const double* g0, const double* g1, Py_ssize_t length,
                           double* h0, double* h1, double* h2, double* h3) noexcept nogil
    void winograd_at_plane_f(const float* s, Py_ssize_t tiles, Py_ssize_t row, float shift, const float* residual,
                             Py_ssize_t height, Py_ssize_t width, float* y) noexcept nogil
    void winograd_at_plane_d(const double* s, Py_ssize_t tiles, Py_ssize_t row, double shift, const double* residual,
                             Py_ssize_t height, Py_ssize_t width, double* y) noexcept nogil
    void deinterleave_f(const float* src, Py_ssize_t width, float* even, float* odd) noexcept nogil
    void deinterleave_d(const double* src, Py_ssize_t width, double* even, double* odd) noexcept nogil
    void interleave_f(const float* even, const float* odd, Py_ssize_t width, float* dst) noexcept nogil
    void interleave_d(const double* even, const double* odd, Py_ssize_t width, double* dst) noexcept nogil
    float row_sum_f(const float* src, Py_ssize_t width) noexcept nogil
    void winograd_filter_block_f(const float* g, Py_ssize_t count, Py_ssize_t stride, float* u) noexcept nogil
    void winograd_filter_block_d(const double* g, Py_ssize_t count, Py_ssize_t stride, double* u) noexcept nogil
    double row_sum_d(const double* src, Py_ssize_t width) noexcept nogil
    int transpose_fast_available() noexcept nogil
    void transpose_block_f(const float* src, Py_ssize_t rows, Py_ssize_t n, float* dst, Py_ssize_t ld) noexcept nogil
    void transpose_block_d(const double* src, Py_ssize_t rows, Py_ssize_t n, double* dst, Py_ssize_t ld) noexcept nogil

# Channels per block when a transform writes the transposed layout (α², tiles, C): 16 floats,
# one cache line of each transposed row at a time.
TRANSPOSE_BLOCK = 16


def winograd_fast_transpose():
    """Whether this CPU runs the transposed layout's 16 × 16 float blocks through the AVX-512 transpose."""
    return bool(transpose_fast_available())


cdef inline void _transpose_block(const real* src, Py_ssize_t rows, Py_ssize_t n, real* dst, Py_ssize_t ld) noexcept nogil:
    if real is float:
        transpose_block_f(src, rows, n, dst, ld)
    else:
        transpose_block_d(src, rows, n, dst, ld)


cdef inline void _bt_pass(const real* e, const real* o, Py_ssize_t s, Py_ssize_t length,
                          real* t0, real* t1, real* t2, real* t3) noexcept nogil:
    if real is float:
        winograd_bt_pass_f(e, o, s, length, t0, t1, t2, t3)
    else:
        winograd_bt_pass_d(e, o, s, length, t0, t1, t2, t3)


cdef inline void _b_pass(const real* g0, const real* g1, const real* g2, const real* g3,
                         Py_ssize_t s, Py_ssize_t length, real* e, real* o) noexcept nogil:
    if real is float:
        winograd_b_pass_f(g0, g1, g2, g3, s, length, e, o)
    else:
        winograd_b_pass_d(g0, g1, g2, g3, s, length, e, o)


cdef inline void _at_pass(const real* m0, const real* m1, const real* m2, const real* m3,
                          Py_ssize_t length, real* s0, real* s1) noexcept nogil:
    if real is float:
        winograd_at_pass_f(m0, m1, m2, m3, length, s0, s1)
    else:
        winograd_at_pass_d(m0, m1, m2, m3, length, s0, s1)


cdef inline void _a_pass(const real* g0, const real* g1, Py_ssize_t length,
                         real* h0, real* h1, real* h2, real* h3) noexcept nogil:
    if real is float:
        winograd_a_pass_f(g0, g1, length, h0, h1, h2, h3)
    else:
        winograd_a_pass_d(g0, g1, length, h0, h1, h2, h3)


cdef inline void _at_plane(const real* s, Py_ssize_t tiles, Py_ssize_t row, real shift, const real* residual,
                           Py_ssize_t height, Py_ssize_t width, real* y) noexcept nogil:
    if real is float:
        winograd_at_plane_f(s, tiles, row, shift, residual, height, width, y)
    else:
        winograd_at_plane_d(s, tiles, row, shift, residual, height, width, y)


cdef inline void _deinterleave(const real* src, Py_ssize_t width, real* even, real* odd) noexcept nogil:
    if real is float:
        deinterleave_f(src, width, even, odd)
    else:
        deinterleave_d(src, width, even, odd)


cdef inline void _interleave(const real* even, const real* odd, Py_ssize_t width, real* dst) noexcept nogil:
    if real is float:
        interleave_f(even, odd, width, dst)
    else:
        interleave_d(even, odd, width, dst)


cdef inline real _row_sum(const real* src, Py_ssize_t width) noexcept nogil:
    if real is float:
        return row_sum_f(src, width)
    else:
        return row_sum_d(src, width)


cdef inline Py_ssize_t _phase_offset(Py_ssize_t r, Py_ssize_t q, Py_ssize_t phase, Py_ssize_t row) noexcept nogil:
    """Where entry (r, q) of a padded plane lands: phase plane (r % 2, q % 2), row r // 2, column q // 2."""
    return (2 * (r % 2) + q % 2) * phase + (r // 2) * row + q // 2


cdef enum:
    ROW_OVERREAD = 8  # values the vectorised output passes read (and drop) past a row's last tile


cdef real* _per_thread(Py_ssize_t size, int threads, real* like, Py_ssize_t zeroed=0) except NULL:
    """Scratch of ``size`` elements for each of ``threads`` threads, of the type ``like`` points
    to, the last ``zeroed`` of each set to 0; the caller frees it. (NumPy's allocation and a
    memoryview of it cost a microsecond per call, 1 % of a batch-1 forward.)"""
    cdef real* buffers = <real*> malloc(threads * size * sizeof(real))
    if buffers == NULL:
        raise MemoryError(f"Winograd transform: no memory for {threads} × {size} scratch values")
    cdef int t
    for t in range(threads):
        memset(buffers + (t + 1) * size - zeroed, 0, zeroed * sizeof(real))
    return buffers


def winograd_input_transform(const real[:, :, :, ::1] x, int padding, int th, int tw, real[:, :, ::1] v,
                             const real[:, ::1] mean, const real[:, ::1] rstd, const real[::1] weight, const real[::1] bias,
                             bint transposed):
    """v[4ξ + ν, c, (i·N + n)·(tW + 1) + j] = (Bᵀ d B)[ξ, ν], d = rows 2i…2i+3, columns 2j…2j+3
    of x[n, c] zero-padded; the spare tiles (j = tW) get junk. With a non-empty ``mean`` (N, G),
    d is taken from SiLU(GroupNorm(x)) instead, each plane normalised as it is read (``rstd`` (N, G),
    ``weight`` and ``bias`` (C,)). ``transposed``: v is (16, tiles, C), the same values at
    v[4ξ + ν, tile, c], written TRANSPOSE_BLOCK channels at a time."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t row = n_images * (tw + 1), tiles = th * row
    # a phase plane has tH + 1 rows and one entry more, read by the Bᵀ pass for the spare at the very end
    cdef Py_ssize_t phase = (th + 1) * row + 1
    cdef Py_ssize_t c, n, r, xi, b, e, block, first
    cdef bint normalised = mean.shape[0] > 0
    cdef Py_ssize_t per_group = channels // mean.shape[1] if normalised else 1
    # a block of channels at a time: their rows of V staged, then written transposed (or one channel, in place)
    cdef Py_ssize_t block_size = TRANSPOSE_BLOCK if transposed else 1
    cdef Py_ssize_t blocks = (channels + block_size - 1) // block_size
    cdef Py_ssize_t staged_size = 16 * block_size * tiles if transposed else 0
    # entry 4ξ + ν of channel first + k: at dst + (4ξ + ν)·stride + k·tiles
    cdef Py_ssize_t stride = block_size * tiles if transposed else v.shape[1] * v.shape[2]
    # per thread: the 4 phase planes, then Bᵀ d for (ξ, column parity), then one normalised plane, then the staged rows
    cdef Py_ssize_t per_thread = 4 * phase + 8 * (tiles + 1) + h * w + staged_size
    cdef int threads = threads_for(n_images * channels * h * w)
    cdef real* buffers = _per_thread(per_thread, threads, &v[0, 0, 0])
    cdef real* planes = NULL
    cdef real* vc
    cdef real* normalised_plane
    cdef real* staged
    cdef const real* src
    with nogil, parallel(num_threads=threads):
        planes = buffers + openmp.omp_get_thread_num() * per_thread
        normalised_plane = planes + 4 * phase + 8 * (tiles + 1)
        staged = normalised_plane + h * w
        for block in prange(blocks, schedule="static"):
            first = block * block_size
            for c in range(first, min(first + block_size, channels)):
                memset(planes, 0, 4 * phase * sizeof(real))  # the padding
                for n in range(n_images):
                    src = &x[n, c, 0, 0]
                    if normalised:  # the whole plane at once: long loops for the exponential
                        _gn_silu_row(src, h * w, mean[n, c // per_group], rstd[n, c // per_group], weight[c], bias[c], normalised_plane)
                        src = normalised_plane
                    for r in range(h):  # x[n, c, r, col] is P[r + padding, col + padding]
                        _deinterleave(src + r * w, w,
                                      planes + _phase_offset(r + padding, padding, phase, row) + n * (tw + 1),
                                      planes + _phase_offset(r + padding, padding + 1, phase, row) + n * (tw + 1))
                for b in range(2):  # Bᵀ down the rows, s = one row of tiles, for each column parity b
                    _bt_pass(planes + b * phase, planes + (2 + b) * phase, row, tiles + 1,
                             planes + 4 * phase + b * (tiles + 1), planes + 4 * phase + (2 + b) * (tiles + 1),
                             planes + 4 * phase + (4 + b) * (tiles + 1), planes + 4 * phase + (6 + b) * (tiles + 1))
                for xi in range(4):  # then B along the columns, s = 1: row ξ of Bᵀ d B
                    vc = (staged + 4 * xi * stride + (c - first) * tiles) if transposed else &v[4 * xi, c, 0]
                    _bt_pass(planes + 4 * phase + 2 * xi * (tiles + 1), planes + 4 * phase + (2 * xi + 1) * (tiles + 1), 1, tiles,
                             vc, vc + stride, vc + 2 * stride, vc + 3 * stride)
            if transposed:
                for e in range(16):
                    _transpose_block(staged + e * stride, min(block_size, channels - first), tiles, &v[e, 0, first], channels)
    free(buffers)


def winograd_input_transform_adjoint(const real[:, :, ::1] grad_v, int padding, int th, int tw, real[:, :, :, ::1] grad_x):
    """grad_x[n, c] = the sum over tiles of B ∂V Bᵀ placed at (2i, 2j), with the padding cut off.
    The spare tiles of ∂V must hold zeros: they do when ∂V = Uᵀ·∂M with ∂M from the output adjoint."""
    cdef Py_ssize_t n_images = grad_x.shape[0], channels = grad_x.shape[1], h = grad_x.shape[2], w = grad_x.shape[3]
    cdef Py_ssize_t row = n_images * (tw + 1), tiles = th * row, plane_stride = grad_v.shape[1] * grad_v.shape[2]
    cdef Py_ssize_t phase = (th + 1) * row + 1
    cdef Py_ssize_t c, n, r, xi, b
    # per thread: ∂ of the 4 phase planes, then ∂(Bᵀ d)
    cdef int threads = threads_for(n_images * channels * h * w)
    cdef real* buffers = _per_thread(4 * phase + 8 * (tiles + 1), threads, &grad_x[0, 0, 0, 0])
    cdef real* planes = NULL
    cdef const real* gv
    with nogil, parallel(num_threads=threads):
        planes = buffers + openmp.omp_get_thread_num() * (4 * phase + 8 * (tiles + 1))
        for c in prange(channels, schedule="static"):
            for xi in range(4):  # the transposes in reverse order: the columns' pass first
                gv = &grad_v[4 * xi, c, 0]
                _b_pass(gv, gv + plane_stride, gv + 2 * plane_stride, gv + 3 * plane_stride, 1, tiles,
                        planes + 4 * phase + 2 * xi * (tiles + 1), planes + 4 * phase + (2 * xi + 1) * (tiles + 1))
            for b in range(2):
                _b_pass(planes + 4 * phase + b * (tiles + 1), planes + 4 * phase + (2 + b) * (tiles + 1),
                        planes + 4 * phase + (4 + b) * (tiles + 1), planes + 4 * phase + (6 + b) * (tiles + 1), row, tiles + 1,
                        planes + b * phase, planes + (2 + b) * phase)
            for n in range(n_images):
                for r in range(h):  # the padding's entries are dropped
                    _interleave(planes + _phase_offset(r + padding, padding, phase, row) + n * (tw + 1),
                                planes + _phase_offset(r + padding, padding + 1, phase, row) + n * (tw + 1),
                                w, &grad_x[n, c, r, 0])
    free(buffers)


def winograd_output_transform(const real[:, :, ::1] m, const real[::1] bias, const real[:, :, :, ::1] residual,
                              real[:, :, :, ::1] y):
    """y[n, o] = the tiles Aᵀ M A + bias[o] side by side, cropped to (Hₒ, Wₒ), + residual[n, o].
    ``bias`` and ``residual`` may be empty (zero); a (N, C_out, 1, 1) residual is one shift per plane."""
    cdef Py_ssize_t n_images = y.shape[0], channels = y.shape[1], ho = y.shape[2], wo = y.shape[3]
    cdef Py_ssize_t tw = (wo + 1) // 2, row = n_images * (tw + 1), tiles = ((ho + 1) // 2) * row
    cdef Py_ssize_t plane_stride = m.shape[1] * m.shape[2]
    cdef Py_ssize_t o, n, r, nu
    cdef real shift
    cdef bint per_plane = residual.shape[0] > 0 and residual.shape[2] == 1 and residual.shape[3] == 1 and ho * wo > 1
    cdef bint full = residual.shape[0] > 0 and not per_plane
    cdef int threads = threads_for(n_images * channels * ho * wo)
    # per thread: Aᵀ M for (output row parity a, ν) at (4a + ν)·tiles, then zeros for the A pass to overread
    cdef Py_ssize_t per_thread = 8 * tiles + ROW_OVERREAD
    cdef real* buffers = _per_thread(per_thread, threads, &y[0, 0, 0, 0], ROW_OVERREAD)
    cdef real* at_m = NULL
    cdef const real* mo
    with nogil, parallel(num_threads=threads):
        at_m = buffers + openmp.omp_get_thread_num() * per_thread
        for o in prange(channels, schedule="static"):
            for nu in range(4):  # Aᵀ down the rows
                mo = &m[nu, o, 0]
                _at_pass(mo, mo + 4 * plane_stride, mo + 8 * plane_stride, mo + 12 * plane_stride, tiles,
                         at_m + nu * tiles, at_m + (4 + nu) * tiles)
            for n in range(n_images):
                shift = bias[o] if bias.shape[0] > 0 else 0
                if per_plane:
                    shift = shift + residual[n, o, 0, 0]
                # then A along the columns, row by row, in one call per plane
                _at_plane(at_m + n * (tw + 1), tiles, row, shift, &residual[n, o, 0, 0] if full else NULL, ho, wo, &y[n, o, 0, 0])
    free(buffers)


def winograd_output_transform_adjoint(const real[:, :, :, ::1] grad_y, real[:, :, ::1] grad_m, real[:, ::1] plane_sums):
    """grad_m[4ξ + ν, o, (i·N + n)·(tW + 1) + j] = (A ∂Y Aᵀ)[ξ, ν] for the 2×2 tile of grad_y[n, o]
    at (2i, 2j), zero-padded; the spare tiles get zeros. plane_sums[n, o] = Σ grad_y[n, o] (rows
    summed in T, the rows' sums in double), read on the way: the bias's gradient, per image."""
    cdef Py_ssize_t n_images = grad_y.shape[0], channels = grad_y.shape[1], ho = grad_y.shape[2], wo = grad_y.shape[3]
    cdef Py_ssize_t tw = (wo + 1) // 2, row = n_images * (tw + 1), tiles = ((ho + 1) // 2) * row
    cdef Py_ssize_t plane_stride = grad_m.shape[1] * grad_m.shape[2]
    cdef Py_ssize_t o, n, r, xi, b
    cdef double total
    # per thread: ∂Y split by row and column parity, then A ∂Y
    cdef int threads = threads_for(n_images * channels * ho * wo)
    cdef real* buffers = _per_thread(12 * tiles, threads, &grad_m[0, 0, 0])
    cdef real* planes = NULL
    cdef real* gm
    with nogil, parallel(num_threads=threads):
        planes = buffers + openmp.omp_get_thread_num() * (12 * tiles)
        for o in prange(channels, schedule="static"):
            memset(planes, 0, 4 * tiles * sizeof(real))  # cropped positions and spare tiles
            for n in range(n_images):
                total = 0
                for r in range(ho):
                    _deinterleave(&grad_y[n, o, r, 0], wo, planes + 2 * (r % 2) * tiles + (r // 2) * row + n * (tw + 1),
                                  planes + (2 * (r % 2) + 1) * tiles + (r // 2) * row + n * (tw + 1))
                    total = total + _row_sum(&grad_y[n, o, r, 0], wo)
                plane_sums[n, o] = <real> total
            for b in range(2):  # A down the rows, for each column parity b
                _a_pass(planes + b * tiles, planes + (2 + b) * tiles, tiles,
                        planes + (4 + b) * tiles, planes + (6 + b) * tiles, planes + (8 + b) * tiles, planes + (10 + b) * tiles)
            for xi in range(4):  # then along the columns: row ξ of A ∂Y Aᵀ
                gm = &grad_m[4 * xi, o, 0]
                _a_pass(planes + (4 + 2 * xi) * tiles, planes + (5 + 2 * xi) * tiles, tiles,
                        gm, gm + plane_stride, gm + 2 * plane_stride, gm + 3 * plane_stride)
    free(buffers)


cdef enum:
    FILTER_BLOCK = 64  # filters per block of winograd_filter_block_*


def winograd_filter_transform(const real[:, ::1] g, real[:, ::1] u):
    """u[4ξ + ν, p] = (G g_p Gᵀ)[ξ, ν] for every 3×3 filter g_p = g[p] (row-major, 9 entries),
    FILTER_BLOCK filters at a time. u's rows may be longer than the filters are many (the rest
    is left alone): rows C_out·C apart, a multiple of 4 KiB for 32 or 64 channels, all start in
    the same cache set, which cost a third of the time."""
    cdef Py_ssize_t k, first
    with nogil:
        for k in range((g.shape[0] + FILTER_BLOCK - 1) // FILTER_BLOCK):
            first = k * FILTER_BLOCK
            if real is float:
                winograd_filter_block_f(&g[first, 0], min(FILTER_BLOCK, g.shape[0] - first), u.shape[1], &u[0, first])
            else:
                winograd_filter_block_d(&g[first, 0], min(FILTER_BLOCK, g.shape[0] - first), u.shape[1], &u[0, first])


def winograd_filter_transform_adjoint(const real[:, ::1] grad_u, real[:, ::1] grad_g):
    """grad_g[p] = Gᵀ ∂U_p G with ∂U_p[ξ, ν] = grad_u[4ξ + ν, p]: the transposes of the two
    passes of winograd_filter_block_*, in reverse order (G along the rows of ∂U_p, then down its
    columns), FILTER_BLOCK filters at a time, grad_u's rows copied to a local block first (once
    per step, so its speed matters less than the forward's)."""
    cdef Py_ssize_t p, first, count, xi, col, k
    cdef real s[4][3]  # ∂U_p G
    cdef real block[16][FILTER_BLOCK]
    cdef real a, b, c, d, half = 0.5
    with nogil:
        for k in range((grad_g.shape[0] + FILTER_BLOCK - 1) // FILTER_BLOCK):
            first = k * FILTER_BLOCK
            count = min(FILTER_BLOCK, grad_g.shape[0] - first)
            for xi in range(16):
                memcpy(&block[xi][0], &grad_u[xi, first], count * sizeof(real))
            for p in range(count):
                for xi in range(4):
                    a, b, c, d = block[4 * xi][p], block[4 * xi + 1][p], block[4 * xi + 2][p], block[4 * xi + 3][p]
                    s[xi][0], s[xi][1], s[xi][2] = a + (b + c) * half, (b - c) * half, (b + c) * half + d
                for col in range(3):
                    a, b, c, d = s[0][col], s[1][col], s[2][col], s[3][col]
                    grad_g[first + p, col], grad_g[first + p, 3 + col], grad_g[first + p, 6 + col] = a + (b + c) * half, (b - c) * half, (b + c) * half + d
