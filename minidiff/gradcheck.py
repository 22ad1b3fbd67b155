"""Gradient checking by float64 central differences, for minidiff's ops and for yours.

``gradcheck(fn, *inputs)`` compares the gradient autograd computes for ``fn`` against
(f(x + h·e) − f(x − h·e)) / 2h. The scalar checked is ⟨fn(inputs), R⟩ for a fixed random R, so
every output element takes part. Two modes:

* ``"full"``: one perturbation per input element -- exact coverage, for small inputs;
* ``"directional"``: a few random directions v, comparing ⟨∇f, v⟩ with the directional
  difference (HIPS/autograd's ``check_grads``) -- for inputs too large to perturb one by one.
"""
from __future__ import annotations

import numpy as np

from .autograd import Tensor


class GradcheckError(AssertionError):
    """Autograd's gradient disagrees with finite differences."""


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-6, rtol=1e-5, mode="full", directions=3, seed=0):
    """Check ``fn``'s gradient with respect to every float input; raise :class:`GradcheckError` if off.

    ``inputs`` are arrays (converted to float64 tensors that require grad) or non-array
    arguments passed through unchanged. Returns ``True`` so it reads well in an ``assert``.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"gradcheck mode {mode!r}: expected 'full' or 'directional'")
    rng = np.random.default_rng(seed)
    arrays = [np.array(x, dtype=np.float64) if _is_float_array(x) else x for x in inputs]
    checked = [k for k, x in enumerate(arrays) if isinstance(x, np.ndarray)]
    if not checked:
        raise ValueError("gradcheck needs at least one floating-point array input")

    def call(values):
        args = [Tensor(v, requires_grad=True) if k in checked else v for k, v in enumerate(values)]
        return args, fn(*args)

    args, out = call(arrays)
    projection = rng.standard_normal(out.shape)
    (out * Tensor(projection)).sum().backward()
    analytic = {k: np.zeros_like(arrays[k]) if args[k].grad is None else args[k].grad for k in checked}

    def objective(values) -> float:
        return float(np.sum(call(values)[1].data * projection))

    for k in checked:
        if mode == "full":
            numeric = np.zeros_like(arrays[k])
            for index in np.ndindex(arrays[k].shape):
                numeric[index] = _central_difference(objective, arrays, k, _unit(arrays[k], index), eps)
            _compare(analytic[k], numeric, atol, rtol, f"input {k}")
        else:
            for d in range(directions):
                v = rng.standard_normal(arrays[k].shape)
                numeric = _central_difference(objective, arrays, k, v, eps)
                _compare(np.sum(analytic[k] * v), numeric, atol, rtol, f"input {k}, direction {d}")
    return True


def _is_float_array(x) -> bool:
    return isinstance(x, (np.ndarray, list, float)) and np.issubdtype(np.asarray(x).dtype, np.floating)


def _unit(array, index):
    e = np.zeros_like(array)
    e[index] = 1.0
    return e


def _central_difference(objective, arrays, k, direction, eps) -> float:
    plus, minus = list(arrays), list(arrays)
    plus[k], minus[k] = arrays[k] + eps * direction, arrays[k] - eps * direction
    return (objective(plus) - objective(minus)) / (2 * eps)


def _compare(analytic, numeric, atol, rtol, where):
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    error = np.abs(analytic - numeric)
    bound = atol + rtol * np.abs(numeric)
    if np.any(error > bound):
        worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.ndim else ()
        raise GradcheckError(
            f"gradient mismatch for {where} at {worst}: autograd {analytic[worst]!r}, "
            f"finite differences {numeric[worst]!r} (max abs error {error.max():.3g})"
        )
