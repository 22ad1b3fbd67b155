"""Optimisers, clipping, warm-up and EMA against hand-written NumPy references."""
import math

import numpy as np
import pytest

import minidiff.functional as F
import minidiff.nn as nn
import minidiff.optim as optim
from minidiff import Tensor, backend
from minidiff.files import load_npz, save_npz

# f(θ) = ½ θᵀAθ − bᵀθ, with gradient Aθ − b and minimiser A⁻¹b.
A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
B = np.array([1.0, -2.0, 0.5])


def quadratic_grad(theta):
    return A @ theta - B


def reference_adam(theta, steps, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """Kingma & Ba 2015, Alg. 1, written out independently (plus L2 / decoupled decay)."""
    theta = theta.copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t in range(1, steps + 1):
        g = quadratic_grad(theta)
        if decoupled:
            theta = theta - lr * weight_decay * theta
        else:
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def run(optimizer, param, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        param.grad = quadratic_grad(param.data)
        optimizer.step()
    return param.data


THETA0 = np.array([0.5, 1.5, -1.0])


@pytest.mark.parametrize("cls, kwargs, decoupled", [
    (optim.Adam, {}, False),
    (optim.Adam, {"weight_decay": 0.1}, False),
    (optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-6}, False),
    (optim.AdamW, {"weight_decay": 0.1}, True),
])
def test_matches_reference_adam_for_a_few_steps(cls, kwargs, decoupled):
    param = nn.Parameter(THETA0)
    result = run(cls([param], lr=0.05, **kwargs), param, 5)
    expected = reference_adam(THETA0, 5, 0.05, *kwargs.get("betas", (0.9, 0.999)), kwargs.get("eps", 1e-8),
                              kwargs.get("weight_decay", 0.0), decoupled)
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_the_numpy_adam_update_is_the_textbook_step(weight_decay):
    # adam_update is the reference the fused kernel is held to (test_kernels.py); here it is held to the paper.
    theta, m, v = THETA0.copy(), np.zeros(3), np.zeros(3)
    for step in range(1, 6):
        optim.adam_update(theta, quadratic_grad(theta), m, v, step, 0.05, 0.8, 0.99, 1e-6, weight_decay)
    np.testing.assert_allclose(theta, reference_adam(THETA0, 5, 0.05, 0.8, 0.99, 1e-6, weight_decay), rtol=1e-12)


def test_defaults_are_kingma_and_ba_and_pytorchs_adamw_decay():
    param = nn.Parameter(THETA0)
    adam, adamw = optim.Adam([param]), optim.AdamW([param])
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (adamw.lr, adamw.betas, adamw.eps, adamw.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)


def test_each_parameter_has_its_own_moments_and_the_base_class_has_no_step():
    # Two parameters of different shapes, stepped together: each must match its own textbook run.
    a, b = nn.Parameter(THETA0), nn.Parameter(0.5 * np.eye(3))
    opt = optim.Adam([a, b], lr=0.05)
    for _ in range(3):
        a.grad, b.grad = quadratic_grad(a.data), quadratic_grad(b.data)
        opt.step()
    np.testing.assert_allclose(a.data, reference_adam(THETA0, 3, 0.05), rtol=1e-12)
    np.testing.assert_allclose(b.data, reference_adam(0.5 * np.eye(3), 3, 0.05), rtol=1e-12)
    state = opt.state_dict()
    state["state.1.exp_avg"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"state\.1\.exp_avg expected \(3, 3\) got \(3,\)$"):
        optim.Adam([a, b]).load_state_dict(state)
    with pytest.raises(NotImplementedError):
        optim.Optimizer([a], lr=0.1).step()


def test_the_numpy_ema_update_is_the_weighted_average():
    average, param = np.array([1.0, -2.0]), np.array([3.0, 4.0])
    optim.ema_update(average, param, 0.25)
    np.testing.assert_allclose(average, 0.75 * np.array([1.0, -2.0]) + 0.25 * param, rtol=1e-15)


def test_adam_minimises_the_quadratic():
    param = nn.Parameter(THETA0)
    run(optim.Adam([param], lr=0.05), param, 2000)
    np.testing.assert_allclose(param.data, np.linalg.solve(A, B), atol=1e-4)


def test_adam_updates_in_place_in_float32():
    param = nn.Parameter(np.ones(3, np.float32))
    storage = param.data
    run(optim.Adam([param]), param, 2)
    assert param.data is storage and param.dtype == np.float32


def test_adamw_with_zero_gradient_only_decays():
    param = nn.Parameter(np.array([2.0, -4.0]))
    opt = optim.AdamW([param], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        param.grad = np.zeros(2)
        opt.step()
    np.testing.assert_allclose(param.data, np.array([2.0, -4.0]) * (1 - 0.1 * 0.5) ** 3, rtol=1e-15)
    assert optim.AdamW([param]).weight_decay == 0.01


def test_parameters_without_grad_are_skipped():
    used, unused = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.Adam([used, unused], lr=0.1)
    used.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(unused.data, np.ones(2))
    assert not np.array_equal(used.data, np.ones(2))
    assert list(opt.state) == [0]


def test_optimizer_accepts_a_module_and_zero_grad_clears():
    layer = nn.Linear(2, 2)
    opt = optim.Adam(layer)
    assert opt.params == list(layer.parameters())
    for p in layer.parameters():
        p.grad = np.ones_like(p.data)
    opt.zero_grad()
    assert all(p.grad is None for p in layer.parameters())
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_state_round_trip_through_npz_reproduces_the_next_steps_exactly(cls, tmp_path):
    a, b = nn.Parameter(THETA0.astype(np.float32)), nn.Parameter(np.ones(2, np.float32))
    opt = cls([a, b], lr=0.05, weight_decay=0.1)
    run(opt, a, 3)  # b never gets a gradient: no state for it
    opt.lr = 0.02
    save_npz(opt.state_dict(), tmp_path / "opt.npz")

    a2, b2 = nn.Parameter(a.data), nn.Parameter(b.data)
    resumed = cls([a2, b2])
    resumed.load_state_dict(load_npz(tmp_path / "opt.npz"))
    assert (resumed.lr, resumed.betas, resumed.weight_decay) == (0.02, (0.9, 0.999), 0.1)
    assert resumed.state[0]["exp_avg"].dtype == np.float32 and list(resumed.state) == [0]
    np.testing.assert_array_equal(run(resumed, a2, 2), run(opt, a, 2))


def test_optimizer_load_state_dict_names_every_problem():
    opt = optim.Adam([nn.Parameter(np.ones(3))])
    state = opt.state_dict()
    del state["eps"]
    state.update({"state.0.step": 1, "state.0.exp_avg": np.zeros(4), "state.5.step": 1, "bogus": 1})
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(state)
    message = str(info.value)
    for part in ["missing key eps", "state.0.exp_avg expected (3,) got (4,)", "missing key state.0.exp_avg_sq",
                 "unexpected key state.5.step", "unexpected key bogus"]:
        assert part in message


# --------------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_to_max_norm_and_returns_the_norm_before():
    a, b = nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))
    a.grad, b.grad = np.array([3.0]), np.array([4.0])
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    total = np.hypot(a.grad[0], b.grad[0])
    assert total == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [0.6, 0.8], rtol=1e-6)
    a.grad, b.grad = np.array([0.9]), np.array([1.2])  # a norm of 1.5, just past max_norm: scaled too
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(1.5)
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [0.6, 0.8], rtol=1e-6)


def test_clip_grad_norm_leaves_small_gradients_alone_and_skips_missing_ones():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    a.grad = np.array([0.3, 0.4])
    assert optim.clip_grad_norm([a, b], 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad, [0.3, 0.4])
    assert b.grad is None


def test_clip_grad_norm_scales_an_aliased_gradient_once():
    a, b = nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))
    a.grad = b.grad = np.array([3.0])  # backward can hand two leaves the same array
    optim.clip_grad_norm([a, b], 1.0)
    np.testing.assert_allclose([a.grad[0], b.grad[0]], [1 / np.sqrt(2)] * 2, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_grad_norm_returns_a_non_finite_norm_without_scaling(bad):
    a = nn.Parameter(np.zeros(2))
    a.grad = np.array([bad, 1.0])
    norm = optim.clip_grad_norm([a], 1.0)
    assert not np.isfinite(norm)
    np.testing.assert_array_equal(a.grad, [bad, 1.0])


# --------------------------------------------------------------------- warm-up
def test_linear_warmup():
    assert [optim.linear_warmup(s, 4, 2e-4) for s in range(6)] == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4])
    assert optim.linear_warmup(0, 0, 2e-4) == 2e-4


# --------------------------------------------------------------------- EMA
def test_ema_follows_the_warmup_formula_exactly():
    param = nn.Parameter(np.array([0.0, 1.0]))
    ema = optim.EMA([param], decay=0.6)  # reached by the warm-up at n = 13
    expected = param.data.copy()
    for n in range(20):
        param.data[...] = [n + 1.0, -n]
        decay = min(0.6, (1 + n) / (10 + n))
        assert ema.current_decay() == decay
        ema.update()
        expected = decay * expected + (1 - decay) * param.data
        np.testing.assert_allclose(ema.shadow[0], expected, rtol=1e-14)
    assert ema.num_updates == 20 and ema.current_decay() == 0.6


def test_ema_without_warmup_uses_the_constant_decay():
    param = nn.Parameter(np.zeros(1))
    ema = optim.EMA([param], decay=0.9, warmup=False)
    param.data[...] = 1.0
    ema.update()
    np.testing.assert_allclose(ema.shadow[0], [0.1])


def test_ema_apply_restore_and_copy_to():
    model = nn.Linear(3, 2)
    ema = optim.EMA(model)
    averaged = [p.data.copy() for p in model.parameters()]
    for p in model.parameters():
        p.data += 1
    live = [p.data.copy() for p in model.parameters()]

    with ema.applied(model):
        for p, avg in zip(model.parameters(), averaged):
            np.testing.assert_array_equal(p.data, avg)
    for p, value in zip(model.parameters(), live):
        np.testing.assert_array_equal(p.data, value)

    other = nn.Linear(3, 2)
    ema.copy_to(other)
    np.testing.assert_array_equal(other.weight.data, averaged[0])
    with pytest.raises(ValueError, match="do not match"):
        ema.copy_to(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="apply_to"):
        ema.restore(model)


def test_ema_state_round_trip_reproduces_the_next_update_exactly(tmp_path):
    model = nn.Linear(3, 2)
    ema = optim.EMA(model, decay=0.99)
    for _ in range(3):
        for p in model.parameters():
            p.data += 0.1
        ema.update()
    state = ema.state_dict()
    assert list(state) == ["num_updates", "shadow.weight", "shadow.bias"]
    save_npz(state, tmp_path / "ema.npz")

    resumed = optim.EMA(model, decay=0.99)
    resumed.load_state_dict(load_npz(tmp_path / "ema.npz"))
    assert resumed.num_updates == 3 and resumed.shadow[0].dtype == np.float32
    for p in model.parameters():
        p.data += 0.1
    ema.update()
    resumed.update()
    for a, b in zip(ema.shadow, resumed.shadow):
        np.testing.assert_array_equal(a, b)

    bad = dict(state, **{"shadow.weight": np.zeros((2, 2)), "shadow.extra": np.zeros(1)})
    del bad["shadow.bias"]
    with pytest.raises(ValueError, match="missing key shadow.bias; unexpected key shadow.extra; "
                                         "shadow.weight expected \\(2, 3\\) got \\(2, 2\\)"):
        resumed.load_state_dict(bad)


# --------------------------------------------------------------------- end to end
@pytest.mark.skipif(not all(hasattr(F, op) for op in ("linear", "mse_loss")), reason="functional ops not landed yet")
def test_adam_with_clipping_and_ema_fits_a_linear_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3
    model = nn.Linear(3, 1, rng=rng)
    opt, ema = optim.Adam(model, lr=0.05), optim.EMA(model, decay=0.9)
    for _ in range(300):
        opt.zero_grad()
        loss = F.mse_loss(model(Tensor(x)), Tensor(y))
        loss.backward()
        optim.clip_grad_norm(model, 10.0)
        opt.step()
        ema.update()
    assert loss.item() < 1e-4
    with ema.applied(model):
        np.testing.assert_allclose(model.weight.data, [[1.0, -2.0, 0.5]], atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a CUDA device")
def test_adam_clipping_and_ema_on_cuda_match_cpu():
    def train(device):
        model = nn.Linear(3, 2, rng=np.random.default_rng(0), dtype=np.float64).to(device)
        opt, ema = optim.AdamW(model, lr=0.1), optim.EMA(model, decay=0.9)
        for step in range(3):
            for p in model.parameters():
                p.grad = p.data * (step + 1.0)
            norm = optim.clip_grad_norm(model, 0.5)
            opt.step()
            ema.update()
        resumed = optim.AdamW(model)
        resumed.load_state_dict(opt.state_dict())
        assert backend.device_of(resumed.state[0]["exp_avg"]) == device
        ema.copy_to(model)
        return norm, model.to("cpu").state_dict()

    cpu_norm, cpu_state = train("cpu")
    gpu_norm, gpu_state = train("cuda")
    assert gpu_norm == pytest.approx(cpu_norm, rel=1e-12)
    for name in cpu_state:
        np.testing.assert_allclose(gpu_state[name], cpu_state[name], rtol=1e-12)


def test_cosine_learning_rate_follows_the_half_cosine_after_the_warmup():
    # 4 warm-up steps, then 10 steps of ½·lr·(1 + cos(π·p)), p = (step − 4)/10: p = 0, ½, 1 at steps 4, 9, 14.
    rates = [optim.learning_rate(s, 14, 4, 2e-4, "cosine") for s in range(16)]
    assert rates[:4] == pytest.approx([optim.linear_warmup(s, 4, 2e-4) for s in range(4)])
    assert rates[4] == pytest.approx(2e-4)
    assert rates[9] == pytest.approx(1e-4)
    assert rates[6] == pytest.approx(0.5 * 2e-4 * (1 + math.cos(math.pi * 0.2)))
    assert rates[14] == rates[15] == pytest.approx(0.0, abs=1e-20)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


def test_constant_learning_rate_is_the_warmup_alone_and_unknown_schedules_are_named():
    assert [optim.learning_rate(s, 10, 3, 1e-3) for s in range(10)] == [optim.linear_warmup(s, 3, 1e-3) for s in range(10)]
    with pytest.raises(ValueError, match="learning-rate schedule must be one of constant, cosine, got 'step'"):
        optim.learning_rate(0, 10, 3, 1e-3, "step")
