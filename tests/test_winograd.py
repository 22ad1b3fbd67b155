"""The fast convolutions against the textbook one. Winograd F(2×2, 3×3) and F(4×4, 3×3): the
Cython transforms against the NumPy reference, each transform's adjoint, the whole conv against
the textbook im2col conv (F(4×4)'s float32 error bounded), its float64 gradient check, the
residual it adds as it writes; the 1×1 GEMM-per-image path; and the algorithm switch."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidiff.functional as F
from minidiff import Tensor, backend
from minidiff.functional.fusion import module_call, no_fusion
from minidiff.gradcheck import gradcheck
from minidiff.kernels import cpu, reference
from minidiff.kernels.reference import winograd_pack_tiles, winograd_tile_count, winograd_tile_entries, winograd_tiles, winograd_unpack_tiles

IMPLEMENTATIONS = [reference] + ([cpu] if backend.extension() is not None else [])
needs_ext = pytest.mark.skipif(backend.extension() is None, reason="minidiff._C (the Cython kernels) is not built")


@st.composite
def winograd_problems(draw):
    """x (N, C, H, W) for a 3×3 stride-1 conv with padding 0–2: odd, even and non-square sizes."""
    padding = draw(st.integers(0, 2))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(max(1, 3 - 2 * padding), 12)), draw(st.integers(max(1, 3 - 2 * padding), 12))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return rng.standard_normal((n, c, h, w)).astype(dtype), padding, rng


def output_shape(x, padding, c_out):
    n, _, h, w = x.shape
    return n, c_out, h + 2 * padding - 2, w + 2 * padding - 2


def tiles_without_spares(v, n, shape, m):
    """(α², C, tH·N·(tW + 1)) → (α², C, N, tH, tW): the real tiles of an output of shape (…, Hₒ, Wₒ)."""
    return winograd_unpack_tiles(v, n, *winograd_tiles(*shape[2:], m))


def random_tiles(rng, channels, shape, dtype, m):
    """Transformed tiles for an output of ``shape``, spares zero (as ∂V always has them)."""
    th, tw = winograd_tiles(*shape[2:], m)
    return winograd_pack_tiles(rng.standard_normal((winograd_tile_entries(m), channels, shape[0], th, tw)).astype(dtype))


def tolerance(dtype, m=2):
    """F(4×4)'s transforms weigh their inputs by up to 8 (25 in Bᵀ d B's sums): float32 values of
    a few hundred, compared to 1e-5 of their size."""
    if dtype == np.float64:
        return dict(rtol=1e-12, atol=1e-12 * m**3)
    return dict(rtol=1e-5, atol=1e-5) if m == 2 else dict(rtol=1e-5, atol=2e-4)


@needs_ext
@pytest.mark.parametrize("tile", [2, 4])
@settings(max_examples=30, deadline=None)
@given(winograd_problems())
def test_cython_winograd_transforms_match_the_reference(tile, problem):
    x, padding, rng = problem
    shape = output_shape(x, padding, c_out=3)
    tol = tolerance(x.dtype, tile)
    v = cpu.winograd_input_transform(x, padding, m=tile)
    assert v.dtype == x.dtype and v.shape == reference.winograd_input_transform(x, padding, m=tile).shape
    np.testing.assert_allclose(tiles_without_spares(v, x.shape[0], shape, tile),  # the kernels leave junk in the spares
                               tiles_without_spares(reference.winograd_input_transform(x, padding, m=tile), x.shape[0], shape, tile), **tol)
    grad_v = random_tiles(rng, x.shape[1], shape, x.dtype, tile)
    np.testing.assert_allclose(cpu.winograd_input_transform_adjoint(grad_v, x.shape, padding, m=tile),
                               reference.winograd_input_transform_adjoint(grad_v, x.shape, padding, m=tile), **tol)
    m = rng.standard_normal((winograd_tile_entries(tile), 3, x.shape[0] * winograd_tile_count(*shape[2:], tile))).astype(x.dtype)  # junk in the spares too
    bias = rng.standard_normal(3).astype(x.dtype)
    residual, shift = rng.standard_normal(shape).astype(x.dtype), rng.standard_normal(shape[:2] + (1, 1)).astype(x.dtype)
    for b, r in [(None, None), (bias, None), (bias, residual), (None, shift), (bias, shift)]:
        np.testing.assert_allclose(cpu.winograd_output_transform(m, shape, b, r, m=tile),
                                   reference.winograd_output_transform(m, shape, b, r, m=tile), **tol)
    grad_y = rng.standard_normal(shape).astype(x.dtype)
    sums, reference_sums = np.empty(shape[:2], x.dtype), np.empty(shape[:2], x.dtype)
    grad_m = cpu.winograd_output_transform_adjoint(grad_y, plane_sums=sums, m=tile)
    np.testing.assert_allclose(grad_m, reference.winograd_output_transform_adjoint(grad_y, plane_sums=reference_sums, m=tile), **tol)
    np.testing.assert_allclose(sums, reference_sums, rtol=tol["rtol"], atol=tolerance(x.dtype)["atol"] * np.abs(grad_y).sum())
    np.testing.assert_array_equal(grad_m, winograd_pack_tiles(tiles_without_spares(grad_m, x.shape[0], shape, tile)))  # spares exactly zero
    w = rng.standard_normal((3, x.shape[1], 3, 3)).astype(x.dtype)
    u = cpu.winograd_filter_transform(w, tile)
    assert u.dtype == x.dtype
    np.testing.assert_allclose(u, reference.winograd_filter_transform(w, tile), **tol)
    grad_u = rng.standard_normal(u.shape).astype(x.dtype)
    np.testing.assert_allclose(cpu.winograd_filter_transform_adjoint(grad_u, tile), reference.winograd_filter_transform_adjoint(grad_u, tile), **tol)


@needs_ext
@pytest.mark.parametrize("tile", [2, 4])
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), ho=st.integers(1, 9), wo=st.integers(1, 70), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_output_transform_matches_the_reference_on_rows_of_many_tiles(tile, n, ho, wo, dtype, seed):
    """The float output transforms take a row 8 tiles at a time (in registers where the CPU allows): rows of 1 to 18
    tiles, a partial last group, and each output width modulo the tile, against the reference; junk in the spares."""
    rng = np.random.default_rng(seed)
    shape = (n, 2, ho, wo)
    m = rng.standard_normal((winograd_tile_entries(tile), 2, n * winograd_tile_count(ho, wo, tile))).astype(dtype)
    bias, residual = rng.standard_normal(2).astype(dtype), rng.standard_normal(shape).astype(dtype)
    for b, r in [(None, None), (bias, residual), (bias, residual[:, :, :1, :1].copy())]:
        np.testing.assert_allclose(cpu.winograd_output_transform(m, shape, b, r, m=tile),
                                   reference.winograd_output_transform(m, shape, b, r, m=tile), **tolerance(dtype, tile))


@needs_ext
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 37, 9, 10), (1, 32, 28, 28), (3, 16, 7, 7), (2, 3, 5, 5)])
def test_the_transposed_input_transform_writes_v_transposed(tile, dtype, shape):
    """``transposed=True``: V[ξ]ᵀ, (α², tiles, C), exactly the plain layout's values (its blocks of
    16 channels take the vectorised transpose for floats; 37 channels and odd tile counts leave
    remainders), with and without the GroupNorm+SiLU it may apply."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    stats = reference.group_norm_stats(x.reshape(shape[0], shape[1], -1), 1, 1e-5)
    for norm in (None, (*stats, rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype))):
        for impl in IMPLEMENTATIONS:
            v = impl.winograd_input_transform(x, 1, m=tile, norm=norm)
            v_t = impl.winograd_input_transform(x, 1, m=tile, norm=norm, transposed=True)
            assert v_t.shape == (v.shape[0], v.shape[2], v.shape[1])
            np.testing.assert_array_equal(v_t, v.transpose(0, 2, 1))


@needs_ext
@pytest.mark.parametrize("tile", [2, 4])
@settings(max_examples=30, deadline=None)
@given(winograd_problems(), st.booleans())
def test_cython_input_transform_normalises_its_input_as_the_reference_does(tile, problem, one_group):
    """With ``norm`` the input transform reads SiLU(GroupNorm(x)): the same tiles as the reference's
    group_norm_apply followed by the plain transform (zero padding added after the SiLU)."""
    x, padding, rng = problem
    x = (3 + 2 * x).astype(x.dtype)  # far from zero mean and unit variance: the normalisation shows
    groups = 1 if one_group else x.shape[1]
    mean, rstd = reference.group_norm_stats(x.reshape(x.shape[0], x.shape[1], -1), groups, 1e-5)
    weight, bias = rng.standard_normal(x.shape[1]).astype(x.dtype), rng.standard_normal(x.shape[1]).astype(x.dtype)
    norm = (mean, rstd, weight, bias)
    shape = output_shape(x, padding, c_out=3)
    expected = reference.winograd_input_transform(reference.group_norm_apply(x, *norm, silu=True), padding, m=tile)
    for impl in IMPLEMENTATIONS:
        np.testing.assert_allclose(tiles_without_spares(impl.winograd_input_transform(x, padding, m=tile, norm=norm), x.shape[0], shape, tile),
                                   tiles_without_spares(expected, x.shape[0], shape, tile), **tolerance(x.dtype, tile))


@pytest.mark.parametrize("tile", [2, 4])
@settings(max_examples=20, deadline=None)
@given(winograd_problems())
def test_each_winograd_adjoint_is_the_transpose_of_its_transform(tile, problem):
    """⟨T(x), v⟩ = ⟨x, Tᵀ(v)⟩ for the input, output and filter transforms, in every implementation
    (the input transform's v with zero spare tiles, as ∂V has them)."""
    x, padding, rng = problem
    x = x.astype(np.float64)
    shape = output_shape(x, padding, c_out=2)
    grad_v = random_tiles(rng, x.shape[1], shape, np.float64, tile)
    m = rng.standard_normal((winograd_tile_entries(tile), 2, x.shape[0] * winograd_tile_count(*shape[2:], tile)))
    grad_y = rng.standard_normal(shape)
    for impl in IMPLEMENTATIONS:
        lhs, rhs = (np.vdot(impl.winograd_input_transform(x, padding, m=tile), grad_v),
                    np.vdot(x, impl.winograd_input_transform_adjoint(grad_v, x.shape, padding, m=tile)))
        assert np.isclose(lhs, rhs, rtol=1e-12, atol=1e-9)
        lhs, rhs = np.vdot(impl.winograd_output_transform(m, shape, m=tile), grad_y), np.vdot(m, impl.winograd_output_transform_adjoint(grad_y, m=tile))
        assert np.isclose(lhs, rhs, rtol=1e-12, atol=1e-9)
        w = rng.standard_normal((2, x.shape[1], 3, 3))
        grad_u = rng.standard_normal((winograd_tile_entries(tile), 2, x.shape[1]))
        lhs, rhs = np.vdot(impl.winograd_filter_transform(w, tile), grad_u), np.vdot(w, impl.winograd_filter_transform_adjoint(grad_u, tile))
        assert np.isclose(lhs, rhs, rtol=1e-12)


def conv_and_grads(x, w, b, padding, algorithm):
    xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, padding=padding, algorithm=algorithm)
    y.backward(np.cos(np.arange(y.data.size)).reshape(y.shape).astype(x.dtype))
    return y.data, xt.grad, wt.grad, bt.grad


@pytest.mark.parametrize("kernels", ["reference"] + (["cpu"] if backend.extension() is not None else []))
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-11), (np.float32, 2e-4)])
@pytest.mark.parametrize("shape, c_out, padding", [((2, 3, 7, 7), 4, 1), ((1, 2, 6, 9), 3, 1), ((2, 2, 5, 4), 2, 0), ((3, 5, 4, 5), 2, 2), ((1, 1, 28, 28), 2, 1)])
def test_winograd_conv_equals_the_im2col_conv(monkeypatch, kernels, dtype, tol, shape, c_out, padding):
    """Same output and gradients (x, w, b) as the textbook im2col formulation, odd sizes included;
    the chunked im2col too."""
    monkeypatch.setenv("MINIDIFF_KERNELS", kernels)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((c_out, shape[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    textbook = conv_and_grads(x, w, b, padding, "reference")
    for fast in (conv_and_grads(x, w, b, padding, "winograd"), conv_and_grads(x, w, b, padding, "im2col")):
        for got, want in zip(fast, textbook):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_winograd_conv_passes_a_float64_gradient_check():
    from minidiff.functional.winograd import WinogradConv2d

    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1, algorithm="winograd"), x, w, b)
    assert gradcheck(lambda x, w, b: WinogradConv2d.apply(x, w, b, None, None, None, padding=1, tile=4), x, w, b)


@pytest.mark.parametrize("kernels", ["reference"] + (["cpu"] if backend.extension() is not None else []))
@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_conv_of_a_group_norm_silu_passes_a_float64_gradient_check(monkeypatch, kernels, tile):
    """conv(SiLU(GroupNorm(x))) as one op: gradients in x, the filters, the bias and GroupNorm's γ, β."""
    from minidiff.functional.winograd import WinogradConv2d

    monkeypatch.setenv("MINIDIFF_KERNELS", kernels)
    rng = np.random.default_rng(4)
    x, w, b = 2 + rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(3)
    gamma, beta = 1 + rng.standard_normal(4), rng.standard_normal(4)
    assert gradcheck(lambda x, w, b, gamma, beta: WinogradConv2d.apply(x, w, b, None, gamma, beta, padding=1, tile=tile, num_groups=2),
                     x, w, b, gamma, beta)


@pytest.mark.parametrize("affine, filters_learn", [(True, False), (False, False), (True, True)])
def test_a_conv_of_silu_of_group_norm_inside_a_module_is_one_op_with_the_composition_s_values(monkeypatch, affine, filters_learn):
    """Model code's conv(silu(group_norm(x))): one WinogradConv2d normalising its input on the fast path
    (not when the filters need a gradient, whose backward would normalise again; not for a GroupNorm
    without γ, β: then GroupNorm+SiLU stays one op of its own), the ops as written with fusion off;
    the same output and gradients either way."""
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    rng = np.random.default_rng(5)
    x, b = (Tensor(a, requires_grad=True) for a in (rng.standard_normal((2, 4, 6, 6)), rng.standard_normal(5)))
    w = Tensor(rng.standard_normal((5, 4, 3, 3)), requires_grad=filters_learn)
    gamma, beta = (Tensor(a, requires_grad=True) for a in (1 + rng.standard_normal(4), rng.standard_normal(4))) if affine else (None, None)
    results = []
    for fusion in (contextlib.nullcontext(), no_fusion()):
        with fusion:
            y = module_call(lambda: F.conv2d(F.silu(F.group_norm(x, 2, gamma, beta)), w, b, padding=1, algorithm="winograd"), (), {})
        op, groups = type(y._ctx).__name__, getattr(y._ctx, "num_groups", 0)  # before the backward frees the graph
        y.backward(np.cos(np.arange(y.data.size)).reshape(y.shape))
        leaves = [t for t in (x, w, b, gamma, beta) if t is not None and t.requires_grad]
        results.append((op, groups, y.data.copy(), [t.grad.copy() for t in leaves]))
        for t in leaves:
            t.grad = None
    (fused_op, fused_groups, fused_y, fused_grads), (plain_op, plain_groups, plain_y, plain_grads) = results
    assert fused_op == plain_op == "WinogradConv2d" and fused_groups == (2 if affine and not filters_learn else 0) and plain_groups == 0
    np.testing.assert_allclose(fused_y, plain_y, rtol=1e-12, atol=1e-12)
    for fused, plain in zip(fused_grads, plain_grads):
        np.testing.assert_allclose(fused, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernels", ["reference"] + (["cpu"] if backend.extension() is not None else []))
@pytest.mark.parametrize("shape, c_out, padding", [((2, 32, 28, 28), 32, 1), ((3, 5, 9, 6), 4, 2), ((2, 3, 6, 7), 2, 0)])
def test_f4x4_winograd_conv_stays_within_its_float32_bound_of_the_textbook_conv(monkeypatch, kernels, shape, c_out, padding):
    """F(4×4, 3×3) in float32 against the textbook conv in float64: output and every gradient
    within 3e-5 of the largest value (measured: ≤ 5e-6 on the U-Net's 28×28 convs, about 10×
    F(2×2, 3×3)'s and im2col's 5e-7), and equal to the float64 conv in float64."""
    from minidiff.functional.winograd import WinogradConv2d

    monkeypatch.setenv("MINIDIFF_KERNELS", kernels)
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((c_out, shape[1], 3, 3)) / np.sqrt(9 * shape[1])  # unit-scale outputs, as initialised layers give
    b = rng.standard_normal(c_out)
    textbook = conv_and_grads(x, w, b, padding, "reference")
    for dtype, tol in ((np.float32, 3e-5), (np.float64, 1e-11)):
        xt, wt, bt = (Tensor(a.astype(dtype), requires_grad=True) for a in (x, w, b))
        y = WinogradConv2d.apply(xt, wt, bt, None, None, None, padding=padding, tile=4)
        y.backward(np.cos(np.arange(y.data.size)).reshape(y.shape).astype(dtype))
        for got, want in zip((y.data, xt.grad, wt.grad, bt.grad), textbook):
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_auto_picks_winograd_for_3x3_stride_1_and_a_gemm_per_image_for_1x1(monkeypatch):
    from minidiff.functional.conv import Conv2d
    from minidiff.functional.conv_fast import ChunkedConv2d, PointwiseConv2d
    from minidiff.functional.winograd import WinogradConv2d

    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    cases = [
        (4, (2, 4, 3, 3), 1, WinogradConv2d), (4, (2, 4, 3, 3), 2, ChunkedConv2d), (3, (2, 3, 3, 3), 1, ChunkedConv2d),  # an image's first layer
        (4, (2, 4, 1, 1), 1, PointwiseConv2d), (4, (2, 4, 1, 1), 2, ChunkedConv2d),
    ]
    for channels, w_shape, stride, expected in cases:
        x = Tensor(np.zeros((1, channels, 6, 6), np.float32))
        y = F.conv2d(x, Tensor(np.zeros(w_shape, np.float32), requires_grad=True), stride=stride, padding=w_shape[2] // 2)
        assert type(y._ctx) is expected, (channels, w_shape, stride)
    for n, side, tile in [(2, 28, 4), (1, 28, 2), (2, 14, 2)]:  # F(4×4, 3×3) for large maps in batches
        y = F.conv2d(Tensor(np.zeros((n, 4, side, side), np.float32)), Tensor(np.zeros((2, 4, 3, 3), np.float32), requires_grad=True), padding=1)
        assert type(y._ctx) is WinogradConv2d and y._ctx.tile == tile, (n, side)
    x = Tensor(np.zeros((1, 4, 6, 6), np.float32))
    w = Tensor(np.zeros((2, 4, 3, 3), np.float32), requires_grad=True)
    assert type(F.conv2d(x, w, padding=1, algorithm="winograd")._ctx) is WinogradConv2d
    monkeypatch.setenv("MINIDIFF_CONV", "im2col")
    assert type(F.conv2d(x, w, padding=1)._ctx) is ChunkedConv2d
    monkeypatch.setenv("MINIDIFF_CONV", "reference")
    assert type(F.conv2d(x, w, padding=1)._ctx) is Conv2d
    monkeypatch.setenv("MINIDIFF_CONV", "auto")
    monkeypatch.setenv("MINIDIFF_KERNELS", "reference")  # the plain path: the textbook conv for every shape
    assert type(F.conv2d(x, w, padding=1)._ctx) is Conv2d


def test_bad_algorithm_choices_are_refused_by_name(monkeypatch):
    x, w = Tensor(np.zeros((1, 2, 6, 6))), Tensor(np.zeros((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="algorithm='winograd' needs a 3×3 kernel and stride 1.*stride=2"):
        F.conv2d(x, w, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm must be one of 'reference', 'auto', 'im2col', 'winograd', got 'fft'"):
        F.conv2d(x, w, algorithm="fft")
    monkeypatch.setenv("MINIDIFF_CONV", "fast")
    with pytest.raises(ValueError, match="MINIDIFF_CONV='fast'"):
        F.conv2d(x, w)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_pointwise_conv_equals_the_im2col_conv(dtype, tol):
    """The auto path for 1×1 kernels (a GEMM per image) gives im2col's output and gradients."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6, 7, 3)).astype(dtype)
    w = rng.standard_normal((4, 6, 1, 1)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    for auto, textbook in zip(conv_and_grads(x, w, b, 0, "auto"), conv_and_grads(x, w, b, 0, "reference")):
        np.testing.assert_allclose(auto, textbook, rtol=tol, atol=tol)


def test_pointwise_conv_passes_a_float64_gradient_check():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 1, 1)), rng.standard_normal(2)
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, algorithm="auto"), x, w, b)


def in_a_module(fn, *args):
    """``fn(*args)`` run as a module's forward is, where results may stay pending and fuse."""
    return module_call(fn, args, {})


@pytest.mark.parametrize("kernels", ["reference"] + (["cpu"] if backend.extension() is not None else []))
@pytest.mark.parametrize("per_plane", [False, True])
def test_a_winograd_conv_plus_r_becomes_the_conv_adding_r_as_it_writes(monkeypatch, kernels, per_plane):
    """Inside a module, conv2d(x, w, b) + r is one WinogradConv2d taking r as a fourth input
    (added in its output transform), r of the output's shape or one shift per plane
    (N, C_out, 1, 1); same values as the unfused sum, and ∂/∂r is the incoming gradient,
    summed over each plane for a shift. (Under MINIDIFF_KERNELS=reference nothing fuses, so
    the kernels are chosen explicitly.)"""
    from minidiff.functional.winograd import WinogradConv2d

    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    monkeypatch.setenv("MINIDIFF_KERNELS", kernels)
    plain = F.conv2d(Tensor(x), Tensor(w), Tensor(b), padding=1, algorithm="winograd").data
    r = Tensor(rng.standard_normal(plain.shape[:2] + (1, 1) if per_plane else plain.shape), requires_grad=True)
    monkeypatch.setenv("MINIDIFF_KERNELS", "auto")
    y = in_a_module(lambda: F.conv2d(Tensor(x), Tensor(w), Tensor(b), padding=1, algorithm="winograd") + r)
    assert type(y._ctx) is WinogradConv2d and y._ctx.inputs[3] is r
    np.testing.assert_allclose(y.data, plain + r.data, rtol=1e-12, atol=1e-12)
    grad = rng.standard_normal(plain.shape)
    y.backward(grad)
    np.testing.assert_allclose(r.grad, grad.sum(axis=(2, 3), keepdims=True) if per_plane else grad, rtol=1e-12, atol=1e-12)
    monkeypatch.setenv("MINIDIFF_KERNELS", kernels)
    assert gradcheck(lambda x, w, r: WinogradConv2d.apply(x, w, None, r, None, None, padding=1), x, w, r.data)


def test_a_sum_that_cannot_fuse_runs_as_written():
    """r of another broadcastable shape, or fusion switched off: an ordinary Add after the conv."""
    rng = np.random.default_rng(6)
    x, w = Tensor(rng.standard_normal((1, 4, 6, 6)), requires_grad=True), Tensor(rng.standard_normal((3, 4, 3, 3)))
    plain = F.conv2d(x, w, padding=1, algorithm="winograd").data
    for r, switch in ((Tensor(rng.standard_normal((1, 3, 6, 1))), contextlib.nullcontext()),
                      (Tensor(rng.standard_normal((1, 3, 1, 1))), no_fusion())):
        with switch:
            y = in_a_module(lambda: F.conv2d(x, w, padding=1, algorithm="winograd") + r)
        assert type(y._ctx).__name__ == "Add"
        np.testing.assert_allclose(y.data, plain + r.data, rtol=1e-12, atol=1e-12)


def test_a_batch_of_one_takes_f4x4_at_28x28_only_when_its_filter_transform_is_reused(monkeypatch):
    """F(4×4)'s filter transform costs more than it saves on one image, unless it is done once for many
    forwards (frozen weights, as sampling runs): then a batch of one takes F(4×4) too, with the output
    of F(2×2) to float32's Winograd tolerance."""
    from minidiff import autograd, nn, no_grad
    from minidiff.functional.conv_fast import winograd_tile

    assert [winograd_tile(1, 28, 28), winograd_tile(1, 28, 28, True), winograd_tile(2, 28, 28), winograd_tile(1, 14, 14, True)] == [2, 4, 4, 2]
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = Tensor(np.random.default_rng(3).standard_normal((1, 8, 28, 28)).astype(np.float32))
    tiles = []
    monkeypatch.setattr(autograd, "apply_hooks", [lambda ctx, out: tiles.append(getattr(ctx, "tile", None))])
    with no_grad():
        plain = conv(x).data
        with conv.frozen():
            frozen = conv(x).data
    assert tiles == [2, 4]
    np.testing.assert_allclose(frozen, plain, rtol=0, atol=3e-5 * np.abs(plain).max())


@needs_ext
@pytest.mark.parametrize("tile", [2, 4])
def test_the_filter_gradient_from_v_transposed_equals_the_one_from_v(monkeypatch, tile):
    """float32 on a CPU with the vectorised transpose: the backward recomputes V as V[ξ]ᵀ and ∂U = ∂M·Vᵀ is an NN
    GEMM; the gradients equal those of the NT product from V's own layout (float64 always takes the latter)."""
    from minidiff.functional import winograd

    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    rng = np.random.default_rng(9)
    x, w, b = rng.standard_normal((3, 24, 12, 12)).astype(np.float32), rng.standard_normal((20, 24, 3, 3)).astype(np.float32), np.zeros(20, np.float32)
    layouts = []
    transform = cpu.winograd_input_transform
    monkeypatch.setattr(cpu, "winograd_input_transform", lambda *a, **k: (layouts.append(k.get("transposed", False)), transform(*a, **k))[1])
    results = []
    for transposed in (True, False):
        monkeypatch.setattr(winograd, "TRANSPOSED_V_FOR_FILTER_GRADIENT", transposed)
        layouts.clear()
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        y = winograd.WinogradConv2d.apply(xt, wt, Tensor(b), None, None, None, padding=1, tile=tile)
        y.backward(np.cos(np.arange(y.data.size)).reshape(y.shape).astype(np.float32))
        results.append((wt.grad, xt.grad))
        assert layouts == [False, cpu.winograd_transposed_v_pays(np.float32) and transposed]  # the forward's V, the backward's
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-5 * np.abs(results[1][0]).max())
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert not cpu.winograd_transposed_v_pays(np.float64) and not reference.winograd_transposed_v_pays(np.float32)
