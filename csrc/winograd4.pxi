# Winograd F(4×4, 3×3) tile transforms (reference: kernels/reference.py with m = 4; Lavin & Gray
# 2016, Section 4.2, interpolation points 0, ±1, ±2).
#
# The layout and the scheme are winograd.pxi's, with 6×6 tiles at stride 4: transformed tiles
# T[6ξ + ν, channel, (i·N + n)·(tW + 1) + j], a spare tile per row of tiles, one channel per
# task. A zero-padded plane P is split by its rows and columns modulo 4 into 16 phase planes
# P[r % 4][q % 4][r // 4, q // 4] of (tH + 1) × (tW + 1) tiles, the images side by side. Tile
# (i, j) covers rows 4i … 4i+5 of P: phases 0, 1, 2, 3 of row i and 0, 1 of row i + 1, and
# likewise its columns. So along either axis a tile's six inputs are
# p0[k], p1[k], p2[k], p3[k], p0[k + s], p1[k + s], with s one row (N·(tW + 1)) or one column
# (1) of the flat planes: Bᵀ down the rows is one pass over the phase planes (six outputs for
# each of the 4 column phases), B along the columns one more. Every loop runs along a channel's
# tiles, unit-stride.
#
# Against F(2×2, 3×3) a 16-output tile needs 36 transformed values instead of 64 (2.25× the
# input's size rather than 4×) and 36 GEMM multiply-adds per channel pair instead of 64, for
# transforms of 6 terms with small integer weights instead of 2.

cdef extern from *:
    """
    #include <stddef.h>

    /* One axis of Bᵀ d B: t = Bᵀ (d0 … d5) with d = (p0[k], p1[k], p2[k], p3[k], p0[k + s], p1[k + s]),
       every k < len. */
    #define MINIDIFF_BT6_PASS(T, NAME)                                                           \\
    MINIDIFF_CLONES static void NAME(const T *restrict p0, const T *restrict p1,                   \\
                                     const T *restrict p2, const T *restrict p3, ptrdiff_t s,      \\
                                     ptrdiff_t len, T *restrict t0, T *restrict t1,                \\
                                     T *restrict t2, T *restrict t3, T *restrict t4,               \\
                                     T *restrict t5) {                                             \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            const T d0 = p0[k], d1 = p1[k], d2 = p2[k], d3 = p3[k], d4 = p0[k + s], d5 = p1[k + s]; \\
            const T a = d4 - 4 * d2, b = d3 - 4 * d1, c = d4 - d2, e = 2 * (d3 - d1);              \\
            t0[k] = 4 * d0 - 5 * d2 + d4; t1[k] = a + b; t2[k] = a - b;                          \\
            t3[k] = c + e; t4[k] = c - e; t5[k] = 4 * d1 - 5 * d3 + d5;                          \\
        }                                                                                        \\
    }

    /* The transpose of the Bᵀ pass: (B g)_0 … (B g)_3 of tile k go to p0 … p3 at k, and (B g)_4,
       (B g)_5 to p0, p1 at k + s; p0 … p3 get len + s entries. */
    #define MINIDIFF_B6_PASS(T, NAME)                                                            \\
    MINIDIFF_CLONES static void NAME(const T *restrict g0, const T *restrict g1,                   \\
                                     const T *restrict g2, const T *restrict g3,                   \\
                                     const T *restrict g4, const T *restrict g5, ptrdiff_t s,      \\
                                     ptrdiff_t len, T *restrict p0, T *restrict p1,                \\
                                     T *restrict p2, T *restrict p3) {                             \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            p0[k] = 4 * g0[k];                                                                   \\
            p1[k] = 4 * (g2[k] - g1[k] + g5[k]) - 2 * (g3[k] - g4[k]);                           \\
            p2[k] = -5 * g0[k] - 4 * (g1[k] + g2[k]) - g3[k] - g4[k];                            \\
            p3[k] = g1[k] - g2[k] + 2 * (g3[k] - g4[k]) - 5 * g5[k];                             \\
        }                                                                                        \\
        for (ptrdiff_t k = len; k < len + s; k++) { p0[k] = 0; p1[k] = 0; p2[k] = 0; p3[k] = 0; } \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            p0[k + s] += g0[k] + g1[k] + g2[k] + g3[k] + g4[k]; p1[k + s] += g5[k];              \\
        }                                                                                        \\
    }

    /* One axis of Aᵀ M A: (s0 … s3) = Aᵀ (m0 … m5), every k < len; m_x = m[x·stride + k]. */
    #define MINIDIFF_AT6_PASS(T, NAME)                                                           \\
    MINIDIFF_CLONES static void NAME(const T *restrict m, ptrdiff_t stride, ptrdiff_t len,         \\
                                     T *restrict s0, T *restrict s1, T *restrict s2,               \\
                                     T *restrict s3) {                                             \\
        const T *restrict m0 = m, *restrict m1 = m + stride, *restrict m2 = m + 2 * stride;      \\
        const T *restrict m3 = m + 3 * stride, *restrict m4 = m + 4 * stride;                    \\
        const T *restrict m5 = m + 5 * stride;                                                   \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            const T a = m1[k] + m2[k], b = m1[k] - m2[k], c = m3[k] + m4[k], d = m3[k] - m4[k];  \\
            s0[k] = m0[k] + a + c; s1[k] = b + 2 * d; s2[k] = a + 4 * c; s3[k] = b + 8 * d + m5[k]; \\
        }                                                                                        \\
    }

    /* The transpose of the Aᵀ pass: (h0 … h5) = A (g0 … g3), every k < len. (Six output
       parameters, not one base and a stride: GCC vectorises only when each is `restrict`.) */
    #define MINIDIFF_A6_PASS(T, NAME)                                                            \\
    MINIDIFF_CLONES static void NAME(const T *restrict g0, const T *restrict g1,                   \\
                                     const T *restrict g2, const T *restrict g3, ptrdiff_t len,    \\
                                     T *restrict h0, T *restrict h1, T *restrict h2,               \\
                                     T *restrict h3, T *restrict h4, T *restrict h5) {             \\
        for (ptrdiff_t k = 0; k < len; k++) {                                                    \\
            const T a = g0[k] + g2[k], b = g1[k] + g3[k], c = g0[k] + 4 * g2[k], d = 2 * g1[k] + 8 * g3[k]; \\
            h0[k] = g0[k]; h1[k] = a + b; h2[k] = a - b; h3[k] = c + d; h4[k] = c - d; h5[k] = g3[k]; \\
        }                                                                                        \\
    }

    /* One output plane, row by row: y[r·width + 4j + b] = (Aᵀ (s0 … s5))[b] at tile j, + shift
       (+ residual, same layout), where s_ν is row r / 4 of plane 6·(r % 4) + ν of Aᵀ M (planes
       `tiles` apart, rows `row` apart); for the `width` columns kept: whole tiles in one loop,
       then the last tile's first width % 4. One call per plane, not per row: a row is 7 tiles
       of arithmetic at 28×28, less than a call's fixed cost. */
    #define MINIDIFF_AT6_PLANE(T, NAME)                                                          \\
    MINIDIFF_CLONES static void NAME(const T *restrict s, ptrdiff_t tiles, ptrdiff_t row, T shift, \\
                                     const T *restrict residual, ptrdiff_t height, ptrdiff_t width, \\
                                     T *restrict y) {                                              \\
        const ptrdiff_t whole = width / 4;                                                       \\
        for (ptrdiff_t r = 0; r < height; r++, y += width) {                                     \\
            const T *restrict s0 = s + 6 * (r % 4) * tiles + (r / 4) * row, *restrict s1 = s0 + tiles; \\
            const T *restrict s2 = s1 + tiles, *restrict s3 = s2 + tiles;                        \\
            const T *restrict s4 = s3 + tiles, *restrict s5 = s4 + tiles;                        \\
            for (ptrdiff_t j = 0; j < whole; j++) {                                              \\
                const T a = s1[j] + s2[j], b = s1[j] - s2[j], c = s3[j] + s4[j], d = s3[j] - s4[j]; \\
                y[4 * j] = s0[j] + a + c + shift; y[4 * j + 1] = b + 2 * d + shift;              \\
                y[4 * j + 2] = a + 4 * c + shift; y[4 * j + 3] = b + 8 * d + s5[j] + shift;      \\
            }                                                                                    \\
            if (width % 4) {                                                                     \\
                const ptrdiff_t j = whole;                                                       \\
                const T a = s1[j] + s2[j], b = s1[j] - s2[j], c = s3[j] + s4[j], d = s3[j] - s4[j]; \\
                y[4 * j] = s0[j] + a + c + shift;                                                \\
                if (width % 4 > 1) y[4 * j + 1] = b + 2 * d + shift;                             \\
                if (width % 4 > 2) y[4 * j + 2] = a + 4 * c + shift;                             \\
            }                                                                                    \\
            if (residual)                                                                        \\
                for (ptrdiff_t k = 0; k < width; k++) y[k] += residual[r * width + k];           \\
        }                                                                                        \\
    }

    /* d_b[j] = src[4j + b] for 4j + b < width: a row split by its columns modulo 4. */
    #define MINIDIFF_DEINTERLEAVE4(T, NAME)                                                      \\
    MINIDIFF_CLONES static void NAME(const T *restrict src, ptrdiff_t width, T *restrict d0,       \\
                                     T *restrict d1, T *restrict d2, T *restrict d3) {             \\
        ptrdiff_t j = 0;                                                                         \\
        for (; 4 * j + 3 < width; j++) {                                                         \\
            d0[j] = src[4 * j]; d1[j] = src[4 * j + 1]; d2[j] = src[4 * j + 2]; d3[j] = src[4 * j + 3]; \\
        }                                                                                        \\
        if (4 * j < width) d0[j] = src[4 * j];                                                   \\
        if (4 * j + 1 < width) d1[j] = src[4 * j + 1];                                           \\
        if (4 * j + 2 < width) d2[j] = src[4 * j + 2];                                           \\
    }

    /* dst[4j + b] = d_b[j] for 4j + b < width: the inverse. */
    #define MINIDIFF_INTERLEAVE4(T, NAME)                                                        \\
    MINIDIFF_CLONES static void NAME(const T *restrict d0, const T *restrict d1,                   \\
                                     const T *restrict d2, const T *restrict d3, ptrdiff_t width,  \\
                                     T *restrict dst) {                                            \\
        ptrdiff_t j = 0;                                                                         \\
        for (; 4 * j + 3 < width; j++) {                                                         \\
            dst[4 * j] = d0[j]; dst[4 * j + 1] = d1[j]; dst[4 * j + 2] = d2[j]; dst[4 * j + 3] = d3[j]; \\
        }                                                                                        \\
        if (4 * j < width) dst[4 * j] = d0[j];                                                   \\
        if (4 * j + 1 < width) dst[4 * j + 1] = d1[j];                                           \\
        if (4 * j + 2 < width) dst[4 * j + 2] = d2[j];                                           \\
    }

    MINIDIFF_BT6_PASS(float, winograd4_bt_pass_f)
    MINIDIFF_BT6_PASS(double, winograd4_bt_pass_d)
    MINIDIFF_B6_PASS(float, winograd4_b_pass_f)
    MINIDIFF_B6_PASS(double, winograd4_b_pass_d)
    MINIDIFF_AT6_PASS(float, winograd4_at_pass_f)
    MINIDIFF_AT6_PASS(double, winograd4_at_pass_d)
    MINIDIFF_A6_PASS(float, winograd4_a_pass_f)
    MINIDIFF_A6_PASS(double, winograd4_a_pass_d)
    MINIDIFF_AT6_PLANE(float, winograd4_at_plane_scalar_f)
    MINIDIFF_AT6_PLANE(double, winograd4_at_plane_d)

    #if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    /* MINIDIFF_AT6_PLANE for float, 8 tiles of a row at once: the arithmetic as there (same
       order, so the same roundings), lane t holding tile j + t; then a 4 × 8 transpose in
       registers puts each tile's 4 outputs side by side, and `width` of the 32 are stored. The
       scalar loop does one tile per iteration and stores its outputs 4 apart: at 28×28 a row is
       7 tiles, too short for the compiler's vectorised loop. Rows are read 8 tiles at a time, up
       to 7 entries past a row's last tile: the caller's buffer has room. */
    __attribute__((target("avx2"))) static void winograd4_at_plane_avx2_f(const float *s, ptrdiff_t tiles, ptrdiff_t row, float shift,
                                                                           const float *residual, ptrdiff_t height, ptrdiff_t width, float *y) {
        const __m256 two = _mm256_set1_ps(2), four = _mm256_set1_ps(4), eight = _mm256_set1_ps(8), sh = _mm256_set1_ps(shift);
        for (ptrdiff_t r = 0; r < height; r++, y += width) {
            const float *s0 = s + 6 * (r % 4) * tiles + (r / 4) * row;
            const float *res = residual ? residual + r * width : NULL;
            for (ptrdiff_t j = 0; 4 * j < width; j += 8) {
                const __m256 m0 = _mm256_loadu_ps(s0 + j), m1 = _mm256_loadu_ps(s0 + tiles + j);
                const __m256 m2 = _mm256_loadu_ps(s0 + 2 * tiles + j), m3 = _mm256_loadu_ps(s0 + 3 * tiles + j);
                const __m256 m4 = _mm256_loadu_ps(s0 + 4 * tiles + j), m5 = _mm256_loadu_ps(s0 + 5 * tiles + j);
                const __m256 a = _mm256_add_ps(m1, m2), b = _mm256_sub_ps(m1, m2);
                const __m256 c = _mm256_add_ps(m3, m4), d = _mm256_sub_ps(m3, m4);
                const __m256 y0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(m0, a), c), sh);
                const __m256 y1 = _mm256_add_ps(_mm256_add_ps(b, _mm256_mul_ps(two, d)), sh);
                const __m256 y2 = _mm256_add_ps(_mm256_add_ps(a, _mm256_mul_ps(four, c)), sh);
                const __m256 y3 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(b, _mm256_mul_ps(eight, d)), m5), sh);
                /* lanes (t, t + 4) of u_q: tiles q and q + 4 of (y0 y1 y2 y3) */
                const __m256 t0 = _mm256_unpacklo_ps(y0, y1), t1 = _mm256_unpackhi_ps(y0, y1);
                const __m256 t2 = _mm256_unpacklo_ps(y2, y3), t3 = _mm256_unpackhi_ps(y2, y3);
                const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                const ptrdiff_t left = width - 4 * j;
                store_first_f(_mm256_permute2f128_ps(u0, u1, 0x20), left, res ? res + 4 * j : NULL, y + 4 * j);
                store_first_f(_mm256_permute2f128_ps(u2, u3, 0x20), left - 8, res ? res + 4 * j + 8 : NULL, y + 4 * j + 8);
                store_first_f(_mm256_permute2f128_ps(u0, u1, 0x31), left - 16, res ? res + 4 * j + 16 : NULL, y + 4 * j + 16);
                store_first_f(_mm256_permute2f128_ps(u2, u3, 0x31), left - 24, res ? res + 4 * j + 24 : NULL, y + 4 * j + 24);
            }
        }
    }

    static void winograd4_at_plane_f(const float *s, ptrdiff_t tiles, ptrdiff_t row, float shift, const float *residual,
                                     ptrdiff_t height, ptrdiff_t width, float *y) {
        if (__builtin_cpu_supports("avx2"))
            winograd4_at_plane_avx2_f(s, tiles, row, shift, residual, height, width, y);
        else
            winograd4_at_plane_scalar_f(s, tiles, row, shift, residual, height, width, y);
    }
    #else
    #define winograd4_at_plane_f winograd4_at_plane_scalar_f
    #endif
    MINIDIFF_DEINTERLEAVE4(float, deinterleave4_f)
    MINIDIFF_DEINTERLEAVE4(double, deinterleave4_d)
    MINIDIFF_INTERLEAVE4(float, interleave4_f)
    MINIDIFF_INTERLEAVE4(double, interleave4_d)
    """
    void winograd4_bt_pass_f(const float* p0, const float* p1, const float* p2, const float* p3, Py_ssize_t s, Py_ssize_t length,
                             float* t0, float* t1, float* t2, float* t3, float* t4, float* t5) noexcept nogil
    void winograd4_bt_pass_d(const double* p0, const double* p1, const double* p2, const double* p3, Py_ssize_t s, Py_ssize_t length,
                             double* t0, double* t1, double* t2, double* t3, double* t4, double* t5) noexcept nogil
    void winograd4_b_pass_f(const float* g0, const float* g1, const float* g2, const float* g3, const float* g4, const float* g5,
                            Py_ssize_t s, Py_ssize_t length, float* p0, float* p1, float* p2, float* p3) noexcept nogil
    void winograd4_b_pass_d(const double* g0, const double* g1, const double* g2, const double* g3, const double* g4, const double* g5,
                            Py_ssize_t s, Py_ssize_t length, double* p0, double* p1, double* p2, double* p3) noexcept nogil
    void winograd4_at_pass_f(const float* m, Py_ssize_t stride, Py_ssize_t length, float* s0, float* s1, float* s2, float* s3) noexcept nogil
    void winograd4_at_pass_d(const double* m, Py_ssize_t stride, Py_ssize_t length, double* s0, double* s1, double* s2, double* s3) noexcept nogil
    void winograd4_a_pass_f(const float* g0, const float* g1, const float* g2, const float* g3, Py_ssize_t length,
                            float* h0, float* h1, float* h2, float* h3, float* h4, float* h5) noexcept nogil
    void winograd4_a_pass_d(const double* g0, const double* g1, const double* g2, const double* g3, Py_ssize_t length,
                            double* h0, double* h1, double* h2, double* h3, double* h4, double* h5) noexcept nogil
    void winograd4_at_plane_f(const float* s, Py_ssize_t tiles, Py_ssize_t row, float shift, const float* residual,
                              Py_ssize_t height, Py_ssize_t width, float* y) noexcept nogil
    void winograd4_at_plane_d(const double* s, Py_ssize_t tiles, Py_ssize_t row, double shift, const double* residual,
                              Py_ssize_t height, Py_ssize_t width, double* y) noexcept nogil
    void deinterleave4_f(const float* src, Py_ssize_t width, float* d0, float* d1, float* d2, float* d3) noexcept nogil
    void deinterleave4_d(const double* src, Py_ssize_t width, double* d0, double* d1, double* d2, double* d3) noexcept nogil
    void interleave4_f(const float* d0, const float* d1, const float* d2, const float* d3, Py_ssize_t width, float* dst) noexcept nogil
    void interleave4_d(const double* d0, const double* d1, const double* d2, const double* d3, Py_ssize_t width, double* dst) noexcept nogil


cdef inline void _bt6(const real* p, Py_ssize_t phase, Py_ssize_t s, Py_ssize_t length, real* t, Py_ssize_t stride) noexcept nogil:
    """Bᵀ over the four planes p, p + phase, p + 2·phase, p + 3·phase into t, t + stride, …, t + 5·stride."""
    if real is float:
        winograd4_bt_pass_f(p, p + phase, p + 2 * phase, p + 3 * phase, s, length,
                            t, t + stride, t + 2 * stride, t + 3 * stride, t + 4 * stride, t + 5 * stride)
    else:
        winograd4_bt_pass_d(p, p + phase, p + 2 * phase, p + 3 * phase, s, length,
                            t, t + stride, t + 2 * stride, t + 3 * stride, t + 4 * stride, t + 5 * stride)


cdef inline void _b6(const real* g, Py_ssize_t stride, Py_ssize_t s, Py_ssize_t length, real* p, Py_ssize_t phase) noexcept nogil:
    """The transpose of _bt6: from g, g + stride, …, g + 5·stride into p, p + phase, …, p + 3·phase."""
    if real is float:
        winograd4_b_pass_f(g, g + stride, g + 2 * stride, g + 3 * stride, g + 4 * stride, g + 5 * stride, s, length,
                           p, p + phase, p + 2 * phase, p + 3 * phase)
    else:
        winograd4_b_pass_d(g, g + stride, g + 2 * stride, g + 3 * stride, g + 4 * stride, g + 5 * stride, s, length,
                           p, p + phase, p + 2 * phase, p + 3 * phase)


cdef inline void _at6(const real* m, Py_ssize_t stride, Py_ssize_t length, real* s, Py_ssize_t s_stride) noexcept nogil:
    if real is float:
        winograd4_at_pass_f(m, stride, length, s, s + s_stride, s + 2 * s_stride, s + 3 * s_stride)
    else:
        winograd4_at_pass_d(m, stride, length, s, s + s_stride, s + 2 * s_stride, s + 3 * s_stride)


cdef inline void _a6(const real* g, Py_ssize_t g_stride, Py_ssize_t length, real* h, Py_ssize_t stride) noexcept nogil:
    if real is float:
        winograd4_a_pass_f(g, g + g_stride, g + 2 * g_stride, g + 3 * g_stride, length,
                           h, h + stride, h + 2 * stride, h + 3 * stride, h + 4 * stride, h + 5 * stride)
    else:
        winograd4_a_pass_d(g, g + g_stride, g + 2 * g_stride, g + 3 * g_stride, length,
                           h, h + stride, h + 2 * stride, h + 3 * stride, h + 4 * stride, h + 5 * stride)


cdef inline void _at6_plane(const real* s, Py_ssize_t tiles, Py_ssize_t row, real shift, const real* residual,
                            Py_ssize_t height, Py_ssize_t width, real* y) noexcept nogil:
    if real is float:
        winograd4_at_plane_f(s, tiles, row, shift, residual, height, width, y)
    else:
        winograd4_at_plane_d(s, tiles, row, shift, residual, height, width, y)


cdef inline Py_ssize_t _phase4(Py_ssize_t r, Py_ssize_t q, Py_ssize_t phase, Py_ssize_t row) noexcept nogil:
    """Where entry (r, q) of a padded plane lands: phase plane (r % 4, q % 4), row r // 4, column q // 4."""
    return (4 * (r % 4) + q % 4) * phase + (r // 4) * row + q // 4


cdef inline void _deinterleave4(const real* src, Py_ssize_t width, real* planes, Py_ssize_t r, Py_ssize_t q,
                                Py_ssize_t phase, Py_ssize_t row) noexcept nogil:
    """src[k] to the phase planes as entry (r, q + k) of the padded plane."""
    if real is float:
        deinterleave4_f(src, width, planes + _phase4(r, q, phase, row), planes + _phase4(r, q + 1, phase, row),
                        planes + _phase4(r, q + 2, phase, row), planes + _phase4(r, q + 3, phase, row))
    else:
        deinterleave4_d(src, width, planes + _phase4(r, q, phase, row), planes + _phase4(r, q + 1, phase, row),
                        planes + _phase4(r, q + 2, phase, row), planes + _phase4(r, q + 3, phase, row))


cdef inline void _interleave4(const real* planes, Py_ssize_t r, Py_ssize_t q, Py_ssize_t phase, Py_ssize_t row,
                              Py_ssize_t width, real* dst) noexcept nogil:
    """The inverse of _deinterleave4."""
    if real is float:
        interleave4_f(planes + _phase4(r, q, phase, row), planes + _phase4(r, q + 1, phase, row),
                      planes + _phase4(r, q + 2, phase, row), planes + _phase4(r, q + 3, phase, row), width, dst)
    else:
        interleave4_d(planes + _phase4(r, q, phase, row), planes + _phase4(r, q + 1, phase, row),
                      planes + _phase4(r, q + 2, phase, row), planes + _phase4(r, q + 3, phase, row), width, dst)


def winograd4_input_transform(const real[:, :, :, ::1] x, int padding, int th, int tw, real[:, :, ::1] v,
                              const real[:, ::1] mean, const real[:, ::1] rstd, const real[::1] weight, const real[::1] bias,
                              bint transposed):
    """v[6ξ + ν, c, (i·N + n)·(tW + 1) + j] = (Bᵀ d B)[ξ, ν], d = rows 4i…4i+5, columns 4j…4j+5
    of x[n, c] zero-padded; the spare tiles (j = tW) get junk. A non-empty ``mean``: d from
    SiLU(GroupNorm(x)); ``transposed``: v is (36, tiles, C); both as in winograd.pxi."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t row = n_images * (tw + 1), tiles = th * row
    cdef Py_ssize_t phase = (th + 1) * row + 1  # one entry more: read by the Bᵀ pass for the very last spare
    cdef Py_ssize_t c, n, r, xi, b, e, block, first
    cdef bint normalised = mean.shape[0] > 0
    cdef Py_ssize_t per_group = channels // mean.shape[1] if normalised else 1
    cdef Py_ssize_t block_size = TRANSPOSE_BLOCK if transposed else 1
    cdef Py_ssize_t blocks = (channels + block_size - 1) // block_size
    cdef Py_ssize_t staged_size = 36 * block_size * tiles if transposed else 0
    cdef Py_ssize_t stride = block_size * tiles if transposed else v.shape[1] * v.shape[2]
    # per thread: the 16 phase planes, then Bᵀ d for (ξ, column phase), then one normalised plane, then the staged rows
    cdef Py_ssize_t per_thread = 16 * phase + 24 * (tiles + 1) + h * w + staged_size
    cdef int threads = threads_for(n_images * channels * h * w)
    cdef real* buffers = _per_thread(per_thread, threads, &v[0, 0, 0])
    cdef real* planes = NULL
    cdef real* rows_done
    cdef real* normalised_plane
    cdef real* staged
    cdef const real* src
    with nogil, parallel(num_threads=threads):
        planes = buffers + openmp.omp_get_thread_num() * per_thread
        rows_done = planes + 16 * phase  # entry (ξ, b) at (4ξ + b)·(tiles + 1)
        normalised_plane = rows_done + 24 * (tiles + 1)
        staged = normalised_plane + h * w
        for block in prange(blocks, schedule="static"):
            first = block * block_size
            for c in range(first, min(first + block_size, channels)):
                memset(planes, 0, 16 * phase * sizeof(real))  # the padding
                for n in range(n_images):
                    src = &x[n, c, 0, 0]
                    if normalised:  # the whole plane at once: long loops for the exponential
                        _gn_silu_row(src, h * w, mean[n, c // per_group], rstd[n, c // per_group], weight[c], bias[c], normalised_plane)
                        src = normalised_plane
                    for r in range(h):  # x[n, c, r, col] is P[r + padding, col + padding]
                        _deinterleave4(src + r * w, w, planes + n * (tw + 1), r + padding, padding, phase, row)
                for b in range(4):  # Bᵀ down the rows, s = one row of tiles, for each column phase b
                    _bt6(planes + b * phase, 4 * phase, row, tiles + 1, rows_done + b * (tiles + 1), 4 * (tiles + 1))
                for xi in range(6):  # then B along the columns, s = 1: row ξ of Bᵀ d B
                    _bt6(rows_done + 4 * xi * (tiles + 1), tiles + 1, 1, tiles,
                         (staged + 6 * xi * stride + (c - first) * tiles) if transposed else &v[6 * xi, c, 0], stride)
            if transposed:
                for e in range(36):
                    _transpose_block(staged + e * stride, min(block_size, channels - first), tiles, &v[e, 0, first], channels)
    free(buffers)


def winograd4_input_transform_adjoint(const real[:, :, ::1] grad_v, int padding, int th, int tw, real[:, :, :, ::1] grad_x):
    """grad_x[n, c] = the sum over tiles of B ∂V Bᵀ placed at (4i, 4j), with the padding cut off.
    The spare tiles of ∂V must hold zeros: they do when ∂V = Uᵀ·∂M with ∂M from the output adjoint."""
    cdef Py_ssize_t n_images = grad_x.shape[0], channels = grad_x.shape[1], h = grad_x.shape[2], w = grad_x.shape[3]
    cdef Py_ssize_t row = n_images * (tw + 1), tiles = th * row, plane_stride = grad_v.shape[1] * grad_v.shape[2]
    cdef Py_ssize_t phase = (th + 1) * row + 1
    cdef Py_ssize_t c, n, r, xi, b
    cdef Py_ssize_t per_thread = 16 * phase + 24 * (tiles + 1)
    cdef int threads = threads_for(n_images * channels * h * w)
    cdef real* buffers = _per_thread(per_thread, threads, &grad_x[0, 0, 0, 0])
    cdef real* planes = NULL
    cdef real* rows_done
    with nogil, parallel(num_threads=threads):
        planes = buffers + openmp.omp_get_thread_num() * per_thread
        rows_done = planes + 16 * phase
        for c in prange(channels, schedule="static"):
            for xi in range(6):  # the transposes in reverse order: the columns' pass first
                _b6(&grad_v[6 * xi, c, 0], plane_stride, 1, tiles, rows_done + 4 * xi * (tiles + 1), tiles + 1)
            for b in range(4):
                _b6(rows_done + b * (tiles + 1), 4 * (tiles + 1), row, tiles + 1, planes + b * phase, 4 * phase)
            for n in range(n_images):
                for r in range(h):  # the padding's entries are dropped
                    _interleave4(planes + n * (tw + 1), r + padding, padding, phase, row, w, &grad_x[n, c, r, 0])
    free(buffers)


def winograd4_output_transform(const real[:, :, ::1] m, const real[::1] bias, const real[:, :, :, ::1] residual,
                               real[:, :, :, ::1] y):
    """y[n, o] = the tiles Aᵀ M A + bias[o] side by side, cropped to (Hₒ, Wₒ), + residual[n, o].
    ``bias`` and ``residual`` may be empty (zero); a (N, C_out, 1, 1) residual is one shift per plane."""
    cdef Py_ssize_t n_images = y.shape[0], channels = y.shape[1], ho = y.shape[2], wo = y.shape[3]
    cdef Py_ssize_t tw = (wo + 3) // 4, row = n_images * (tw + 1), tiles = ((ho + 3) // 4) * row
    cdef Py_ssize_t plane_stride = m.shape[1] * m.shape[2]
    cdef Py_ssize_t o, n, r, nu
    cdef real shift
    cdef bint per_plane = residual.shape[0] > 0 and residual.shape[2] == 1 and residual.shape[3] == 1 and ho * wo > 1
    cdef bint full = residual.shape[0] > 0 and not per_plane
    cdef int threads = threads_for(n_images * channels * ho * wo)
    # per thread: Aᵀ M for (output row phase a, ν) at (6a + ν)·tiles, then zeros for the A pass to overread
    cdef Py_ssize_t per_thread = 24 * tiles + ROW_OVERREAD
    cdef real* buffers = _per_thread(per_thread, threads, &y[0, 0, 0, 0], ROW_OVERREAD)
    cdef real* at_m = NULL
    with nogil, parallel(num_threads=threads):
        at_m = buffers + openmp.omp_get_thread_num() * per_thread
        for o in prange(channels, schedule="static"):
            for nu in range(6):  # Aᵀ down the rows
                _at6(&m[nu, o, 0], 6 * plane_stride, tiles, at_m + nu * tiles, 6 * tiles)
            for n in range(n_images):
                shift = bias[o] if bias.shape[0] > 0 else 0
                if per_plane:
                    shift = shift + residual[n, o, 0, 0]
                # then A along the columns, row by row, in one call per plane
                _at6_plane(at_m + n * (tw + 1), tiles, row, shift, &residual[n, o, 0, 0] if full else NULL, ho, wo, &y[n, o, 0, 0])
    free(buffers)


def winograd4_output_transform_adjoint(const real[:, :, :, ::1] grad_y, real[:, :, ::1] grad_m, real[:, ::1] plane_sums):
    """grad_m[6ξ + ν, o, (i·N + n)·(tW + 1) + j] = (A ∂Y Aᵀ)[ξ, ν] for the 4×4 tile of grad_y[n, o]
    at (4i, 4j), zero-padded; the spare tiles get zeros. plane_sums[n, o] = Σ grad_y[n, o] (rows
    summed in T, the rows' sums in double), read on the way: the bias's gradient, per image."""
    cdef Py_ssize_t n_images = grad_y.shape[0], channels = grad_y.shape[1], ho = grad_y.shape[2], wo = grad_y.shape[3]
    cdef Py_ssize_t tw = (wo + 3) // 4, row = n_images * (tw + 1), tiles = ((ho + 3) // 4) * row
    cdef Py_ssize_t plane_stride = grad_m.shape[1] * grad_m.shape[2]
    cdef Py_ssize_t o, n, r, xi, b
    cdef double total
    # per thread: ∂Y split by row and column phase (a, b) at (4a + b)·tiles, then A ∂Y at (16 + 4x + b)·tiles
    cdef int threads = threads_for(n_images * channels * ho * wo)
    cdef real* buffers = _per_thread(40 * tiles, threads, &grad_m[0, 0, 0])
    cdef real* planes = NULL
    with nogil, parallel(num_threads=threads):
        planes = buffers + openmp.omp_get_thread_num() * (40 * tiles)
        for o in prange(channels, schedule="static"):
            memset(planes, 0, 16 * tiles * sizeof(real))  # cropped positions and spare tiles
            for n in range(n_images):
                total = 0
                for r in range(ho):
                    _deinterleave4(&grad_y[n, o, r, 0], wo, planes + n * (tw + 1), r, 0, tiles, row)
                    total = total + _row_sum(&grad_y[n, o, r, 0], wo)
                plane_sums[n, o] = <real> total
            for b in range(4):  # A down the rows, for each column phase b
                _a6(planes + b * tiles, 4 * tiles, tiles, planes + (16 + b) * tiles, 4 * tiles)
            for xi in range(6):  # then along the columns: row ξ of A ∂Y Aᵀ
                _a6(planes + (16 + 4 * xi) * tiles, tiles, tiles, &grad_m[6 * xi, o, 0], plane_stride)
    free(buffers)
