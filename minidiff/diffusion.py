"""The diffusion math: the forward process q, conversions between ε / x₀ / v, the training
loss (Algorithm 1, :func:`training_loss`), timestep samplers, and the terms of the variational bound.

Everything but :func:`training_loss` works on plain NumPy (or CuPy, following the input
arrays); the loss is built from Tensors so that it can be differentiated, and the variational
bound's functions accept Tensors too, so that L_hybrid's L_vlb term reuses them.

The module is longer than minidiff's usual 300 lines on purpose: Algorithm 1 and the bound it
simplifies (Ho et al. 2020, Eqs. 5–14; L_hybrid of Nichol & Dhariwal 2021) read against each
other, and the learned variance is a term of both. Evaluating the whole bound on held-out
images (bits/dim) is :mod:`minidiff.likelihood`.

Papers:

- Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (Eqs. 4–14, Algorithm 1).
- Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"
  (learned variances, Eq. 15; L_hybrid, Eq. 16; importance-sampled L_vlb, Eq. 18; bits/dim).
- Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (x₀ from ε, Eq. 9).
- Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021b, "Score-Based Generative
  Modeling through Stochastic Differential Equations" (the forward chain, Eq. 10, and its SDE limit, Eq. 11).
- Kingma, Salimans, Poole & Ho 2021, "Variational Diffusion Models" (the bound in terms of SNR).
- Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models"
  (v-parameterisation).
- Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
  Understanding" (Imagen: dynamic thresholding).
- Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy".
"""

import math
from collections import namedtuple

import numpy as np

from . import checks
from . import functional as F
from .autograd import Tensor
from .backend import get_array_module, to_device, to_numpy
from .schedule import extract, gather

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned")
# Min-SNR-γ's γ (Hang et al. 2023 use 5): far below 0.01 the weights (down to γ/SNR) and the gradients
# underflow to nothing, and 1e-300 trains on a loss of exactly 0; from 1e4, above the SNR of the
# usual schedules' first steps, it clips almost nothing.
MIN_SNR_GAMMA_RANGE = (0.01, 1e4)
HYBRID_LAMBDA = 0.001  # λ of L_hybrid = L_simple + λ L_vlb (Nichol & Dhariwal 2021, §3.1)

# Data in [−1, 1] quantised to 256 levels: bins are 2/255 wide (Ho et al. 2020, Eq. 13).
BIN_WIDTH = 2.0 / 255.0


def check_choice(kind, value, choices):
    """Refuse an unknown parameterisation / variance name, naming it."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(map(repr, choices))}")


def mean_flat(x):
    """Mean over every axis but the batch axis."""
    return x.reshape(len(x), -1).mean(axis=1)


def _math(*values):
    """The namespace whose ``exp``, ``expm1``, ``log``, ``tanh``, ``maximum`` and ``where`` fit ``values``:
    :mod:`minidiff.functional` when one is a Tensor (so the result is differentiable), else NumPy or CuPy."""
    if any(isinstance(value, Tensor) for value in values):
        return F
    return get_array_module(*values)


# The forward process ----------------------------------------------------------------


def q_step(schedule, x_prev, t, noise):
    """x_t = √(1 − β_t) x_{t−1} + √β_t ε, one step of the forward process q(x_t | x_{t−1}) (Ho et al. 2020, Eq. 2).

    ``x_prev`` is x_{t−1} (x₀ at t = 0). It is the discrete chain of Song et al. 2021b, Eq. 10, whose
    small-β limit is their VP SDE, Eq. 11.
    """
    x_prev = checks.float_array(x_prev, "x_prev")
    noise = checks.same_shape(checks.float_array(noise, "noise"), "noise", x_prev, "x_prev")
    return extract(np.sqrt(schedule.alphas), t, x_prev) * x_prev + extract(np.sqrt(schedule.betas), t, x_prev) * noise


def q_mean_variance(schedule, x0, t):
    """Mean, variance and log-variance of q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I) (Ho et al. 2020, Eq. 4)."""
    x0 = checks.float_array(x0, "x0")
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
    variance = extract(1.0 - schedule.alphas_cumprod, t, x0)
    log_variance = extract(schedule.log_one_minus_alphas_cumprod, t, x0)
    return mean, variance, log_variance


def q_sample(schedule, x0, t, noise):
    """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, a sample of q(x_t | x₀) (Ho et al. 2020, Eq. 4)."""
    x0, noise = checks.float_array(x0, "x0"), checks.same_shape(checks.float_array(noise, "noise"), "noise", x0, "x0")
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_posterior_mean_variance(schedule, x0, x_t, t):
    """Mean μ̃_t(x_t, x₀), variance β̃_t and clipped log β̃_t of q(x_{t−1} | x_t, x₀) (Ho et al. 2020, Eqs. 6–7)."""
    x0, x_t = checks.float_array(x0, "x0"), checks.float_array(x_t, "x_t")
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    variance = extract(schedule.posterior_variance, t, x_t)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance


# Parameterisations: ε, x₀ and v -------------------------------------------------------


def predict_x0_from_eps(schedule, x_t, t, eps):
    """x̂₀ = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t (Ho et al. 2020, Eq. 4 solved for x₀, as in Eq. 9; Song et al. 2021, Eq. 9).

    Undefined (inf·0) where ᾱ_t = 0, i.e. at the end of a zero-terminal-SNR schedule.
    """
    return extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, x_t
    ) * eps


def predict_eps_from_x0(schedule, x_t, t, x0):
    """ε̂ = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t) (Ho et al. 2020, Eq. 4 solved for ε).

    Written with √(1 − ᾱ_t) in the denominator, which is never 0, so it also holds at zero terminal SNR.
    """
    return (x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t) * x0) / extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t
    )


def predict_v(schedule, x0, t, eps):
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x₀ (Salimans & Ho 2022, §4, with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t))."""
    return extract(schedule.sqrt_alphas_cumprod, t, x0) * eps - extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x0
    ) * x0


def predict_x0_from_v(schedule, x_t, t, v):
    """x̂₀ = √ᾱ_t x_t − √(1 − ᾱ_t) v̂ (Salimans & Ho 2022, §4 and Appendix D)."""
    return extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t - extract(
        schedule.sqrt_one_minus_alphas_cumprod, t, x_t
    ) * v


def predict_eps_from_v(schedule, x_t, t, v):
    """ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂ (Salimans & Ho 2022, §4 and Appendix D)."""
    return extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + extract(
        schedule.sqrt_alphas_cumprod, t, x_t
    ) * v


def predict_x0(schedule, x_t, t, model_output, prediction="eps"):
    """x̂₀ from a model output in any parameterisation: ε (Ho et al. 2020, Eq. 4 / Song et al.
    2021, Eq. 9), x₀ itself, or v (Salimans & Ho 2022, §4)."""
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "eps":
        if schedule.alphas_cumprod[-1] == 0:
            raise ValueError(
                "prediction='eps' cannot recover x0 where alphas_cumprod = 0 (zero terminal SNR, "
                "Lin et al. 2023, §3.2); use prediction='v' or 'x0'"
            )
        return predict_x0_from_eps(schedule, x_t, t, model_output)
    if prediction == "v":
        return predict_x0_from_v(schedule, x_t, t, model_output)
    return model_output


def dynamic_thresholding(x0_hat, percentile=0.995):
    """Clip x̂₀ to [−s, s] and divide by s, s = max(1, the ``percentile`` quantile of |x̂₀|) per example.

    Saharia et al. 2022, §2.3 ("dynamic thresholding"); s = 1 reduces it to static clipping.
    """
    if not 0 < checks.real(percentile, "dynamic threshold percentile") <= 1:
        raise checks.ArgumentError(f"dynamic threshold percentile must lie in (0, 1], got {percentile}")
    xp = get_array_module(x0_hat)
    s = xp.quantile(xp.abs(x0_hat).reshape(len(x0_hat), -1), percentile, axis=1)
    s = xp.maximum(s, 1.0).astype(x0_hat.dtype).reshape((-1,) + (1,) * (x0_hat.ndim - 1))
    return xp.clip(x0_hat, -s, s) / s


def call_model(model, schedule, x_t, t, learned_variance=None):
    """``model(x_t, t)`` with t mapped to the model's own timesteps, its output's shape checked.

    A respaced schedule indexes a subset of the training chain; the model must see the
    original t it was trained with (Nichol & Dhariwal 2021, §4). The output must have x_t's
    shape, or twice its channels (ε̂ and v stacked, :func:`model_output_parts`) when the model
    learns its variances: ``learned_variance``, by default the model's own ``learned_variance``
    attribute (a U-Net built with ``learn_sigma`` and :func:`minidiff.unet.as_denoiser` have one).
    A broadcastable wrong shape would otherwise pass silently.
    """
    if not callable(model):
        raise checks.ArgumentError(f"model must be a callable model(x_t, t), got {type(model).__name__}")
    xp = get_array_module(x_t)
    output = model(x_t, xp.asarray(gather(schedule.timesteps, t)))
    if learned_variance is None:
        learned_variance = bool(getattr(model, "learned_variance", False))
    return checks.model_output(output, x_t, learned_variance)


def model_output_parts(output, x_t):
    """(the ε̂ / x̂₀ / v̂ prediction, v or None): a network with learned variances returns both stacked on
    the channel axis, twice x_t's channels (Nichol & Dhariwal 2021, §3.1); any other output is all prediction."""
    channels = x_t.shape[1] if x_t.ndim > 1 else None
    if channels is None or output.ndim != x_t.ndim or output.shape[1] != 2 * channels:
        return output, None
    return output[:, :channels], output[:, channels:]


def denoise(model, schedule, x_t, t, prediction="eps", clip_denoised=False, dynamic_threshold=None):
    """(x̂₀, ε̂) from one model call, x̂₀ clipped and ε̂ recomputed from the clipped x̂₀: :func:`denoise_output`
    of ``model(x_t, t)``."""
    return denoise_output(schedule, x_t, t, call_model(model, schedule, x_t, t), prediction, clip_denoised,
                          dynamic_threshold)


def denoise_output(schedule, x_t, t, output, prediction="eps", clip_denoised=False, dynamic_threshold=None):
    """(x̂₀, ε̂) from a model output (its learned variance, if any, set aside), x̂₀ clipped and ε̂ recomputed.

    Clipping x̂₀ to the data range [−1, 1] (Ho et al. 2020, §3.3 and their released code), or
    dynamic thresholding at percentile ``dynamic_threshold`` (Saharia et al. 2022, §2.3); ε̂
    then follows from Ho et al. 2020, Eq. 4 so that both stay consistent with x_t.
    """
    if isinstance(output, Tensor):  # e.g. a U-Net handed to a sampler as it is
        raise checks.ArgumentError("the model returned a minidiff Tensor; samplers take a model on arrays: wrap a "
                                   "U-Net with minidiff.unet.as_denoiser(model)")
    checks.finite_model_output(output, gather(schedule.timesteps, t))  # NaN in, NaN samples out: stop here
    x0_hat = predict_x0(schedule, x_t, t, model_output_parts(output, x_t)[0], prediction)
    if dynamic_threshold is not None:
        x0_hat = dynamic_thresholding(x0_hat, dynamic_threshold)
    elif clip_denoised:
        x0_hat = get_array_module(x0_hat).clip(x0_hat, -1.0, 1.0)
    return x0_hat, predict_eps_from_x0(schedule, x_t, t, x0_hat)


# Training ------------------------------------------------------------------------------


def training_target(schedule, x0, t, noise, prediction="eps"):
    """What the model should output at (x_t, t): ε (Ho et al. 2020, Eq. 14), x₀, or
    v = √ᾱ_t ε − √(1 − ᾱ_t) x₀ (Salimans & Ho 2022, §4)."""
    check_choice("prediction", prediction, PREDICTIONS)
    x0, noise = checks.float_array(x0, "x0"), checks.same_shape(checks.float_array(noise, "noise"), "noise", x0, "x0")
    if prediction == "eps":
        return noise
    if prediction == "v":
        return predict_v(schedule, x0, t, noise)
    return x0


def snr_loss_weight(schedule, t, prediction="eps", min_snr_gamma=None):
    """Per-example loss weight of Min-SNR-γ (Hang et al. 2023, §3.4), float64, in t's array module.

    The weight on the x₀ error is min(SNR_t, γ). Since ‖ε − ε̂‖² = SNR_t ‖x₀ − x̂₀‖² and
    ‖v − v̂‖² = (SNR_t + 1) ‖x₀ − x̂₀‖², the same weighting on the ε loss is min(SNR_t, γ)/SNR_t
    and on the v loss min(SNR_t, γ)/(SNR_t + 1). ``min_snr_gamma=None`` gives 1 (Ho et al. 2020, Eq. 14).
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if min_snr_gamma is None:
        return gather(np.ones(schedule.T), t)
    checks.real(min_snr_gamma, "min_snr_gamma", *MIN_SNR_GAMMA_RANGE)
    snr = schedule.snr
    if prediction == "eps":
        # min(SNR, γ)/SNR written as min(1, γ/SNR) stays finite (= 1) at zero terminal SNR.
        with np.errstate(divide="ignore"):
            weights = np.minimum(1.0, min_snr_gamma / snr)
    elif prediction == "v":
        weights = np.minimum(snr, min_snr_gamma) / (snr + 1.0)
    else:
        weights = np.minimum(snr, min_snr_gamma)
    return gather(weights, t)


def training_loss(model, schedule, x0, rng, *, prediction="eps", min_snr_gamma=None, timestep_sampler=None,
                  device="cpu", rows=slice(None)):
    """One draw of the training loss on a batch x₀ (Ho et al. 2020, Algorithm 1), as a Tensor.

    ``model(x_t, t)`` returns a Tensor (close over class labels in it); ``x0`` is a NumPy batch
    (N, …) already drawn from the data (line 2) and ``rng`` a NumPy Generator for t and ε. The
    forward process runs on the host and x_t, the target and the weights move to ``device``.

    The loss is the batch mean of w_t · ‖target − model(x_t, t)‖² / dim, where the target is ε
    (Eq. 14, L_simple), x₀ or v (Salimans & Ho 2022, §4) and w_t multiplies the Min-SNR-γ weight
    (Hang et al. 2023, §3.4) by the timestep sampler's importance weight 1/(T p_t) (Nichol &
    Dhariwal 2021, Eq. 18), so any sampler gives an unbiased estimate of the uniform loss. A
    model that also outputs the variance interpolation v (:func:`model_output_parts`) is trained
    on L_hybrid = L_simple + λ L_vlb (Nichol & Dhariwal 2021, Eq. 16; :func:`hybrid_vlb_term`).
    Returns a :class:`LossDraw`: the scalar loss, t and the unweighted per-example losses, i.e. the
    ε- (x₀-, v-) MSE of L_simple, not Eq. 18's L_t: fed to :meth:`LossSecondMomentResampler.update`
    they give p_t ∝ √E[MSE_t²], a proxy for Eq. 18's p_t ∝ √E[L_t²] (improved-diffusion feeds its
    resampler the whole per-example loss, L_hybrid's L_vlb term included).

    ``rows`` keeps a slice of the batch: t and ε are drawn for all of x₀ and the loss is the
    mean over those rows only, so a data-parallel rank (:mod:`minidiff.distributed`) computes
    exactly the single process's terms for its rows, and ``rng`` advances alike on every rank.
    """
    x0 = checks.float_array(x0, "x0")
    if checks.generator(rng) is None:
        raise checks.ArgumentError("rng must be a numpy.random.Generator (it draws t and the noise), got None")
    timestep_sampler = UniformSampler(schedule.T) if timestep_sampler is None else timestep_sampler
    t, importance = timestep_sampler.sample(len(x0), rng)  # line 3: t ∼ Uniform({1, …, T}) in paper steps, code index t − 1 ∈ {0, …, T−1}; or p_t
    noise = rng.standard_normal(x0.shape, dtype=np.float32)  # line 4: ε ∼ N(0, I)
    x0, t, importance, noise = x0[rows], t[rows], importance[rows], noise[rows]
    x_t = q_sample(schedule, x0, t, noise)  # √ᾱ_t x₀ + √(1 − ᾱ_t) ε (Eq. 4)
    target = training_target(schedule, x0, t, noise, prediction)
    x_t = to_device(x_t, device)
    output, v = model_output_parts(call_model(model, schedule, Tensor(x_t), t), x_t)  # ε_θ(x_t, t) [and v]
    per_example = mean_flat(F.mse_loss(output, Tensor(to_device(target, device)), reduction="none"))
    weight = (importance * snr_loss_weight(schedule, t, prediction, min_snr_gamma)).astype(np.float32)
    objective = per_example * Tensor(to_device(weight, device))
    if v is not None:  # learned Σ_θ: L_hybrid = L_simple + λ L_vlb (Nichol & Dhariwal 2021, Eq. 16)
        vlb = hybrid_vlb_term(schedule, to_device(x0, device), x_t, t, output, v, prediction)
        objective = objective + vlb * Tensor(to_device(importance.astype(np.float32), device))
    loss = objective.mean()  # line 5: the gradient step's objective
    return LossDraw(loss, t, to_numpy(per_example.data))


def hybrid_vlb_term(schedule, x0, x_t, t, output, v, prediction="eps"):
    """λ T L_t per example, in bits/dim: the L_vlb part of L_hybrid = L_simple + λ L_vlb (Nichol & Dhariwal 2021, Eq. 16).

    With t drawn uniformly, T L_t estimates L_vlb = Σ_t L_t (Ho et al. 2020, Eq. 5); λ = 0.001
    keeps it from swamping L_simple (improved-diffusion's T/1000 factor is this λ T). μ_θ comes
    from the detached ``output`` -- the paper's stop-gradient -- so L_vlb trains only the
    variance interpolation ``v`` (a Tensor; Nichol & Dhariwal 2021, Eq. 15) and L_simple alone trains the mean.
    """
    x0_hat = predict_x0(schedule, x_t, t, output.data, prediction)  # stop-gradient: a constant to L_vlb
    return HYBRID_LAMBDA * schedule.T * vb_terms_bpd(schedule, x0, x_t, t, x0_hat, "learned", v)


LossDraw = namedtuple("LossDraw", "loss t per_example")
LossDraw.__doc__ = "What :func:`training_loss` drew: the scalar loss Tensor, t (N,) and the unweighted losses (N,)."


class ScheduleSampler:
    """Draws t with probability p_t and weights 1/(T p_t), so that E[w_t L_t] = (1/T) Σ_t L_t.

    The importance-sampling identity behind L_vlb = E_{t∼p_t}[L_t / p_t] (Nichol & Dhariwal 2021, Eq. 18).
    """

    def __init__(self, T):
        self.T = T

    def probabilities(self):
        raise NotImplementedError

    def sample(self, batch_size, rng):
        """(t, weights): ``batch_size`` int64 timesteps and their float64 weights 1/(T p_t)."""
        p = self.probabilities()
        t = rng.choice(self.T, size=batch_size, p=p).astype(np.int64)
        return t, 1.0 / (self.T * p[t])


class UniformSampler(ScheduleSampler):
    """t ∼ Uniform{0, …, T−1}, all weights 1 (Ho et al. 2020, Algorithm 1)."""

    def probabilities(self):
        return np.full(self.T, 1.0 / self.T)


class LossSecondMomentResampler(ScheduleSampler):
    """p_t ∝ √E[L_t²] over the last ``history_per_term`` losses at each t (Nichol & Dhariwal 2021, Eq. 18).

    Uniform until every t has a full history; mixed with ``uniform_prob`` of the uniform
    distribution so that no t is starved (and no weight explodes). It learns from whatever losses
    :meth:`update` is given: Eq. 18's L_t (e.g. :func:`vb_terms_bpd`), or, as
    :func:`training_loss`'s ``per_example`` holds, L_simple's MSE at each t, which makes p_t
    follow the MSE's second moment instead.
    """

    def __init__(self, T, history_per_term=10, uniform_prob=0.001):
        super().__init__(T)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros((T, history_per_term))
        self._loss_counts = np.zeros(T, dtype=np.int64)

    def update(self, t, losses):
        """Record the per-example losses observed at timesteps t."""
        for step, loss in zip(to_numpy(t).tolist(), to_numpy(losses).tolist()):
            if self._loss_counts[step] == self.history_per_term:
                self._loss_history[step, :-1] = self._loss_history[step, 1:]
                self._loss_history[step, -1] = loss
            else:
                self._loss_history[step, self._loss_counts[step]] = loss
                self._loss_counts[step] += 1

    def probabilities(self):
        if not np.all(self._loss_counts == self.history_per_term):
            return np.full(self.T, 1.0 / self.T)
        p = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        p /= p.sum()
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / self.T


# The variational bound -----------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats.

    The closed form that makes each L_{t−1} of Ho et al. 2020, Eq. 5 computable; with equal
    variances σ² it is ‖mean1 − mean2‖²/(2σ²), Eq. 8.
    """
    ops = _math(mean1, logvar1, mean2, logvar2)
    log_ratio = logvar1 - logvar2
    # e^r − 1 − r via expm1 is exactly 0 at r = 0 and never rounds below 0.
    return 0.5 * (ops.expm1(log_ratio) - log_ratio + (mean1 - mean2) ** 2 * ops.exp(-logvar2))


def approx_standard_normal_cdf(x):
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), |error| < 2·10⁻⁴.

    NumPy has no vectorised erf; this tanh approximation (Page 1977) is the one
    improved-diffusion uses for the decoder of Ho et al. 2020, Eq. 13.
    """
    return 0.5 * (1.0 + _math(x).tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) of data in [−1, 1] on 256 levels under N(means, e^{2 log_scales}) integrated over each bin.

    Ho et al. 2020, Eq. 13: bins of width 2/255 around x, with the outermost bins extended
    to ±∞ so the 256 probabilities sum to 1. Probabilities are floored at 10⁻¹² before the log.
    """
    xp = _math(x, means, log_scales)
    centered = x - means
    inv_stdv = xp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + BIN_WIDTH / 2))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - BIN_WIDTH / 2))
    log_cdf_plus = xp.log(xp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = xp.log(xp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = xp.log(xp.maximum(cdf_plus - cdf_min, 1e-12))
    return xp.where(x < -0.999, log_cdf_plus, xp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def model_log_variances(schedule, variance="fixed_small"):
    """log σ_t² of the reverse process for every t (Ho et al. 2020, §3.2).

    ``"fixed_small"``: σ_t² = β̃_t, ``"fixed_large"``: σ_t² = β_t. Both use log β̃_1 at t = 0,
    where only the decoder needs a scale, as improved-diffusion does. ``"learned"`` depends on
    the model's output: :func:`learned_log_variance`.
    """
    check_choice("variance", variance, VARIANCES)
    if variance == "learned":
        raise ValueError("variance 'learned' is the model's: pass its v (learned_log_variance), or choose a fixed one")
    if variance == "fixed_small":
        return schedule.posterior_log_variance_clipped
    return np.append(schedule.posterior_log_variance_clipped[0], np.log(schedule.betas[1:]))


def learned_log_variance(schedule, t, v):
    """log Σ_θ = v log β_t + (1 − v) log β̃_t, the network's interpolation (Nichol & Dhariwal 2021, Eq. 15).

    ``v`` is the model's raw second output (array or Tensor, per element): v = 0 is β̃_t, v = 1
    is β_t (improved-diffusion feeds (v + 1)/2 instead; v here is the paper's). Both ends come
    from ``schedule``, so on a respaced schedule v interpolates between the respaced β and β̃,
    as improved-diffusion does. log β̃_0 is clipped to log β̃_1 (:func:`model_log_variances`).
    """
    like = v.data if isinstance(v, Tensor) else v
    max_log = extract(np.log(schedule.betas), t, like)
    min_log = extract(schedule.posterior_log_variance_clipped, t, like)
    return v * max_log + (1.0 - v) * min_log


def p_mean_variance(schedule, x_t, t, x0_hat, variance="fixed_small", v=None):
    """Mean, variance and log-variance of p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I) given the model's x̂₀ (Ho et al. 2020, Eq. 1).

    μ_θ = μ̃_t(x_t, x̂₀) (Ho et al. 2020, Eq. 7 with x̂₀ for x₀; equal to Eq. 11 for
    x̂₀ from ε̂), σ_t² fixed as in :func:`model_log_variances` or, for ``variance="learned"``,
    from the model's ``v`` (:func:`learned_log_variance`).
    """
    mean, _, _ = q_posterior_mean_variance(schedule, x0_hat, x_t, t)
    if variance == "learned" and v is not None:
        log_variance = learned_log_variance(schedule, t, v)
    else:
        log_variance = extract(model_log_variances(schedule, variance), t, x_t)
    return mean, _math(log_variance).exp(log_variance), log_variance


def vb_terms_bpd(schedule, x0, x_t, t, x0_hat, variance="fixed_small", v=None):
    """Per-example term L_t of the variational bound at code index t, in bits per dimension.

    Code index t is the papers' step t + 1, and the terms are named by the x they predict:
    for t ≥ 1, L_t = KL(q(x_t | x_{t+1}, x₀) ‖ p_θ(x_t | x_{t+1})) in the papers' indexing
    (Ho et al. 2020, Eq. 5, whose L_{t−1} at their step t is this L_t one step on); at t = 0 the
    decoder L_0 = −log p_θ(x₀ | x₁) (Ho et al. 2020, Eq. 13). ``likelihood`` uses the same names.

    For an ε-model the KL at t ≥ 1 is Ho et al. 2020, Eq. 12 only up to that equation's constant C
    and only for an unclipped x̂₀: KL = β²/(2σ² α (1 − ᾱ)) ‖ε − ε̂‖² + C per dimension, with β, α,
    ᾱ at index t and C = KL(N(0, β̃) ‖ N(0, σ²)) = ½(β̃/σ² − 1 − log(β̃/σ²)), which is 0 for
    ``"fixed_small"`` (σ² = β̃) but not for ``"fixed_large"`` (σ² = β); clipping x̂₀ (what
    :func:`minidiff.likelihood.calc_bpd_loop` does by default) changes ε̂ and breaks the identity.
    L_simple (Eq. 14) drops the weight and C (``tests/test_derivations.py`` checks all three).
    With a learned variance ``v`` (a Tensor while training) the result is differentiable in ``v``.
    """
    true_mean, _, true_log_variance = q_posterior_mean_variance(schedule, x0, x_t, t)
    model_mean, _, model_log_variance = p_mean_variance(schedule, x_t, t, x0_hat, variance, v)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)) / math.log(2.0)
    decoder_nll = -mean_flat(
        discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    ) / math.log(2.0)
    is_decoder = get_array_module(x0).asarray(t) == 0
    return _math(kl).where(is_decoder, decoder_nll, kl)
