"""conv2d, linear, group_norm, attention and resampling: float64 gradient checks against finite
differences, forward values against naive NumPy oracles, and the error messages."""
import re

import numpy as np
import pytest

import minidiff.functional as F
from minidiff import Tensor
from minidiff.functional.fusion import module_call, no_fusion
from minidiff.gradcheck import gradcheck

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


# ----------------------------------------------------------------------------- oracles
def naive_conv2d(x, w, b, stride, padding):
    """Direct definition: y[n, o, i, j] = Σ_{c,p,q} x_pad[n, c, i·s + p, j·s + q]·w[o, c, p, q] + b[o]."""
    n, c, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, c_out, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            y[:, :, i, j] = np.einsum("ncpq,ocpq->no", patch, w)
    return y if b is None else y + b[None, :, None, None]


def textbook_group_norm(x, groups, weight, bias, eps):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1).astype(np.float64)
    x_hat = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return x_hat * weight.reshape(shape) + bias.reshape(shape)


def naive_attention(q, k, v, scale):
    s = q @ np.swapaxes(k, -1, -2) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


# ----------------------------------------------------------------------------- conv2d
@pytest.mark.parametrize(
    "stride, padding, k, with_bias",
    [(1, 0, 3, True), (1, 1, 3, False), (2, 1, 3, True), (2, 0, 3, False), (1, 0, 1, True), (2, 1, 1, False)],
)
@pytest.mark.parametrize("algorithm", ["reference", "auto"])  # the textbook conv, then the fast ones
def test_conv2d_gradcheck(stride, padding, k, with_bias, algorithm):
    x, w = randn(2, 2, 5, 4), randn(3, 2, k, k)
    if with_bias:
        assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, algorithm=algorithm), x, w, randn(3))
    else:
        assert gradcheck(lambda x, w: F.conv2d(x, w, stride=stride, padding=padding, algorithm=algorithm), x, w)


@pytest.mark.parametrize("stride, padding, k", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 2, 3)])
@pytest.mark.parametrize("algorithm", ["reference", "auto"])
def test_conv2d_matches_naive_loop(stride, padding, k, algorithm):
    x, w, b = randn(2, 3, 7, 6), randn(4, 3, k, k), randn(4)
    out = F.conv2d(Tensor(x), Tensor(w), Tensor(b), stride=stride, padding=padding, algorithm=algorithm)
    np.testing.assert_allclose(out.data, naive_conv2d(x, w, b, stride, padding), rtol=1e-12, atol=1e-12)


def test_conv2d_non_contiguous_input_gives_the_same_values_and_gradients():
    strided, w, upstream = randn(2, 3, 6, 7).transpose(0, 1, 3, 2), randn(4, 3, 3, 3), randn(2, 4, 4, 3)

    def run(array):
        x, wt = Tensor(array, requires_grad=True), Tensor(w, requires_grad=True)
        out = F.conv2d(x, wt, stride=2, padding=1)
        out.backward(upstream)
        return out.data, x.grad, wt.grad

    assert not Tensor(strided).data.flags.c_contiguous
    for a, b in zip(run(strided), run(np.ascontiguousarray(strided))):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_conv2d_keeps_float32_and_skips_gradients_not_needed():
    x = Tensor(randn(1, 2, 5, 5).astype(np.float32), requires_grad=True)
    w = Tensor(randn(3, 2, 3, 3).astype(np.float32))
    out = F.conv2d(x, w, padding=1)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, np.float32))
    assert x.grad.dtype == np.float32 and x.grad.shape == x.shape and w.grad is None


# ----------------------------------------------------------------------------- linear
@pytest.mark.parametrize("x_shape", [(4, 3), (2, 3, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradcheck(x_shape, with_bias):
    x, w = randn(*x_shape), randn(5, 3)
    if with_bias:
        assert gradcheck(F.linear, x, w, randn(5))
    else:
        assert gradcheck(F.linear, x, w)


def test_linear_matches_numpy():
    x, w, b = randn(2, 3, 4), randn(5, 4), randn(5)
    np.testing.assert_allclose(F.linear(Tensor(x), Tensor(w), Tensor(b)).data, np.einsum("abi,oi->abo", x, w) + b)


# ----------------------------------------------------------------------------- group_norm
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_gradcheck(groups, affine):
    x = randn(2, 4, 3, 3)
    if affine:
        assert gradcheck(lambda x, w, b: F.group_norm(x, groups, w, b), x, randn(4), randn(4))
    else:
        assert gradcheck(lambda x: F.group_norm(x, groups), x)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_group_norm_silu_gradcheck_and_equals_the_composition(groups):
    x, w, b = randn(2, 4, 3, 3), randn(4), randn(4)
    assert gradcheck(lambda x, w, b: F.group_norm_silu(x, groups, w, b), x, w, b)
    fused = F.group_norm_silu(Tensor(x), groups, Tensor(w), Tensor(b)).data
    composed = F.silu(F.group_norm(Tensor(x), groups, Tensor(w), Tensor(b))).data
    np.testing.assert_allclose(fused, composed, rtol=1e-12, atol=1e-12)


def test_silu_of_a_group_norm_inside_a_module_is_the_fused_op(monkeypatch):
    """silu(group_norm(x)) as model code writes it: one fused GroupNorm node on the fast path,
    a GroupNorm then a SiLU with fusion off or on the plain path (fusion.py)."""
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    x = Tensor(randn(2, 4, 3, 3), requires_grad=True)
    fused = module_call(lambda: F.silu(F.group_norm(x, 2)), (), {})
    assert type(fused._ctx).__name__ == "GroupNorm" and fused._ctx.silu
    with no_fusion():
        composed = module_call(lambda: F.silu(F.group_norm(x, 2)), (), {})
    assert type(composed._ctx).__name__ == "SiLU"
    np.testing.assert_allclose(fused.data, composed.data, rtol=1e-12, atol=1e-12)
    monkeypatch.setenv("MINIDIFF_KERNELS", "reference")
    assert type(module_call(lambda: F.silu(F.group_norm(x, 2)), (), {})._ctx).__name__ == "SiLU"


def test_group_norm_gradcheck_on_sequences():
    assert gradcheck(lambda x, w: F.group_norm(x, 2, w), randn(2, 4, 5), randn(4))


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_matches_textbook(groups):
    x, w, b = randn(3, 6, 4, 5), randn(6), randn(6)
    out = F.group_norm(Tensor(x), groups, Tensor(w), Tensor(b), eps=1e-5)
    np.testing.assert_allclose(out.data, textbook_group_norm(x, groups, w, b, 1e-5), rtol=1e-12, atol=1e-12)


def test_group_norm_float32_statistics_survive_a_large_offset():
    """E[x²] − μ² in float32 would lose the unit variance under an offset of 10⁴; two passes keep it."""
    x = (1e4 + randn(2, 4, 8, 8)).astype(np.float32)
    ones, zeros = np.ones(4), np.zeros(4)
    out = F.group_norm(Tensor(x), 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, textbook_group_norm(x.astype(np.float64), 2, ones, zeros, 1e-5), atol=2e-3)


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("q_shape, k_shape, v_shape", [((2, 3, 4), (2, 5, 4), (2, 5, 2)), ((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4))])
def test_attention_gradcheck(q_shape, k_shape, v_shape):
    assert gradcheck(F.scaled_dot_product_attention, randn(*q_shape), randn(*k_shape), randn(*v_shape))


def test_attention_gradcheck_with_explicit_scale():
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3), randn(2, 3, 2), randn(2, 3, 2), randn(2, 3, 2))


def test_attention_matches_naive_and_is_stable_for_huge_scores():
    q, k, v = randn(2, 2, 5, 3), randn(2, 2, 6, 3), randn(2, 2, 6, 4)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v))
    np.testing.assert_allclose(out.data, naive_attention(q, k, v, 1 / np.sqrt(3)), rtol=1e-12, atol=1e-12)
    huge = F.scaled_dot_product_attention(Tensor(q * 1e4), Tensor(k * 1e4), Tensor(v))
    assert np.all(np.isfinite(huge.data))


# ----------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_nearest2d(scale):
    x = randn(2, 2, 3, 2)
    out = F.upsample_nearest2d(Tensor(x), scale=scale)
    np.testing.assert_array_equal(out.data, x.repeat(scale, axis=2).repeat(scale, axis=3))
    assert gradcheck(lambda x: F.upsample_nearest2d(x, scale=scale), x)


def test_avg_pool2d_drops_the_remainder_like_pytorch():
    x = randn(1, 2, 5, 4)
    out = F.avg_pool2d(Tensor(x), 2)
    np.testing.assert_allclose(out.data, x[:, :, :4, :4].reshape(1, 2, 2, 2, 2, 2).mean(axis=(3, 5)))
    assert gradcheck(lambda x: F.avg_pool2d(x, 2), x)


# ----------------------------------------------------------------------------- errors
def test_conv2d_channel_mismatch_names_both_shapes():
    msg = "conv2d: input has 3 channels (shape (2, 3, 8, 8)) but weight expects 4 (shape (5, 4, 3, 3))"
    with pytest.raises(ValueError, match=re.escape(msg)):
        F.conv2d(Tensor(np.zeros((2, 3, 8, 8))), Tensor(np.zeros((5, 4, 3, 3))))


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, pattern",
    [((3, 8, 8), (5, 3, 3, 3), 0, "4-D input"), ((1, 3, 2, 8), (5, 3, 3, 3), 0, "larger than the padded input")],
)
def test_conv2d_shape_errors(x_shape, w_shape, padding, pattern):
    with pytest.raises(ValueError, match=pattern):
        F.conv2d(Tensor(np.zeros(x_shape)), Tensor(np.zeros(w_shape)), padding=padding)


def test_conv2d_kernel_fits_once_padded():
    assert F.conv2d(Tensor(np.zeros((1, 3, 2, 2))), Tensor(np.zeros((5, 3, 3, 3))), padding=1).shape == (1, 5, 2, 2)


def test_linear_feature_mismatch():
    with pytest.raises(ValueError, match=re.escape("linear: input has 3 features (shape (2, 3)) but weight expects 4 (shape (5, 4))")):
        F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((5, 4))))


def test_group_norm_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"num_groups=3 does not divide the C=8 channels"):
        F.group_norm(Tensor(np.zeros((1, 8, 2, 2))), 3)


def test_attention_shape_mismatch():
    with pytest.raises(ValueError, match="same D"):
        F.scaled_dot_product_attention(Tensor(np.zeros((1, 2, 3))), Tensor(np.zeros((1, 2, 4))), Tensor(np.zeros((1, 2, 4))))
