"""Discretisation error of the deterministic samplers on exact denoisers, by spacing and step count.

Data x₀ ∼ N(μ, s²) (μ = 0.3, s = 0.5), and 8 sharp Gaussians on the unit circle (std 0.05), have a
closed-form ε̂ (:func:`minidiff.oracles.mixture_denoiser`), so the only error left in a sample is
the sampler's: each cell is the largest |x₀ − x₀_ref| over 2,000 chains started from the same
x_T, the reference being the same sampler with 1,000 steps.
It is how the defaults of ``sample``/``eval`` were chosen (docs/experiments.md quotes the table):

    python benchmarks/sampler_accuracy.py
"""
import numpy as np

from minidiff.oracles import GaussianMixture, mixture_denoiser
from minidiff.sampling import ddim_sample, dpm_solver_pp_sample
from minidiff.schedule import SPACINGS, NoiseSchedule

MU, S = 0.3, 0.5
STEPS = (10, 20, 50)


def max_error(sampler, model, schedule, x_T, steps, **kwargs):
    """max |x₀(steps) − x₀(1000 steps)| of ``sampler`` from the chains ``x_T``."""
    options = dict(x_T=x_T, clip_denoised=False, **kwargs)
    reference = sampler(model, schedule, x_T.shape, steps=schedule.T, **options)
    return float(np.abs(sampler(model, schedule, x_T.shape, steps=steps, **options) - reference).max())


def main():
    data = {"Gaussian": GaussianMixture.isotropic([[MU]], S), "8-Gaussian circle": GaussianMixture.on_circle()}
    variants = [("ddim", ddim_sample, {}), ("dpm-solver++", dpm_solver_pp_sample, {"lower_order_final": False}),
                ("dpm-solver++ lower_order_final", dpm_solver_pp_sample, {"lower_order_final": True})]
    cases = [(law, name, schedule) for law in data
             for name, schedule in (("linear", NoiseSchedule.linear(1000)), ("cosine", NoiseSchedule.cosine(1000)))]
    for law, name, schedule in cases:
        model = mixture_denoiser(data[law], schedule)
        x_T = np.random.default_rng(0).standard_normal((2000, data[law].dim))
        print(f"\n{law} data, {name} schedule, T = 1000: max error against 1000 steps")
        print(f"| sampler | spacing | {' | '.join(f'{n} steps' for n in STEPS)} |")
        print("| --- | --- |" + " --- |" * len(STEPS))
        for label, sampler, kwargs in variants:
            for spacing in SPACINGS:
                errors = [max_error(sampler, model, schedule, x_T, n, spacing=spacing, **kwargs) for n in STEPS]
                print(f"| {label} | {spacing} | " + " | ".join(f"{e:.4f}" for e in errors) + " |")


if __name__ == "__main__":
    main()
