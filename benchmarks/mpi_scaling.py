"""Data-parallel throughput of the mnist U-Net: run as ``mpiexec -n N python benchmarks/mpi_scaling.py``
(or plainly for one process). Rank 0 prints one JSON line: images/s over the timed steps, the
share of step time spent in the gradient average (its Allreduce, waiting for the slower rank
included), and a bare in-place Allreduce of the same 6.5 MB buffer after a barrier (the transfer
alone)."""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from minidiff.backend import num_threads, performance_settings
from minidiff.train import TrainConfig, Trainer

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(preset="mnist", data_dir=str(DATA_DIR), limit_data=2048, batch_size=args.batch_size, out=out)
        trainer = Trainer(config, progress=False)
    world = trainer.world
    averaging, average = [], world.average_gradients

    def timed_average(params, loss):
        start = time.perf_counter()
        result = average(params, loss)
        averaging.append(time.perf_counter() - start)
        return result

    world.average_gradients = timed_average
    steps = []
    # as Trainer.fit runs its steps: outside, each rank's BLAS threads share the cores with the
    # other rank's, and a step took 12× longer in some runs (2 ranks on 2 cores)
    with performance_settings():
        trainer.train_step()  # warm-up: first-touch allocations, thread pools
        averaging.clear()
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer.train_step()
            steps.append(time.perf_counter() - start)

    bare = bare_allreduce_s(world, sum(p.size for p in trainer.model.parameters()) + 1)
    if world.is_root:
        step_s = statistics.median(steps)
        print(json.dumps(dict(ranks=world.size, threads_per_rank=num_threads(), batch=args.batch_size,
                              step_s=round(step_s, 4), images_per_s=round(args.batch_size / step_s, 1),
                              allreduce_share=round(sum(averaging) / sum(steps), 4),
                              bare_allreduce_ms=round(bare * 1e3, 2))))


def bare_allreduce_s(world, size: int, repeats: int = 10) -> float:
    """Median time of one in-place float32 Allreduce of ``size`` elements (0 in one process)."""
    if world.size == 1:
        return 0.0
    from mpi4py import MPI

    buffer, times = np.ones(size, dtype=np.float32), []
    for _ in range(repeats):
        world.comm.Barrier()
        start = time.perf_counter()
        world.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
