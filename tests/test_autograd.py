"""The autograd core: dtypes, accumulation, no_grad, deep graphs, graph freeing, unbroadcast."""
import numpy as np
import pytest

import minidiff.functional as F
from minidiff import Tensor, no_grad
from minidiff.autograd import unbroadcast


def test_float64_arrays_keep_their_dtype():
    assert Tensor(np.zeros(3)).dtype == np.float64
    assert Tensor(np.zeros(3, dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("data", [[1, 2, 3], [1.0, 2.0], 3, 2.5, np.arange(3)])
def test_lists_scalars_and_integer_arrays_become_float32(data):
    assert Tensor(data).dtype == np.float32


def test_gradient_accumulates_when_a_tensor_is_used_twice():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)  # d(x²)/dx = 2x

    y = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (y + y).sum().backward()
    np.testing.assert_allclose(y.grad, [2.0, 2.0])


def test_leaf_grad_accumulates_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, [6.0, 6.0])


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    assert (x * 2).requires_grad  # and it is switched back on afterwards


def test_no_grad_as_decorator():
    @no_grad()
    def double(t):
        return t * 2

    assert not double(Tensor(np.ones(2), requires_grad=True)).requires_grad


def test_deep_chain_backprops_without_recursion_error():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0001**10_000)


def test_backward_on_non_scalar_needs_a_gradient():
    y = Tensor(np.ones((2, 3)), requires_grad=True) * 2
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\).*gradient argument"):
        y.backward()


def test_backward_with_explicit_gradient():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    (x * 2).backward(np.full((2, 3), 0.5))
    np.testing.assert_allclose(x.grad, np.ones((2, 3)))


@pytest.mark.parametrize(
    "shape, grad_shape, summed_axes",
    [((1, 4), (3, 4), (0,)), ((3, 1), (3, 4), (1,)), ((4,), (3, 4), (0,)), ((), (3, 4), (0, 1))],
)
def test_unbroadcast_sums_over_broadcast_axes(shape, grad_shape, summed_axes):
    grad = np.arange(12.0).reshape(grad_shape)
    out = unbroadcast(grad, shape)
    assert out.shape == shape
    np.testing.assert_allclose(out, grad.sum(axis=summed_axes).reshape(shape))


def test_unbroadcast_is_the_adjoint_of_broadcasting():
    x = Tensor(np.ones((1, 4)), requires_grad=True)
    y = Tensor(np.ones((3, 1)), requires_grad=True)
    (x * y).sum().backward()
    np.testing.assert_allclose(x.grad, np.full((1, 4), 3.0))
    np.testing.assert_allclose(y.grad, np.full((3, 1), 4.0))


def test_backward_frees_the_graph():
    x = Tensor(np.array([2.0]), requires_grad=True)
    hidden = x * x
    out = hidden * 3
    out.sum().backward()
    assert hidden._ctx is None and out._ctx is None  # saved arrays are released
    np.testing.assert_allclose(x.grad, [12.0])
    # a second pass through the freed part cannot reach x again
    (hidden * 1).sum().backward()
    np.testing.assert_allclose(x.grad, [12.0])


def test_retain_graph_allows_a_second_backward():
    x = Tensor(np.array([2.0]), requires_grad=True)
    out = (x * x).sum()
    out.backward(retain_graph=True)
    out.backward()
    np.testing.assert_allclose(x.grad, [8.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grads_keep_the_input_dtype(dtype):
    x = Tensor(np.ones((2, 2), dtype=dtype), requires_grad=True)
    w = Tensor(np.ones((2, 2), dtype=dtype), requires_grad=True)
    ((x @ w).exp().mean() + (x * 0.5).sum()).backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_python_scalars_do_not_promote_float32():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = 2.5 * x - 1 + x / 3.0
    assert y.dtype == np.float32


def test_tensor_methods_reach_the_functional_ops():
    x = Tensor(np.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
    y = (x.T.reshape(6).exp().log().sqrt().tanh().sigmoid().relu()[1:] ** 2).max() + x.mean() + x.sum(axis=0).sum()
    y.backward()
    assert x.grad.shape == (2, 3) and np.isfinite(x.grad).all()
    assert (-x).data[0, 0] == -1 and (2 - x).data[0, 0] == 1 and (1 / x).data[0, 1] == 0.5


def test_leaves_never_share_a_grad_array():
    """Add hands one array to both inputs; scaling one leaf's .grad in place must not touch the other."""
    a = Tensor(np.ones(3), requires_grad=True)
    b = Tensor(np.ones(3), requires_grad=True)
    (a + b).sum().backward()
    a.grad *= 0.5
    assert np.array_equal(b.grad, np.ones(3))


def test_no_grad_ops_need_no_input_gradients_and_save_nothing(monkeypatch):
    """Under no_grad nothing will run backward: every op sees needs_input_grad all False, so its
    forward keeps no array alive for it (here Linear, which saves x and W only for gradients)."""
    from minidiff import autograd

    nodes = []
    monkeypatch.setattr(autograd, "apply_hooks", [lambda ctx, output: nodes.append(ctx)])
    x, w = Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.ones((4, 3)), requires_grad=True)
    with no_grad():
        F.linear(x, w)
    F.linear(x, w)
    quiet, recording = nodes
    assert quiet.needs_input_grad == (False, False, False) and quiet.saved == (None, None)
    assert recording.needs_input_grad == (True, True, False) and all(a is not None for a in recording.saved)
