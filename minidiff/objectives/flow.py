"""Flow matching / rectified flow: the straight path from data to noise, the velocity a network
regresses, and ODE samplers on it — on the same U-Net.

Noise sits at t = 1, as in diffusers and Stable Diffusion 3: x_t = (1 − t) x₀ + t ε, whose
velocity dx_t/dt = ε − x₀ the network v_θ(x_t, t) learns by least squares (Liu et al. 2023,
Eq. 1; the conditional flow matching loss of Lipman et al. 2023, §4.1, with σ_min = 0).
Sampling integrates dx/dt = v_θ(x, t) from t = 1 (x = ε) down to t = 0 with Euler, Heun or the
midpoint rule on the time grid of :func:`flow_times`, optionally shifted towards the noise end
(Esser et al. 2024, §5.3.2). Training draws t uniformly or logit-normally (Esser et al. 2024, §3.1).
The network is given 1000·t as its noise label (:data:`NOISE_LABEL_SCALE`), as diffusers feeds
Stable Diffusion 3's transformer.

Papers:

- Liu, Gong & Liu 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with
  Rectified Flow" (Eq. 1).
- Lipman, Chen, Ben-Hamu, Nickel & Le 2023, "Flow Matching for Generative Modeling" (§4.1, the optimal-transport path).
- Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"
  (logit-normal t, §3.1; the time shift, §5.3.2).
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..backend import get_array_module, to_device, to_numpy
from ..diffusion import LossDraw, mean_flat
from ..sampling import _recorder
from .conversions import batch_column, velocity_from_x0_eps, x0_from_velocity

NOISE_LABEL_SCALE = 1000.0
T_DISTRIBUTIONS = ("uniform", "logit-normal")
SOLVERS = ("euler", "heun", "midpoint")


def path(x0, t, noise):
    """x_t = (1 − t) x₀ + t ε, the straight path from data (t = 0) to noise (t = 1) (Liu et al. 2023, Eq. 1)."""
    t = batch_column(t, x0)
    return (1.0 - t) * x0 + t * noise


def sample_t(n, rng, distribution="uniform"):
    """n times in [0, 1]: t ∼ U[0, 1], or logit-normal t = sigmoid(u), u ∼ N(0, 1) (Esser et al. 2024, §3.1),
    which spends more of training on the middle of the path, where the velocity is hardest to guess."""
    if distribution not in T_DISTRIBUTIONS:
        raise ValueError(f"unknown t distribution {distribution!r}; choose one of {', '.join(T_DISTRIBUTIONS)}")
    if distribution == "uniform":
        return rng.random(n)
    return 1.0 / (1.0 + np.exp(-rng.standard_normal(n)))


def training_loss(model, x0, rng, *, t_distribution="uniform", device="cpu", rows=slice(None)):
    """One draw of the flow-matching loss on a batch x₀ (Liu et al. 2023, Eq. 1; Lipman et al. 2023, §4.1),
    as a :class:`~minidiff.diffusion.LossDraw`.

    t by :func:`sample_t`, ε ∼ N(0, I), x_t on the straight path, and the batch mean of
    ‖(ε − x₀) − v_θ(x_t, t)‖²/dim. ``model(x, label)`` returns a Tensor; ``rows`` keeps a slice of
    the batch with the draws of the whole batch (:func:`minidiff.diffusion.training_loss`).
    """
    t = sample_t(len(x0), rng, t_distribution)
    noise = rng.standard_normal(x0.shape, dtype=np.float32)  # ε ∼ N(0, I)
    x0, t, noise = x0[rows], t[rows], noise[rows]
    x_t = path(x0, t, noise).astype(np.float32)
    target = velocity_from_x0_eps(x0, noise)  # ε − x₀
    output = model(Tensor(to_device(x_t, device)), NOISE_LABEL_SCALE * t)
    per_example = mean_flat(F.mse_loss(output, Tensor(to_device(target, device)), reduction="none"))
    return LossDraw(per_example.mean(), t, to_numpy(per_example.data))


def velocity(network):
    """v(x, t) on arrays from ``network(x, label) -> v̂`` (the U-Net, or a guided one: guidance on v̂ is
    guidance on x̂₀ and ε̂, which are affine in v̂ at fixed (x, t))."""
    def v(x, t):
        return network(x, get_array_module(x).asarray(NOISE_LABEL_SCALE * t))

    return v


def shift_time(t, shift=1.0):
    """t ↦ s t/(1 + (s − 1) t), Stable Diffusion 3's time shift (Esser et al. 2024, §5.3.2):
    s > 1 spends more of the steps near the noise end, s = 1 is the identity."""
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"--time-shift must be a positive finite number, got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def flow_times(steps, shift=1.0):
    """t_0 = 1 > t_1 > … > t_N = 0, N = ``steps`` uniform steps through :func:`shift_time` (Esser et al. 2024, §5.3.2)."""
    return shift_time(np.linspace(1.0, 0.0, steps + 1), shift)


def sample(velocity, times, x, *, solver="euler", start=0, callback=None, return_trajectory=False):
    """Integrate dx/dt = v(x, t) from ``times[start]`` down to ``times[-1]`` (Liu et al. 2023, Eq. 1, §2.1).

    ``velocity(x, t) -> v̂`` on arrays, t of shape (N,); ``x`` is the state at ``times[start]`` (ε
    at t = 1). Per step h = t_{i+1} − t_i < 0: Euler x + h v(x, t); the midpoint rule
    x + h v(x + ½h v, t + ½h); or Heun x + ½h (v(x, t) + v(x + h v, t + h)), except on a last step
    onto t = 0, which stays Euler and so lands on x̂₀ = x − t v̂ (as Karras et al. 2022, Algorithm 2 does).
    Returns x at ``times[-1]``, or (x, [TrajectoryStep, …]) whose t is the flow time.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown flow solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    report, trajectory = _recorder(callback, return_trajectory)
    xp = get_array_module(x)
    for index, i in enumerate(range(start, len(times) - 1)):
        t, h = times[i], times[i + 1] - times[i]
        v = velocity(x, xp.full(len(x), t))
        report(index, t, x, x0_from_velocity(x, xp.full(len(x), t), v))
        if solver == "midpoint":
            v = velocity(x + 0.5 * h * v, xp.full(len(x), t + 0.5 * h))
        elif solver == "heun" and times[i + 1] > 0:
            v = 0.5 * (v + velocity(x + h * v, xp.full(len(x), t + h)))
        x = x + h * v
    return (x, trajectory) if return_trajectory else x
