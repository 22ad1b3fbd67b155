# Winograd F(2×2, 3×3) tile transforms (reference: kernels/reference.py; Lavin & Gray 2016).
# One (image, channel) plane is one task: its thread transforms that plane's tiles alone, with
# private buffers for the padding (a shared zero row in the input transform, a zero-bordered
# copy of the plane in the adjoints), so no two threads write the same element and the result
# does not depend on the thread count.
# Transformed tiles are stored as T[4ξ + ν, channel, (image·tH + i)·tW + j]: 16 planes, each
# contiguous along the tiles, which is what the 16 GEMMs read.
from cython.parallel cimport parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset


# Every transform works on one row of tiles at a time, in two passes: along the rows, all
# columns at once, then along the columns, all tiles at once. Each inner loop writes one
# output stream from contiguous (or stride-2) inputs, so the compiler can prove it safe to
# vectorise (with more streams per loop it gives up on the aliasing checks); tile by tile, 16
# scattered stores per tile made the transform slower than the GEMMs it feeds.

cdef inline void _bt_rows(const real* d0, const real* d1, const real* d2, const real* d3,
                          real* t, Py_ssize_t row, Py_ssize_t count) noexcept nogil:
    """t[ξ·row + k] = (Bᵀ d)[ξ, k] for k < count: Bᵀ applied down the 4 rows d0…d3, every column k."""
    cdef Py_ssize_t k
    for k in range(count):
        t[k] = d0[k] - d2[k]
    for k in range(count):
        t[row + k] = d1[k] + d2[k]
    for k in range(count):
        t[2 * row + k] = d2[k] - d1[k]
    for k in range(count):
        t[3 * row + k] = d1[k] - d3[k]


cdef inline const real* _row_or_zeros(const real* plane, Py_ssize_t r, Py_ssize_t h, Py_ssize_t w, const real* zeros) noexcept nogil:
    """Row r of an h×w plane, or a row of zeros when r is in the padding."""
    return plane + r * w if 0 <= r < h else zeros


cdef inline void _bt_columns(const real* t, Py_ssize_t tiles, real* v, Py_ssize_t plane_stride) noexcept nogil:
    """v[ν·plane_stride + j] = (t B)[ν] for columns 2j…2j+3 of the row t, every tile j."""
    cdef Py_ssize_t j
    for j in range(tiles):
        v[j] = t[2 * j] - t[2 * j + 2]
    for j in range(tiles):
        v[plane_stride + j] = t[2 * j + 1] + t[2 * j + 2]
    for j in range(tiles):
        v[2 * plane_stride + j] = t[2 * j + 2] - t[2 * j + 1]
    for j in range(tiles):
        v[3 * plane_stride + j] = t[2 * j + 1] - t[2 * j + 3]


cdef inline void _b_columns(const real* dv, Py_ssize_t plane_stride, Py_ssize_t tiles, real* e) noexcept nogil:
    """e[k] = Σ over the tiles j covering column k (k = 2j + b) of (∂v Bᵀ)[b]: the transpose of
    :func:`_bt_columns`. Tiles j − 1 and j share columns 2j and 2j + 1, so those sum two terms."""
    cdef Py_ssize_t j
    cdef const real* v0 = dv
    cdef const real* v1 = dv + plane_stride
    cdef const real* v2 = dv + 2 * plane_stride
    cdef const real* v3 = dv + 3 * plane_stride
    e[0] = v0[0]
    e[1] = v1[0] - v2[0] + v3[0]
    for j in range(1, tiles):  # (∂v Bᵀ)[0] of tile j + (∂v Bᵀ)[2] of tile j − 1
        e[2 * j] = v0[j] + v1[j - 1] + v2[j - 1] - v0[j - 1]
    for j in range(1, tiles):  # (∂v Bᵀ)[1] of tile j + (∂v Bᵀ)[3] of tile j − 1
        e[2 * j + 1] = v1[j] - v2[j] + v3[j] - v3[j - 1]
    e[2 * tiles] = v1[tiles - 1] + v2[tiles - 1] - v0[tiles - 1]
    e[2 * tiles + 1] = -v3[tiles - 1]


cdef inline void _b_rows_add(const real* e, Py_ssize_t length, real* dd, Py_ssize_t row) noexcept nogil:
    """dd[a·row + k] += (B e)[a, k]: the transpose of :func:`_bt_rows`, added onto the 4 rows of dd."""
    cdef Py_ssize_t k
    for k in range(length):
        dd[k] += e[k]
    for k in range(length):
        dd[row + k] += e[length + k] - e[2 * length + k] + e[3 * length + k]
    for k in range(length):
        dd[2 * row + k] += e[length + k] + e[2 * length + k] - e[k]
    for k in range(length):
        dd[3 * row + k] -= e[3 * length + k]


cdef inline void _at_rows(const real* m, Py_ssize_t plane_stride, Py_ssize_t tiles, real* s) noexcept nogil:
    """s[(4a + ν)·tiles + j] = (Aᵀ m)[a, ν] for every tile j of a row of tiles (m[4ξ + ν] at (4ξ + ν)·plane_stride)."""
    cdef Py_ssize_t nu, j
    cdef const real* m0
    for nu in range(4):
        m0 = m + nu * plane_stride
        for j in range(tiles):
            s[nu * tiles + j] = m0[j] + m0[4 * plane_stride + j] + m0[8 * plane_stride + j]
        for j in range(tiles):
            s[(4 + nu) * tiles + j] = m0[4 * plane_stride + j] - m0[8 * plane_stride + j] - m0[12 * plane_stride + j]


cdef inline void _a_columns(const real* s, Py_ssize_t tiles, real* y, real bias) noexcept nogil:
    """y[2j + b] = (s A)[b] + bias for every tile j, from the row s[ν·tiles + j] of Aᵀ m."""
    cdef Py_ssize_t j
    for j in range(tiles):
        y[2 * j] = s[j] + s[tiles + j] + s[2 * tiles + j] + bias
    for j in range(tiles):
        y[2 * j + 1] = s[tiles + j] - s[2 * tiles + j] - s[3 * tiles + j] + bias


cdef inline void _a_rows(const real* g, Py_ssize_t row, real* h, Py_ssize_t length) noexcept nogil:
    """h[ξ·length + k] = (A g)[ξ, k]: the transpose of Aᵀ, down the 2 rows of g, every column k."""
    cdef Py_ssize_t k
    for k in range(length):
        h[k] = g[k]
    for k in range(length):
        h[length + k] = g[k] + g[row + k]
    for k in range(length):
        h[2 * length + k] = g[k] - g[row + k]
    for k in range(length):
        h[3 * length + k] = -g[row + k]


cdef inline void _at_columns(const real* h, Py_ssize_t tiles, real* dm, Py_ssize_t plane_stride) noexcept nogil:
    """dm[ν·plane_stride + j] = (h Aᵀ)[ν] for columns 2j, 2j+1 of the row h, every tile j."""
    cdef Py_ssize_t j
    for j in range(tiles):
        dm[j] = h[2 * j]
    for j in range(tiles):
        dm[plane_stride + j] = h[2 * j] + h[2 * j + 1]
    for j in range(tiles):
        dm[2 * plane_stride + j] = h[2 * j] - h[2 * j + 1]
    for j in range(tiles):
        dm[3 * plane_stride + j] = -h[2 * j + 1]


cdef inline void _copy_plane(const real* src, Py_ssize_t src_row, real* dst, Py_ssize_t dst_row,
                             Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * dst_row, src + r * src_row, cols * sizeof(real))


def winograd_input_transform(const real[:, :, :, ::1] x, int padding, int th, int tw, real[:, :, ::1] v):
    """v[4ξ + ν, c, (n·tH + i)·tW + j] = (Bᵀ d B)[ξ, ν], d = rows 2i…2i+3, columns 2j…2j+3 of x[n, c] zero-padded."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], h = x.shape[2], w = x.shape[3]
    cdef Py_ssize_t pw = 2 * tw + 2, plane_stride = v.shape[1] * v.shape[2]
    cdef Py_ssize_t plane, n, c, i, xi, top
    cdef const real* x_plane
    # each thread mallocs its own: 4 rows of Bᵀ d (their padding columns stay zero), then a row of zeros
    # that stands in for the padding rows, so the plane is read in place, not copied into a padded one
    cdef real* rows = NULL
    with nogil, parallel():
        rows = <real*> malloc((4 * pw + w) * sizeof(real))
        memset(rows, 0, (4 * pw + w) * sizeof(real))
        for plane in prange(n_images * channels, schedule="static"):
            n = plane // channels
            c = plane % channels
            x_plane = &x[n, c, 0, 0]
            for i in range(th):
                top = 2 * i - padding
                _bt_rows(_row_or_zeros(x_plane, top, h, w, rows + 4 * pw), _row_or_zeros(x_plane, top + 1, h, w, rows + 4 * pw),
                         _row_or_zeros(x_plane, top + 2, h, w, rows + 4 * pw), _row_or_zeros(x_plane, top + 3, h, w, rows + 4 * pw),
                         rows + padding, pw, w)  # Bᵀ d, down the 4 rows
                for xi in range(4):
                    _bt_columns(rows + xi * pw, tw, &v[4 * xi, c, (n * th + i) * tw], plane_stride)
        free(rows)


def winograd_input_transform_adjoint(const real[:, :, ::1] grad_v, int padding, int th, int tw, real[:, :, :, ::1] grad_x):
    """grad_x[n, c] = the sum over tiles of B ∂V Bᵀ placed at (2i, 2j), with the padding cut off."""
    cdef Py_ssize_t n_images = grad_x.shape[0], channels = grad_x.shape[1], h = grad_x.shape[2], w = grad_x.shape[3]
    cdef Py_ssize_t ph = 2 * th + 2, pw = 2 * tw + 2, plane_stride = grad_v.shape[1] * grad_v.shape[2]
    cdef Py_ssize_t plane, n, c, i, xi
    cdef real* padded = NULL  # each thread mallocs its own: the zero-bordered plane, then 4 rows of ∂V Bᵀ
    with nogil, parallel():
        padded = <real*> malloc((ph + 4) * pw * sizeof(real))
        for plane in prange(n_images * channels, schedule="static"):
            n = plane // channels
            c = plane % channels
            memset(padded, 0, ph * pw * sizeof(real))
            for i in range(th):
                for xi in range(4):
                    _b_columns(&grad_v[4 * xi, c, (n * th + i) * tw], plane_stride, tw, padded + (ph + xi) * pw)
                _b_rows_add(padded + ph * pw, pw, padded + 2 * i * pw, pw)
            _copy_plane(padded + padding * pw + padding, pw, &grad_x[n, c, 0, 0], w, h, w)
        free(padded)


def winograd_output_transform(const real[:, :, ::1] m, const real[::1] bias, const real[:, :, :, ::1] residual,
                              real[:, :, :, ::1] y):
    """y[n, o] = the tiles Aᵀ M A + bias[o] side by side, cropped to (Hₒ, Wₒ), + residual[n, o].
    ``bias`` and ``residual`` may be empty (zero); a (N, C_out, 1, 1) residual is one shift per plane."""
    cdef Py_ssize_t n_images = y.shape[0], channels = y.shape[1], ho = y.shape[2], wo = y.shape[3]
    cdef Py_ssize_t th = (ho + 1) // 2, tw = (wo + 1) // 2, plane_stride = m.shape[1] * m.shape[2]
    cdef Py_ssize_t plane, n, o, i, a, r, k
    cdef real b
    cdef bint shift = residual.shape[0] > 0 and residual.shape[2] == 1 and residual.shape[3] == 1 and ho * wo > 1
    cdef bint full = residual.shape[0] > 0 and not shift
    cdef real* rows = NULL  # each thread mallocs its own: 8 rows of Aᵀ M, then one output row for an odd Wₒ
    cdef real* dst
    cdef const real* res
    with nogil, parallel():
        rows = <real*> malloc(10 * tw * sizeof(real))
        for plane in prange(n_images * channels, schedule="static"):
            n = plane // channels
            o = plane % channels
            b = bias[o] if bias.shape[0] > 0 else 0
            if shift:
                b = b + residual[n, o, 0, 0]
            for i in range(th):
                _at_rows(&m[0, o, (n * th + i) * tw], plane_stride, tw, rows)
                for a in range(2):
                    r = 2 * i + a
                    if r < ho:  # the last tile row of an odd Hₒ has one row to keep
                        dst = &y[n, o, r, 0]
                        if wo == 2 * tw:  # written in place; an odd Wₒ goes through a spare row, cropped
                            _a_columns(rows + 4 * a * tw, tw, dst, b)
                        else:
                            _a_columns(rows + 4 * a * tw, tw, rows + 8 * tw, b)
                            memcpy(dst, rows + 8 * tw, wo * sizeof(real))
                        if full:  # the residual connection added on the way out, not in a pass of its own
                            res = &residual[n, o, r, 0]
                            for k in range(wo):
                                dst[k] = dst[k] + res[k]
        free(rows)


def winograd_output_transform_adjoint(const real[:, :, :, ::1] grad_y, real[:, :, ::1] grad_m):
    """grad_m[4ξ + ν, o, (n·tH + i)·tW + j] = (A ∂Y Aᵀ)[ξ, ν] for the 2×2 tile of grad_y[n, o] at (2i, 2j), zero-padded."""
    cdef Py_ssize_t n_images = grad_y.shape[0], channels = grad_y.shape[1], ho = grad_y.shape[2], wo = grad_y.shape[3]
    cdef Py_ssize_t th = (ho + 1) // 2, tw = (wo + 1) // 2, pw = 2 * tw, plane_stride = grad_m.shape[1] * grad_m.shape[2]
    cdef Py_ssize_t plane, n, o, i, xi
    cdef real* tiled = NULL  # each thread mallocs its own: the zero-padded ∂Y plane, then 4 rows of A ∂Y
    with nogil, parallel():
        tiled = <real*> malloc((2 * th + 4) * pw * sizeof(real))
        for plane in prange(n_images * channels, schedule="static"):
            n = plane // channels
            o = plane % channels
            memset(tiled, 0, 2 * th * pw * sizeof(real))
            _copy_plane(&grad_y[n, o, 0, 0], wo, tiled, pw, ho, wo)
            for i in range(th):
                _a_rows(tiled + 2 * i * pw, pw, tiled + 2 * th * pw, pw)
                for xi in range(4):
                    _at_columns(tiled + (2 * th + xi) * pw, tw, &grad_m[4 * xi, o, (n * th + i) * tw], plane_stride)
        free(tiled)
