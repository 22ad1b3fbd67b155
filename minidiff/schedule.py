"""Noise schedules β_t and every quantity derived from them, in float64.

Timesteps are zero-indexed, ``t ∈ {0, …, T−1}``: ``t = 0`` is one step of noise
(variance β_0), as in improved-diffusion and diffusers. Index ``t`` here is step
``t + 1`` of the one-indexed papers.

Papers:

- Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM).
- Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"
  (cosine schedule, respacing).
- Kingma, Salimans, Poole & Ho 2021, "Variational Diffusion Models" (SNR).
- Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models" (sigmoid schedule).
- Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"
  (the "scaled_linear" schedule of Stable Diffusion).
- Lin, Liu, Li & Yang 2023, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed" (zero terminal SNR).

Zero terminal SNR: after :meth:`NoiseSchedule.rescale_zero_terminal_snr`,
ᾱ_{T−1} = 0, so β_{T−1} = 1 (the only place a β of 1 is accepted), ``snr[-1] = 0``,
``log_snr[-1] = -inf`` and ``sqrt_recip_alphas_cumprod[-1] = sqrt_recipm1_alphas_cumprod[-1] = inf``.
x₀ cannot be recovered from ε there (Lin et al. 2023, §3.2), so use x₀- or v-prediction.
The posterior variance β̃_0 is 0 for every schedule; its log is "clipped" to log β̃_1
as in improved-diffusion (see ``posterior_log_variance_clipped``).

A little over 300 lines: the schedules and the choice of timesteps on them (respacing and
:func:`space_timesteps`) belong together, since logSNR spacing reads the schedule's λ.
"""

import math

import numpy as np

from .backend import get_array_module
from . import checks
from .checks import ArgumentError, timestep_array


def standard_normal(rng, like):
    """N(0, I) noise shaped and typed like ``like``, drawn from the NumPy Generator ``rng``.

    Drawing on the host and then moving the array makes one seed give the same samples on
    CPU and GPU.
    """
    noise = rng.standard_normal(like.shape).astype(like.dtype, copy=False)
    return get_array_module(like).asarray(noise)


def gather(coefficients, t):
    """``coefficients[t]`` for a batch of timesteps, in ``t``'s array module.

    Refuses timesteps outside ``[0, T)``, ``T = len(coefficients)``, instead of letting
    negative indices silently wrap around.
    """
    t = timestep_array(t)
    xp = get_array_module(t)
    num_timesteps = len(coefficients)
    if t.size and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"timestep t={bad} is outside [0, {num_timesteps})")
    return xp.asarray(coefficients)[t]


def extract(coefficients, t, x):
    """Per-example coefficient ``coefficients[t]`` shaped ``(N, 1, …, 1)`` to broadcast against ``x``.

    The values come in ``x``'s array module and dtype so that a float64 schedule does not
    silently upcast float32 tensors (improved-diffusion's ``_extract_into_tensor``).
    """
    xp = get_array_module(x)
    if np.dtype(x.dtype).kind != "f":  # cast to an integer dtype, every coefficient in (0, 1) would be 0
        raise ArgumentError(f"an array of dtype {x.dtype} and shape {tuple(x.shape)} met the schedule's coefficients; "
                            "x0, x_t, noise and model outputs must be floating point")
    values = xp.asarray(gather(coefficients, t)).astype(x.dtype, copy=False)
    if values.ndim > 1 or (x.ndim and values.size not in (1, x.shape[0])):  # one t, or one per example
        raise ArgumentError(f"timesteps t of shape {tuple(values.shape)} do not fit a batch of "
                            f"{x.shape[0] if x.ndim else 0}: give one t per example (N,) or a single one")
    return values.reshape((-1,) + (1,) * (x.ndim - 1))


SPACINGS = ("uniform", "trailing", "quadratic", "logsnr")


def space_timesteps(T, steps, spacing="uniform", log_snr=None):
    """``steps`` distinct timesteps from ``{0, …, T−1}``, ascending, always including T−1.

    ``"uniform"`` spreads them evenly from 0 to T−1 (the "linspace" spacing of Lin et al.
    2023, §3.3 and Table 2: sampling must start at the last timestep, and ending at t = 0
    keeps the final jump to x₀ small); ``"trailing"`` takes every (T/steps)-th step counting
    down from T−1 (Lin et al. 2023, Table 2), so the last one is T/steps − 1, not 0;
    ``"quadratic"`` places them at (T−1)·(i/(steps−1))², crowding the low-noise end as in
    DDIM's CIFAR10 experiments (Song et al. 2021, §D.2); ``"logsnr"`` is uniform in
    λ = ½ log SNR between t = 0 and T−1, the step schedule of the first DPM-Solver paper
    (Lu et al. 2022a; ``skip_type="logSNR"`` of ``DPM_Solver.get_time_steps`` in its code,
    ``dpm_solver_pytorch.py``, whose ``"time_uniform"`` is uniform in t, our ``"uniform"``),
    and needs the schedule's ``log_snr``.
    """
    check_steps(steps, T)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    if spacing == "trailing":
        # round(T − i·T/steps) − 1 for i = steps−1, …, 0: Table 2's arange(T, 0, −T/steps) without its float count.
        return np.round(T * (1.0 - np.arange(steps)[::-1] / steps)).astype(np.int64) - 1
    # Counting down from 1 makes a single step start from pure noise at T−1.
    fractions = np.linspace(1.0, 0.0, steps)[::-1]
    if spacing == "logsnr":
        timesteps = _timesteps_uniform_in_log_snr(fractions, log_snr, T)
    else:
        timesteps = np.round((T - 1) * fractions ** {"uniform": 1, "quadratic": 2}[spacing]).astype(np.int64)
    # Quadratic and logSNR spacings round neighbouring steps onto the same integer: lifting each
    # one just past its predecessor makes them distinct, and capping step i at T − steps + i keeps
    # room for the ones after it (both keep the order strict, so the last stays T−1).
    index = np.arange(steps)
    return np.minimum(index + np.maximum.accumulate(timesteps - index), T - steps + index)


def _timesteps_uniform_in_log_snr(fractions, log_snr, T):
    """The timestep whose λ = ½ log SNR is nearest each of the points λ_0 − f·(λ_0 − λ_{T−1}), f ∈ ``fractions``.

    λ decreases with t, so each target is found by a binary search on −λ. Under zero terminal SNR
    λ_{T−1} = −∞: the targets then end at the last finite λ and the final step at T−1 is kept.
    """
    if log_snr is None or len(log_snr) != T:
        raise ValueError(f"logsnr spacing needs the schedule's log_snr ({T} values)")
    lambdas = 0.5 * np.asarray(log_snr, dtype=np.float64)
    finite = lambdas[np.isfinite(lambdas)]
    targets = lambdas[0] - fractions * (lambdas[0] - finite[-1])
    right = np.clip(np.searchsorted(-lambdas, -targets), 1, T - 1)  # −λ_{right−1} < −target ≤ −λ_right
    nearer_left = np.abs(lambdas[right - 1] - targets) <= np.abs(lambdas[right] - targets)
    timesteps = np.where(nearer_left, right - 1, right)
    timesteps[-1] = T - 1
    return timesteps.astype(np.int64)


def check_steps(steps, T):
    """Refuse a step count that is not an integer in ``[1, T]``."""
    if int(steps) != steps or not 1 <= steps <= T:
        raise ValueError(f"number of steps must be an integer in [1, {T}], got {steps}")


def _check_betas(betas):
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    bad = np.flatnonzero(~((betas > 0) & (betas <= 1)))
    if bad.size:
        i = bad[0]
        raise ValueError(f"betas must lie in (0, 1], got betas[{i}]={betas[i]}")
    # β = 1 wipes out the signal: harmless as the very last step (zero terminal SNR),
    # but anywhere earlier it would make every later ᾱ zero.
    ones = np.flatnonzero(betas[:-1] == 1)
    if ones.size:
        raise ValueError(
            f"beta = 1 is only allowed as the terminal beta, got betas[{ones[0]}]=1.0 "
            f"with T={betas.size}"
        )


def _check_alphas_cumprod(alphas_cumprod):
    if alphas_cumprod.ndim != 1 or alphas_cumprod.size == 0:
        raise ValueError(
            f"alphas_cumprod must be a non-empty 1-D array, got shape {alphas_cumprod.shape}"
        )
    if not alphas_cumprod[0] < 1:
        raise ValueError(f"alphas_cumprod[0] must be < 1, got {alphas_cumprod[0]}")
    steps_up = np.flatnonzero(~(np.diff(alphas_cumprod) < 0))
    if steps_up.size:
        i = steps_up[0] + 1
        raise ValueError(
            "alphas_cumprod must be strictly decreasing, got "
            f"alphas_cumprod[{i}]={alphas_cumprod[i]} >= alphas_cumprod[{i - 1}]={alphas_cumprod[i - 1]}"
        )
    if alphas_cumprod[-1] < 0:
        raise ValueError(f"alphas_cumprod must be >= 0, got alphas_cumprod[-1]={alphas_cumprod[-1]}")


def _betas_from_alpha_bar(alpha_bar, T, max_beta):
    """β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), max_beta) for a continuous ᾱ(τ), τ ∈ [0, 1].

    Nichol & Dhariwal 2021, §3.2: clipping β below 1 avoids the singularity at τ = 1.
    """
    tau = np.arange(T + 1, dtype=np.float64) / T
    alpha_bars = alpha_bar(tau)
    return np.minimum(1.0 - alpha_bars[1:] / alpha_bars[:-1], max_beta)


class NoiseSchedule:
    """A variance schedule β_0, …, β_{T−1} and its derived quantities (all float64 arrays of length T).

    Attributes follow Ho et al. 2020 and improved-diffusion:

    - ``betas`` β_t; ``alphas`` α_t = 1 − β_t (Ho et al. 2020, §2)
    - ``alphas_cumprod`` ᾱ_t = ∏_{s≤t} α_s (Ho et al. 2020, Eq. 4); ``alphas_cumprod_prev``
      ᾱ_{t−1} with ᾱ_{−1} = 1; ``alphas_cumprod_next`` ᾱ_{t+1} with ᾱ_T = 0
    - ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``, ``log_one_minus_alphas_cumprod``,
      ``sqrt_recip_alphas_cumprod`` 1/√ᾱ_t, ``sqrt_recipm1_alphas_cumprod`` √(1/ᾱ_t − 1)
    - ``snr`` ᾱ_t/(1 − ᾱ_t) and ``log_snr`` (Kingma et al. 2021, Eq. 2)
    - ``posterior_variance`` β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) (Ho et al. 2020, Eq. 7), with
      ``posterior_log_variance_clipped`` (β̃_0 = 0 replaced by β̃_1 before the log)
    - ``posterior_mean_coef1`` √ᾱ_{t−1} β_t/(1 − ᾱ_t) and ``posterior_mean_coef2``
      √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t), the coefficients of x₀ and x_t in μ̃_t (Ho et al. 2020, Eq. 7)
    - ``timesteps`` the model timestep of each index: ``arange(T)`` unless respaced
    """

    def __init__(self, betas, timesteps=None):
        betas = np.asarray(betas, dtype=np.float64)
        _check_betas(betas)
        T = betas.size
        self.T = T
        self.timesteps = np.arange(T, dtype=np.int64) if timesteps is None else np.asarray(timesteps, dtype=np.int64)
        if self.timesteps.shape != (T,):
            raise ValueError(f"timesteps must have shape ({T},), got {self.timesteps.shape}")

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        one_minus = 1.0 - self.alphas_cumprod
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(one_minus)
        self.log_one_minus_alphas_cumprod = np.log(one_minus)
        # ᾱ_{T−1} = 0 under zero terminal SNR: these are then honestly inf / −inf.
        with np.errstate(divide="ignore"):
            self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
            self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
            self.snr = self.alphas_cumprod / one_minus
            self.log_snr = np.log(self.snr)

        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        self.posterior_log_variance_clipped = self._log_clipped(self.posterior_variance)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / one_minus

    @staticmethod
    def _log_clipped(posterior_variance):
        """log β̃_t with β̃_0 = 0 replaced by β̃_1, as improved-diffusion does.

        The t = 0 Gaussian is only used as the decoder's scale, where log 0 = −inf would
        make the likelihood degenerate. With T = 1 there is no β̃_1 and the log stays −inf.
        """
        first = posterior_variance[1] if posterior_variance.size > 1 else posterior_variance[0]
        with np.errstate(divide="ignore"):
            return np.log(np.append(first, posterior_variance[1:]))

    def __repr__(self):
        return (
            f"NoiseSchedule(T={self.T}, betas=[{self.betas[0]:.3g} … {self.betas[-1]:.3g}], "
            f"alphas_cumprod[-1]={self.alphas_cumprod[-1]:.3g})"
        )

    # Constructors -----------------------------------------------------------------

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, timesteps=None):
        """The schedule with the given ᾱ_t: β_t = 1 − ᾱ_t/ᾱ_{t−1}, ᾱ_{−1} = 1 (Ho et al. 2020, Eq. 4 inverted).

        ᾱ must start below 1, decrease strictly and end at ≥ 0, so only the last may be 0.
        """
        alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        _check_alphas_cumprod(alphas_cumprod)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        return cls(1.0 - alphas_cumprod / alphas_cumprod_prev, timesteps)

    @classmethod
    def linear(cls, T=1000, beta_start=1e-4, beta_end=0.02, scale_to_T=False):
        """β_t linear from ``beta_start`` to ``beta_end`` (Ho et al. 2020, §4).

        ``scale_to_T=True`` multiplies both ends by 1000/T so that shorter chains keep the
        same total noise (Nichol & Dhariwal 2021, improved-diffusion ``get_named_beta_schedule``).
        """
        _check_T(T)
        if scale_to_T:
            beta_start, beta_end = beta_start * 1000 / T, beta_end * 1000 / T
        return cls(np.linspace(beta_start, beta_end, T, dtype=np.float64))

    @classmethod
    def scaled_linear(cls, T=1000, beta_start=0.00085, beta_end=0.012):
        """√β_t linear from √beta_start to √beta_end (Rombach et al. 2022; diffusers' "scaled_linear")."""
        _check_T(T)
        return cls(np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2)

    @classmethod
    def cosine(cls, T=1000, s=0.008, max_beta=0.999):
        """ᾱ(τ) = f(τ)/f(0), f(τ) = cos²((τ + s)/(1 + s) · π/2) (Nichol & Dhariwal 2021, Eq. 17)."""
        _check_T(T)
        s = checks.real(s, "s (the cosine schedule's offset)", 0.0, 1.0)

        def alpha_bar(tau):
            return np.cos((tau + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2

        return cls(_betas_from_alpha_bar(alpha_bar, T, max_beta))

    @classmethod
    def sigmoid(cls, T=1000, start=-3.0, end=3.0, tau=1.0, clip_min=1e-9, max_beta=0.999):
        """ᾱ(τ) = (σ(end/τ′) − σ((τ(end − start) + start)/τ′)) / (σ(end/τ′) − σ(start/τ′)), τ′ = ``tau``.

        Chen 2023, Algorithm 1 (``sigmoid_schedule``), clipped below at ``clip_min``;
        β is then clipped at ``max_beta`` as for the cosine schedule.
        """
        _check_T(T)
        checks.real(tau, "tau", 1e-6)
        if not checks.real(start, "start") < checks.real(end, "end"):
            raise checks.ArgumentError(f"the sigmoid schedule needs start < end, got start={start}, end={end}")

        def sigmoid(z):
            return 1.0 / (1.0 + np.exp(-z))

        v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)

        def alpha_bar(time):
            alpha_bars = (v_end - sigmoid((time * (end - start) + start) / tau)) / (v_end - v_start)
            return np.clip(alpha_bars, clip_min, 1.0)

        return cls(_betas_from_alpha_bar(alpha_bar, T, max_beta))

    # Derived schedules --------------------------------------------------------------

    def rescale_zero_terminal_snr(self):
        """A new schedule with ᾱ_{T−1} = 0 and ᾱ_0 kept (Lin et al. 2023, Algorithm 1).

        √ᾱ is shifted so its last value is 0 and scaled so its first is unchanged.
        """
        if self.T < 2:
            raise ValueError(f"zero terminal SNR rescaling needs T >= 2, got T={self.T}")
        sqrt_first, sqrt_last = self.sqrt_alphas_cumprod[0], self.sqrt_alphas_cumprod[-1]
        rescaled = (self.sqrt_alphas_cumprod - sqrt_last) * sqrt_first / (sqrt_first - sqrt_last)
        return type(self).from_alphas_cumprod(rescaled**2, self.timesteps)

    def respace(self, use_timesteps):
        """A shorter schedule on the subset ``use_timesteps`` of this one's indices.

        β′_i = 1 − ᾱ_{s_i}/ᾱ_{s_{i−1}} keeps ᾱ on the subset (Nichol & Dhariwal 2021, §4);
        ``timesteps`` remembers the original indices, so a model trained on the full chain is
        still called with the t it knows.
        """
        use_timesteps = np.asarray(use_timesteps, dtype=np.int64)
        check_steps(use_timesteps.size, self.T)
        if not np.all(np.diff(use_timesteps) > 0):
            raise ValueError(f"use_timesteps must be strictly increasing, got {use_timesteps.tolist()}")
        gather(self.alphas_cumprod, use_timesteps)  # refuses indices outside [0, T)
        return type(self).from_alphas_cumprod(
            self.alphas_cumprod[use_timesteps], self.timesteps[use_timesteps]
        )


def _check_T(T):
    if int(T) != T or T < 1:
        raise ValueError(f"number of timesteps T must be a positive integer, got {T}")


SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")


def schedule_by_name(name: str, T: int, zero_terminal_snr: bool = False) -> NoiseSchedule:
    """The named schedule a run config asks for, with T steps: ``"linear"``, ``"scaled_linear"``,
    ``"cosine"`` or ``"sigmoid"``, rescaled to zero terminal SNR when asked (Lin et al. 2023, Algorithm 1).

    ``"linear"`` is scaled by 1000/T as improved-diffusion's ``get_named_beta_schedule`` does
    (Nichol & Dhariwal 2021), so a short chain, e.g. T = 50 for a quick test, still ends in
    nearly pure noise; scaling ``"scaled_linear"``'s ends by 1000/T too is minidiff's own choice
    (improved-diffusion has no scaled_linear, and diffusers does not scale it).
    """
    if name == "linear":
        schedule = NoiseSchedule.linear(T, scale_to_T=True)
    elif name == "scaled_linear":
        schedule = NoiseSchedule.scaled_linear(T, 0.00085 * 1000 / T, 0.012 * 1000 / T)
    elif name in ("cosine", "sigmoid"):
        schedule = getattr(NoiseSchedule, name)(T)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return schedule.rescale_zero_terminal_snr() if zero_terminal_snr else schedule
