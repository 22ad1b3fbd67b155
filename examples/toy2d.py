"""A 2-D world you can see: diffusion on point clouds, with pictures of why it works.

    python examples/toy2d.py [--steps 1500] [--out docs]

For two moons, a swiss roll, 8 Gaussians and a checkerboard, a small MLP ε-model is trained with
minidiff's own autograd and the same loss as the U-Net (:func:`minidiff.diffusion.training_loss`,
Algorithm 1 of Ho et al. 2020), and beside it the same MLP as a flow-matching velocity model
(:func:`minidiff.objectives.flow.training_loss`); a minute or two on a 2-core laptop. Then six
figures go to ``--out`` (``pip install 'minidiff[plot]'`` for matplotlib):

- ``toy2d_forward.png``: the forward process, step by step (Eq. 2), pulls every cloud to the origin
  and spreads it into N(0, I);
- ``toy2d_score.png``: the learned score −ε̂/σ_t as arrows at three noise levels, next to the exact
  score of the 8-Gaussian mixture (:mod:`minidiff.oracles`);
- ``toy2d_trajectories.png``: the same starting points carried back by the reverse SDE (noisy paths)
  and by the probability-flow ODE (smooth ones);
- ``toy2d_samples.png``: samples next to the data, for all four sets;
- ``toy2d_modes.png``: E[x₀ | x_t] along one reverse trajectory — it starts at the data mean, the
  centre of the circle, and moves out to one mode as the noise comes down;
- ``toy2d_flow.png``: the same starting points carried to the data by the VP model's
  probability-flow ODE (curved) and by the flow-matching ODE (nearly straight, Liu et al. 2023),
  with each path's length over the distance it covers, and flow-matching samples for all four sets.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from minidiff import functional as F
from minidiff import nn, toy
from minidiff.autograd import Tensor, no_grad
from minidiff.diffusion import q_step, training_loss
from minidiff.objectives import flow
from minidiff.optim import Adam
from minidiff.oracles import GaussianMixture, mixture_denoiser
from minidiff.plot import pyplot
from minidiff.sampling import ddpm_sample
from minidiff.schedule import NoiseSchedule
from minidiff.sde import probability_flow_sample, reverse_sde_sample, score_from_eps
from minidiff.unet import timestep_embedding

DATASETS = {
    "two moons": toy.two_moons,
    "swiss roll": toy.swiss_roll,
    "8 gaussians": lambda n, rng: toy.gaussian_mixture(n, modes=8, radius=1.0, std=0.05, rng=rng),
    "checkerboard": toy.checkerboard,
}
EIGHT_GAUSSIANS = GaussianMixture.on_circle(modes=8, radius=1.0, std=0.05)  # the law of DATASETS["8 gaussians"]
T = 200
FLOW_STEPS = 50  # Heun steps of the flow-matching ODE for the samples, Euler steps for the paths


class MLPDenoiser(nn.Module):
    """ε̂(x_t, t) for 2-D points: three SiLU layers, the sinusoidal timestep embedding added to the first."""

    def __init__(self, width=128, embedding=32, rng=0):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.embedding = embedding
        self.inp = nn.Linear(2, width, rng=rng)
        self.time = nn.Linear(embedding, width, rng=rng)
        self.hidden = nn.Sequential(nn.Linear(width, width, rng=rng), nn.SiLU(), nn.Linear(width, width, rng=rng),
                                    nn.SiLU())
        self.out = nn.Linear(width, 2, rng=rng)

    def forward(self, x, t):
        x = x if isinstance(x, Tensor) else Tensor(np.asarray(x, dtype=np.float32))
        h = F.silu(self.inp(x) + self.time(Tensor(timestep_embedding(t, self.embedding))))
        return self.out(self.hidden(h))


def as_array_model(model):
    """The Tensor model as the samplers' ``model(x_t, t) -> array``, without building a graph."""
    def predict(x_t, t):
        with no_grad():
            return model(x_t.astype(np.float32), t).numpy().astype(x_t.dtype)

    return predict


def train(sample_data, loss_of, steps, batch_size=512, lr=5e-3, seed=0):
    """An MLPDenoiser fitted on fresh batches of ``sample_data(n, rng)`` by ``loss_of(model, x0, rng)``:
    Algorithm 1 (an ε-model) or flow matching's loss (a velocity model: the MLP's "t" is then 1000·t)."""
    model, rng = MLPDenoiser(rng=seed), np.random.default_rng(seed)
    optimizer = Adam(model.parameters(), lr=lr)
    for step in range(steps):
        optimizer.lr = lr * min(1.0, 2.0 * (1 - step / steps))  # hold, then decay linearly to 0
        loss = loss_of(model, sample_data(batch_size, rng=rng), rng).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def straightness(paths):
    """Each path's length over the distance between its ends, for paths (steps, n, 2): 1 is a straight line."""
    length = np.linalg.norm(np.diff(paths, axis=0), axis=-1).sum(axis=0)
    return length / np.linalg.norm(paths[-1] - paths[0], axis=-1)


def forward_snapshots(points, schedule, times, rng):
    """x_t at each of ``times`` (sorted), reached by running Eq. 2 one step at a time from x₀."""
    x, snapshots = points.astype(np.float64), {}
    for t in range(max(times) + 1):
        x = q_step(schedule, x, np.full(len(x), t), rng.standard_normal(x.shape))
        if t in times:
            snapshots[t] = x
    return snapshots


def score_fields(model, schedule, times, grid):
    """(learned, exact) scores on ``grid`` (M, 2) at each t: −ε̂/σ_t of the model and of the mixture."""
    exact = mixture_denoiser(EIGHT_GAUSSIANS, schedule)
    fields = {}
    for t in times:
        t_batch = np.full(len(grid), t)
        fields[t] = tuple(score_from_eps(schedule, grid, t_batch, eps(grid, t_batch)) for eps in (model, exact))
    return fields


def run(steps=1500, n=2000, seed=0):
    """Train on every data set and compute what the figures show, as arrays (no matplotlib)."""
    # The cosine schedule with β capped at 0.1 (ᾱ_{T−1} = 0.003): every Euler–Maruyama step of the
    # reverse SDE stays small, where the default cap of 0.999 would make the first one a giant leap.
    schedule = NoiseSchedule.cosine(T, max_beta=0.1)
    rng = np.random.default_rng(seed)
    results = {"schedule": schedule, "data": {}, "samples": {}, "forward": {}, "flow_samples": {}}
    forward_times = [0, T // 10, T // 4, T // 2, T - 1]
    for name, sample_data in DATASETS.items():
        started = time.perf_counter()
        model = as_array_model(train(sample_data, lambda m, x0, r: training_loss(m, schedule, x0, r), steps, seed=seed))
        velocity = flow.velocity(as_array_model(train(sample_data, flow.training_loss, steps, seed=seed)))
        data = sample_data(n, rng=rng)
        results["data"][name] = data
        results["forward"][name] = forward_snapshots(data, schedule, forward_times, rng)
        results["samples"][name] = ddpm_sample(model, schedule, (n, 2), rng=rng, clip_denoised=False)
        results["flow_samples"][name] = flow.sample(velocity, flow.flow_times(FLOW_STEPS), rng.standard_normal((n, 2)),
                                                    solver="heun")
        print(f"{name}: {steps} training steps and {n} samples in {time.perf_counter() - started:.1f} s")
        if name == "8 gaussians":
            side = np.linspace(-1.6, 1.6, 15)
            grid = np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)
            results["grid"] = grid
            results["scores"] = score_fields(model, schedule, [T // 10, T // 3, 2 * T // 3], grid)
            x_T = rng.standard_normal((8, 2))
            results["paths"] = {
                label: np.stack([step.x_t for step in sampler(model, schedule, (8, 2), x_T=x_T, rng=rng,
                                                              clip_denoised=False, return_trajectory=True)[1]])
                for label, sampler in (("reverse SDE", reverse_sde_sample), ("probability-flow ODE",
                                                                             probability_flow_sample))
            }
            # The same x_T down the flow-matching ODE (noise at t = 1): Euler, so each step is a straight segment.
            x_T = rng.standard_normal((16, 2))
            vp_path = probability_flow_sample(model, schedule, (16, 2), x_T=x_T, clip_denoised=False,
                                              return_trajectory=True)
            flow_path = flow.sample(velocity, flow.flow_times(FLOW_STEPS), x_T, solver="euler", return_trajectory=True)
            results["flow_paths"] = {label: np.concatenate([np.stack([step.x_t for step in steps]), end[None]])
                                     for label, (end, steps) in (("VP probability-flow ODE", vp_path),
                                                                 ("flow-matching ODE", flow_path))}
    # E[x₀ | x_t] along one reverse trajectory, with the exact denoiser of the 8 Gaussians.
    _, trajectory = ddpm_sample(mixture_denoiser(EIGHT_GAUSSIANS, schedule), schedule, (1, 2), rng=rng,
                                clip_denoised=False, return_trajectory=True)
    results["modes"] = (np.array([step.t for step in trajectory]), np.stack([step.x_t[0] for step in trajectory]),
                        np.stack([step.x0_hat[0] for step in trajectory]))
    return results


def save_figures(results, out):
    """The six PNGs of the module docstring, written to ``out``; returns their paths."""
    plt = pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(DATASETS)
    schedule = results["schedule"]

    def save(figure, name):
        path = out / name
        figure.savefig(path, dpi=72, bbox_inches="tight")
        plt.close(figure)
        return path

    def square(axis, limit=2.6):
        axis.set_xlim(-limit, limit), axis.set_ylim(-limit, limit), axis.set_aspect("equal")
        axis.set_xticks([]), axis.set_yticks([])

    written = []
    times = sorted(results["forward"][names[0]])
    figure, axes = plt.subplots(len(names), len(times), figsize=(2.2 * len(times), 2.2 * len(names)))
    for row, name in enumerate(names):
        for column, t in enumerate(times):
            points = results["forward"][name][t]
            axes[row, column].scatter(points[:, 0], points[:, 1], s=1, alpha=0.4)
            square(axes[row, column], 3.2)
            if row == 0:
                axes[row, column].set_title(f"t = {t}, ᾱ = {schedule.alphas_cumprod[t]:.2f}", fontsize=9)
        axes[row, 0].set_ylabel(name)
    figure.suptitle("The forward process: each step shrinks the points by √(1−β) and adds noise")
    written.append(save(figure, "toy2d_forward.png"))

    scores, grid = results["scores"], results["grid"]
    figure, axes = plt.subplots(2, len(scores), figsize=(3.3 * len(scores), 6.6))
    for column, (t, fields) in enumerate(sorted(scores.items())):
        for row, (label, field) in enumerate(zip(("learned", "exact"), fields)):
            axis = axes[row, column]
            axis.scatter(*EIGHT_GAUSSIANS.means.T, c="crimson", s=12)
            axis.quiver(grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], angles="xy")
            square(axis, 1.7)
            axis.set_title(f"{label} score, t = {t} (σ = {schedule.sqrt_one_minus_alphas_cumprod[t]:.2f})", fontsize=9)
    figure.suptitle("∇ log p(x_t) = −ε̂/σ_t: the learned field next to the exact one of the mixture")
    written.append(save(figure, "toy2d_score.png"))

    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    for axis, (label, paths) in zip(axes, results["paths"].items()):
        axis.scatter(*EIGHT_GAUSSIANS.means.T, c="crimson", s=12, zorder=3)
        axis.plot(paths[:, :, 0], paths[:, :, 1], lw=0.7, alpha=0.8)
        axis.scatter(paths[0, :, 0], paths[0, :, 1], c="k", s=6, zorder=3)
        axis.scatter(paths[-1, :, 0], paths[-1, :, 1], c="k", marker="x", s=20, zorder=3)
        square(axis, 2.8)
        axis.set_title(label)
    figure.suptitle("The same x_T (black dots) carried back to the data (red modes; ends: crosses)")
    written.append(save(figure, "toy2d_trajectories.png"))

    figure, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3.2))
    for axis, name in zip(axes, names):
        data, samples = results["data"][name], results["samples"][name]
        axis.scatter(data[:, 0], data[:, 1], s=1, c="0.7", label="data")
        axis.scatter(samples[:, 0], samples[:, 1], s=1, c="tab:blue", alpha=0.5, label="samples")
        square(axis, 1.5)
        axis.set_title(name)
    axes[0].legend(loc="lower left", markerscale=6, fontsize=8)
    figure.suptitle("DDPM samples (blue) against the data (grey)")
    written.append(save(figure, "toy2d_samples.png"))

    t, x_t, x0_hat = results["modes"]
    figure, axes = plt.subplots(1, 2, figsize=(8.5, 4))
    axes[0].scatter(*EIGHT_GAUSSIANS.means.T, c="crimson", s=12)
    axes[0].plot(x_t[:, 0], x_t[:, 1], c="0.6", lw=0.7, label="x_t")
    points = axes[0].scatter(x0_hat[:, 0], x0_hat[:, 1], c=t, cmap="viridis", s=8, label="E[x₀ | x_t]")
    figure.colorbar(points, ax=axes[0], label="t of E[x₀ | x_t]")
    square(axes[0], 2.0)
    axes[0].legend(loc="lower left", fontsize=8)
    distance = np.linalg.norm(x0_hat[:, None] - EIGHT_GAUSSIANS.means[None], axis=-1).min(axis=1)
    axes[1].plot(t, np.linalg.norm(x0_hat - EIGHT_GAUSSIANS.mean(), axis=1), label="from the data mean")
    axes[1].plot(t, distance, label="from the nearest mode")
    axes[1].invert_xaxis(), axes[1].set_xlabel("t (reverse time →)"), axes[1].legend(fontsize=8)
    figure.suptitle("E[x₀ | x_t] moves from the data mean to one mode as the noise comes down")
    written.append(save(figure, "toy2d_modes.png"))

    figure, axes = plt.subplots(1, 2 + len(names), figsize=(3 * (2 + len(names)), 3.4))
    for axis, (label, paths) in zip(axes, results["flow_paths"].items()):
        axis.scatter(*EIGHT_GAUSSIANS.means.T, c="crimson", s=12, zorder=3)
        axis.plot(paths[:, :, 0], paths[:, :, 1], lw=0.7, alpha=0.8)
        axis.scatter(paths[0, :, 0], paths[0, :, 1], c="k", s=6, zorder=3)
        square(axis, 2.8)
        axis.set_title(f"{label}\nlength/distance {np.median(straightness(paths)):.2f} (median)", fontsize=9)
    for axis, name in zip(axes[2:], names):
        data, samples = results["data"][name], results["flow_samples"][name]
        axis.scatter(data[:, 0], data[:, 1], s=1, c="0.7")
        axis.scatter(samples[:, 0], samples[:, 1], s=1, c="tab:green", alpha=0.5)
        square(axis, 1.5)
        axis.set_title(f"flow matching: {name}", fontsize=9)
    figure.suptitle("Flow matching: nearly straight paths from noise to data, and its samples (green)")
    written.append(save(figure, "toy2d_flow.png"))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per data set (default: %(default)s)")
    parser.add_argument("--n", type=int, default=2000, help="points per picture (default: %(default)s)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"),
                        help="folder for the PNGs (default: the repository's docs/)")
    args = parser.parse_args(argv)
    try:
        pyplot()
    except ImportError as exc:
        sys.exit(f"toy2d: {exc}")
    for path in save_figures(run(args.steps, args.n), args.out):
        print(path)


if __name__ == "__main__":
    main()
