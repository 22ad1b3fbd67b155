# group_norm_forward / group_norm_backward: GroupNorm → affine → optional SiLU, fused
# (reference: kernels/reference.py). The (N, C, M) input holds N·G rows of C/G channels × M
# positions. Parallel over rows: one thread reduces a whole row, in index order and in double,
# so the result does not depend on the thread count. Float32 results can differ from the NumPy
# reference (pairwise float32 sums) in the last bits; tests compare with a tolerance.
from libc.math cimport sqrt, exp, expf


cdef inline real _sigmoid(real a) noexcept nogil:
    if real is float:
        return 1 / (1 + expf(-a))
    else:
        return 1 / (1 + exp(-a))


def group_norm_forward(const real[:, :, ::1] x, int groups, const real[::1] weight, const real[::1] bias,
                       double eps, bint silu, real[:, :, ::1] y, real[:, :, ::1] x_hat, real[:, ::1] rstd):
    """Per row: μ, σ² (two passes), rstd = 1/√(σ² + eps), x̂ = (x − μ)·rstd, a = γx̂ + β, y = a·σ(a) or a."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], m = x.shape[2]
    cdef Py_ssize_t per_group = channels // groups, row, n, c, first, i
    cdef double mean, var, inv, centered
    cdef real xh, a
    with nogil:
        for row in prange(n_images * groups, schedule="static"):
            n = row // groups
            first = (row % groups) * per_group
            mean = 0
            for c in range(first, first + per_group):
                for i in range(m):
                    mean = mean + x[n, c, i]
            mean = mean / (per_group * m)
            var = 0
            for c in range(first, first + per_group):
                for i in range(m):
                    centered = x[n, c, i] - mean
                    var = var + centered * centered
            inv = 1 / sqrt(var / (per_group * m) + eps)
            rstd[n, row % groups] = <real>inv
            for c in range(first, first + per_group):
                for i in range(m):
                    xh = <real>((x[n, c, i] - mean) * inv)
                    x_hat[n, c, i] = xh
                    a = weight[c] * xh + bias[c]
                    y[n, c, i] = a * _sigmoid(a) if silu else a


def group_norm_backward(const real[:, :, ::1] grad_y, const real[:, :, ::1] x_hat, const real[:, ::1] rstd,
                        const real[::1] weight, const real[::1] bias, bint silu,
                        real[:, :, ::1] grad_x, double[:, ::1] grad_weight, double[:, ::1] grad_bias):
    """Per row: da = dy·σ(a)(1 + a(1 − σ(a))) (or dy), dγ += da·x̂, dβ += da, dx̂ = γ·da,
    dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)). dγ, dβ come out per (image, channel)."""
    cdef Py_ssize_t n_images = x_hat.shape[0], channels = x_hat.shape[1], m = x_hat.shape[2]
    cdef Py_ssize_t groups = rstd.shape[1], per_group = channels // groups, row, n, c, first, i
    cdef double sum_grad, sum_grad_xhat, dgamma, dbeta, mean_grad, mean_grad_xhat, r
    cdef real xh, a, s, da, dxh
    with nogil:
        for row in prange(n_images * groups, schedule="static"):
            n = row // groups
            first = (row % groups) * per_group
            sum_grad = 0
            sum_grad_xhat = 0
            for c in range(first, first + per_group):
                dgamma = 0
                dbeta = 0
                for i in range(m):
                    xh = x_hat[n, c, i]
                    da = grad_y[n, c, i]
                    if silu:
                        a = weight[c] * xh + bias[c]
                        s = _sigmoid(a)
                        da = da * s * (1 + a * (1 - s))
                    dgamma = dgamma + da * xh
                    dbeta = dbeta + da
                    dxh = weight[c] * da
                    grad_x[n, c, i] = dxh  # dx̂ for now; made into dx below
                    sum_grad = sum_grad + dxh
                    sum_grad_xhat = sum_grad_xhat + dxh * xh
                grad_weight[n, c] = dgamma
                grad_bias[n, c] = dbeta
            mean_grad = sum_grad / (per_group * m)
            mean_grad_xhat = sum_grad_xhat / (per_group * m)
            r = rstd[n, row % groups]
            for c in range(first, first + per_group):
                for i in range(m):
                    grad_x[n, c, i] = <real>(r * (grad_x[n, c, i] - mean_grad - x_hat[n, c, i] * mean_grad_xhat))
