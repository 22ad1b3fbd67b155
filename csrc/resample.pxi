# upsample_nearest_forward / upsample_nearest_backward (reference: kernels/reference.py).
# Parallel over (image, channel) planes, so every thread writes planes no other thread touches
# and the result does not depend on the thread count.
from libc.string cimport memcpy


def upsample_nearest_forward(const real[:, :, :, ::1] x, int scale, real[:, :, :, ::1] y):
    """y[n, c, i, j] = x[n, c, ⌊i/s⌋, ⌊j/s⌋]: each row widened once, then copied s − 1 times."""
    cdef Py_ssize_t channels = x.shape[1], h = x.shape[2], w = x.shape[3], width = w * scale
    cdef Py_ssize_t plane, n, c, i, j, b, a
    cdef const real* src
    cdef real* dst
    for plane in prange(x.shape[0] * channels, nogil=True, schedule="static", num_threads=threads_for(y.shape[0] * channels * y.shape[2] * width)):
        n = plane // channels
        c = plane % channels
        for i in range(h):
            src = &x[n, c, i, 0]
            dst = &y[n, c, i * scale, 0]
            for j in range(w):
                for b in range(scale):
                    dst[j * scale + b] = src[j]
            for a in range(1, scale):
                memcpy(dst + a * width, dst, width * sizeof(real))


def upsample_nearest_backward(const real[:, :, :, ::1] grad_y, int scale, real[:, :, :, ::1] grad_x):
    """grad_x[n, c, i, j] = the sum of the s×s block of grad_y it was copied to: each of the
    block's columns summed down its s rows, then the columns added, as the reference does."""
    cdef Py_ssize_t channels = grad_x.shape[1], h = grad_x.shape[2], w = grad_x.shape[3], width = w * scale
    cdef Py_ssize_t plane, n, c, i, j, b, a
    cdef const real* src
    cdef real* dst
    cdef real total, column
    for plane in prange(grad_x.shape[0] * channels, nogil=True, schedule="static", num_threads=threads_for(grad_y.shape[0] * channels * grad_y.shape[2] * width)):
        n = plane // channels
        c = plane % channels
        for i in range(h):
            src = &grad_y[n, c, i * scale, 0]
            dst = &grad_x[n, c, i, 0]
            for j in range(w):
                for b in range(scale):
                    column = src[j * scale + b]
                    for a in range(1, scale):
                        column = column + src[a * width + j * scale + b]
                    total = column if b == 0 else total + column
                dst[j] = total
