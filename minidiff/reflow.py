"""Reflow (Liu et al. 2023): straighten a flow by retraining it on its own (noise, sample) pairs.

A flow-matching model trained on independent pairs (x₀, ε) learns the velocity v(x, t) = E[ε − x₀ | x_t = x]
(:mod:`minidiff.objectives.flow`); its ODE paths bend where straight lines between independent pairs cross.
Reflow draws ε, integrates that ODE to the sample x₀ = Z₀ it maps ε to, and trains a new velocity by flow
matching on these pairs (:func:`minidiff.objectives.flow.training_loss` with the paired ``noise``). Pairs
from an ODE never cross, so the new flow's paths are straighter, and its straightness

    S(Z) = ∫₀¹ E‖(Z₁ − Z₀) − v(Z_t, t)‖² dt        (:func:`straightness`)

is 0 exactly when every path is a straight line, travelled at constant speed, which one Euler step
integrates exactly (:func:`one_euler_step`). minidiff reports S per dimension (divided by dim).

Stored pairs, not online ones. minidiff generates the pairs once, when the student starts, and keeps
them in its run folder (:mod:`minidiff.fewstep`), as Liu et al. do: a pair costs a whole ODE solve of the
teacher (tens of network calls), which online pairing would pay again at every training step; a fixed set
is reproducible, fingerprinted, and lets a resumed run see the very same pairs. The price is a finite
coupling that a long run can overfit (Liu et al. use many pairs; pass ``--pairs`` accordingly).

Papers:

- Liu, Gong & Liu 2023, "Flow Straight and Fast: Learning to Generate and Transfer Data with
  Rectified Flow" (Eq. 1; reflow, Algorithm 1; straightness S(Z)).
"""
from __future__ import annotations

import numpy as np

from .backend import to_numpy
from .diffusion import mean_flat
from .objectives import flow
from .objectives.conversions import batch_column


def straightness(velocity, noise, steps: int = 100):
    """(S per dimension, Z₀): the straightness of the flow of ``velocity(x, t)`` from ``noise`` = Z₁ at t = 1,
    estimated on ``steps`` Euler steps: S ≈ (1/steps) Σ_i E‖(Z₁ − Z₀) − v(Z_{t_i}, t_i)‖²/dim (Liu et al. 2023)."""
    times = flow.flow_times(steps)
    z0, trajectory = flow.sample(velocity, times, noise, solver="euler", return_trajectory=True)
    displacement = noise - z0  # Z₁ − Z₀
    deviations = [mean_flat((displacement - (step.x_t - step.x0_hat) / batch_column(np.full(len(noise), step.t),
                                                                                     noise)) ** 2)
                  for step in trajectory]  # v = (x_t − x̂₀)/t, as the sampler's x̂₀ = x_t − t v
    return float(np.mean(to_numpy(np.mean(deviations, axis=0)))), z0


def one_euler_step(velocity, noise):
    """Z₀ in one Euler step from t = 1: ε − v(ε, 1), exact when the flow's paths are straight (Liu et al. 2023)."""
    return flow.sample(velocity, np.array([1.0, 0.0]), noise, solver="euler")
