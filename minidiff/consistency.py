"""Consistency models (Song et al. 2023): a network f_θ(x, σ) that maps every point of a
probability-flow ODE trajectory to the trajectory's clean end, so that one evaluation samples.

The parameterisation. In EDM's coordinates x = x₀ + σ ε (:mod:`minidiff.objectives.edm`), the ODE's
trajectories end at σ_min, where the identity is the answer: f(x, σ_min) = x. The network is wrapped
so that this boundary condition holds for every θ (Song et al. 2023, Eq. 5 and Appendix C):

    f_θ(x, σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x; c_noise(σ)),
    c_skip(σ) = σ_d²/((σ − σ_min)² + σ_d²),   c_out(σ) = σ_d (σ − σ_min)/√(σ² + σ_d²),

so c_skip(σ_min) = 1 and c_out(σ_min) = 0 (:func:`boundary_scalings`); c_in and c_noise are EDM's
(Karras et al. 2022, Table 1), so a consistency model starts well from an EDM teacher's weights.

The loss (:func:`consistency_loss`) compares f_θ at two adjacent levels σ_n < σ_{n+1} of a ρ-grid
(:func:`consistency_sigmas`): the point at σ_{n+1} is x₀ + σ_{n+1} z, and the point at σ_n on the same
trajectory is either one Heun step of a teacher's ODE (consistency distillation, CD, Song et al. 2023,
Algorithm 2) or, without any teacher, x₀ + σ_n z with the same z (consistency training, CT, Algorithm 3,
whose estimate is unbiased as N → ∞, Theorem 2). Improved consistency training (iCT, Song & Dhariwal
2023) sets the details minidiff uses for both: the target network is θ itself without gradient
(θ⁻ = stopgrad θ, no EMA, §3.2), the distance is pseudo-Huber (§3.3), the weight λ(σ_n) = 1/(σ_{n+1} − σ_n)
(§3.1), N doubles during training (:func:`ict_grid_size`, §3.4) and n is drawn from a discretised
log-normal (:func:`lognormal_pair_probabilities`, §3.5).

Sampling (:func:`sample`) is Song et al. 2023's Algorithm 1: f(σ_max z, σ_max) is one step; each
further step re-noises the estimate to a level τ_n and maps it back.

Papers:

- Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models" (Eq. 5; Algorithms 1–3; Appendix C).
- Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models" (§3.1, 3.2, 3.3, 3.4 and 3.5).
- Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based Generative
  Models" (Table 1; Eq. 5; Algorithm 1's Heun step).
"""
from __future__ import annotations

import math

import numpy as np

from .autograd import Tensor, no_grad
from .backend import get_array_module, to_device, to_numpy
from .diffusion import LossDraw, mean_flat
from .objectives.conversions import batch_column
from .objectives.edm import NOISE_LABEL_SCALE, karras_sigmas, precondition
from .schedule import standard_normal

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0  # Song et al. 2023, Appendix C
P_MEAN, P_STD = -1.1, 2.0  # iCT's log-normal over the grid (Song & Dhariwal 2023, §3.5)
S0, S1 = 10, 1280  # iCT's N from s₀ + 1 doubling to s₁ + 1 (Song & Dhariwal 2023, §3.4)
HUBER_C = 0.00054  # c = 0.00054 √d (Song & Dhariwal 2023, §3.3)
METRICS = ("pseudo-huber", "l2")


def boundary_scalings(sigma, sigma_data, sigma_min=SIGMA_MIN):
    """(c_skip, c_out) at σ (Song et al. 2023, Eq. 5 and Appendix C): c_skip = σ_d²/((σ − σ_min)² + σ_d²) and
    c_out = σ_d (σ − σ_min)/√(σ² + σ_d²), so that f(x, σ_min) = x for any network."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return (sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2),
            sigma_data * (sigma - sigma_min) / np.sqrt(sigma**2 + sigma_data**2))


def consistency_function(network, sigma_data, sigma_min=SIGMA_MIN):
    """f(x, σ) = c_skip x + c_out F(c_in x; c_noise) from ``network(x, label) -> F`` (Song et al. 2023, Eq. 5).

    ``x`` is an array; F is an array (a sampler's network, :func:`minidiff.unet.as_denoiser`) or a Tensor
    (the model being trained), and f follows it. c_in and c_noise are EDM's, the label 1000·c_noise as
    :func:`minidiff.objectives.edm.denoiser` gives it.
    """
    def f(x, sigma):
        xp = get_array_module(x)
        c_skip, c_out = boundary_scalings(to_numpy(sigma), sigma_data, sigma_min)
        _, _, c_in, c_noise = precondition(to_numpy(sigma), sigma_data)

        def column(c):
            return batch_column(xp.asarray(c, dtype=x.dtype), x)

        return column(c_skip) * x + column(c_out) * network(column(c_in) * x, xp.asarray(NOISE_LABEL_SCALE * c_noise))

    return f


def consistency_sigmas(N, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """σ_min = σ_1 < … < σ_N = σ_max, σ_i = (σ_min^{1/ρ} + (i − 1)/(N − 1)(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ
    (Song et al. 2023, Appendix C; Karras et al. 2022, Eq. 5 read upwards)."""
    if not N >= 2:
        raise ValueError(f"a consistency grid needs N >= 2 levels, got {N}")
    return karras_sigmas(N, sigma_min, sigma_max, rho)[-2::-1]


def ict_grid_size(k, K, s0=S0, s1=S1):
    """N(k) = min(s₀ 2^⌊k/K′⌋, s₁) + 1, K′ = ⌊K/(log₂⌊s₁/s₀⌋ + 1)⌋: the grid doubles from s₀ + 1 to s₁ + 1
    levels over K training steps (Song & Dhariwal 2023, §3.4)."""
    K_prime = max(K // (int(math.log2(s1 // s0)) + 1), 1)
    return min(s0 * 2 ** (k // K_prime), s1) + 1


def lognormal_pair_probabilities(sigmas, P_mean=P_MEAN, P_std=P_STD):
    """p(σ_n) ∝ erf((ln σ_{n+1} − P_mean)/(√2 P_std)) − erf((ln σ_n − P_mean)/(√2 P_std)) over the N − 1
    adjacent pairs: a log-normal over noise levels, discretised on the grid (Song & Dhariwal 2023, §3.5)."""
    cdf = np.array([math.erf((math.log(s) - P_mean) / (math.sqrt(2.0) * P_std)) for s in sigmas])
    p = np.diff(cdf)
    return p / p.sum()


def pseudo_huber(squared_distance, dim):
    """d = √(‖x − y‖² + c²) − c, c = 0.00054 √dim (Song & Dhariwal 2023, §3.3), from ‖x − y‖² (arrays or Tensors)."""
    c = HUBER_C * math.sqrt(dim)
    return (squared_distance + c * c) ** 0.5 - c


def heun_step(denoise, x, sigma, sigma_next):
    """One Heun step of dx/dσ = (x − D(x; σ))/σ from σ to σ_next > 0, per example (Karras et al. 2022,
    Algorithm 1, lines 7–11 with γ = 0): the teacher's step in consistency distillation."""
    h = batch_column(sigma_next - sigma, x)
    d = (x - denoise(x, sigma)) / batch_column(sigma, x)  # line 7: d_i = (x_i − D(x_i; t_i))/t_i
    x_euler = x + h * d  # line 8: x_{i+1} = x_i + (t_{i+1} − t_i) d_i
    d_next = (x_euler - denoise(x_euler, sigma_next)) / batch_column(sigma_next, x)  # line 10: d′_i
    return x + h * (0.5 * d + 0.5 * d_next)  # line 11: x_{i+1} = x_i + (t_{i+1} − t_i)(½ d_i + ½ d′_i)


def consistency_loss(f, x0, rng, *, sigmas, probabilities=None, teacher=None, metric="pseudo-huber", device="cpu",
                     rows=slice(None)):
    """One draw of the consistency loss on a batch x₀, as a :class:`~minidiff.diffusion.LossDraw`.

    ``f(x, σ)`` is the consistency function of the model being trained (Tensors out; :func:`consistency_function`);
    ``sigmas`` the grid σ_1 < … < σ_N, ``probabilities`` p(n) over its N − 1 adjacent pairs (None: uniform).
    With ``teacher(x, σ) -> D`` (an EDM denoiser on arrays) it is consistency distillation (Song et al. 2023,
    Algorithm 2), without it consistency training (Algorithm 3); both with iCT's choices (module docstring).
    ``rows`` keeps a slice of the batch with the draws of the whole batch (:func:`minidiff.diffusion.training_loss`).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown consistency metric {metric!r}; choose one of {', '.join(METRICS)}")
    n = rng.choice(len(sigmas) - 1, size=len(x0), p=probabilities)  # (1) n ∼ p(n): the pair (σ_n, σ_{n+1})
    z = rng.standard_normal(x0.shape, dtype=np.float32)  # (2) z ∼ N(0, I)
    x0, n, z = to_device(x0[rows], device), n[rows], to_device(z[rows], device)
    sigma, sigma_next = sigmas[n], sigmas[n + 1]
    x_next = x0 + batch_column(sigma_next, x0).astype(x0.dtype) * z  # (3) x_{σ_{n+1}} = x₀ + σ_{n+1} z
    if teacher is None:  # (4) CT: the same z one level down (Algorithm 3)
        x_n = x0 + batch_column(sigma, x0).astype(x0.dtype) * z
    else:  # (4) CD: one Heun step of the teacher's ODE from σ_{n+1} to σ_n (Algorithm 2)
        x_n = heun_step(teacher, x_next, sigma_next, sigma).astype(x0.dtype)
    with no_grad():  # (5) the target f_θ⁻(x_n, σ_n), θ⁻ = stopgrad θ (iCT, §3.2)
        target = f(x_n, sigma)
    target = target.data if isinstance(target, Tensor) else target
    online = f(x_next, sigma_next)  # (6) f_θ(x_{σ_{n+1}}, σ_{n+1})
    dim = int(np.prod(x0.shape[1:]))
    squared = mean_flat((online - target) ** 2) * dim  # ‖f_θ − f_θ⁻‖²
    distance = pseudo_huber(squared, dim) if metric == "pseudo-huber" else squared  # (7) d(·, ·)
    weight = to_device((1.0 / (sigma_next - sigma)).astype(np.float32), device)  # (8) λ(σ_n) = 1/(σ_{n+1} − σ_n)
    loss = (distance * (Tensor(weight) if isinstance(distance, Tensor) else weight)).mean()  # (9) E[λ d]
    return LossDraw(loss, n, to_numpy(distance.data if isinstance(distance, Tensor) else distance))


def training_loss(model, x0, rng, *, step, total_steps, sigma_data, device="cpu", rows=slice(None)):
    """Improved consistency training (Song & Dhariwal 2023) at optimiser step ``step`` of ``total_steps``:
    :func:`consistency_loss` without a teacher on the grid of N(k) levels (:func:`ict_grid_size`), pairs drawn
    log-normally (:func:`lognormal_pair_probabilities`). ``model(x, label)`` returns a Tensor."""
    sigmas = consistency_sigmas(ict_grid_size(step, total_steps))
    return consistency_loss(consistency_function(model, sigma_data), x0, rng, sigmas=sigmas,
                            probabilities=lognormal_pair_probabilities(sigmas), device=device, rows=rows)


def sampling_sigmas(steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """σ_max = τ_0 > τ_1 > … > τ_{steps−1}: the levels Algorithm 1 evaluates f at, the first ``steps`` of a
    (steps + 1)-point ρ-grid from σ_max to σ_min (Karras et al. 2022, Eq. 5), so each step re-noises to
    a level a fixed fraction down in σ^{1/ρ}."""
    return karras_sigmas(steps + 1, sigma_min, sigma_max, rho)[:steps]


def sample(f, taus, x, *, sigma_min=SIGMA_MIN, rng=None, callback=None):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) from x = τ_0 z at τ_0 = ``taus[0]``.

    ``f(x, σ)`` is a consistency function on arrays; one step when ``taus`` has one level.
    ``callback(index, τ, x̂_τ, f(x̂_τ, τ))`` sees every evaluation.
    """
    xp = get_array_module(x)
    x_tau = x  # line 1: x̂_T, the caller's τ_0 z
    for index, tau in enumerate(taus):  # line 3: for n = 1 to N − 1, after line 2's n = 0
        if index:
            z = standard_normal(rng, x)  # line 4: z ∼ N(0, I)
            x_tau = x + math.sqrt(tau**2 - sigma_min**2) * z  # line 5: x̂_{τ_n} ← x + √(τ_n² − ε²) z
        x = f(x_tau, xp.full(len(x), tau))  # lines 2 and 6: x ← f_θ(x̂_{τ_n}, τ_n)
        if callback is not None:
            callback(index, tau, x_tau, x)
    return x
