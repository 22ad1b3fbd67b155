"""3×3, stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3) or F(4×4, 3×3) (Lavin & Gray 2016).

For one 4×4 input tile d, one 3×3 filter g and one 2×2 output tile (Lavin & Gray 2016, Eq. 8)

    Y = Aᵀ [U ⊙ V] A,    U = G g Gᵀ,    V = Bᵀ d B,

16 multiplications instead of 36. Summed over input channels, the elementwise product of each
of the α² = 16 positions ξ of the 4×4 tile is a matrix product over channels (Eq. 12):

    M[ξ] = U[ξ] · V[ξ],    U[ξ]: (C_out, C),  V[ξ]: (C, tiles),  M[ξ]: (C_out, tiles),

so a convolution is 16 GEMMs with 2.25× fewer FLOPs than im2col's one GEMM, and the input is
expanded 4× (overlapping 4×4 tiles with stride 2) instead of 9×. (The tiles of an image take
tH·(tW + 1) columns: one spare per row of tiles, see the layout in kernels/reference.py.)

F(4×4, 3×3) (``tile=4``) is the same with 6×6 input tiles at stride 4 and α² = 36 GEMMs: 4× fewer
FLOPs than im2col, the input expanded 2.25×; its transforms' larger weights (up to 8, and ⅙ in G)
cost float32 accuracy: about 10× F(2×2)'s error, ~5e-6 of the output's largest value on the
U-Net's 28×28 convs (tests/test_winograd.py holds it to 3e-5).
Every step is linear, so the backward pass is each step's adjoint in reverse order:

    ∂M = A ∂Y Aᵀ,   ∂U[ξ] = ∂M[ξ]·V[ξ]ᵀ,   ∂V[ξ] = U[ξ]ᵀ·∂M[ξ],   ∂g = Gᵀ ∂U G,   ∂d = B ∂V Bᵀ,

and ∂b sums ∂Y over each plane, which the output adjoint does while it reads ∂Y.

The filter, input and output transforms and their adjoints are named kernels (NumPy
reference, Cython on the CPU).
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module
from ..kernels import kernel
from ..kernels.reference import winograd_tile_count, winograd_tile_entries
from .chunking import image_chunks, map_chunks, scratch, sum_shares
from .fusion import pending


# The backward's recomputed V written as V[ξ]ᵀ where the kernels transpose it cheaply, so that
# ∂U[ξ] = ∂M[ξ]·V[ξ]ᵀ is a product of row-major matrices ("NN"). A setting only so that
# benchmarks/levers_ab.py can time the other layout beside it.
TRANSPOSED_V_FOR_FILTER_GRADIENT = True


class WinogradConv2d(Function):
    """y = conv2d(x, w, b, stride=1, padding) + residual for a 3×3 kernel, via F(m×m, 3×3),
    m = 2 or 4 (``tile``); with ``num_groups``, y = conv2d(SiLU(GroupNorm(x)), …) + residual,
    the GroupNorm's affine map being ``norm_weight``, ``norm_bias``.

    Like :class:`~minidiff.functional.conv_fast.ChunkedConv2d`, a few images at a time so that a chunk's
    transformed tiles are still in cache when their GEMMs read them, and only x and the
    transformed filter are saved: V is recomputed in the backward pass (one memory-bound pass)
    rather than kept alive, 4× the size of x, until then.

    The GroupNorm+SiLU in front is applied by the input transform as it reads each plane of x:
    the normalised activations are never written out (a pass over memory each way, and at
    batch 1 an op's fixed cost, saved). The statistics come first (``group_norm_stats``);
    the backward pass carries ∂(SiLU(GroupNorm(x))) from the input adjoint through
    ``group_norm_backward``, and normalises again to rebuild V when the filters' gradient is
    wanted (which is why model code gets this form only when it is not: :mod:`~minidiff.functional.norm`).
    """

    def forward(self, x, w, b, residual, norm_weight, norm_bias, padding, tile=2, num_groups=0, eps=1e-5):
        xp = get_array_module(x)
        n, c, h, width = x.shape
        c_out = w.shape[0]
        ho, wo = h + 2 * padding - 2, width + 2 * padding - 2
        m, entries = tile, winograd_tile_entries(tile)
        tiles = winograd_tile_count(ho, wo, m)
        u = filter_transform(w, m)  # U = G g Gᵀ: (α², C_out, C)
        stats = kernel("group_norm_stats", x)(x.reshape(n, c, -1), num_groups, eps) if num_groups else None  # μ, rstd: (N, G)
        input_transform, output_transform = kernel("winograd_input_transform", x), kernel("winograd_output_transform", x)
        out = xp.empty((n, c_out, ho, wo), dtype=x.dtype)

        def forward_chunk(chunk):
            size = chunk.stop - chunk.start
            v = input_transform(x[chunk], padding, out=scratch("winograd_v", (entries, c, size * tiles), x.dtype, xp), m=m,
                                norm=_norm_rows(stats, norm_weight, norm_bias, chunk))  # Bᵀ d B
            products = xp.matmul(u, v, out=scratch("winograd_m", (entries, c_out, size * tiles), x.dtype, xp))  # M[ξ] = U[ξ]·V[ξ]
            output_transform(products, out[chunk].shape, b, None if residual is None else residual[chunk], out=out[chunk], m=m)  # Aᵀ M A + b + residual

        map_chunks(forward_chunk, image_chunks(n, entries * max(c, c_out), tiles, x.itemsize, xp is not np), xp)
        self.padding, self.tile, self.num_groups = padding, tile, num_groups
        self.save_for_backward(x, u, stats, norm_weight, norm_bias)
        return out

    def backward(self, grad):
        x, u, stats, norm_weight, norm_bias = self.saved
        xp = get_array_module(grad)
        n, c = x.shape[:2]
        c_out = grad.shape[1]
        m, entries = self.tile, winograd_tile_entries(self.tile)
        tiles = winograd_tile_count(*grad.shape[2:], m)
        input_transform = kernel("winograd_input_transform", x)
        input_adjoint = kernel("winograd_input_transform_adjoint", x)
        output_adjoint = kernel("winograd_output_transform_adjoint", x)
        # ∂ of the convolution's input: ∂x itself, or ∂(SiLU(GroupNorm(x))) on its way to ∂x, ∂γ, ∂β
        needs_grad_input = self.needs_input_grad[0] or (self.num_groups and any(self.needs_input_grad[4:6]))
        grad_input = xp.empty(x.shape, dtype=x.dtype) if needs_grad_input else None
        residual_shape = self.inputs[3].shape if self.needs_input_grad[3] else None
        # a (N, C_out, 1, 1) residual's gradient sums ∂Y over each plane: filled chunk by chunk
        grad_shift = xp.empty((n, c_out), dtype=grad.dtype) if residual_shape is not None and residual_shape[2:] == (1, 1) else None
        u_t = u.transpose(0, 2, 1)  # U[ξ]ᵀ: (α², C, C_out)
        # V is recomputed for ∂U; written transposed, V[ξ]ᵀ (α², tiles, C), where that is cheap, so that the GEMM
        # reads both operands row-major: OpenBLAS runs ∂M·Vᵀ from V's own layout 1.2–2.5× slower (benchmarks/README.md)
        transposed = TRANSPOSED_V_FOR_FILTER_GRADIENT and kernel("winograd_transposed_v_pays", x)(x.dtype)
        grad = xp.ascontiguousarray(grad)

        def backward_chunk(chunk):
            size = chunk.stop - chunk.start
            plane_sums = xp.empty((size, c_out), dtype=grad.dtype)  # ∂y/∂b = 1: Σ ∂Y over each plane, read with ∂Y
            grad_m = output_adjoint(grad[chunk], out=scratch("winograd_m", (entries, c_out, size * tiles), x.dtype, xp),
                                    plane_sums=plane_sums, m=m)  # ∂M = A ∂Y Aᵀ
            grad_b = plane_sums.sum(axis=0) if self.needs_input_grad[2] else None
            if grad_shift is not None:
                grad_shift[chunk] = plane_sums
            if grad_input is not None:
                grad_v = xp.matmul(u_t, grad_m, out=scratch("winograd_v", (entries, c, size * tiles), x.dtype, xp))  # ∂V[ξ] = U[ξ]ᵀ·∂M[ξ]
                input_adjoint(grad_v, x[chunk].shape, self.padding, out=grad_input[chunk], m=m)  # ∂d = B ∂V Bᵀ, overlaps added
            if self.needs_input_grad[1]:
                shape = (entries, size * tiles, c) if transposed else (entries, c, size * tiles)
                v = input_transform(x[chunk], self.padding, out=scratch("winograd_v", shape, x.dtype, xp), m=m,
                                    norm=_norm_rows(stats, norm_weight, norm_bias, chunk), transposed=transposed)
                return xp.matmul(grad_m, v if transposed else v.transpose(0, 2, 1)), grad_b  # ∂U[ξ] = ∂M[ξ]·V[ξ]ᵀ, this chunk's share
            return None, grad_b

        grad_u, grad_b = sum_shares(map_chunks(backward_chunk, image_chunks(n, entries * max(c, c_out), tiles, x.itemsize, xp is not np), xp))
        grad_w = None if grad_u is None else kernel("winograd_filter_transform_adjoint", grad_u)(grad_u, m)  # ∂g = Gᵀ ∂U G
        grad_residual = grad_shift.reshape(residual_shape) if grad_shift is not None else grad if residual_shape is not None else None
        grad_x, grad_norm_weight, grad_norm_bias = grad_input, None, None
        if self.num_groups and grad_input is not None:  # through SiLU and GroupNorm: see functional/norm.py
            grad_x, grad_norm_weight, grad_norm_bias = kernel("group_norm_backward", grad_input)(
                grad_input.reshape(n, c, -1), x.reshape(n, c, -1), *stats, norm_weight, norm_bias, True)
            grad_x = grad_x.reshape(x.shape)
        # ∂y/∂residual = 1, summed over the positions it was broadcast to
        return (grad_x if self.needs_input_grad[0] else None, grad_w, grad_b, grad_residual,
                grad_norm_weight if self.needs_input_grad[4] else None, grad_norm_bias if self.needs_input_grad[5] else None)


def _norm_rows(stats, weight, bias, chunk: slice):
    """The input transform's ``norm`` for the images ``chunk``: their statistics and the affine map, or None."""
    return None if stats is None else (stats[0][chunk], stats[1][chunk], weight, bias)


# Inside reusing_filters(): (id(w), m) → (w, U) for the read-only filter arrays w seen so far.
_reused_filters: dict | None = None


@contextlib.contextmanager
def reusing_filters():
    """Inside the block, each read-only filter array w is transformed once per tile size, U = G g Gᵀ, and its U
    reused by every later convolution with it (:meth:`minidiff.nn.Module.frozen` makes the weights read-only
    and enters this block). The transforms are dropped when the outermost block ends."""
    global _reused_filters
    outermost = _reused_filters is None
    if outermost:
        _reused_filters = {}
    try:
        yield
    finally:
        if outermost:
            _reused_filters = None


def filter_transform(w, m: int):
    """U = G g Gᵀ, (α², C_out, C), of the filters w (C_out, C, 3, 3); reused inside :func:`reusing_filters` while
    w is read-only (a writeable w could change under a kept U)."""
    reused = _reused_filters  # read once: another thread's block may end meanwhile
    reusable = reused is not None and _read_only(w)
    entry = reused.get((id(w), m)) if reusable else None
    if entry is None or entry[0] is not w:  # the array itself is kept, so its id cannot be reused while it is here
        entry = (w, kernel("winograd_filter_transform", w)(w, m))
        if reusable:
            reused[(id(w), m)] = entry
    return entry[1]


def reuses_filters(w) -> bool:
    """Whether :func:`filter_transform` keeps the transform of the filter array ``w`` for later calls:
    inside :func:`reusing_filters`, for a read-only NumPy array."""
    return _reused_filters is not None and _read_only(w)


def _read_only(w) -> bool:
    return isinstance(w, np.ndarray) and not w.flags.writeable


def winograd_conv2d(x, w, b, padding: int, tile: int = 2, norm=None):
    """``conv2d(x, w, b, padding=padding)`` by :class:`WinogradConv2d` with F(tile×tile, 3×3), left pending
    (:mod:`~minidiff.functional.fusion`) so that ``+ r`` right after it becomes the convolution
    adding r as it writes its output: r of the output's shape (a skip connection) or
    (N, C_out, 1, 1) (a ResBlock's time-embedding shift).

    ``norm`` = (weight, bias, num_groups, eps): the convolution of SiLU(GroupNorm(x)) instead, its
    normalisation fused into the input transform (the GroupNorm+SiLU's ``conv`` absorber in
    :mod:`~minidiff.functional.norm` passes it)."""
    shape = (x.shape[0], w.shape[0], x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2)
    norm_weight, norm_bias, num_groups, eps = (None, None, 0, 1e-5) if norm is None else norm
    options = dict(padding=padding, tile=tile, num_groups=num_groups, eps=eps)

    def with_residual(r):
        if not isinstance(r, Tensor) or r.dtype != x.dtype or tuple(r.shape) not in (shape, shape[:2] + (1, 1)):
            return None
        return WinogradConv2d.apply(x, w, b, r, norm_weight, norm_bias, **options)

    return pending(WinogradConv2d, (x, w, b, None, norm_weight, norm_bias), options, shape, add=with_residual)
