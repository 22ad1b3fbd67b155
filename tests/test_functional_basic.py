"""Element-wise, activation, reduction, shape, matmul and loss ops: forward values against NumPy,
gradients against float64 finite differences (minidiff.gradcheck, full mode on small shapes)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minidiff.functional as F
from minidiff import Tensor
from minidiff.gradcheck import gradcheck

rng = np.random.default_rng(0)


def randn(*shape):
    return rng.standard_normal(shape)


def positive(*shape):
    return rng.uniform(0.5, 2.0, shape)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def forward(fn, *args, **kwargs):
    """``fn``'s output array, array arguments passed as tensors."""
    return fn(*(Tensor(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs).data


# ----------------------------------------------------------------------------- unary ops
UNARY = {
    "neg": (F.neg, np.negative, randn),
    "exp": (F.exp, np.exp, randn),
    "expm1": (F.expm1, np.expm1, randn),
    "log": (F.log, np.log, positive),
    "sqrt": (F.sqrt, np.sqrt, positive),
    "abs": (F.abs, np.abs, randn),
    "tanh": (F.tanh, np.tanh, randn),
    "sigmoid": (F.sigmoid, sigmoid, randn),
    "silu": (F.silu, lambda x: x * sigmoid(x), randn),
    "relu": (F.relu, lambda x: np.maximum(x, 0), randn),
    "softmax": (F.softmax, lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True), randn),
    "log_softmax": (F.log_softmax, lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True)), randn),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary_forward_and_gradient(name):
    op, oracle, sample = UNARY[name]
    x = sample(3, 4)
    np.testing.assert_allclose(forward(op, x), oracle(x), rtol=1e-12, atol=1e-12)
    assert gradcheck(op, x)
    # non-contiguous inputs: a transposed and a strided view reach the op
    assert gradcheck(lambda t: op(t.T), x)
    assert gradcheck(lambda t: op(t[::2, 1::2]), x)
    np.testing.assert_allclose(forward(op, x.T), oracle(x.T), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", UNARY)
def test_unary_ops_keep_float32(name):
    op, _, sample = UNARY[name]
    x = Tensor(sample(2, 3).astype(np.float32), requires_grad=True)
    y = op(x)
    y.sum().backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32


def test_silu_derivative_matches_closed_form():
    x = np.linspace(-4, 4, 9)
    t = Tensor(x, requires_grad=True)
    F.silu(t).sum().backward()
    s = sigmoid(x)
    np.testing.assert_allclose(t.grad, s * (1 + x * (1 - s)), rtol=1e-12)


def test_sigmoid_and_softmax_are_stable_for_large_inputs():
    x = np.array([[-1000.0, 0.0, 1000.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_allclose(forward(F.sigmoid, x), [[0.0, 0.5, 1.0]])
        np.testing.assert_allclose(forward(F.softmax, x), [[0.0, 0.0, 1.0]])
        np.testing.assert_allclose(forward(F.log_softmax, x), [[-2000.0, -1000.0, 0.0]])


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_softmax_over_other_axes(axis):
    x = randn(3, 4, 2)
    y = forward(F.softmax, x, axis=axis)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0)
    np.testing.assert_allclose(np.log(y), forward(F.log_softmax, x, axis=axis), rtol=1e-12)
    assert gradcheck(lambda t: F.softmax(t, axis=axis), x)
    assert gradcheck(lambda t: F.log_softmax(t, axis=axis), x)


# ----------------------------------------------------------------------------- binary ops
BINARY = {
    "add": (F.add, np.add),
    "sub": (F.sub, np.subtract),
    "mul": (F.mul, np.multiply),
    "div": (F.div, np.divide),
    "pow": (F.pow, np.power),
    "maximum": (F.maximum, np.maximum),
    "minimum": (F.minimum, np.minimum),
}


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((1, 4), (3, 1)), ((4,), (3, 4)), ((3, 4), ())])
def test_binary_forward_and_gradient(name, shapes):
    op, oracle = BINARY[name]
    a, b = positive(*shapes[0]), positive(*shapes[1])  # positive: pow's base, div's denominator
    np.testing.assert_allclose(forward(op, a, b), oracle(a, b), rtol=1e-12)
    assert gradcheck(op, a, b)


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_binary_ops_broadcast_any_compatible_shapes(data):
    (shape_a, shape_b), _ = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    name = data.draw(st.sampled_from(sorted(BINARY)))
    op, oracle = BINARY[name]
    a, b = positive(*shape_a), positive(*shape_b)
    np.testing.assert_allclose(forward(op, a, b), oracle(a, b), rtol=1e-12)
    assert gradcheck(op, a, b)


def test_binary_ops_on_non_contiguous_leaves():
    base = randn(4, 6)
    a, b = base.T, base[::2, ::2]  # (6, 4) transposed and (2, 3) strided views
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    assert not a.flags.c_contiguous and not b.flags.c_contiguous
    (ta[:2, :3] * tb / (tb * tb + 1)).sum().backward()
    np.testing.assert_allclose(ta.grad[:2, :3], b / (b * b + 1))
    np.testing.assert_allclose(tb.grad, a[:2, :3] * (1 - b * b) / (b * b + 1) ** 2)


def test_python_numbers_on_either_side():
    x = positive(2, 3)
    assert gradcheck(lambda t: 2.0 - t, x)
    assert gradcheck(lambda t: 3.0 / t, x)
    assert gradcheck(lambda t: 0.5 * t + 1, x)


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1, -1.5])
def test_pow_with_scalar_exponent(exponent):
    x = positive(3, 4)
    np.testing.assert_allclose(forward(lambda t: t**exponent, x), x**exponent, rtol=1e-12)
    assert gradcheck(lambda t: t**exponent, x)


def test_pow_of_negative_base_with_integer_exponent():
    x = randn(3, 4)
    assert gradcheck(lambda t: t**3, x)


def test_maximum_splits_the_gradient_at_ties():
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([2.0, 2.0, 1.0]), requires_grad=True)
    F.maximum(a, b).sum().backward()
    np.testing.assert_allclose(a.grad, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(b.grad, [1.0, 0.5, 0.0])


@pytest.mark.parametrize("bounds", [dict(min=-0.5), dict(max=0.5), dict(min=-0.5, max=0.5)])
def test_clamp(bounds):
    x = np.array([-2.0, -0.7, -0.3, 0.0, 0.3, 0.7, 2.0])
    lo, hi = bounds.get("min", -np.inf), bounds.get("max", np.inf)
    np.testing.assert_allclose(forward(F.clamp, x, **bounds), np.clip(x, lo, hi))
    assert gradcheck(lambda t: F.clamp(t, **bounds), x)
    t = Tensor(x, requires_grad=True)
    F.clip(t, **bounds).sum().backward()
    np.testing.assert_array_equal(t.grad, (x >= lo) & (x <= hi))


def test_clamp_needs_a_bound():
    with pytest.raises(ValueError, match="min and max"):
        F.clamp(Tensor(np.ones(2)))


def test_where_broadcasts_and_routes_the_gradient():
    cond = np.array([[True], [False], [True]])
    a, b = randn(1, 4), randn(3, 4)
    np.testing.assert_allclose(forward(lambda x, y: F.where(cond, x, y), a, b), np.where(cond, a, b))
    assert gradcheck(lambda x, y: F.where(cond, x, y), a, b)
    assert gradcheck(lambda x: F.where(Tensor(x.data > 0), x, 0.0), randn(3, 4))


# ----------------------------------------------------------------------------- dropout
def test_dropout_is_inverted_and_its_gradient_is_the_mask():
    x = Tensor(np.ones((200, 100), dtype=np.float32), requires_grad=True)
    y = F.dropout(x, p=0.3, rng=np.random.default_rng(1))
    kept = y.data != 0
    assert y.dtype == np.float32
    assert abs(1 - kept.mean() - 0.3) < 0.02
    np.testing.assert_allclose(y.data[kept], 1 / 0.7, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.data)  # ∂(x·m)/∂x = m, and here x = 1
    assert gradcheck(lambda t: F.dropout(t, 0.5, rng=np.random.default_rng(2)), randn(4, 5))


def test_dropout_is_identity_when_off():
    x = Tensor(randn(3, 3), requires_grad=True)
    assert F.dropout(x, p=0.0) is x
    assert F.dropout(x, p=0.5, training=False) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_refuses_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\)"):
        F.dropout(Tensor(np.ones(3)), p=p)


# ----------------------------------------------------------------------------- reductions
REDUCTIONS = {"sum": (F.sum, np.sum), "mean": (F.mean, np.mean), "max": (F.max, np.max), "var": (F.var, None)}
AXES = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("name", REDUCTIONS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(name, axis, keepdims):
    op, oracle = REDUCTIONS[name]
    oracle = oracle or (lambda a, axis, keepdims: np.var(a, axis=axis, keepdims=keepdims, ddof=1))
    x = randn(2, 3, 4)
    np.testing.assert_allclose(forward(op, x, axis=axis, keepdims=keepdims), oracle(x, axis=axis, keepdims=keepdims), rtol=1e-12)
    assert gradcheck(lambda t: op(t, axis=axis, keepdims=keepdims), x)
    assert gradcheck(lambda t: op(t.transpose((2, 0, 1)), axis=axis, keepdims=keepdims), x)


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_reductions_over_any_shape_and_axes(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3))
    axis = data.draw(st.none() | hnp.valid_tuple_axes(len(shape)))
    keepdims = data.draw(st.booleans())
    x = randn(*shape)
    for op, oracle in [(F.sum, np.sum), (F.mean, np.mean), (F.max, np.max)]:
        np.testing.assert_allclose(forward(op, x, axis=axis, keepdims=keepdims), oracle(x, axis=axis, keepdims=keepdims), rtol=1e-12)
        assert gradcheck(lambda t: op(t, axis=axis, keepdims=keepdims), x)


def test_reduction_methods_on_tensor():
    x = randn(3, 4)
    t = Tensor(x)
    np.testing.assert_allclose(t.sum(axis=1, keepdims=True).data, x.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(t.mean(axis=0).data, x.mean(axis=0))
    np.testing.assert_allclose(t.max().data, x.max())


def test_max_splits_the_gradient_among_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]), requires_grad=True)
    F.max(x, axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])
    y = Tensor(np.full((2, 2), 7.0), requires_grad=True)
    y.max().backward()
    np.testing.assert_allclose(y.grad, np.full((2, 2), 0.25))


def test_var_with_population_correction():
    x = randn(5, 3)
    np.testing.assert_allclose(forward(F.var, x, axis=0, correction=0), x.var(axis=0), rtol=1e-12)


def test_reduction_grad_is_writable():
    x = Tensor(randn(3, 4), requires_grad=True)
    x.sum().backward()
    x.grad *= 0.5  # an optimizer clipping in place must not hit a read-only broadcast view
    np.testing.assert_allclose(x.grad, 0.5)


# ----------------------------------------------------------------------------- shape ops
def test_reshape_and_flatten():
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(forward(F.reshape, x, (4, -1)), x.reshape(4, 6))
    np.testing.assert_array_equal(forward(F.flatten, x, 1), x.reshape(2, 12))
    np.testing.assert_array_equal(forward(F.flatten, x), x.reshape(24))
    np.testing.assert_array_equal(forward(F.flatten, x, 0, 1), x.reshape(6, 4))
    w = Tensor(randn(6, 4))
    assert gradcheck(lambda t: F.reshape(t.T, (6, 4)) * w, x)
    assert gradcheck(lambda t: t.reshape(3, 8)[::2], x)
    assert gradcheck(lambda t: F.flatten(t, 1), x)


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (2, 0, 1), (-1, -3, -2)])
def test_transpose_and_permute(axes):
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(forward(F.transpose, x, axes), np.transpose(x, axes))
    assert gradcheck(lambda t: F.transpose(t, axes), x)
    if axes is not None:
        np.testing.assert_array_equal(Tensor(x).permute(*axes).data, np.transpose(x, axes))
        assert gradcheck(lambda t: F.permute(t, axes), x)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 2], [2, 3, 2], [2, 3, 2]]
    for shape, size in zip(shapes, (1, 2, 3)):
        shape[axis] = size
    xs = [randn(*s) for s in shapes]
    np.testing.assert_array_equal(forward(lambda *t: F.concat(t, axis=axis), *xs), np.concatenate(xs, axis=axis))
    assert gradcheck(lambda *t: F.concat(t, axis=axis), *xs)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_stack(axis):
    xs = [randn(2, 3) for _ in range(3)]
    np.testing.assert_array_equal(forward(lambda *t: F.stack(t, axis=axis), *xs), np.stack(xs, axis=axis))
    assert gradcheck(lambda *t: F.stack(t, axis=axis), *xs)


def test_concat_along_channels_of_a_batch_shared_over_threads(monkeypatch):
    """With 4+ images and enough bytes the copy is split over the threads (as the U-Net's skip
    joins of a large batch are); here every copy counts as large enough."""
    from minidiff.functional import shape

    monkeypatch.setattr(shape, "SHARED_COPY_BYTES", 0)
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "2")
    xs = [randn(9, c, 3, 2).astype(np.float32) for c in (2, 5)]
    y = forward(lambda *t: F.concat(t, axis=1), *xs)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=1))


def test_concat_and_stack_with_mismatched_shapes():
    with pytest.raises(ValueError, match=r"concat: shapes \(2, 3\) and \(3, 4\) differ outside axis 1"):
        F.concat([Tensor(np.ones((2, 3))), Tensor(np.ones((3, 4)))], axis=1)
    with pytest.raises(ValueError, match=r"stack: shapes \(2, 3\) and \(2, 4\) differ"):
        F.stack([Tensor(np.ones((2, 3))), Tensor(np.ones((2, 4)))])


INDICES = {
    "int": 1,
    "slice": slice(None, None, 2),
    "negative step": (slice(None), slice(None, None, -1)),
    "int and slice": (1, slice(1, 3)),
    "newaxis and ellipsis": (None, Ellipsis, 0),
    "int array, repeated": np.array([0, 2, 0, 0]),
    "list": [2, 2],
    "two arrays": (np.array([0, 1, 2]), np.array([3, 3, 1])),
    "array and slice": (slice(1, None), np.array([[0, 0], [1, 3]])),
    "boolean mask": np.array([True, False, True]),
}


@pytest.mark.parametrize("name", INDICES)
def test_getitem(name):
    index = INDICES[name]
    x = randn(3, 4)
    np.testing.assert_array_equal(forward(lambda t: t[index], x), x[index])
    assert gradcheck(lambda t: t[index], x)


def test_getitem_accumulates_repeated_indices():
    x = Tensor(np.zeros(4), requires_grad=True)
    x[np.array([1, 1, 1, 3])].sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 3, 0, 1])


def test_getitem_with_a_tensor_index():
    x = Tensor(np.arange(5.0), requires_grad=True)
    x[Tensor([4, 0, 4])].sum().backward()
    np.testing.assert_array_equal(x.grad, [1, 0, 0, 0, 2])


@pytest.mark.parametrize("pad_width, value", [(1, 0.0), ((2, 1), 0.0), (((0, 1), (2, 0)), -3.0)])
def test_pad(pad_width, value):
    x = randn(2, 3)
    expected = np.pad(x, pad_width, constant_values=value)
    np.testing.assert_array_equal(forward(F.pad, x, pad_width, value=value), expected)
    assert gradcheck(lambda t: F.pad(t, pad_width, value=value), x)
    assert gradcheck(lambda t: F.pad(t.T, pad_width, value=value), x)


# ----------------------------------------------------------------------------- matmul
MATMUL_SHAPES = [
    ((3, 4), (4, 2)),
    ((4,), (4, 2)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (4, 2)),
    ((3, 4), (2, 4, 2)),
    ((2, 1, 3, 4), (3, 4, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES)
def test_matmul(shapes):
    a, b = randn(*shapes[0]), randn(*shapes[1])
    np.testing.assert_allclose(forward(F.matmul, a, b), a @ b, rtol=1e-12)
    assert gradcheck(F.matmul, a, b)


def test_matmul_on_transposed_operands_and_operator():
    a, b = randn(4, 3), randn(2, 4)
    assert gradcheck(lambda x, y: x.T @ y.T, a, b)
    np.testing.assert_allclose((b @ Tensor(a)).data, b @ a)  # ndarray @ Tensor goes to __rmatmul__


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 3), (4, 5)), r"matmul: inner dimensions differ: \(2, 3\) @ \(4, 5\)"),
        (((3,), (4,)), r"matmul: inner dimensions differ: \(3,\) @ \(4,\)"),
        (((2, 2, 3), (3, 3, 1)), r"matmul: batch dimensions do not broadcast"),
        (((), (3,)), r"matmul: operands must be at least 1-D"),
    ],
)
def test_matmul_shape_errors(shapes, message):
    with pytest.raises(ValueError, match=message):
        F.matmul(Tensor(np.ones(shapes[0])), Tensor(np.ones(shapes[1])))


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction):
    a, b = randn(3, 4), randn(1, 4)
    squared = (a - b) ** 2
    expected = {"mean": squared.mean(), "sum": squared.sum(), "none": squared}[reduction]
    np.testing.assert_allclose(forward(F.mse_loss, a, b, reduction=reduction), expected, rtol=1e-12)
    assert gradcheck(lambda x, y: F.mse_loss(x, y, reduction=reduction), a, b)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(reduction):
    logits, targets = randn(5, 3), np.array([0, 2, 1, 2, 2])
    nll = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))[np.arange(5), targets]
    expected = {"mean": nll.mean(), "sum": nll.sum(), "none": nll}[reduction]
    np.testing.assert_allclose(forward(F.cross_entropy, logits, targets=targets, reduction=reduction), expected, rtol=1e-12)
    assert gradcheck(lambda x: F.cross_entropy(x, targets, reduction=reduction), logits)
    assert gradcheck(lambda x: F.cross_entropy(x, Tensor(targets), reduction=reduction), logits)


@pytest.mark.parametrize(
    "targets, message",
    [
        (np.array([[0], [1]]), r"cross_entropy: targets of shape \(2, 1\) for logits of shape \(2, 3\)"),
        (np.array([0, 1, 2]), r"targets of shape \(3,\)"),
        (np.array([0, 3]), r"cross_entropy: target class 3 out of range for 3 classes"),
        (np.array([-1, 0]), r"target class -1 out of range"),
        (np.array([0.5, 1.0]), r"cross_entropy: targets must be integer class indices"),
    ],
)
def test_cross_entropy_target_errors(targets, message):
    with pytest.raises(ValueError, match=message):
        F.cross_entropy(Tensor(np.zeros((2, 3))), targets)


@pytest.mark.parametrize("loss", [F.mse_loss, lambda a, b, reduction: F.cross_entropy(a, np.array([0, 1]), reduction)])
def test_losses_refuse_unknown_reduction(loss):
    with pytest.raises(ValueError, match="reduction 'avg'"):
        loss(Tensor(np.zeros((2, 3))), Tensor(np.zeros((2, 3))), reduction="avg")
