"""EDM (Karras et al. 2022): the preconditioned denoiser, its loss, the ρ-spaced noise levels and
the Heun sampler — on the same U-Net, and on a DDPM model through the VP bridge.

Noise is added at level σ, x = x₀ + σ ε, and the network F_θ is wrapped so that its input and
its target have unit variance at every σ (Table 1, Eq. 7):
D_θ(x; σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x; c_noise(σ)). :func:`training_loss` draws
ln σ ∼ N(P_mean, P_std²) and regresses D_θ onto x₀ with the weight λ(σ) (Eq. 8); :func:`sample`
integrates the probability-flow ODE dx/dσ = (x − D(x; σ))/σ (Eqs. 1 and 3 with σ(t) = t, s = 1)
with Heun's method on the grid of Eq. 5 (Algorithm 2; Algorithm 1 when its S_churn is 0).

σ_data. Table 1's coefficients come from the second moments of the data (Appendix B.6): c_skip
minimises E‖(1 − c_skip) x₀ − c_skip σ ε‖², which is E[x₀²]/(E[x₀²] + σ²) whatever the mean.
So minidiff keeps the data in [−1, 1], where clipping, SDEdit and inpainting already work, and
takes σ_data as the measured root mean square of the training images (:func:`measure_sigma_data`,
0.96 for MNIST: mean −0.74, standard deviation 0.62) rather than EDM's 0.5 for standardised data.
``--sigma-data`` overrides it; the run config records it, since the denoiser depends on it.

The network's noise label. c_noise = ¼ ln σ spans [−1.55, 1.1] over σ ∈ [0.002, 80]; the U-Net's
sinusoidal embedding (periods 2π to 2π·10⁴) was made for labels spread over [0, 1000), so the
network is given 1000·c_noise (:data:`NOISE_LABEL_SCALE`), as flow matching gives it 1000·t.

Papers:

- Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based
  Generative Models" (Eqs. 1, 3, 4, 5, 7, 8; Table 1; Algorithms 1 and 2; Appendix B.6).
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..backend import get_array_module, to_device, to_numpy
from ..diffusion import LossDraw, mean_flat
from ..diffusion import denoise as denoise_vp
from ..sampling import _recorder
from ..schedule import standard_normal
from .conversions import batch_column, vp_sigma

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0  # Eq. 5 and Table 1
P_MEAN, P_STD = -1.2, 1.2  # ln σ ∼ N(P_mean, P_std²), §5 and Table 1
NOISE_LABEL_SCALE = 1000.0  # the network sees 1000·c_noise (module docstring)
SOLVERS = ("heun", "euler")


def measure_sigma_data(images) -> float:
    """σ_data = √E[x₀²], the root mean square of the training images (module docstring; Karras et
    al. 2022, Appendix B.6 derives Table 1 from this second moment)."""
    return float(np.sqrt(np.mean(np.square(images, dtype=np.float64))))


def precondition(sigma, sigma_data):
    """(c_skip, c_out, c_in, c_noise) at noise levels σ (Karras et al. 2022, Table 1 and Eq. 7):
    c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ."""
    sigma = np.asarray(sigma, dtype=np.float64)
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / np.sqrt(total), 1.0 / np.sqrt(total), 0.25 * np.log(sigma)


def loss_weight(sigma, sigma_data):
    """λ(σ) = (σ² + σ_d²)/(σ σ_d)², EDM's loss weight (Karras et al. 2022, Table 1, §5): λ c_out² = 1."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def denoiser(network, sigma_data):
    """D(x; σ) = c_skip x + c_out F(c_in x; c_noise) on arrays, from ``network(x, label) -> F`` (Karras et al. 2022, Eq. 7).

    ``network`` is the raw U-Net output on arrays (:func:`minidiff.unet.as_denoiser`, or a guided
    one: classifier-free guidance on F is guidance on D, since D is affine in F with weight c_out).
    """
    def denoise(x, sigma):
        xp = get_array_module(x)
        c_skip, c_out, c_in, c_noise = precondition(to_numpy(sigma), sigma_data)

        def column(c):
            return batch_column(xp.asarray(c, dtype=x.dtype), x)

        return column(c_skip) * x + column(c_out) * network(column(c_in) * x, xp.asarray(NOISE_LABEL_SCALE * c_noise))

    return denoise


def training_loss(model, x0, rng, *, sigma_data, P_mean=P_MEAN, P_std=P_STD, device="cpu", rows=slice(None)):
    """One draw of EDM's loss on a batch x₀ (Karras et al. 2022, Eq. 8), as a :class:`~minidiff.diffusion.LossDraw`.

    ln σ ∼ N(P_mean, P_std²), n = σ ε, and E[λ(σ) c_out(σ)² ‖F_θ(c_in (x₀ + n); c_noise) −
    (x₀ − c_skip (x₀ + n))/c_out‖²]: Eq. 8 as written, the network regressed onto its effective
    target, with λ(σ) c_out(σ)² = 1 (:func:`loss_weight`). ``model(x, label)`` returns a Tensor;
    ``rows`` keeps a slice of the batch with the draws of the whole batch
    (:func:`minidiff.diffusion.training_loss`).
    """
    sigma = np.exp(P_mean + P_std * rng.standard_normal(len(x0)))  # ln σ ∼ N(P_mean, P_std²)
    noise = rng.standard_normal(x0.shape, dtype=np.float32)  # ε ∼ N(0, I)
    x0, sigma, noise = x0[rows], sigma[rows], noise[rows]
    c_skip, c_out, c_in, c_noise = (batch_column(c, x0) for c in precondition(sigma, sigma_data))
    x = x0 + sigma.reshape(c_in.shape) * noise  # y + n
    target = ((x0 - c_skip * x) / c_out).astype(np.float32)  # F's effective target
    output = model(Tensor(to_device((c_in * x).astype(np.float32), device)), NOISE_LABEL_SCALE * c_noise.ravel())
    per_example = mean_flat(F.mse_loss(output, Tensor(to_device(target, device)), reduction="none"))
    weight = (loss_weight(sigma, sigma_data) * c_out.ravel() ** 2).astype(np.float32)  # λ(σ) c_out(σ)² = 1
    loss = (per_example * Tensor(to_device(weight, device))).mean()
    return LossDraw(loss, sigma, to_numpy(per_example.data))


def check_grid(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """Refuse noise levels Eq. 5 cannot space, naming the flag."""
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"--sigma-min must be a positive finite number, got {sigma_min}")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ValueError(f"--sigma-max {sigma_max} must exceed --sigma-min {sigma_min}")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"--rho must be a positive finite number, got {rho}")


def karras_sigmas(steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """σ_0 > … > σ_{N−1} and σ_N = 0 (Karras et al. 2022, Eq. 5), N = ``steps``:
    σ_i = (σ_max^{1/ρ} + i/(N − 1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ; ρ = 7 crowds the steps near σ_min."""
    check_grid(sigma_min, sigma_max, rho)
    ramp = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(sigmas, 0.0)


def sample(denoise, sigmas, x, *, solver="heun", start=0, S_churn=0.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0,
           rng=None, callback=None, return_trajectory=False):
    """Karras et al. 2022, Algorithm 2 (Algorithm 1 at S_churn = 0): from x at σ_start down the grid ``sigmas`` (ending at 0) to x₀.

    ``denoise(x, σ) -> D`` on arrays, σ of shape (N,); ``x`` is the state at ``sigmas[start]``
    (σ_0 ε for a fresh sample: line 2). Each step may first raise σ by γ σ, γ = min(S_churn/N, √2 − 1)
    inside [S_tmin, S_tmax], adding noise of scale S_noise (lines 4–6; S_churn = 0, the default, is
    the deterministic sampler), then takes the Euler step of dx/dσ = (x − D)/σ (lines 7–8) and,
    with ``solver="heun"``, Heun's correction on every step but the last (lines 9–11), where σ = 0
    and the step lands on D itself. Returns x₀, or (x₀, [TrajectoryStep, …]) whose t is σ.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown EDM solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    report, trajectory = _recorder(callback, return_trajectory)
    steps = len(sigmas) - 1
    for index, i in enumerate(range(start, steps)):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / steps, math.sqrt(2.0) - 1.0) if S_tmin <= sigma <= S_tmax else 0.0  # line 4
        sigma_hat = sigma + gamma * sigma  # line 5: t̂_i = t_i + γ_i t_i
        if gamma > 0:  # line 6: x̂_i = x_i + √(t̂_i² − t_i²) S_noise ε
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * S_noise * standard_normal(rng, x)
        denoised = denoise(x, _levels(sigma_hat, x))
        report(index, sigma_hat, x, denoised)
        d = (x - denoised) / sigma_hat  # line 7: d_i = (x̂_i − D(x̂_i; t̂_i))/t̂_i
        x_next = x + (sigma_next - sigma_hat) * d  # line 8: the Euler step
        if solver == "heun" and sigma_next > 0:  # lines 9–11: Heun's correction, except onto σ = 0
            d_next = (x_next - denoise(x_next, _levels(sigma_next, x))) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return (x, trajectory) if return_trajectory else x


def _levels(sigma, x):
    return get_array_module(x).full(len(x), sigma, dtype=np.float64)


# The VP bridge ----------------------------------------------------------------------------------


def nearest_timesteps(sigmas, schedule):
    """The index of a discrete VP schedule whose noise level √((1 − ᾱ)/ᾱ) is nearest (in log σ) to each σ > 0."""
    levels = np.log(vp_sigma(schedule.alphas_cumprod))
    distinct, inverse = np.unique(np.asarray(sigmas, dtype=np.float64), return_inverse=True)  # a batch shares σ
    return np.abs(levels[None, :] - np.log(distinct)[:, None]).argmin(axis=1)[inverse.ravel()]


def round_to_schedule(sigmas, schedule):
    """Each σ > 0 replaced by the nearest of a discrete VP schedule's noise levels, σ = 0 kept: a DDPM
    model knows only those (Karras et al. 2022, Table 1, "iDDPM", whose grid is rounded the same way)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    positive = sigmas > 0
    rounded = vp_sigma(schedule.alphas_cumprod)[nearest_timesteps(np.where(positive, sigmas, 1.0), schedule)]
    return np.where(positive, rounded, 0.0)


def vp_denoiser(model, schedule, prediction="eps"):
    """A DDPM model as EDM's D(x; σ), for σ among the schedule's levels (Karras et al. 2022, Table 1, "VP"; Eq. 4).

    The VP state of the EDM state x at σ = √((1 − ᾱ_t)/ᾱ_t) is √ᾱ_t x, and D is the model's x̂₀
    there (:func:`minidiff.diffusion.denoise`); σ off the schedule's levels is taken to the nearest.
    """
    def denoise(x, sigma):
        t = nearest_timesteps(to_numpy(sigma), schedule)
        x_t = batch_column(np.sqrt(schedule.alphas_cumprod[t]), x).astype(x.dtype) * x
        return denoise_vp(model, schedule, x_t, get_array_module(x).asarray(t), prediction)[0]

    return denoise
