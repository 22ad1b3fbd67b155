"""The training objectives: what the network learns, and how samples are drawn from it.

- ``ddpm``: ε, x₀ or v on the discrete VP chain t ∈ {0, …, T − 1} (:mod:`minidiff.diffusion`,
  :mod:`minidiff.sampling`, :mod:`minidiff.sde`), today's default;
- ``edm``: the preconditioned denoiser at noise level σ (:mod:`minidiff.objectives.edm`);
- ``flow``: the velocity of the straight path at time t ∈ [0, 1] (:mod:`minidiff.objectives.flow`).

All three noise the data the same way up to scale, so one probability-flow ODE underlies them
(:mod:`minidiff.objectives.conversions`): the ODE samplers ``heun`` and ``euler`` serve every
objective (a DDPM checkpoint through the VP bridge), ``midpoint`` serves flow models, and the DDPM
chain's samplers serve DDPM checkpoints. :class:`OdeSampler` is what
:func:`minidiff.sample.generate` drives for the ODE samplers: a grid of noise levels, the network
as the loop's model function (guided, clipped, inpainted through x̂₀), and the loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import checks, consistency
from ..backend import get_array_module
from . import edm, flow
from .conversions import constrained_denoiser, constrained_velocity

OBJECTIVES = ("ddpm", "edm", "flow", "consistency")
ODE_SAMPLERS = {"ddpm": ("heun", "euler"), "edm": ("heun", "euler"), "flow": ("heun", "euler", "midpoint"),
                "consistency": ("consistency",)}
DEFAULT_SAMPLER = {"ddpm": "ddim", "edm": "heun", "flow": "heun", "consistency": "consistency"}
SIGMA_DATA_OBJECTIVES = ("edm", "consistency")  # whose network is preconditioned with the data's σ_data


def check_sampler(objective: str, sampler: str, chain_samplers) -> None:
    """Refuse a sampler that cannot serve ``objective``, naming both (``chain_samplers``: the DDPM chain's)."""
    allowed = ODE_SAMPLERS[objective] + (tuple(chain_samplers) if objective == "ddpm" else ())
    if sampler not in allowed:
        raise ValueError(f"--sampler {sampler} cannot sample a checkpoint trained with --objective {objective}; "
                         f"choose one of {', '.join(allowed)}")


def training_loss(config):
    """The loss of ``config.objective`` (edm, flow or consistency) as ``loss(model, x0, rng, device=, rows=,
    step=) -> LossDraw``; only consistency training reads the step (its grid doubles, :mod:`minidiff.consistency`)."""
    if config.objective == "edm":
        return lambda model, x0, rng, step=None, **where: edm.training_loss(
            model, x0, rng, sigma_data=config.sigma_data, P_mean=config.p_mean, P_std=config.p_std, **where)
    if config.objective == "consistency":
        return lambda model, x0, rng, step, **where: consistency.training_loss(
            model, x0, rng, step=step, total_steps=config.steps, sigma_data=config.sigma_data, **where)
    return lambda model, x0, rng, step=None, **where: flow.training_loss(
        model, x0, rng, t_distribution=config.t_distribution, **where)


@dataclass
class OdeOptions:
    """The ODE samplers' settings: EDM's grid (Karras et al. 2022, Eq. 5) and churn (Algorithm 2),
    and flow matching's time shift (Esser et al. 2024, §5.3.2)."""

    sigma_min: float = edm.SIGMA_MIN
    sigma_max: float = edm.SIGMA_MAX
    rho: float = edm.RHO
    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0
    time_shift: float = 1.0

    @classmethod
    def from_args(cls, args):
        """The settings of the ``sample`` and ``eval`` flags ``--sigma-min`` … ``--time-shift``."""
        return cls(sigma_min=args.sigma_min, sigma_max=args.sigma_max, rho=args.rho, S_churn=args.s_churn,
                   S_tmin=args.s_tmin, S_tmax=args.s_tmax, S_noise=args.s_noise, time_shift=args.time_shift)

    def check(self):
        """Refuse settings the samplers cannot use, naming the flag."""
        edm.check_grid(self.sigma_min, self.sigma_max, self.rho)
        flow.shift_time(1.0, self.time_shift)
        for flag, value in (("--s-churn", self.S_churn), ("--s-noise", self.S_noise), ("--s-tmin", self.S_tmin)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
        if not self.S_tmax >= self.S_tmin:
            raise ValueError(f"--s-tmax {self.S_tmax} must be at least --s-tmin {self.S_tmin}")
        return self

    def check_objective(self, objective: str):
        """Refuse a setting that ``objective``'s sampler would ignore, naming the flag."""
        changed = [name for name in EDM_FLAGS if getattr(self, name) != getattr(OdeOptions, name)]
        if objective == "flow" and changed:
            raise ValueError(f"{EDM_FLAGS[changed[0]]} sets EDM's sampler (edm and ddpm checkpoints), "
                             "not a flow model's")
        if objective != "flow" and self.time_shift != 1.0:
            raise ValueError(f"--time-shift applies to flow checkpoints, not --objective {objective} ones")


EDM_FLAGS = {"sigma_min": "--sigma-min", "sigma_max": "--sigma-max", "rho": "--rho", "S_churn": "--s-churn",
             "S_tmin": "--s-tmin", "S_tmax": "--s-tmax", "S_noise": "--s-noise"}


@dataclass
class OdeSampler:
    """``sampler`` (heun, euler or midpoint) for a checkpoint of ``objective`` on ``steps`` steps.

    ``grid`` holds the noise levels visited, noisiest first and ending clean: σ for edm and ddpm
    (the VP bridge, rounded to the schedule's levels), t for flow.
    """

    objective: str
    sampler: str
    steps: int
    grid: np.ndarray
    schedule: object = None
    prediction: str = "eps"
    sigma_data: float | None = None
    options: OdeOptions = field(default_factory=OdeOptions)

    @classmethod
    def build(cls, objective, sampler, steps, *, schedule=None, prediction="eps", sigma_data=None, options=None):
        options = (options or OdeOptions()).check()
        options.check_objective(objective)
        check_sampler(objective, sampler, ())
        if objective == "flow":
            grid = flow.flow_times(steps, options.time_shift)
        elif objective == "consistency":
            grid = consistency.sampling_sigmas(steps, options.sigma_min, options.sigma_max, options.rho)
        elif objective == "edm":
            grid = edm.karras_sigmas(steps, options.sigma_min, options.sigma_max, options.rho)
        else:  # the VP bridge: EDM's grid inside the schedule's range, rounded to its levels (as EDM's generate.py)
            levels = edm.vp_sigma(schedule.alphas_cumprod)
            sigma_min, sigma_max = max(options.sigma_min, levels.min()), min(options.sigma_max, levels.max())
            grid = edm.round_to_schedule(edm.karras_sigmas(steps, sigma_min, sigma_max, options.rho), schedule)
        return cls(objective, sampler, steps, grid, schedule, prediction, sigma_data, options)

    def model_function(self, network, clip_denoised=True, dynamic_threshold=None, known=None, mask=None):
        """The loop's model function from ``network(x, label) -> output`` on arrays: EDM's D(x; σ) or
        the flow velocity v(x, t), with x̂₀ clipped and the known pixels of an inpainting re-imposed."""
        network = checked_network(network)
        if self.objective == "flow":
            return constrained_velocity(flow.velocity(network), clip_denoised, dynamic_threshold, known, mask)
        if self.objective == "consistency":  # f(x, σ) estimates x₀ as D does
            denoise = consistency.consistency_function(network, self.sigma_data)
        elif self.objective == "edm":
            denoise = edm.denoiser(network, self.sigma_data)
        else:
            denoise = edm.vp_denoiser(network, self.schedule, self.prediction)
        return constrained_denoiser(denoise, clip_denoised, dynamic_threshold, known, mask)

    def noised(self, x0, noise, index: int):
        """The state at ``grid[index]`` of clean x₀ with noise ε: x₀ + σ ε, or (1 − t) x₀ + t ε for flow."""
        level = self.grid[index]
        if self.objective == "flow":
            return flow.path(x0, np.full(len(noise), level), noise).astype(noise.dtype)
        return (x0 + level * noise).astype(noise.dtype)

    def run(self, model_function, x, start: int = 0, rng=None, callback=None):
        """The sampler's loop from ``x`` at ``grid[start]`` down to clean data."""
        if self.objective == "flow":
            return flow.sample(model_function, self.grid, x, solver=self.sampler, start=start, callback=callback)
        if self.objective == "consistency":
            return consistency.sample(model_function, self.grid[start:], x, rng=rng, callback=callback)
        o = self.options
        return edm.sample(model_function, self.grid, x, solver=self.sampler, start=start, S_churn=o.S_churn,
                          S_tmin=o.S_tmin, S_tmax=o.S_tmax, S_noise=o.S_noise, rng=rng, callback=callback)

    def encode(self, model_function, images):
        """The noise ε that the deterministic sampler maps to ``images``: the ODE run backwards, from the
        clean end (σ_min for EDM's grid) to the noisy one, and divided by σ_max there."""
        if self.objective == "consistency":
            raise ValueError("a consistency model has no ODE to run backwards: interpolate with an edm or flow model")
        if self.objective == "flow":
            return flow.sample(model_function, self.grid[::-1], images, solver=self.sampler)
        noisy = edm.sample(model_function, self.grid[-2::-1], images, solver=self.sampler)
        return noisy / self.grid[0]


def checked_network(network):
    """``network(x, label)`` whose every output is checked as the DDPM samplers check theirs
    (:mod:`minidiff.checks`): shaped like its input x (twice the channels only for a model that
    learns its variances), and finite, or the ODE loop stops naming the noise label and the count."""
    learned = bool(getattr(network, "learned_variance", False))

    def checked(x, label):
        output = checks.model_output(network(x, label), x, learned)
        level = float(get_array_module(output).asarray(label).reshape(-1)[0])
        checks.finite_model_output(output, None, where=f"noise label {level:.4g}")
        return output

    checked.learned_variance = learned
    return checked
