"""The named kernels: the Cython versions against the NumPy reference (their specification),
col2im as the adjoint of im2col, the dispatcher's choice, and thread-count independence."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minidiff.functional as F
from minidiff import Tensor, backend, optim
from minidiff.kernels import cpu, kernel, reference
from minidiff.kernels.reference import conv_output_size

needs_ext = pytest.mark.skipif(backend.extension() is None, reason="minidiff._C (the Cython kernels) is not built")


@st.composite
def conv_problems(draw):
    """A random (x, kh, kw, stride, padding) whose kernel fits the padded input; odd and non-square sizes."""
    kh, kw = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 3]))
    stride, padding = draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1, 2]))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(kh <= h + 2 * padding and kw <= w + 2 * padding)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    x = np.random.default_rng(draw(st.integers(0, 2**16))).standard_normal((n, c, h, w)).astype(dtype)
    return x, kh, kw, stride, padding


def random_cols(x, kh, kw, stride, padding, seed=1):
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    return np.random.default_rng(seed).standard_normal((c * kh * kw, n * ho * wo)).astype(x.dtype)


@needs_ext
@settings(max_examples=40, deadline=None)
@given(conv_problems())
def test_cython_im2col_and_col2im_equal_the_reference_exactly(problem):
    x, kh, kw, stride, padding = problem
    cols = cpu.im2col(x, kh, kw, stride, padding)
    expected = reference.im2col(x, kh, kw, stride, padding)
    assert cols.dtype == x.dtype and np.array_equal(cols, expected)
    c = random_cols(x, kh, kw, stride, padding)
    image = cpu.col2im(c, x.shape, kh, kw, stride, padding)
    assert image.dtype == x.dtype and np.array_equal(image, reference.col2im(c, x.shape, kh, kw, stride, padding))


@settings(max_examples=40, deadline=None)
@given(conv_problems())
def test_col2im_is_the_adjoint_of_im2col(problem):
    """⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩ for every x and c: col2im is im2col's transpose."""
    x, kh, kw, stride, padding = problem
    x = x.astype(np.float64)
    c = random_cols(x, kh, kw, stride, padding)
    for impl in [reference] + ([cpu] if backend.extension() is not None else []):
        lhs = np.sum(impl.im2col(x, kh, kw, stride, padding) * c)
        rhs = np.sum(x * impl.col2im(c, x.shape, kh, kw, stride, padding))
        assert np.isclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@needs_ext
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape, groups", [((2, 4, 49), 2), ((3, 1, 7), 1), ((1, 8, 1), 8), ((2, 6, 10), 3)])
@pytest.mark.parametrize("silu", [False, True])
def test_cython_group_norm_matches_the_reference(dtype, tol, shape, groups, silu):
    rng = np.random.default_rng(0)
    x = (5 + 3 * rng.standard_normal(shape)).astype(dtype)
    weight, bias = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    fast = cpu.group_norm_forward(x, groups, weight, bias, 1e-5, silu)
    ref = reference.group_norm_forward(x, groups, weight, bias, 1e-5, silu)
    assert all(f.dtype == dtype for f in fast) and fast[2].shape == (shape[0], groups)
    for f, r in zip(fast, ref):
        np.testing.assert_allclose(f, r, rtol=tol, atol=tol)
    for f, r in zip(cpu.group_norm_stats(x, groups, 1e-5), ref[1:]):  # the statistics alone, for a fused convolution
        np.testing.assert_allclose(f, r, rtol=tol, atol=tol)
    fast_grads = cpu.group_norm_backward(grad, x, fast[1], fast[2], weight, bias, silu)
    ref_grads = reference.group_norm_backward(grad, x, ref[1], ref[2], weight, bias, silu)
    for f, r in zip(fast_grads, ref_grads):
        assert f.dtype == dtype
        np.testing.assert_allclose(f, r, rtol=tol * 10, atol=tol * 10)


@needs_ext
@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 300), dtype=st.sampled_from([np.float32, np.float64]), step=st.integers(1, 5000),
       weight_decay=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 2**16))
def test_cython_adam_and_ema_updates_equal_the_reference_exactly(size, dtype, step, weight_decay, seed):
    """Same operations in the same order and type as the textbook lines in optim.py, so the same bits."""
    rng = np.random.default_rng(seed)
    param, grad, m = (rng.standard_normal((size, 3)).astype(dtype) for _ in range(3))
    v = rng.random((size, 3)).astype(dtype)
    fast, ref = [a.copy() for a in (param, m, v)], [a.copy() for a in (param, m, v)]
    cpu.adam_update(*fast[:1], grad, *fast[1:], step, 1e-3, 0.9, 0.999, 1e-8, weight_decay)
    optim.adam_update(*ref[:1], grad, *ref[1:], step, 1e-3, 0.9, 0.999, 1e-8, weight_decay)
    for f, r in zip(fast, ref):
        np.testing.assert_array_equal(f, r)
    average = rng.standard_normal((size, 3)).astype(dtype)
    fast_average, ref_average = average.copy(), average.copy()
    cpu.ema_update(fast_average, param, 1e-3)
    optim.ema_update(ref_average, param, 1e-3)
    np.testing.assert_array_equal(fast_average, ref_average)


def test_the_reference_adam_and_ema_are_the_textbook_lines_in_optim():
    assert reference.adam_update is optim.adam_update and reference.ema_update is optim.ema_update


@needs_ext
def test_cython_adam_takes_non_contiguous_gradients_and_falls_back_for_other_layouts():
    rng = np.random.default_rng(0)
    param, m, v = rng.standard_normal((4, 6)), np.zeros((4, 6)), np.zeros((4, 6))
    grad = rng.standard_normal((6, 4)).T  # a transposed view
    expected = [a.copy() for a in (param, m, v)]
    optim.adam_update(expected[0], grad, expected[1], expected[2], 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    cpu.adam_update(param, grad, m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    for got, want in zip((param, m, v), expected):
        np.testing.assert_array_equal(got, want)
    strided = rng.standard_normal((4, 12))[:, ::2]  # a parameter that is a strided view: the reference does it
    expected = strided.copy()
    optim.adam_update(expected, grad, np.zeros((4, 6)), np.zeros((4, 6)), 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    cpu.adam_update(strided, grad, np.zeros((4, 6)), np.zeros((4, 6)), 1, 0.1, 0.9, 0.999, 1e-8, 0.0)
    np.testing.assert_array_equal(strided, expected)


@needs_ext
@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
       scale=st.integers(1, 3), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_cython_upsample_equals_the_reference_exactly(shape, scale, dtype, seed):
    """Copies forward; backward adds each block's columns down its rows, then the columns, as the reference does."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    y = cpu.upsample_nearest_forward(x, scale)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, reference.upsample_nearest_forward(x, scale))
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(cpu.upsample_nearest_backward(grad_y, scale), reference.upsample_nearest_backward(grad_y, scale))


@needs_ext
@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_batch_kernels_shared_over_the_chunk_threads_give_what_one_piece_gives(monkeypatch, n):
    """GroupNorm and nearest upsampling cut the batch into pieces for the chunk threads (here from
    any size on, 2 threads): bit for bit the result of the whole batch in one call on one thread."""
    from minidiff.functional import chunking

    rng = np.random.default_rng(n)
    x, grad = rng.standard_normal((2, n, 8, 30)).astype(np.float32)
    weight, bias = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    up, up_grad = rng.standard_normal((n, 3, 5, 5)).astype(np.float32), rng.standard_normal((n, 3, 10, 10)).astype(np.float32)

    def run():
        y, mean, rstd = cpu.group_norm_forward(x, 4, weight, bias, 1e-5, True)
        return (y, mean, rstd, *cpu.group_norm_stats(x, 4, 1e-5), *cpu.group_norm_backward(grad, x, mean, rstd, weight, bias, True),
                cpu.upsample_nearest_forward(up, 2), cpu.upsample_nearest_backward(up_grad, 2))

    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "1")
    whole = run()
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "2")
    monkeypatch.setattr(chunking, "SHARED_KERNEL_ELEMENTS", 0)
    calls = []
    real_map = chunking.map_chunks
    monkeypatch.setattr(chunking, "map_chunks", lambda work, pieces, xp: calls.append(len(pieces)) or real_map(work, pieces, xp))
    for a, b in zip(whole, run(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert calls == ([] if n == 1 else [min(n, chunking.CHUNK_MULTIPLE)] * 5)  # the check above compared pieces with the whole


def test_batch_pieces_are_even_and_only_past_the_minimum():
    from minidiff.functional.chunking import CHUNK_MULTIPLE, batch_pieces

    assert batch_pieces(64, 99, 100) == [slice(0, 64)]
    pieces = batch_pieces(10, 100, 100)
    assert len(pieces) == CHUNK_MULTIPLE and [p.start for p in pieces][0] == 0 and pieces[-1].stop == 10
    assert max(p.stop - p.start for p in pieces) - min(p.stop - p.start for p in pieces) <= 1
    assert batch_pieces(2, 100, 1) == [slice(0, 1), slice(1, 2)]


@needs_ext
@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 70)), scale=st.floats(0.05, 4.0),
       spread=st.sampled_from([1.0, 30.0]), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_cython_softmax_matches_the_reference(shape, scale, spread, dtype, seed):
    """Rows of random length, scores spread wide enough that the max shift matters."""
    rng = np.random.default_rng(seed)
    scores = (spread * rng.standard_normal(shape)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-15)
    probs = cpu.softmax_forward(scores, scale)
    assert probs.dtype == dtype
    np.testing.assert_allclose(probs, reference.softmax_forward(scores, scale), **tol)
    np.testing.assert_allclose(probs.sum(axis=-1), 1, rtol=1e-5 if dtype == np.float32 else 1e-12)
    grad_probs = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(cpu.softmax_backward(probs, grad_probs), reference.softmax_backward(probs, grad_probs), **tol)


KERNEL_NAMES = [
    "im2col", "col2im", "group_norm_forward", "group_norm_backward", "winograd_filter_transform",
    "winograd_filter_transform_adjoint", "winograd_input_transform",
    "winograd_input_transform_adjoint", "winograd_output_transform", "winograd_output_transform_adjoint",
    "adam_update", "ema_update", "upsample_nearest_forward", "upsample_nearest_backward", "softmax_forward", "softmax_backward",
]


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_reference_mode_dispatches_to_the_reference(monkeypatch, name):
    monkeypatch.setenv("MINIDIFF_KERNELS", "reference")
    assert kernel(name, np.zeros(1)) is getattr(reference, name)


@needs_ext
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_cpu_mode_dispatches_to_the_cython_wrappers(monkeypatch, name):
    monkeypatch.setenv("MINIDIFF_KERNELS", "cpu")
    assert kernel(name, np.zeros(1)) is getattr(cpu, name)


CONV_STEP = textwrap.dedent(
    """
    import sys
    import numpy as np
    import minidiff.functional as F
    from minidiff import Tensor, backend
    from minidiff.functional import chunking
    from minidiff.optim import EMA, Adam

    chunking.COLUMN_CHUNK_BYTES = int(sys.argv[2])  # 4096: several chunks, so several workers share the batch
    backend.extension().set_parallel_min_elements(0)  # every kernel opens its parallel region, however small
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((4, 6, 13, 11)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((8, 6, 3, 3)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(8).astype(np.float32), requires_grad=True)
    w2 = Tensor(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), requires_grad=True)
    h = F.group_norm_silu(F.conv2d(x, w, b, stride=2, padding=1), 2)  # strided: col2im backward
    y = F.conv2d(h, w2, padding=1) + F.conv2d(h, w2, padding=1, algorithm="im2col")  # Winograd; flipped-kernel backward
    y = F.group_norm(y, 4)
    sequence = F.upsample_nearest2d(y, 2).reshape(4, 8, 14 * 12).transpose(0, 2, 1)  # (N, L, C)
    out = F.scaled_dot_product_attention(sequence, sequence, sequence)  # the softmax kernels
    out.backward(rng.standard_normal(out.shape).astype(np.float32))
    params = [w, b, w2]
    grads = [p.grad.copy() for p in params]
    ema = EMA(params, decay=0.9)
    Adam(params, lr=1e-2, weight_decay=0.01).step()
    ema.update()
    np.savez(sys.argv[1], out=out.data, dx=x.grad, *grads, *[p.data for p in params], *ema.shadow)
    """
)


@needs_ext
def test_conv_step_is_bitwise_the_same_with_one_thread(tmp_path):
    """Convs (both algorithms), group norms, upsampling and attention, forward and backward, then
    an Adam step and an EMA update, give identical bytes with one thread and with four: as chunk
    workers (many small chunks) and as OpenMP threads inside each kernel (one chunk), every
    kernel opening its parallel region however small. Nothing depends on the thread count."""
    script = tmp_path / "conv_step.py"
    script.write_text(CONV_STEP)
    env = dict(os.environ, OMP_NUM_THREADS="1", MINIDIFF_KERNELS="cpu")
    for chunk_bytes in (4096, 1 << 24):  # (the GEMMs' rounding may depend on their size, so on the chunks)
        for threads in ("1", "4"):
            subprocess.run([sys.executable, str(script), str(tmp_path / f"{threads}.npz"), str(chunk_bytes)],
                           env=dict(env, OMP_NUM_THREADS=threads), check=True)
        one, many = np.load(tmp_path / "1.npz"), np.load(tmp_path / "4.npz")
        for name in one.files:
            assert one[name].tobytes() == many[name].tobytes(), (chunk_bytes, name)


@needs_ext
@pytest.mark.parametrize("stride, padding, size", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (1, 0, 3)])
def test_conv2d_with_cython_kernels_matches_the_reference_kernels(monkeypatch, stride, padding, size):
    """The whole conv2d (chunks, scratch buffers, Winograd, 1×1 and im2col paths) gives the
    reference kernels' values and gradients with the Cython ones."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6, 9, 7)).astype(np.float32)
    w = rng.standard_normal((4, 6, size, size)).astype(np.float32)
    results = []
    for mode in ("reference", "cpu"):
        monkeypatch.setenv("MINIDIFF_KERNELS", mode)
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, stride=stride, padding=padding)
        y.backward(np.ones(y.shape, np.float32))
        results.append((y.data, xt.grad, wt.grad))
    for ref, fast in zip(*results):
        # float32 Winograd sums differ in order between the two: absolute error ~1e-5 of the scale
        np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
