"""Optimisers (Adam, AdamW), gradient clipping, learning-rate warm-up and an EMA of the weights:
the training recipe of DDPM (Ho et al. 2020, App. B: Adam, lr warm-up, clipping at norm 1,
EMA with decay 0.9999).

Every update works in place on ``param.data`` through the array module of the parameter
(``numpy`` or ``cupy``), so the same code runs on either device. The per-parameter maths of Adam
and of the EMA are :func:`adam_update` and :func:`ema_update` below, line by line as the papers
write them; they are also the reference of the kernels of those names, whose Cython version
(one fused pass over each parameter) the CPU runs and the tests hold to them bit for bit.

State dicts are flat: names → plain arrays and numbers, so they can be written into an
``.npz`` checkpoint (:func:`minidiff.files.save_npz`) and read back exactly. Per-parameter
state is keyed by the parameter's index in the list given to the optimiser
(``state.3.exp_avg``), which is stable because ``Module.parameters()`` has a fixed order.

It runs past 300 lines because Adam's textbook update (the reference the fused kernel is tested
against) and its checkpointable state live beside the EMA, gradient clipping and warm-up that
the training loop uses with it.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from .backend import get_array_module, to_device
from .kernels import kernel
from .nn import Module


def _as_list(params) -> list:
    """A Module's parameters, or the given iterable of Parameters, as a list."""
    return list(params.parameters() if isinstance(params, Module) else params)


def _numpy_copy(array) -> np.ndarray:
    """A NumPy copy of ``array`` (from the GPU when it lives there), safe to keep in a state dict."""
    return np.array(to_device(array, "cpu"))


def _to_param(value, param):
    """A copy of ``value`` on ``param``'s device with its dtype."""
    return get_array_module(param.data).array(value, dtype=param.dtype)


class Optimizer:
    """Base class: holds the parameters, the per-parameter state and the hyperparameters.

    Subclasses name their hyperparameters (attributes, saved with the state, so a resumed run
    continues with e.g. the learning rate it had) and their per-parameter arrays, and define
    :meth:`step`. Parameters whose ``.grad`` is ``None`` are skipped, like PyTorch.
    """

    hyperparameters: tuple[str, ...] = ("lr",)
    state_arrays: tuple[str, ...] = ()

    def __init__(self, params, lr: float):
        self.params = _as_list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        self.lr = lr
        # index → {"step": int, <state_arrays>: array}, created on a parameter's first update
        self.state: dict[int, dict] = {}

    def zero_grad(self):
        for param in self.params:
            param.grad = None

    def step(self):
        raise NotImplementedError

    def _state_for(self, index: int) -> dict:
        if index not in self.state:
            xp = get_array_module(self.params[index].data)
            self.state[index] = {"step": 0, **{name: xp.zeros_like(self.params[index].data) for name in self.state_arrays}}
        return self.state[index]

    def state_dict(self) -> dict:
        """Hyperparameters and per-parameter state as plain numbers and NumPy arrays (copies)."""
        out = {name: getattr(self, name) for name in self.hyperparameters}
        for index, state in sorted(self.state.items()):
            out[f"state.{index}.step"] = state["step"]
            for name in self.state_arrays:
                out[f"state.{index}.{name}"] = _numpy_copy(state[name])
        return out

    def load_state_dict(self, state: dict):
        """Restore from :meth:`state_dict` (or its ``.npz`` round trip), each array onto its
        parameter's device and dtype. Every mismatch is named in one error."""
        problems, per_param = [], {}
        for key, value in state.items():
            if key in self.hyperparameters:
                continue
            parts = key.split(".")
            valid = (len(parts) == 3 and parts[0] == "state" and parts[1].isdigit()
                     and int(parts[1]) < len(self.params) and parts[2] in ("step", *self.state_arrays))
            if not valid:
                problems.append(f"unexpected key {key}")
                continue
            index = int(parts[1])
            if parts[2] != "step" and np.shape(value) != self.params[index].shape:
                problems.append(f"{key} expected {self.params[index].shape} got {np.shape(value)}")
            per_param.setdefault(index, {})[parts[2]] = value
        problems += [f"missing key {name}" for name in self.hyperparameters if name not in state]
        for index, entries in sorted(per_param.items()):
            problems += [f"missing key state.{index}.{name}" for name in ("step", *self.state_arrays) if name not in entries]
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))

        for name in self.hyperparameters:
            # .npz turns numbers into 0-d arrays and tuples into 1-d ones; restore the Python types.
            value = np.asarray(state[name])
            setattr(self, name, tuple(float(v) for v in value) if value.ndim else float(value))
        self.state = {
            index: {"step": int(entries["step"]),
                    **{name: _to_param(entries[name], self.params[index]) for name in self.state_arrays}}
            for index, entries in per_param.items()
        }


def adam_update(param, grad, m, v, step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float):
    """One Adam step on arrays, in place on ``param``, ``m`` and ``v`` (Kingma & Ba 2015, Alg. 1).

    ``step`` is t, counted from 1. ``weight_decay`` is L2 regularisation added to the gradient,
    as in ``torch.optim.Adam`` (not decoupled: see :class:`AdamW`).
    """
    xp = get_array_module(param)
    if weight_decay:
        grad = grad + weight_decay * param  # ∇(f + λ/2‖θ‖²) = g + λθ
    m *= beta1
    m += (1 - beta1) * grad  # m_t = β₁ m_{t−1} + (1 − β₁) g_t
    v *= beta2
    v += (1 - beta2) * grad * grad  # v_t = β₂ v_{t−1} + (1 − β₂) g_t²
    m_hat = m / (1 - beta1**step)  # bias correction: m̂_t = m_t / (1 − β₁ᵗ)
    v_hat = v / (1 - beta2**step)  # v̂_t = v_t / (1 − β₂ᵗ)
    param -= lr * m_hat / (xp.sqrt(v_hat) + eps)  # θ_t = θ_{t−1} − α m̂_t / (√v̂_t + ε)


def _adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """:func:`adam_update`, by the fused kernel of that name where one runs (the CPU)."""
    kernel("adam_update", param)(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay)


def _adamw_update(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step: weight decay decoupled from the gradient (Loshchilov & Hutter 2019, Alg. 2).

    The decay shrinks θ directly instead of passing through Adam's normalisation, so every weight
    decays at the same rate whatever its gradient history. As in ``torch.optim.AdamW`` the decay
    is scaled by the learning rate: θ ← θ(1 − αλ), then the Adam step.
    """
    param *= 1 - lr * weight_decay
    _adam_update(param, grad, m, v, step, lr, beta1, beta2, eps, 0.0)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Alg. 1) with bias correction and optional L2 ``weight_decay``."""

    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    state_arrays = ("exp_avg", "exp_avg_sq")  # m and v
    _update = staticmethod(_adam_update)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def step(self):
        beta1, beta2 = self.betas
        for index, param in enumerate(self.params):
            if param.grad is None:
                continue
            state = self._state_for(index)
            state["step"] += 1
            self._update(param.data, param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                         self.lr, beta1, beta2, self.eps, self.weight_decay)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019); PyTorch's default λ = 0.01."""

    _update = staticmethod(_adamw_update)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# --------------------------------------------------------------------- gradient clipping
def clip_grad_norm(params, max_norm: float) -> float:
    """Rescale the gradients so that their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping. A non-finite norm (an overflow or NaN upstream) is returned
    as is and the gradients are left alone, so the caller can see it and skip the step.
    """
    grads = [param for param in _as_list(params) if param.grad is not None]
    total = math.sqrt(sum(float(get_array_module(p.grad).vdot(p.grad.ravel(), p.grad.ravel())) for p in grads))
    if not math.isfinite(total):
        return total
    scale = max_norm / (total + 1e-6)  # the epsilon keeps a zero norm from dividing by zero
    if scale < 1.0:
        for param in grads:
            # A new array, not *=: backward may hand two leaves the very same gradient array.
            param.grad = param.grad * scale
    return total


# --------------------------------------------------------------------- learning rate
def linear_warmup(step: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate for optimiser step ``step`` (0-based) under linear warm-up.

    Rises as base_lr·(step + 1)/warmup_steps, so the first step already moves the weights, and
    is base_lr from step ``warmup_steps − 1`` on (DDPM warms up over 5000 steps).
    """
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float, schedule: str = "constant") -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a run of ``total_steps``.

    :func:`linear_warm-up <linear_warmup>`, then ``constant``, or ``cosine``: after the warm-up
    the rate follows half a cosine from base_lr down to 0 at ``total_steps``, η = ½·base_lr·(1 +
    cos(π·p)) with p the fraction of the post-warm-up steps taken (Loshchilov & Hutter 2017,
    Eq. 5, one cycle, η_min = 0). A short run then ends with small steps that settle the weights
    instead of stopping mid-stride. ``total_steps`` is the run's ``--steps``: a resume that raises
    it stretches the decay that remains.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")
    lr = linear_warmup(step, warmup_steps, base_lr)
    if schedule == "constant" or step < warmup_steps:
        return lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------- EMA
def ema_update(average, param, one_minus_decay: float):
    """θ̄ ← d·θ̄ + (1 − d)·θ, written θ̄ − (1 − d)(θ̄ − θ), in place on ``average`` (Ho et al. 2020, App. B)."""
    average -= one_minus_decay * (average - param)


class EMA:
    """Exponential moving average of the parameters, used for sampling (Ho et al. 2020, App. B).

    After each optimiser step call :meth:`update`: θ̄ ← d·θ̄ + (1 − d)·θ. With ``warmup`` the
    decay is d = min(decay, (1 + n)/(10 + n)), n being the number of updates made before this
    one (the schedule of TensorFlow's ``ExponentialMovingAverage(num_updates=…)``), so early
    averages are not dominated by the random initialisation.

    To sample with the averaged weights::

        with ema.applied(model):        # or ema.apply_to(model) … ema.restore(model)
            samples = sample(model, …)

    or ``ema.copy_to(eval_model)`` to overwrite another model's weights for good. Build the EMA
    after ``model.to(device)``: the averages live on the parameters' device at creation.
    """

    def __init__(self, model_or_params, decay: float = 0.9999, warmup: bool = True):
        if isinstance(model_or_params, Module):
            named = list(model_or_params.named_parameters())
        else:
            named = [(str(i), p) for i, p in enumerate(model_or_params)]
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        self.shadow = [param.data.copy() for param in self.params]
        self._backup = None

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def update(self):
        one_minus_d = 1.0 - self.current_decay()
        for average, param in zip(self.shadow, self.params):
            kernel("ema_update", average)(average, param.data, one_minus_d)  # ema_update, fused on the CPU
        self.num_updates += 1

    def _targets(self, target) -> list:
        params = self.params if target is None else _as_list(target)
        if [p.shape for p in params] != [a.shape for a in self.shadow]:
            raise ValueError("EMA: the target's parameters do not match the averaged ones in number or shape")
        return params

    def copy_to(self, target=None):
        """Write the averages into ``target`` (a Module or parameter list; default: the tracked ones)."""
        for param, average in zip(self._targets(target), self.shadow):
            param.data[...] = average

    def apply_to(self, target=None):
        """Swap the averages in, keeping the live weights for :meth:`restore`."""
        params = self._targets(target)
        self._backup = [param.data.copy() for param in params]
        self.copy_to(params)

    def restore(self, target=None):
        """Put back the weights saved by :meth:`apply_to`."""
        if self._backup is None:
            raise RuntimeError("EMA.restore() without a preceding apply_to()")
        for param, saved in zip(self._targets(target), self._backup):
            param.data[...] = saved
        self._backup = None

    @contextmanager
    def applied(self, target=None):
        """``with ema.applied(model):`` — the averaged weights inside the block, the live ones after."""
        self.apply_to(target)
        try:
            yield
        finally:
            self.restore(target)

    def state_dict(self) -> dict:
        """``num_updates`` and one NumPy copy of each average under ``shadow.<parameter name>``."""
        out = {"num_updates": self.num_updates}
        for name, average in zip(self.names, self.shadow):
            out[f"shadow.{name}"] = _numpy_copy(average)
        return out

    def load_state_dict(self, state: dict):
        expected = {f"shadow.{name}": average for name, average in zip(self.names, self.shadow)}
        problems = [f"missing key {key}" for key in ["num_updates", *expected] if key not in state]
        problems += [f"unexpected key {key}" for key in state if key != "num_updates" and key not in expected]
        problems += [f"{key} expected {average.shape} got {np.shape(state[key])}"
                     for key, average in expected.items() if key in state and np.shape(state[key]) != average.shape]
        if problems:
            raise ValueError("EMA.load_state_dict: " + "; ".join(problems))
        self.num_updates = int(state["num_updates"])
        for key, average in expected.items():
            average[...] = get_array_module(average).asarray(state[key])
