"""Train a small diffusion model on MNIST and draw digits from it, with the Python API.

    python examples/train_mnist.py [tiny|mnist] [steps]

Defaults: the tiny U-Net, 400 steps (a few minutes on a laptop CPU; the digits are blurry
but recognisable strokes). The mnist preset is DESIGN.md's reference U-Net, about ten times
slower per step. The data is the repository's ``../shared/data/mnist`` when it exists, else
found as ``python -m minidiff train`` finds it ($MINIDIFF_DATA, the cache).

The same run from the command line::

    python -m minidiff train --preset tiny --steps 400 --batch-size 32 --lr 1e-3 --out runs/example-tiny
    python -m minidiff sample runs/example-tiny --sampler ddim --steps 50 --trajectory traj.png
"""
import sys
from pathlib import Path

from minidiff.checkpoint import CHECKPOINT_NAME, load_model
from minidiff.datasets import DataError
from minidiff.images import save_image_grid
from minidiff.sample import TrajectoryRecorder, generate
from minidiff.train import TrainConfig, Trainer

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def main(preset="tiny", steps=400):
    config = TrainConfig(preset=preset, steps=steps, batch_size=32, lr=1e-3, warmup_steps=50,
                         sample_every=steps // 2, checkpoint_every=100, out=f"runs/example-{preset}",
                         data_dir=str(SHARED_MNIST) if SHARED_MNIST.is_dir() else None)
    # Ctrl-C saves a checkpoint; running the script again continues from it.
    resume = config.out if (Path(config.out) / CHECKPOINT_NAME).exists() else None
    checkpoint = Trainer(config, resume=resume).fit()

    # Sample with the EMA weights: 16 digits with DDIM in 50 steps (Song et al. 2021), and the
    # picture of x_t and x̂₀ along the way for the first four.
    model, schedule, run_config = load_model(checkpoint)
    recorder = TrajectoryRecorder(num_steps=50)
    samples = generate(model, schedule, 16, sampler="ddim", steps=50, seed=0,
                       prediction=run_config["prediction"], callback=recorder, progress=True)
    grid = save_image_grid(samples, Path(config.out) / "final_samples.png", scale=2)
    trajectory = recorder.save(Path(config.out) / "trajectory.png")
    print(f"samples: {grid}\ntrajectory: {trajectory}")


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else "tiny", int(sys.argv[2]) if len(sys.argv) > 2 else 400)
    except DataError as exc:
        sys.exit(f"train_mnist.py: {exc}")
