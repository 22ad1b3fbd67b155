"""The continuous-time view: the VP-SDE whose discretisation is the DDPM chain, and samplers of
its reverse-time SDE (Euler–Maruyama), its probability-flow ODE (Heun, in EDM's coordinates) and a
predictor–corrector scheme with annealed Langevin dynamics — all on any ``model(x_t, t)``, with the signature of
:mod:`minidiff.sampling`'s samplers (``t_start`` included).

The forward SDE is dx = −½β(t) x dt + √β(t) dw (Song et al. 2021b, Eq. 11, the "VP SDE": Eq. 5
with f(x, t) = −½β(t) x and g(t) = √β(t)). Its Euler–Maruyama step with β(t) dt = β_i is
x_{i+1} = (1 − ½β_i) x_i + √β_i z, the DDPM chain x_{i+1} = √(1 − β_i) x_i + √β_i z
(Ho et al. 2020, Eq. 2; Song et al. 2021b, Eq. 10) to first order in β_i.

**Time.** No continuous β(t) is invented: a step between neighbouring indices i → i − 1 of a
(possibly respaced) schedule integrates β over exactly the amount the chain has,
∫β dt = log ᾱ_{i−1} − log ᾱ_i = −log(1 − β_i) (:func:`integrated_betas`), so ᾱ itself is the
clock (ᾱ(t) = exp(−∫₀ᵗ β) for the VP SDE) and respacing needs nothing new. Since
−log(1 − β) = β + β²/2 + …, it exceeds β_i by a factor 1 + β_i/2 + …: for the 1000-step linear
schedule, from 1.00005 (β = 10⁻⁴) to 1.0101 (β = 0.02). Zero-terminal-SNR schedules
(ᾱ_{T−1} = 0) need infinite time to reach and are refused.

**Score.** ∇ log p(x_t) = −ε̂/√(1 − ᾱ_t) (:func:`score_from_eps`), the score an ε-model learns by
denoising score matching; x̂₀ is clipped as the other samplers do (``clip_denoised``) and
the score recomputed from it.

Papers:

- Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021b, "Score-Based Generative Modeling
  through Stochastic Differential Equations" (Eqs. 5, 6, 10, 11, 13; Appendix G, Algorithms 1 and 5).
- Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (the chain, Eq. 2).
- Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis" (score from ε, Eq. 11).
- Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of Diffusion-Based
  Generative Models" (Heun's method, Algorithm 1).
"""

import numpy as np

from .backend import get_array_module
from .diffusion import denoise
from .objectives.conversions import constrained_denoiser, vp_sigma
from .objectives.edm import sample as edm_sample
from .objectives.edm import vp_denoiser
from .sampling import _first_index, _recorder, _start, _timestep_batch, respaced
from .schedule import extract, standard_normal


def integrated_betas(schedule):
    """∫β(t) dt over each index's step, −log(1 − β_i) = log ᾱ_{i−1} − log ᾱ_i: the clock of the VP SDE.

    dx = −½β(t) x dt + √β(t) dw (Song et al. 2021b, Eq. 11; Eq. 5 with f = −½β(t) x, g = √β(t))
    has ᾱ(t) = exp(−∫₀ᵗ β(s) ds), which then agrees with the schedule's ᾱ at every index.
    """
    if schedule.alphas_cumprod[-1] == 0:
        raise ValueError("the VP-SDE samplers need alphas_cumprod > 0: a zero-terminal-SNR schedule "
                         "(Lin et al. 2023) puts x_T at infinite SDE time")
    return -np.log1p(-schedule.betas)


def score_from_eps(schedule, x_t, t, eps):
    """∇ log p(x_t) = −ε̂/√(1 − ᾱ_t) (Dhariwal & Nichol 2021, Eq. 11)."""
    return -eps / extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)


def model_score(model, schedule, x_t, t, prediction="eps", clip_denoised=False, dynamic_threshold=None):
    """(x̂₀, score) at x_t from one model call: :func:`minidiff.diffusion.denoise`, then :func:`score_from_eps`."""
    x0_hat, eps_hat = denoise(model, schedule, x_t, t, prediction, clip_denoised, dynamic_threshold)
    return x0_hat, score_from_eps(schedule, x_t, t, eps_hat)


def reverse_sde_update(x, score, integrated_beta, z):
    """One Euler–Maruyama step of the reverse-time VP SDE over ∫β dt = ``integrated_beta`` (Song et al. 2021b, Eq. 6).

    dx = [f − g² ∇ log p] dt + g dw̄ with f = −½β x, g² = β and dt < 0 gives
    x ← x + (½ x + ∇ log p) ∫β + √(∫β) z.
    """
    xp = get_array_module(x)
    return x + integrated_beta * (0.5 * x + score) + xp.sqrt(integrated_beta) * z


def probability_flow_velocity(x, score):
    """dx/d(∫β) = −½ (x + ∇ log p(x)): the probability-flow ODE of the VP SDE (Song et al. 2021b, Eq. 13).

    dx = [f − ½ g² ∇ log p] dt with f = −½β x, g² = β, written per unit of integrated β.
    """
    return -0.5 * (x + score)


def langevin_correct(x, score, z, alpha, snr):
    """One Langevin MCMC step x + ε s + √(2ε) z towards p_t (Song et al. 2021b, Appendix G, Algorithm 5).

    The step size ε = 2 α_i (r ‖z‖/‖s‖)² targets the "signal-to-noise ratio" r = ``snr``
    between the noise and the score step. Algorithm 5 takes the norms per sample; here, as in the
    authors' code (``LangevinCorrector.update_fn`` in score_sde's ``sampling.py``), each norm is
    the mean over the batch of the per-sample norms, so one step size serves the whole batch.
    """
    xp = get_array_module(x)

    def mean_norm(a):
        return xp.sqrt((a.reshape(len(a), -1) ** 2).sum(axis=1)).mean()

    step = 2.0 * alpha * (snr * mean_norm(z) / mean_norm(score)) ** 2
    return x + step * score + xp.sqrt(2.0 * step) * z


def _begin(schedule, steps, spacing, rng, shape, x_T, callback, return_trajectory):
    """What every sampler here starts from: the respaced schedule, its ∫β per step, the step
    reporter and trajectory, the generator and x_T."""
    schedule = respaced(schedule, steps, spacing)
    report, trajectory = _recorder(callback, return_trajectory)
    rng, x = _start(rng, shape, x_T)
    return schedule, integrated_betas(schedule), report, trajectory, rng, x


def reverse_sde_sample(model, schedule, shape, steps=None, spacing="uniform", *, rng=None, prediction="eps",
                       clip_denoised=True, dynamic_threshold=None, x_T=None, t_start=None, callback=None,
                       return_trajectory=False):
    """Euler–Maruyama on the reverse-time VP SDE (Song et al. 2021b, Eq. 6), x_T ∼ N(0, I) → x₀.

    The predictor alone (Song et al. 2021b, Table 1, "P1000"): :func:`predictor_corrector_sample`
    with no corrector steps, one model call per step. The last step (to ᾱ = 1) adds no noise, as
    the final denoising step of Song et al. 2021b (Appendix G) and Ho et al. 2020's Algorithm 2 do.
    On the full chain this is the "reverse diffusion" sampler: Algorithm 2 to first order in β.
    Euler–Maruyama is only accurate while every step's ∫β is small: the cosine schedule's last β,
    clipped at 0.999, is a single step of ∫β ≈ 6.9.
    Returns x₀, or (x₀, [TrajectoryStep, …]) with ``return_trajectory=True``.
    """
    return predictor_corrector_sample(
        model, schedule, shape, steps, spacing, rng=rng, prediction=prediction, clip_denoised=clip_denoised,
        dynamic_threshold=dynamic_threshold, x_T=x_T, t_start=t_start, callback=callback,
        return_trajectory=return_trajectory, corrector_steps=0)


def probability_flow_sample(model, schedule, shape, steps=50, spacing="uniform", *, rng=None, prediction="eps",
                            clip_denoised=True, dynamic_threshold=None, x_T=None, t_start=None, callback=None,
                            return_trajectory=False):
    """Heun's method on the probability-flow ODE (Song et al. 2021b, Eq. 13), in the coordinates of Karras et al. 2022 (Algorithm 1).

    Song et al. 2021b, Eq. 13 for x̃ = x/√ᾱ against σ = √((1 − ᾱ)/ᾱ) reads dx̃/dσ = (x̃ − D(x̃; σ))/σ = ε̂ (Karras et al.
    2022, Eq. 4 with s = √ᾱ; :func:`minidiff.objectives.edm.vp_denoiser` gives D = x̂₀), a nearly
    straight flow whose Euler step is DDIM's update (Song, Meng & Ermon 2021, Eq. 14). Each step
    takes it and Heun's correction, two model calls, except the last: onto σ = 0 the Euler step
    lands on x̂₀ itself, the final denoising step of Song et al. 2021b (Appendix G). Heun in the
    integrated-β time of Song et al. 2021b, Eq. 13 as written instead stiffens as σ → 0 and left 19.8 % of the
    pixels of the README's MNIST checkpoint outside [−1, 1] at 50 steps (docs/math.md, "One ODE").
    Deterministic: ``rng`` only draws x_T. Returns x₀, or (x₀, [TrajectoryStep, …]) with
    ``return_trajectory=True``, whose x_t are VP states.
    """
    if schedule.alphas_cumprod[-1] == 0:
        raise ValueError("the probability-flow sampler needs alphas_cumprod > 0: a zero-terminal-SNR schedule "
                         "(Lin et al. 2023) puts x_T at sigma = infinity")
    schedule = respaced(schedule, steps, spacing)
    report, trajectory = _recorder(callback, return_trajectory)
    _, x = _start(rng, shape, x_T)
    start = schedule.T - 1 - _first_index(schedule, t_start)  # the loop's step index of t_start
    sigmas = np.append(vp_sigma(schedule.alphas_cumprod)[::-1], 0.0)  # σ of indices T − 1, …, 0, then 0
    scales = np.append(np.sqrt(schedule.alphas_cumprod)[::-1], 1.0)  # √ᾱ alongside: x = √ᾱ x̃

    def reporting(index, sigma, x_edm, x0_hat):  # as the other samplers report: the VP state, the model's t
        step = start + index
        report(index, int(schedule.timesteps[schedule.T - 1 - step]), scales[step] * x_edm, x0_hat)

    denoise = constrained_denoiser(vp_denoiser(model, schedule, prediction), clip_denoised, dynamic_threshold)
    x = edm_sample(denoise, sigmas, x / scales[start], start=start, callback=reporting)
    return (x, trajectory) if return_trajectory else x


def predictor_corrector_sample(model, schedule, shape, steps=None, spacing="uniform", *, rng=None, prediction="eps",
                               clip_denoised=True, dynamic_threshold=None, x_T=None, t_start=None, callback=None,
                               return_trajectory=False, snr=0.16, corrector_steps=1):
    """Predictor–corrector sampling of the VP SDE (Song et al. 2021b, Appendix G, Algorithms 1 and 5).

    At each index, ``corrector_steps`` Langevin steps (:func:`langevin_correct`, signal-to-noise
    ratio ``snr``) pull x_t towards p_t, then a reverse-SDE Euler–Maruyama step
    (:func:`reverse_sde_update`) predicts the next index — the order of the authors' code,
    which keeps every corrector step at an index where the score exists. ``corrector_steps + 1``
    model calls per step. Returns x₀, or (x₀, [TrajectoryStep, …]) with ``return_trajectory=True``.
    """
    schedule, integrated, report, trajectory, rng, x = _begin(schedule, steps, spacing, rng, shape, x_T, callback,
                                                              return_trajectory)
    for index, t in enumerate(range(_first_index(schedule, t_start), -1, -1)):
        t_batch = _timestep_batch(t, x)
        for _ in range(corrector_steps):  # corrector: Langevin MCMC at this noise level, Algorithm 5
            _, score = model_score(model, schedule, x, t_batch, prediction, clip_denoised, dynamic_threshold)
            x = langevin_correct(x, score, standard_normal(rng, x), schedule.alphas[t], snr)
        x0_hat, score = model_score(model, schedule, x, t_batch, prediction, clip_denoised, dynamic_threshold)
        report(index, int(schedule.timesteps[t]), x, x0_hat)
        z = standard_normal(rng, x) if t > 0 else 0.0
        x = reverse_sde_update(x, score, integrated[t], z)  # predictor: reverse diffusion, Eq. 6
    return (x, trajectory) if return_trajectory else x
