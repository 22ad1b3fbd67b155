"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student learns to take in one
deterministic DDIM step what its teacher takes in two, so each round halves the sampler's steps.

The grids. A student of N steps samples on the N "trailing" timesteps of the chain
(:func:`minidiff.schedule.space_timesteps`, Lin et al. 2023, Table 2): counting down from T − 1 by
T/N. Its teacher samples on the 2N trailing timesteps, which hold the student's as every other
point, so index i of the student's grid is index 2i + 1 of the teacher's (:func:`teacher_grid`),
and the teacher's two steps from there end on the student's next timestep (or on x₀).

The target. With z_t = α_t x + σ_t ε and the teacher's two DDIM steps t → t′ → t″ landing on z″,
the student's x̂ that one DDIM step t → t″ maps onto z″ is, solving
z″ = α_t″ x̃ + (σ_t″/σ_t)(z_t − α_t x̃) (Song et al. 2021, Eq. 12 with η = 0) for x̃,

    x̃ = (z″ − (σ_t″/σ_t) z_t) / (α_t″ − (σ_t″/σ_t) α_t)          (:func:`distillation_target`)

and the loss weights ‖x̃ − x̂_θ(z_t)‖² by the truncated SNR max(α_t²/σ_t², 1) (Salimans & Ho 2022, §4). Here α_t = √ᾱ_t
and σ_t = √(1 − ᾱ_t) on the discrete chain.

Why not ε. A student predicting ε̂ gives x̂ = (z_t − σ_t ε̂)/α_t, which at the few, noisy steps
distillation ends with (α_t → 0) amplifies any error in ε̂ without bound; Salimans & Ho 2022, §4,
therefore distil x- or v-predicting models only, and so does minidiff (:func:`check_prediction`).

Papers:

- Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models"
  (Algorithm 2; §4: parameterisation and truncated-SNR weighting).
- Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (Eq. 12).
- Lin, Liu, Li & Yang 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
  (trailing timesteps, Table 2).
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from .autograd import Tensor
from .backend import to_device, to_numpy
from .diffusion import LossDraw, call_model, denoise, mean_flat, model_output_parts, predict_x0, q_sample
from .sampling import ddim_update, respaced
from .schedule import extract

SPACING = "trailing"  # the students' and teachers' timesteps: nested when N halves
PREDICTIONS = ("x0", "v")


def check_prediction(prediction: str) -> None:
    """Refuse an ε-predicting teacher (and so student: it starts as a copy) in one line: ε breaks down at few
    steps (Salimans & Ho 2022, §4)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"progressive distillation needs a teacher trained with --prediction v or x0, not "
                         f"{prediction}: an eps student breaks down at few steps (Salimans & Ho 2022, §4)")


def teacher_grid(schedule, student_steps: int):
    """The schedule respaced to the teacher's 2N trailing timesteps; the student's index i is its 2i + 1."""
    return respaced(schedule, 2 * student_steps, SPACING)


def student_grid(schedule, student_steps: int):
    """The schedule respaced to the student's N trailing timesteps: what it samples on."""
    return respaced(schedule, student_steps, SPACING)


def ddim_step(model, grid, z, index, prediction):
    """z at grid index ``index`` moved one deterministic DDIM step down, to index − 1 or to x₀
    (Song et al. 2021, Eq. 12, η = 0): α_s x̂ + (σ_s/σ_t)(z − α_t x̂) = α_s x̂ + σ_s ε̂."""
    x0_hat, eps_hat = denoise(model, grid, z, index, prediction)
    return ddim_update(x0_hat, eps_hat, extract(grid.alphas_cumprod_prev, index, z))


def distillation_target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s):
    """x̃ = (z″ − (σ_s/σ_t) z_t)/(α_s − (σ_s/σ_t) α_t): the x̂ whose one DDIM step z_t → s lands on z″
    (Salimans & Ho 2022, Algorithm 2, "teacher x̂ target"); at s = 0 (σ_s = 0, α_s = 1) it is z″ itself."""
    ratio = sigma_s / sigma_t
    return (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)


def truncated_snr_weight(alpha_t, sigma_t):
    """max(α_t²/σ_t², 1): the truncated-SNR weight on ‖x̃ − x̂‖² (Salimans & Ho 2022, §4)."""
    return np.maximum(alpha_t**2 / sigma_t**2, 1.0)


def distillation_loss(student, teacher, schedule, x0, rng, *, student_steps, prediction, device="cpu",
                      rows=slice(None)):
    """One draw of the student's loss (Salimans & Ho 2022, Algorithm 2) on a batch x₀, as a :class:`LossDraw`.

    ``student(z, t)`` returns a Tensor (x̂ or v̂); ``teacher(z, t)`` an array, under no_grad. ``rows``
    keeps a slice of the batch with the draws of the whole batch (:func:`minidiff.diffusion.training_loss`).
    """
    grid = teacher_grid(schedule, student_steps)
    i = rng.integers(student_steps, size=len(x0))  # (1) t = i/N, i ∼ Cat[1, …, N]
    noise = rng.standard_normal(x0.shape, dtype=np.float32)  # (2) ε ∼ N(0, I)
    t = 2 * i[rows] + 1  # the student's timestep as an index of the teacher's grid
    x0, noise = to_device(x0[rows], device), to_device(noise[rows], device)
    z_t = q_sample(grid, x0, t, noise)  # (3) z_t = α_t x + σ_t ε
    z_mid = ddim_step(teacher, grid, z_t, t, prediction)  # (4) two DDIM steps of the teacher: t → t′ = t − 0.5/N
    z_s = ddim_step(teacher, grid, z_mid, t - 1, prediction)  #     and t′ → t″ = t − 1/N
    alpha_t, sigma_t = extract(grid.sqrt_alphas_cumprod, t, z_t), extract(grid.sqrt_one_minus_alphas_cumprod, t, z_t)
    alpha_s_squared = extract(grid.alphas_cumprod_prev, t - 1, z_t)
    # (5) the teacher's x̂ target x̃
    target = distillation_target(z_t, z_s, alpha_t, sigma_t, alpha_s_squared**0.5, (1.0 - alpha_s_squared) ** 0.5)
    output = model_output_parts(call_model(student, grid, Tensor(z_t), t), z_t)[0]  # a learned Σ set aside
    x0_hat = predict_x0(grid, z_t, t, output, prediction)  # x̂_θ(z_t)
    per_example = mean_flat(F.mse_loss(x0_hat, Tensor(target.astype(np.float32)), reduction="none"))
    weight = truncated_snr_weight(grid.sqrt_alphas_cumprod[t], grid.sqrt_one_minus_alphas_cumprod[t])  # (6) w(λ_t) = max(SNR_t, 1)
    loss = (per_example * Tensor(to_device(weight.astype(np.float32), device))).mean()  # (7) L_θ = w(λ_t) ‖x̃ − x̂_θ(z_t)‖²
    return LossDraw(loss, t, to_numpy(per_example.data))
