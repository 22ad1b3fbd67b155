"""Reflow on 8 Gaussians: how much straighter one reflow makes a flow, and what one Euler step then draws.

    python examples/reflow2d.py [--steps 1000] [--pairs 10000] [--n 2000]

A flow-matching MLP (examples/toy2d.py's) is trained on the 8-Gaussian circle (the 1-rectified flow);
``--pairs`` noises are carried to its samples by 50 Heun steps (Liu et al. 2023's stored pairs,
:mod:`minidiff.reflow`), and a fresh MLP is trained on those pairs for as many steps (the 2-rectified
flow). For both, and for the exact 1-rectified flow of the mixture (:func:`minidiff.oracles.mixture_flow_velocity`),
it prints one JSON line each: the straightness S per dimension (100 Euler steps), and for a single
Euler step from t = 1 the mean distance to the nearest mode, the share of samples within 3 standard
deviations (0.15) of a mode, and the mean distance to where 100 Euler steps of the same flow land.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy2d  # noqa: E402  (the MLP and its training loop)

from minidiff.objectives import flow  # noqa: E402
from minidiff.oracles import mixture_flow_velocity  # noqa: E402
from minidiff.reflow import one_euler_step, straightness  # noqa: E402

MIXTURE = toy2d.EIGHT_GAUSSIANS


def report(name, velocity, noise):
    """S, and a single Euler step's distance to the modes and to the flow's own many-step endpoint."""
    s, endpoint = straightness(velocity, noise)
    one_step = one_euler_step(velocity, noise)
    to_modes = np.linalg.norm(one_step[:, None, :] - MIXTURE.means[None], axis=-1).min(axis=1)
    return dict(flow=name, straightness=round(s, 5), one_step_distance_to_mode=round(float(to_modes.mean()), 4),
                one_step_within_3_std=round(float(np.mean(to_modes < 3 * 0.05)), 4),
                one_step_error=round(float(np.linalg.norm(one_step - endpoint, axis=1).mean()), 4))


def run(steps=1000, pairs=10000, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    first = toy2d.train(toy2d.DATASETS["8 gaussians"], flow.training_loss, steps, seed=seed)
    first_velocity = flow.velocity(toy2d.as_array_model(first))
    noise = rng.standard_normal((pairs, 2))
    x0 = flow.sample(first_velocity, flow.flow_times(50), noise, solver="heun")
    coupling = np.concatenate([x0, noise], axis=1).astype(np.float32)

    def draw_pairs(batch, rng):
        return coupling[rng.integers(len(coupling), size=batch)]

    def reflow_loss(model, batch, rng):
        return flow.training_loss(model, batch[:, :2], rng, noise=batch[:, 2:])

    second = toy2d.train(draw_pairs, reflow_loss, steps, seed=seed + 1)
    test_noise = np.random.default_rng(seed + 2).standard_normal((n, 2))
    return [report("exact 1-rectified (oracle)", mixture_flow_velocity(MIXTURE), test_noise),
            report("1-rectified (trained)", first_velocity, test_noise),
            report("2-rectified (reflowed)", flow.velocity(toy2d.as_array_model(second)), test_noise)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each flow (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=10000, help="reflow pairs (default: %(default)s)")
    parser.add_argument("--n", type=int, default=2000, help="test noises (default: %(default)s)")
    args = parser.parse_args(argv)
    for line in run(args.steps, args.pairs, args.n):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
