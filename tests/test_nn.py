"""Modules: registration and names, modes, devices, initialisation, state_dict checkpoints."""
import os

import numpy as np
import pytest

import minidiff.functional as F
import minidiff.nn as nn
from minidiff import backend
from minidiff import Tensor, no_grad
from minidiff.files import load_npz, save_npz


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm = nn.GroupNorm(2, cin)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.drop = nn.Dropout(0.1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(1))
        self.blocks = nn.ModuleList([Block(4, 8), Block(8, 8)])
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(8, 2))


NET_NAMES = [
    "scale",
    "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.conv.weight", "blocks.0.conv.bias",
    "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.conv.weight", "blocks.1.conv.bias",
    "head.1.weight", "head.1.bias",
]


def needs(*ops):
    missing = [op for op in ops if not hasattr(F, op)]
    return pytest.mark.skipif(bool(missing), reason=f"functional ops not landed yet: {missing}")


# --------------------------------------------------------------------- registration
def test_named_parameters_are_dotted_in_definition_order():
    net = Net()
    assert [name for name, _ in net.named_parameters()] == NET_NAMES
    assert list(net.state_dict()) == NET_NAMES
    assert [p for p in net.parameters()] == [p for _, p in net.named_parameters()]


def test_children_and_modules():
    net = Net()
    assert [type(m).__name__ for m in net.children()] == ["ModuleList", "Sequential"]
    names = [name for name, _ in net.named_modules()]
    assert names[:4] == ["", "blocks", "blocks.0", "blocks.0.norm"]
    assert "head.1" in names and len(names) == len(list(net.modules()))


def test_num_parameters_counts_every_layer():
    assert nn.Linear(3, 5).num_parameters() == 3 * 5 + 5
    assert nn.Linear(3, 5, bias=False).num_parameters() == 15
    assert nn.Conv2d(4, 8, 3).num_parameters() == 8 * 4 * 9 + 8
    assert nn.GroupNorm(2, 8).num_parameters() == 16
    assert nn.GroupNorm(2, 8, affine=False).num_parameters() == 0
    assert Net().num_parameters() == 1 + (8 + 288 + 8) + (16 + 576 + 8) + (16 + 2)


def test_reassigning_an_attribute_unregisters_it_and_shared_parameters_count_once():
    layer = nn.Linear(3, 4)
    layer.bias = None
    assert [name for name, _ in layer.named_parameters()] == ["weight"]

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.b = nn.Linear(2, 2)
            self.b.weight = self.a.weight

    assert [name for name, _ in Tied().named_parameters()] == ["a.weight", "a.bias", "b.bias"]


def test_forgetting_super_init_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Broken()


def test_parameter_requires_grad_and_owns_its_data():
    source = np.zeros(3, dtype=np.float32)
    param = nn.Parameter(source)
    assert param.requires_grad and isinstance(param, Tensor)
    param.data += 1
    assert source.sum() == 0


def test_sequential_and_module_list_indexing():
    seq = nn.Sequential(nn.Identity(), nn.SiLU())
    assert len(seq) == 2 and isinstance(seq[1], nn.SiLU) and isinstance(seq[-1], nn.SiLU)
    ml = nn.ModuleList().append(nn.Identity()).extend([nn.Identity()])
    assert [name for name, _ in ml.named_children()] == ["0", "1"]
    x = Tensor(np.ones(2))
    assert nn.Sequential(nn.Identity(), nn.Identity())(x) is x


# --------------------------------------------------------------------- modes, grads, devices
def test_train_eval_propagates_to_every_descendant():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_clears_every_parameter():
    net = Net()
    for p in net.parameters():
        p.grad = np.ones_like(p.data)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_cpu_keeps_parameter_objects_and_returns_self():
    net = Net()
    before = list(net.parameters())
    assert net.to("cpu") is net
    assert all(a is b for a, b in zip(before, net.parameters()))
    with pytest.raises(Exception, match="unknown device"):
        net.to("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA device")
def test_to_cuda_moves_parameters_in_place_and_state_dict_comes_back_as_numpy():
    net = Net()
    reference = net.state_dict()
    param = net.blocks[0].conv.weight
    net.to("cuda")
    assert net.blocks[0].conv.weight is param and param.device == "cuda"
    state = net.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    state["scale"][...] = 5
    net.load_state_dict(state)
    assert net.scale.device == "cuda" and float(net.scale.data[0]) == 5
    np.testing.assert_array_equal(net.to("cpu").state_dict()["head.1.weight"], reference["head.1.weight"])


# --------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("make, fan_in", [
    (lambda: nn.Linear(400, 300), 400),
    (lambda: nn.Conv2d(16, 64, 3), 16 * 9),
])
def test_default_init_is_uniform_within_one_over_sqrt_fan_in(make, fan_in):
    layer = make()
    bound = 1 / np.sqrt(fan_in)
    for param in (layer.weight, layer.bias):
        values = param.data.astype(np.float64)
        assert param.dtype == np.float32
        assert np.abs(values).max() <= bound
    weights = layer.weight.data.astype(np.float64)
    # U(−b, b): mean 0, std b/√3, and it reaches close to both ends.
    assert abs(weights.mean()) < 0.02 * bound
    assert weights.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)
    assert weights.max() > 0.99 * bound and weights.min() < -0.99 * bound


def test_group_norm_init_and_validation():
    norm = nn.GroupNorm(4, 8)
    np.testing.assert_array_equal(norm.weight.data, np.ones(8, np.float32))
    np.testing.assert_array_equal(norm.bias.data, np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="divisible"):
        nn.GroupNorm(3, 8)


def test_init_is_reproducible_from_manual_seed_or_rng_and_respects_dtype():
    nn.manual_seed(123)
    a = nn.Linear(5, 4)
    nn.manual_seed(123)
    b = nn.Linear(5, 4)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    c = nn.Linear(5, 4, rng=np.random.default_rng(7))
    d = nn.Linear(5, 4, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(c.weight.data, d.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)
    assert nn.Conv2d(2, 3, 3, dtype=np.float64).weight.dtype == np.float64


# --------------------------------------------------------------------- state_dict
def test_state_dict_is_a_copy():
    net = Net()
    state = net.state_dict()
    state["scale"][...] = 7
    assert net.scale.data[0] == 1


def test_state_dict_round_trip_through_npz_file_is_exact_and_atomic(tmp_path):
    nn.manual_seed(0)
    source = Net()
    path = tmp_path / "model.npz"
    source.save(path)
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind
    target = Net()
    assert not np.array_equal(target.head[1].weight.data, source.head[1].weight.data)
    target.load(path)
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
    assert list(load_npz(path)) == NET_NAMES


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    save_npz({"a": np.ones(2)}, path)

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_npz({"a": np.zeros(2)}, path)
    assert os.listdir(tmp_path) == ["model.npz"]
    np.testing.assert_array_equal(load_npz(path)["a"], np.ones(2))


def test_load_state_dict_keeps_dtype_and_copies():
    layer = nn.Linear(2, 3)
    state = {k: v.astype(np.float64) + 1 for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    assert layer.weight.dtype == np.float32
    np.testing.assert_allclose(layer.weight.data, state["weight"], rtol=1e-6)
    state["weight"][...] = 0
    assert layer.weight.data.any()


def test_load_state_dict_names_every_problem_in_one_error():
    net = Net()
    state = net.state_dict()
    del state["blocks.0.norm.bias"], state["head.1.bias"]
    state["extra"] = np.zeros(1)
    state["blocks.1.conv.weight"] = np.zeros((8, 2, 3, 3))
    with pytest.raises(RuntimeError) as info:
        net.load_state_dict(state)
    assert str(info.value) == (
        "load_state_dict: missing keys: blocks.0.norm.bias, head.1.bias; unexpected keys: extra; "
        "shape mismatch: blocks.1.conv.weight expected (8, 8, 3, 3) got (8, 2, 3, 3)"
    )


def test_non_strict_load_skips_missing_and_unexpected_but_not_shape_mismatch():
    layer = nn.Linear(2, 3)
    missing, unexpected = layer.load_state_dict({"weight": np.zeros((3, 2)), "other": np.ones(1)}, strict=False)
    assert (missing, unexpected) == (["bias"], ["other"])
    assert not layer.weight.data.any()
    with pytest.raises(RuntimeError, match="shape mismatch: weight expected \\(3, 2\\) got \\(2, 3\\)"):
        layer.load_state_dict({"weight": np.zeros((2, 3))}, strict=False)


def test_missing_file_error_names_it(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        nn.Linear(2, 2).load(path)


@pytest.mark.parametrize("content", ["text", "truncated", "npy"])
def test_corrupt_or_foreign_file_error_names_it(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content == "text":
        path.write_text("not an archive")
    elif content == "truncated":
        save_npz(nn.Linear(20, 20).state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    with pytest.raises(ValueError, match="bad.npz.*not a valid .npz"):
        load_npz(path)


# --------------------------------------------------------------------- forward passes (ops by others)
@needs("linear", "sum")
def test_linear_forward_and_backward_match_numpy():
    layer = nn.Linear(3, 2, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = layer(Tensor(x))
    np.testing.assert_allclose(y.data, x @ layer.weight.data.T + layer.bias.data)
    y.sum().backward()
    np.testing.assert_allclose(layer.weight.grad, np.ones((4, 2)).T @ x)
    np.testing.assert_allclose(layer.bias.grad, np.full(2, 4.0))


@needs("conv2d")
def test_conv2d_module_calls_functional_conv2d_with_its_settings():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    x = Tensor(np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32))
    expected = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    assert conv(x).shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(conv(x).data, expected.data)


@needs("group_norm", "silu")
def test_group_norm_and_silu_modules_match_functional():
    x = Tensor(np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32))
    norm = nn.GroupNorm(2, 4)
    np.testing.assert_array_equal(norm(x).data, F.group_norm(x, 2, norm.weight, norm.bias).data)
    np.testing.assert_array_equal(nn.SiLU()(x).data, F.silu(x).data)


@needs("dropout")
def test_dropout_follows_the_training_flag_and_its_rng():
    x = Tensor(np.ones((100, 100), np.float32))
    drop = nn.Dropout(0.5, rng=np.random.default_rng(0))
    y = drop(x).data
    assert 0.4 < (y == 0).mean() < 0.6
    np.testing.assert_allclose(y[y != 0], 2.0)
    again = nn.Dropout(0.5, rng=np.random.default_rng(0))(x).data
    np.testing.assert_array_equal(y, again)
    np.testing.assert_array_equal(drop.eval()(x).data, x.data)


def test_frozen_weights_are_read_only_and_each_filter_is_transformed_once(monkeypatch):
    """Inside ``model.frozen()`` the parameters refuse writes, every Winograd conv transforms its filters once
    however many forwards run (same outputs as unfrozen), and after it the weights are writeable again and a
    change to them shows in the next forward (no stale transform survives the block)."""
    from minidiff.functional import winograd
    from minidiff.kernels import kernel

    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1))
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    calls = []
    monkeypatch.setattr(winograd, "kernel", lambda name, like: (calls.append(name), kernel(name, like))[1])
    with no_grad():
        plain = model(Tensor(x)).data
        calls.clear()
        with model.frozen():
            outputs = [model(Tensor(x)).data for _ in range(3)]
            with pytest.raises(ValueError, match="read-only"):
                model[0].weight.data[0, 0, 0, 0] = 1.0
        assert calls.count("winograd_filter_transform") == 2  # two convs, three forwards
        for out in outputs:
            np.testing.assert_array_equal(out, plain)
        model[0].weight.data *= 2
        changed = model(Tensor(x)).data
        assert not np.allclose(changed, plain)
        with model.frozen():
            np.testing.assert_array_equal(model(Tensor(x)).data, changed)
    assert all(p.data.flags.writeable for p in model.parameters())
    assert winograd._reused_filters is None
