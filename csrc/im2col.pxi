# im2col / col2im: the memory-bound halves of conv2d (reference: kernels/reference.py).
# Parallel over (image, channel) planes: every plane writes rows / pixels no other plane
# touches, so no atomics are needed and the result does not depend on the thread count.
from cython.parallel cimport prange

ctypedef fused real:
    float
    double


def im2col(const real[:, :, :, ::1] x, int kh, int kw, int stride, int padding,
           int ho, int wo, real[:, ::1] cols):
    """cols[(c·kh + i)·kw + j, (n·ho + oy)·wo + ox] = x[n, c, oy·stride − padding + i, ox·stride − padding + j] (0 outside)."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t plane, n, c, i, j, oy, ox, iy, ix, row
    with nogil:
        for plane in prange(n_images * channels, schedule="static"):
            n = plane // channels
            c = plane % channels
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oy in range(ho):
                        iy = oy * stride - padding + i
                        if iy < 0 or iy >= h:
                            for ox in range(wo):
                                cols[row, (n * ho + oy) * wo + ox] = 0
                            continue
                        for ox in range(wo):
                            ix = ox * stride - padding + j
                            if ix < 0 or ix >= w:
                                cols[row, (n * ho + oy) * wo + ox] = 0
                            else:
                                cols[row, (n * ho + oy) * wo + ox] = x[n, c, iy, ix]


def col2im(const real[:, ::1] cols, int kh, int kw, int stride, int padding,
           int ho, int wo, real[:, :, :, ::1] x):
    """The adjoint of im2col: x[n, c, iy, ix] = Σ over (i, j) in order of the columns that read it."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t plane, n, c, i, j, oy, ox, iy, ix, row
    with nogil:
        for plane in prange(n_images * channels, schedule="static"):
            n = plane // channels
            c = plane % channels
            for iy in range(h):
                for ix in range(w):
                    x[n, c, iy, ix] = 0
            for i in range(kh):
                for j in range(kw):
                    row = (c * kh + i) * kw + j
                    for oy in range(ho):
                        iy = oy * stride - padding + i
                        if iy < 0 or iy >= h:
                            continue
                        for ox in range(wo):
                            ix = ox * stride - padding + j
                            if ix >= 0 and ix < w:
                                x[n, c, iy, ix] += cols[row, (n * ho + oy) * wo + ox]
