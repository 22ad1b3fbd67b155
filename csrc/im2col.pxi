# im2col / col2im: the memory-bound halves of conv2d (reference: kernels/reference.py).
# im2col runs in parallel over rows of the column matrix, col2im over (image, channel) planes:
# every thread writes elements no other thread touches, so no atomics are needed and the
# result does not depend on the thread count.
# Each output row splits into a zero border and a valid run; for stride 1 the run is a
# contiguous copy (or add) that the compiler vectorises, so no branch is taken per element.
from cython.parallel cimport prange

ctypedef fused real:
    float
    double


cdef inline Py_ssize_t _first_valid(Py_ssize_t offset, Py_ssize_t stride) noexcept nogil:
    """Smallest o ≥ 0 with o·stride + offset ≥ 0."""
    if offset >= 0:
        return 0
    return (-offset + stride - 1) // stride


cdef inline Py_ssize_t _end_valid(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t count) noexcept nogil:
    """One past the largest o < count with o·stride + offset < size."""
    cdef Py_ssize_t end
    if size - offset <= 0:
        return 0
    end = (size - offset + stride - 1) // stride
    return end if end < count else count


def im2col(const real[:, :, :, ::1] x, int kh, int kw, int stride, int padding,
           int ho, int wo, real[:, ::1] cols):
    """cols[(c·kh + i)·kw + j, (n·ho + oy)·wo + ox] = x[n, c, oy·stride − padding + i, ox·stride − padding + j] (0 outside).

    Parallel over the rows of cols: each thread writes whole rows front to back, which keeps
    the stores streaming even when a row segment per image is short (7×7 maps).
    """
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t row, n, c, i, j, oy, ox, iy, ox_lo, ox_hi, offset_x
    cdef const real* src
    cdef real* dst
    with nogil:
        for row in prange(channels * kh * kw, schedule="static", num_threads=threads_for(cols.shape[0] * cols.shape[1])):
            c = row // (kh * kw)
            i = (row // kw) % kh
            j = row % kw
            offset_x = j - padding
            ox_lo = _first_valid(offset_x, stride)
            ox_hi = _end_valid(offset_x, stride, w, wo)
            if ox_hi < ox_lo:
                ox_hi = ox_lo
            for n in range(n_images):
                for oy in range(ho):
                    dst = &cols[row, (n * ho + oy) * wo]
                    iy = oy * stride - padding + i
                    if iy < 0 or iy >= h:
                        for ox in range(wo):
                            dst[ox] = 0
                        continue
                    src = &x[n, c, iy, 0]
                    for ox in range(ox_lo):
                        dst[ox] = 0
                    if stride == 1:
                        for ox in range(ox_lo, ox_hi):
                            dst[ox] = src[ox + offset_x]
                    else:
                        for ox in range(ox_lo, ox_hi):
                            dst[ox] = src[ox * stride + offset_x]
                    for ox in range(ox_hi, wo):
                        dst[ox] = 0


def col2im(const real[:, ::1] cols, int kh, int kw, int stride, int padding,
           int ho, int wo, real[:, :, :, ::1] x):
    """The adjoint of im2col: x[n, c, iy, ix] = Σ over (i, j) in order of the columns that read it."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t plane, n, c, i, j, oy, ox, iy, ox_lo, ox_hi, offset_x, k
    cdef const real* src
    cdef const real* row
    cdef real* dst
    cdef real* image
    with nogil:
        for plane in prange(n_images * channels, schedule="static", num_threads=threads_for(cols.shape[0] * cols.shape[1])):
            n = plane // channels
            c = plane % channels
            image = &x[n, c, 0, 0]
            for k in range(h * w):
                image[k] = 0
            for i in range(kh):
                for j in range(kw):
                    offset_x = j - padding
                    ox_lo = _first_valid(offset_x, stride)
                    ox_hi = _end_valid(offset_x, stride, w, wo)
                    row = &cols[(c * kh + i) * kw + j, n * ho * wo]
                    for oy in range(ho):
                        src = row + oy * wo
                        iy = oy * stride - padding + i
                        if iy >= 0 and iy < h:
                            dst = image + iy * w
                            if stride == 1:
                                for ox in range(ox_lo, ox_hi):
                                    dst[ox + offset_x] += src[ox]
                            else:
                                for ox in range(ox_lo, ox_hi):
                                    dst[ox * stride + offset_x] += src[ox]
