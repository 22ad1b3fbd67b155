# group_norm_forward / group_norm_backward: per-group statistics and their gradient
# (reference: kernels/reference.py). The (N, G, M) input is seen as N·G rows of M values.
# Parallel over rows: one thread reduces a whole row, in index order and in double, so the
# result does not depend on the thread count. Float32 results can differ from the NumPy
# reference (pairwise float32 sums) in the last bits; tests compare with a tolerance.
from libc.math cimport sqrt


def group_norm_forward(const real[:, ::1] x, double eps, real[:, ::1] x_hat, real[::1] rstd):
    """Per row: μ = mean(x), σ² = mean((x − μ)²) (two passes), rstd = 1/√(σ² + eps), x̂ = (x − μ)·rstd."""
    cdef Py_ssize_t rows = x.shape[0], m = x.shape[1], row, i
    cdef double mean, var, inv, centered
    with nogil:
        for row in prange(rows, schedule="static"):
            mean = 0
            for i in range(m):
                mean = mean + x[row, i]
            mean = mean / m
            var = 0
            for i in range(m):
                centered = x[row, i] - mean
                var = var + centered * centered
            inv = 1 / sqrt(var / m + eps)
            rstd[row] = <real>inv
            for i in range(m):
                x_hat[row, i] = <real>((x[row, i] - mean) * inv)


def group_norm_backward(const real[:, ::1] grad_xhat, const real[:, ::1] x_hat, const real[::1] rstd,
                        real[:, ::1] grad_x):
    """Per row: dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))."""
    cdef Py_ssize_t rows = x_hat.shape[0], m = x_hat.shape[1], row, i
    cdef double mean_grad, mean_grad_xhat
    with nogil:
        for row in prange(rows, schedule="static"):
            mean_grad = 0
            mean_grad_xhat = 0
            for i in range(m):
                mean_grad = mean_grad + grad_xhat[row, i]
                mean_grad_xhat = mean_grad_xhat + grad_xhat[row, i] * x_hat[row, i]
            mean_grad = mean_grad / m
            mean_grad_xhat = mean_grad_xhat / m
            for i in range(m):
                grad_x[row, i] = <real>(rstd[row] * (grad_xhat[row, i] - mean_grad - x_hat[row, i] * mean_grad_xhat))
