"""The transformer's ops -- layer_norm and the tanh-approximated gelu -- against their formulas,
and their float64 gradients against finite differences (multi-head attention is
scaled_dot_product_attention on (B, H, L, D), checked in test_functional_nn.py)."""
import math

import numpy as np
import pytest

import minidiff.functional as F
from minidiff import Tensor
from minidiff.gradcheck import gradcheck

rng = np.random.default_rng(0)


def test_layer_norm_matches_the_formula():
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5)
    x_hat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    out = F.layer_norm(Tensor(x), 5, Tensor(w), Tensor(b), eps=1e-6)
    np.testing.assert_allclose(out.data, x_hat * w + b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_gradcheck(affine):
    x = rng.standard_normal((2, 3, 6))
    if affine:
        assert gradcheck(lambda x, w, b: F.layer_norm(x, 6, w, b), x, rng.standard_normal(6), rng.standard_normal(6))
    else:
        assert gradcheck(lambda x: F.layer_norm(x, 6, eps=1e-6), x)


def test_layer_norm_refuses_a_wrong_feature_count():
    with pytest.raises(ValueError, match=r"layer_norm: expected an input \(\.\.\., 4\), got shape \(2, 3\)"):
        F.layer_norm(Tensor(np.zeros((2, 3))), 4)


def test_gelu_is_the_tanh_approximation_and_its_gradient_checks():
    x = np.linspace(-5, 5, 41)
    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, expected, rtol=1e-14, atol=1e-14)
    assert gradcheck(F.gelu, rng.standard_normal((3, 7)) * 3)
