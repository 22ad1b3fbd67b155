# group_norm_forward / group_norm_backward: GroupNorm → affine → optional SiLU, fused
# (reference: kernels/reference.py). The (N, C, M) input holds N·G rows; a row, the C/G
# channels × M positions of one group, is contiguous. Parallel over rows: one thread reduces a
# whole row in a fixed order (each channel's M values in T, vectorised, the channels' partial
# sums in double), so the result does not depend on the thread count. The per-row loops are C
# with `omp simd`, which vectorises the reductions and the SiLU without -ffast-math. Float32
# results differ from the NumPy reference (pairwise float32 sums) in the last bits; tests
# compare with a tolerance.

cdef extern from *:
    """
    /* y = a·σ(a), a = γ·((x − μ)·rstd) + β, over len values of one channel: the forward's last
       pass with SiLU, and what the Winograd input transforms apply to each plane they read when
       GroupNorm+SiLU is fused into the convolution (functional/winograd.py). */
    #define MINIDIFF_GN_SILU_ROW(T, NAME, EXP)                                                  \
    MINIDIFF_CLONES_WIDE static void NAME(const T *restrict x, ptrdiff_t len, T mu, T inv, T g, \
                                          T b, T *restrict y) {                                 \
        _Pragma("omp simd")                                                                     \
        for (ptrdiff_t i = 0; i < len; i++) {                                                   \
            T a = g * ((x[i] - mu) * inv) + b;                                                  \
            y[i] = a / (1 + EXP(-a));                                                           \
        }                                                                                       \
    }
    MINIDIFF_GN_SILU_ROW(float, gn_silu_row_f, minidiff_expf)
    MINIDIFF_GN_SILU_ROW(double, gn_silu_row_d, exp)

    /* One row (image n, group g) forward: mean, two-pass variance, then in one pass x̂,
       a = γx̂ + β and y = a·σ(a) or a. Only y is written: the backward rebuilds x̂ from x. */
    #define MINIDIFF_GN_FORWARD(T, NAME, SILU_ROW)                                              \
    MINIDIFF_CLONES_WIDE static void NAME(const T *restrict x, ptrdiff_t channels, ptrdiff_t m, \
                     const T *restrict weight, const T *restrict bias, double eps, int silu,    \
                     T *restrict y, T *restrict mean_out, T *restrict rstd) {                   \
        ptrdiff_t len = channels * m;                                                           \
        double sum = 0, sum_sq = 0;                                                             \
        for (ptrdiff_t c = 0; c < channels; c++) {                                              \
            T part = 0;                                                                         \
            _Pragma("omp simd reduction(+:part)")                                               \
            for (ptrdiff_t i = 0; i < m; i++) part += x[c * m + i];                             \
            sum += part;                                                                        \
        }                                                                                       \
        const double mean = sum / len;                                                          \
        const T mu = (T)mean;                                                                   \
        for (ptrdiff_t c = 0; c < channels; c++) {                                              \
            T part = 0;                                                                         \
            _Pragma("omp simd reduction(+:part)")                                               \
            for (ptrdiff_t i = 0; i < m; i++) { T d = x[c * m + i] - mu; part += d * d; }       \
            sum_sq += part;                                                                     \
        }                                                                                       \
        const T inv = (T)(1.0 / sqrt(sum_sq / len + eps));                                      \
        *mean_out = mu; *rstd = inv;                                                            \
        if (!y) return;  /* the statistics only: a convolution normalises as it reads x */       \
        for (ptrdiff_t c = 0; c < channels; c++) {                                              \
            const T g = weight[c], b = bias[c];                                                 \
            const T *xc = x + c * m; T *yc = y + c * m;                                         \
            if (silu) {                                                                         \
                SILU_ROW(xc, m, mu, inv, g, b, yc);                                             \
            } else {                                                                            \
                _Pragma("omp simd")                                                             \
                for (ptrdiff_t i = 0; i < m; i++) yc[i] = g * ((xc[i] - mu) * inv) + b;         \
            }                                                                                   \
        }                                                                                       \
    }

    /* One row backward: x̂ = (x − μ)·rstd, da (through SiLU), dγ and dβ per channel, dx̂ = γ·da,
       then dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)). */
    #define MINIDIFF_GN_BACKWARD(T, NAME, EXP)                                                  \
    MINIDIFF_CLONES_WIDE static void NAME(const T *restrict dy, const T *restrict x, T mu, T rstd, \
                     ptrdiff_t channels, ptrdiff_t m, const T *restrict weight,                 \
                     const T *restrict bias, int silu, T *restrict dx,                          \
                     double *restrict dgamma, double *restrict dbeta) {                         \
        ptrdiff_t len = channels * m;                                                           \
        double sum_g = 0, sum_gx = 0;                                                           \
        for (ptrdiff_t c = 0; c < channels; c++) {                                              \
            const T g = weight[c], b = bias[c];                                                 \
            const T *xc = x + c * m, *dyc = dy + c * m; T *dxc = dx + c * m;                    \
            T dg = 0, db = 0, part_g = 0, part_gx = 0;                                          \
            if (silu) {                                                                         \
                _Pragma("omp simd reduction(+:dg,db,part_g,part_gx)")                           \
                for (ptrdiff_t i = 0; i < m; i++) {                                             \
                    T h = (xc[i] - mu) * rstd, a = g * h + b, s = 1 / (1 + EXP(-a));            \
                    T da = dyc[i] * s * (1 + a * (1 - s)), dxh = g * da;                        \
                    dg += da * h; db += da; dxc[i] = dxh; part_g += dxh; part_gx += dxh * h;    \
                }                                                                               \
            } else {                                                                            \
                _Pragma("omp simd reduction(+:dg,db,part_g,part_gx)")                           \
                for (ptrdiff_t i = 0; i < m; i++) {                                             \
                    T h = (xc[i] - mu) * rstd, da = dyc[i], dxh = g * da;                       \
                    dg += da * h; db += da; dxc[i] = dxh; part_g += dxh; part_gx += dxh * h;    \
                }                                                                               \
            }                                                                                   \
            dgamma[c] = dg; dbeta[c] = db; sum_g += part_g; sum_gx += part_gx;                  \
        }                                                                                       \
        const T mean_g = (T)(sum_g / len), mean_gx = (T)(sum_gx / len);                         \
        _Pragma("omp simd")                                                                     \
        for (ptrdiff_t k = 0; k < len; k++)                                                     \
            dx[k] = rstd * (dx[k] - mean_g - ((x[k] - mu) * rstd) * mean_gx);                   \
    }

    MINIDIFF_GN_FORWARD(float, gn_forward_row_f, gn_silu_row_f)
    MINIDIFF_GN_FORWARD(double, gn_forward_row_d, gn_silu_row_d)
    MINIDIFF_GN_BACKWARD(float, gn_backward_row_f, minidiff_expf)
    MINIDIFF_GN_BACKWARD(double, gn_backward_row_d, exp)
    """
    void gn_forward_row_f(const float* x, Py_ssize_t channels, Py_ssize_t m, const float* weight,
                          const float* bias, double eps, int silu, float* y, float* mean, float* rstd) noexcept nogil
    void gn_forward_row_d(const double* x, Py_ssize_t channels, Py_ssize_t m, const double* weight,
                          const double* bias, double eps, int silu, double* y, double* mean, double* rstd) noexcept nogil
    void gn_backward_row_f(const float* dy, const float* x, float mean, float rstd, Py_ssize_t channels, Py_ssize_t m,
                           const float* weight, const float* bias, int silu, float* dx,
                           double* dgamma, double* dbeta) noexcept nogil
    void gn_backward_row_d(const double* dy, const double* x, double mean, double rstd, Py_ssize_t channels, Py_ssize_t m,
                           const double* weight, const double* bias, int silu, double* dx,
                           double* dgamma, double* dbeta) noexcept nogil
    void gn_silu_row_f(const float* x, Py_ssize_t length, float mean, float rstd, float weight, float bias, float* y) noexcept nogil
    void gn_silu_row_d(const double* x, Py_ssize_t length, double mean, double rstd, double weight, double bias, double* y) noexcept nogil


cdef inline void _gn_silu_row(const real* x, Py_ssize_t length, real mean, real rstd, real weight, real bias,
                              real* y) noexcept nogil:
    if real is float:
        gn_silu_row_f(x, length, mean, rstd, weight, bias, y)
    else:
        gn_silu_row_d(x, length, mean, rstd, weight, bias, y)


def group_norm_forward(const real[:, :, ::1] x, int groups, const real[::1] weight, const real[::1] bias,
                       double eps, bint silu, real[:, :, ::1] y, real[:, ::1] mean, real[:, ::1] rstd):
    """Per row: μ, σ² (two passes), rstd = 1/√(σ² + eps), x̂ = (x − μ)·rstd, a = γx̂ + β, y = a·σ(a) or a.
    An empty y (shape (0, 0, 0)): μ and rstd only."""
    cdef Py_ssize_t n_images = x.shape[0], m = x.shape[2], per_group = x.shape[1] // groups, row, n, first
    cdef bint stats_only = y.shape[0] == 0
    with nogil:
        for row in prange(n_images * groups, schedule="static", num_threads=threads_for(n_images * x.shape[1] * m)):
            n = row // groups
            first = (row % groups) * per_group
            if real is float:
                gn_forward_row_f(&x[n, first, 0], per_group, m, &weight[first], &bias[first], eps, silu,
                                 NULL if stats_only else &y[n, first, 0], &mean[n, row % groups], &rstd[n, row % groups])
            else:
                gn_forward_row_d(&x[n, first, 0], per_group, m, &weight[first], &bias[first], eps, silu,
                                 NULL if stats_only else &y[n, first, 0], &mean[n, row % groups], &rstd[n, row % groups])


def group_norm_backward(const real[:, :, ::1] grad_y, const real[:, :, ::1] x, const real[:, ::1] mean,
                        const real[:, ::1] rstd, const real[::1] weight, const real[::1] bias, bint silu,
                        real[:, :, ::1] grad_x, double[:, ::1] grad_weight, double[:, ::1] grad_bias):
    """Per row: x̂ = (x − μ)·rstd, da = dy·σ(a)(1 + a(1 − σ(a))) (or dy), dγ += da·x̂, dβ += da,
    dx̂ = γ·da, dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)). dγ, dβ come out per (image, channel)."""
    cdef Py_ssize_t n_images = x.shape[0], m = x.shape[2], groups = rstd.shape[1]
    cdef Py_ssize_t per_group = x.shape[1] // groups, row, n, first
    with nogil:
        for row in prange(n_images * groups, schedule="static", num_threads=threads_for(n_images * x.shape[1] * m)):
            n = row // groups
            first = (row % groups) * per_group
            if real is float:
                gn_backward_row_f(&grad_y[n, first, 0], &x[n, first, 0], mean[n, row % groups], rstd[n, row % groups],
                                  per_group, m, &weight[first], &bias[first], silu, &grad_x[n, first, 0],
                                  &grad_weight[n, first], &grad_bias[n, first])
            else:
                gn_backward_row_d(&grad_y[n, first, 0], &x[n, first, 0], mean[n, row % groups], rstd[n, row % groups],
                                  per_group, m, &weight[first], &bias[first], silu, &grad_x[n, first, 0],
                                  &grad_weight[n, first], &grad_bias[n, first])
