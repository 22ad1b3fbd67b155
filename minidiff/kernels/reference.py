"""The NumPy reference kernels: the specification every fast kernel is tested against.

Written for clarity over speed, with the array module of their inputs (NumPy or CuPy), so
``MINIDIFF_KERNELS=reference`` gives a path a student can step through line by line.

Adam's and the EMA's reference are the textbook lines in :mod:`minidiff.optim`, where a reader
looks for them; this module hands them out under their kernel names (``adam_update``,
``ema_update``), looked up on first use because ``optim`` itself imports the kernels.
"""
from __future__ import annotations

from ..backend import get_array_module


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis: ⌊(size + 2·padding − kernel)/stride⌋ + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kh: int, kw: int, stride: int, padding: int, out=None):
    """Unfold every kh×kw patch of ``x`` into a column, so a convolution becomes one GEMM.

    x: (N, C, H, W) → cols: (C·kh·kw, N·Ho·Wo). Rows are ordered (c, i, j) like a flattened
    (C, kh, kw) weight; columns run over every output position of every image, so the whole
    batch is a single matrix product W·cols rather than N small ones. Padding is zeros.
    ``out``, if given, is a C-contiguous array of that shape and dtype to write into.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))) if padding else x
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=x.dtype) if out is None else out.reshape(c, kh, kw, n, ho, wo)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]  # (N, C, Ho, Wo)
            cols[:, i, j] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * ho * wo)


def col2im(cols, x_shape, kh: int, kw: int, stride: int, padding: int, out=None):
    """The adjoint of :func:`im2col`: scatter-add every column back onto its patch.

    cols: (C·kh·kw, N·Ho·Wo) → (N, C, H, W). Overlapping patches add up, which is exactly the
    gradient of im2col; contributions reach a pixel in (i, j) order, which the fast kernels
    follow so that they agree bit for bit. ``out``, if given, is a C-contiguous array of
    ``x_shape`` to write into.
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    padded = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += cols[:, i, j].transpose(1, 0, 2, 3)
    image = padded[:, :, padding : padding + h, padding : padding + w]
    if out is None:
        return image.copy() if padding else image
    out[...] = image
    return out


def sigmoid(x):
    """σ(x) = (1 + tanh(x/2))/2: exact, and never overflows the way 1/(1 + e⁻ˣ) does for x ≪ 0."""
    return 0.5 * (1 + get_array_module(x).tanh(0.5 * x))


def group_norm_forward(x, num_groups: int, weight, bias, eps: float, silu: bool):
    """Group normalisation (Wu & He 2018, Eq. 1–3), then the per-channel affine map, then
    optionally SiLU -- the GroupNorm → SiLU pair every DDPM ResBlock starts with, in one pass.

    x: (N, C, M); weight, bias: (C,) → (y (N, C, M), mean (N, G), rstd (N, G)) with
    x̂ = (x − μ_g)·rstd, rstd = 1/√(σ²_g + eps) over each group of C/G channels, a = γ·x̂ + β and
    y = a·σ(a) if ``silu`` else a (:func:`group_norm_stats`, then :func:`group_norm_apply`). The
    backward pass rebuilds x̂ from x, μ and rstd, so the forward pass writes one array, not two.
    """
    mean, rstd = group_norm_stats(x, num_groups, eps)
    return group_norm_apply(x, mean, rstd, weight, bias, silu), mean, rstd


def group_norm_stats(x, num_groups: int, eps: float):
    """μ_g and rstd = 1/√(σ²_g + eps) of each group of x (N, C, M) → (mean (N, G), rstd (N, G)).
    Two-pass variance σ² = mean((x − μ)²): it never subtracts two large nearly equal numbers,
    unlike E[x²] − μ²."""
    xp = get_array_module(x)
    n = x.shape[0]
    groups = x.reshape(n, num_groups, -1)  # (N, G, C/G·M)
    mean = groups.mean(axis=-1, keepdims=True)  # μ: (N, G, 1)
    centered = groups - mean
    rstd = 1 / xp.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)  # 1/σ: (N, G, 1)
    return mean[..., 0], rstd[..., 0]


def _normalised(x, mean, rstd):
    """x̂ = (x − μ_g)·rstd_g for x (N, C, *) and statistics (N, G)."""
    n, groups = mean.shape
    return ((x.reshape(n, groups, -1) - mean[..., None]) * rstd[..., None]).reshape(x.shape)


def group_norm_apply(x, mean, rstd, weight, bias, silu: bool):
    """y = a·σ(a) (or a), a = γ·x̂ + β, for x (N, C, *) with its statistics (N, G): GroupNorm's
    last pass, which a Winograd convolution also makes on its input as it reads it."""
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    a = _normalised(x, mean, rstd) * weight.reshape(per_channel) + bias.reshape(per_channel)
    return a * sigmoid(a) if silu else a


def group_norm_backward(grad_y, x, mean, rstd, weight, bias, silu: bool):
    """The gradient of :func:`group_norm_forward` → (dx (N, C, M), dγ (C,), dβ (C,))."""
    n, c, m = x.shape
    num_groups = rstd.shape[1]
    x_hat = _normalised(x, mean, rstd)
    grad_a = grad_y
    if silu:
        a = x_hat * weight[:, None] + bias[:, None]
        s = sigmoid(a)
        grad_a = grad_y * s * (1 + a * (1 - s))  # ∂(a·σ(a))/∂a = σ(a)(1 + a(1 − σ(a)))
    grad_weight = (grad_a * x_hat).sum(axis=(0, 2))  # ∂a/∂γ = x̂
    grad_bias = grad_a.sum(axis=(0, 2))  # ∂a/∂β = 1
    grad_xhat = (grad_a * weight[:, None]).reshape(n, num_groups, -1)  # ∂a/∂x̂ = γ: (N, G, C/G·M)
    x_hat = x_hat.reshape(n, num_groups, -1)
    mean_grad = grad_xhat.mean(axis=-1, keepdims=True)  # through μ
    mean_grad_xhat = (grad_xhat * x_hat).mean(axis=-1, keepdims=True)  # through σ
    grad_x = rstd[..., None] * (grad_xhat - mean_grad - x_hat * mean_grad_xhat)  # ∂x̂/∂x = (1/σ)(I − 1/M − x̂x̂ᵀ/M)
    return grad_x.reshape(n, c, m), grad_weight, grad_bias


# Winograd's minimal filtering F(m×m, 3×3) (Lavin & Gray 2016, "Fast Algorithms for
# Convolutional Neural Networks", Section 4): an m×m output tile Y of a 3×3 correlation of an
# α×α input tile d (α = m + 2) with a filter g is
#     Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A,
# α² multiplications instead of 9m². The transforms below move whole batches of tiles in and
# out of that α×α "Winograd domain"; functional/winograd.py does the multiplications as GEMMs.
# Two tile sizes, each given by its three matrices:
#   m = 2, F(2×2, 3×3): 16 multiplications for 4 outputs (2.25× fewer than direct), transforms of
#     0 and ±1 only, so float32 rounds about as the direct sum does;
#   m = 4, F(4×4, 3×3): 36 for 16 (4× fewer), interpolation points 0, ±1, ±2 (Section 4.2): the
#     transforms have entries up to 8 and ⅙, so float32 results carry a few times the error of
#     m = 2 (tests/test_winograd.py bounds it against the im2col conv).
WINOGRAD_MATRICES = {
    2: dict(bt=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
            g=((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
            at=((1, 1, 1, 0), (0, 1, -1, -1))),
    4: dict(bt=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
            g=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
               (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
            at=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}
WINOGRAD_TILE_SIZES = tuple(WINOGRAD_MATRICES)


def winograd_tile_entries(m: int = 2) -> int:
    """α² = (m + 2)²: entries of a transformed tile, GEMMs per convolution."""
    return (m + 2) ** 2


WINOGRAD_TILE_ENTRIES = winograd_tile_entries(2)


def _winograd_matrix(m: int, name: str, xp, dtype):
    return xp.asarray(WINOGRAD_MATRICES[m][name], dtype=dtype)


def winograd_tiles(ho: int, wo: int, m: int = 2) -> tuple[int, int]:
    """Tiles (tH, tW) = (⌈Hₒ/m⌉, ⌈Wₒ/m⌉) of m×m outputs that cover an Hₒ×Wₒ output."""
    return -(-ho // m), -(-wo // m)


def winograd_tile_count(ho: int, wo: int, m: int = 2) -> int:
    """Columns an image takes in the transformed tiles: tH·(tW + 1), a spare tile per row of tiles."""
    th, tw = winograd_tiles(ho, wo, m)
    return th * (tw + 1)


def winograd_filter_transform(w, m: int = 2):
    """U = G g Gᵀ for every (output, input) channel pair: w (C_out, C, 3, 3) → U (α², C_out, C).

    With row-major vec, vec(G g Gᵀ) = (G ⊗ G)·vec(g), so all pairs' transforms are one product.
    """
    xp = get_array_module(w)
    c_out, c = w.shape[:2]
    g = _winograd_matrix(m, "g", xp, w.dtype)
    u = xp.kron(g, g) @ w.reshape(c_out * c, 9).T  # (α², 9) @ (9, C_out·C)
    return u.reshape(winograd_tile_entries(m), c_out, c)


def winograd_filter_transform_adjoint(grad_u, m: int = 2):
    """∂g = Gᵀ ∂U G, the adjoint of :func:`winograd_filter_transform`: (α², C_out, C) → (C_out, C, 3, 3)."""
    xp = get_array_module(grad_u)
    _, c_out, c = grad_u.shape
    g = _winograd_matrix(m, "g", xp, grad_u.dtype)
    return (grad_u.reshape(winograd_tile_entries(m), c_out * c).T @ xp.kron(g, g)).reshape(c_out, c, 3, 3)


# Layout of transformed tiles, (α², C, tH·N·(tW + 1)): axis 0 runs over the α² entries (ξ, ν)
# of a tile, row-major, so V[α·ξ + ν] is the right-hand side of one GEMM; along the last axis,
# the tiles of each channel, row i of tiles of the N images side by side, tile (i, j) of image
# n at (i·N + n)·(tW + 1) + j. The last tile of each image's row (j = tW) is a spare: zeros
# here; the compiled kernels leave junk there in V and M, since it lets them transform all of
# a channel's tiles in a few long loops (see csrc/winograd.pxi). Nothing reads a spare's value:
# the output transform skips it, and the output adjoint sets its ∂M to zero, hence ∂V's too.

def winograd_pack_tiles(tiles):
    """(…, N, tH, tW) tiles → (…, tH·N·(tW + 1)), spares zero."""
    xp = get_array_module(tiles)
    *lead, n, th, tw = tiles.shape
    spare = xp.zeros((*lead, th, n, 1), dtype=tiles.dtype)
    return xp.concatenate([xp.swapaxes(tiles, -3, -2), spare], axis=-1).reshape(*lead, th * n * (tw + 1))


def winograd_unpack_tiles(flat, n: int, th: int, tw: int):
    """The inverse of :func:`winograd_pack_tiles`, spares dropped: (…, tH·N·(tW + 1)) → (…, N, tH, tW)."""
    xp = get_array_module(flat)
    return xp.swapaxes(flat.reshape(*flat.shape[:-1], th, n, tw + 1)[..., :tw], -3, -2)


def winograd_input_transform(x, padding: int, out=None, m: int = 2, norm=None, transposed: bool = False):
    """V = Bᵀ d B for every α×α input tile d of a 3×3, stride-1 convolution's input.

    x: (N, C, H, W) → V: (α², C, tH·N·(tW + 1)), in the layout described above. Tile (i, j)
    covers rows m·i … m·i+α−1 and the same columns of x zero-padded by ``padding`` (tiles
    overlap by two; rows past the padding, needed when m does not divide Hₒ, are zeros too).
    ``out``: a C-contiguous array to fill. ``norm`` = (mean, rstd, weight, bias): the
    convolution's input is SiLU(GroupNorm(x)) with these statistics (N, G) and affine map (C,),
    applied here (:func:`group_norm_apply`; zero padding is added after it). ``transposed``: V[ξ]ᵀ
    instead, (α², tH·N·(tW + 1), C), the layout in which the filter gradient ∂M[ξ]·V[ξ]ᵀ is a
    product of two row-major matrices.
    """
    xp = get_array_module(x)
    if norm is not None:
        x = group_norm_apply(x, *norm, silu=True)
    n, c, h, w = x.shape
    alpha = m + 2
    th, tw = winograd_tiles(h + 2 * padding - 2, w + 2 * padding - 2, m)
    padded = xp.zeros((n, c, m * th + 2, m * tw + 2), dtype=x.dtype)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rows = [xp.stack([padded[:, :, a : a + m * th : m, b : b + m * tw : m] for b in range(alpha)], axis=-1) for a in range(alpha)]
    d = xp.stack(rows, axis=-2)  # (N, C, tH, tW, α, α)
    bt = _winograd_matrix(m, "bt", xp, x.dtype)
    v = xp.einsum("xa,nctsab,yb->xycnts", bt, d, bt, optimize=True)  # Bᵀ d B: (α, α, C, N, tH, tW)
    v = winograd_pack_tiles(v).reshape(alpha * alpha, c, -1)  # (α², C, tH·N·(tW + 1))
    return _into(out, v.transpose(0, 2, 1) if transposed else v)


def winograd_transposed_v_pays(dtype) -> bool:
    """Whether writing V transposed (``winograd_input_transform(…, transposed=True)``) makes the filter gradient
    cheaper: not here, where it is a copy of V (and a GPU's GEMM takes either layout at one speed)."""
    return False


def winograd_input_transform_adjoint(grad_v, x_shape, padding: int, out=None, m: int = 2):
    """The adjoint of :func:`winograd_input_transform`: ∂d = B ∂V Bᵀ for every tile, added up where
    tiles overlap, with the padding cut off. grad_v: (α², C, tH·N·(tW + 1)) → (N, C, H, W)."""
    xp = get_array_module(grad_v)
    n, c, h, w = x_shape
    alpha = m + 2
    th, tw = winograd_tiles(h + 2 * padding - 2, w + 2 * padding - 2, m)
    bt = _winograd_matrix(m, "bt", xp, grad_v.dtype)
    grad_tiles = winograd_unpack_tiles(grad_v.reshape(alpha, alpha, c, -1), n, th, tw)  # (α, α, C, N, tH, tW)
    grad_d = xp.einsum("xa,xycnts,yb->nctsab", bt, grad_tiles, bt, optimize=True)  # B ∂V Bᵀ: (N, C, tH, tW, α, α)
    padded = xp.zeros((n, c, m * th + 2, m * tw + 2), dtype=grad_v.dtype)
    for a in range(alpha):
        for b in range(alpha):
            padded[:, :, a : a + m * th : m, b : b + m * tw : m] += grad_d[..., a, b]
    return _into(out, padded[:, :, padding : padding + h, padding : padding + w])


def winograd_output_transform(products, out_shape, bias=None, residual=None, out=None, m: int = 2):
    """Y = Aᵀ M A for every tile, tiles laid side by side, cropped to Hₒ×Wₒ, plus a per-channel
    bias, plus a residual (a skip connection, added here rather than in a pass of its own).

    products, the M: (α², C_out, tH·N·(tW + 1)) → (N, C_out, Hₒ, Wₒ) = ``out_shape``; bias:
    (C_out,) or None; residual: ``out_shape``, (N, C_out, 1, 1) or None.
    """
    xp = get_array_module(products)
    n, c_out, ho, wo = out_shape
    th, tw = winograd_tiles(ho, wo, m)
    alpha = m + 2
    at = _winograd_matrix(m, "at", xp, products.dtype)
    tiles = winograd_unpack_tiles(products.reshape(alpha, alpha, c_out, -1), n, th, tw)  # (α, α, C_out, N, tH, tW)
    tiles = xp.einsum("ax,xyonts,by->notasb", at, tiles, at, optimize=True)  # Aᵀ M A: (N, C_out, tH, m, tW, m)
    y = tiles.reshape(n, c_out, m * th, m * tw)[:, :, :ho, :wo]
    y = y if bias is None else y + bias[:, None, None]
    return _into(out, y if residual is None else y + residual)


def winograd_output_transform_adjoint(grad_y, out=None, plane_sums=None, m: int = 2):
    """The adjoint of :func:`winograd_output_transform` (without the bias): ∂M = A ∂Y Aᵀ for every
    tile, cropped positions getting zero. grad_y: (N, C_out, Hₒ, Wₒ) → (α², C_out, tH·N·(tW + 1)).

    ``plane_sums``, an (N, C_out) array, if given, gets the sum of each plane of ∂Y: the bias's
    gradient per image (∂y/∂b = 1), which the compiled kernel adds up while it reads ∂Y anyway.
    """
    xp = get_array_module(grad_y)
    n, c_out, ho, wo = grad_y.shape
    alpha = m + 2
    th, tw = winograd_tiles(ho, wo, m)
    padded = xp.zeros((n, c_out, m * th, m * tw), dtype=grad_y.dtype)
    padded[:, :, :ho, :wo] = grad_y
    at = _winograd_matrix(m, "at", xp, grad_y.dtype)
    grad_m = xp.einsum("ax,notasb,by->xyonts", at, padded.reshape(n, c_out, th, m, tw, m), at, optimize=True)  # A ∂Y Aᵀ
    if plane_sums is not None:
        plane_sums[...] = grad_y.sum(axis=(2, 3))
    return _into(out, winograd_pack_tiles(grad_m).reshape(alpha * alpha, c_out, -1))


def _into(out, value):
    """``value``, written into ``out`` when one is given (the kernels' optional output buffer)."""
    if out is None:
        return value
    out[...] = value
    return out


def upsample_nearest_forward(x, scale: int):
    """y[n, c, i, j] = x[n, c, ⌊i/s⌋, ⌊j/s⌋]: (N, C, H, W) → (N, C, H·s, W·s)."""
    xp = get_array_module(x)
    # each pixel repeated s times along the columns, then each row s times; as one copy of a
    # broadcast (N, C, H, s, W, s) view, NumPy took ten times longer
    return xp.repeat(xp.repeat(x, scale, axis=3), scale, axis=2)


def upsample_nearest_backward(grad_y, scale: int):
    """The adjoint of :func:`upsample_nearest_forward`: each s×s block of ∂y summed onto its source pixel."""
    n, c, hs, ws = grad_y.shape
    # the block's s rows first, then its s columns: one sum over both block axes at once is a
    # strided reduction NumPy runs ~6× slower
    rows = grad_y.reshape(n, c, hs // scale, scale, ws).sum(axis=3)  # (N, C, H, W·s)
    columns = rows.reshape(n, c, hs // scale, ws // scale, scale)
    grad_x = columns[..., 0].copy()
    for j in range(1, scale):
        grad_x += columns[..., j]
    return grad_x


def softmax_forward(scores, scale: float):
    """P = softmax(z) along the last axis, z = scale·S (Vaswani et al. 2017, Eq. 1):
    exp(z − max z)/Σ exp(z − max z). Subtracting the maximum leaves P unchanged and keeps exp
    from overflowing."""
    xp = get_array_module(scores)
    z = scores * scale
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(probs, grad_probs):
    """∂z = P ⊙ (∂P − Σⱼ ∂P ⊙ P): the softmax Jacobian diag(P) − P Pᵀ applied to ∂P, row by row,
    with respect to the scaled scores z."""
    return probs * (grad_probs - (grad_probs * probs).sum(axis=-1, keepdims=True))


def __getattr__(name):
    if name in ("adam_update", "ema_update"):
        from .. import optim

        return getattr(optim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
