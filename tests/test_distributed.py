"""Data-parallel runs (minidiff.distributed): the single-process stand-in, the row shares that make
N ranks draw what one process draws, and — where mpi4py and an MPI are installed (the ``[mpi]``
extra) — 2 ranks launched with ``mpiexec`` against one process: the same weights after training
and resuming, the same samples, one clear error for a batch that does not split, and a dying
or interrupted job ending, with the last checkpoint intact."""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from minidiff.checkpoint import load_checkpoint
from minidiff.diffusion import training_loss
from minidiff.autograd import Tensor
from minidiff.distributed import MPIWorld, World, sync_check_every
from minidiff.sample import generate
from minidiff.schedule import NoiseSchedule
from minidiff.unet import UNet

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / ".." / "shared" / "data" / "mnist"
TINY = ["--preset", "tiny", "--data-dir", str(MNIST_DIR), "--limit-data", "64", "--batch-size", "8",
        "--schedule", "cosine", "--timesteps", "20", "--sample-every", "0", "--log-every", "1"]


class Ranks(World):
    """Rank ``rank`` of ``size``, without MPI: enough to check how the work is split."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def tiny_unet():
    return UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(),
                num_groups=4, image_size=8, rng=np.random.default_rng(0))


@pytest.mark.parametrize("n, size", [(8, 2), (10, 4), (3, 4)])
def test_rows_split_a_batch_in_rank_order(n, size):
    shares = [np.arange(n)[Ranks(rank, size).rows(n)] for rank in range(size)]
    assert np.array_equal(np.concatenate(shares), np.arange(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_a_single_process_is_rank_0_of_1_and_its_collectives_return_their_input():
    world = World()
    rows = np.ones((3, 2))
    assert (world.rank, world.size, world.is_root) == (0, 1, True)
    assert world.gather_rows(rows) is rows and world.average_gradients([], 0.5) == 0.5


class FakeCommunicator:
    """Rank ``rank`` of a job whose other ranks hold ``others`` (their flat float32 buffers), as
    mpi4py's COMM_WORLD would present it to :class:`MPIWorld`: Allreduce sums every rank's buffer in place."""

    def __init__(self, rank, others):
        self.rank, self.others = rank, others

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return len(self.others) + 1

    def Allreduce(self, sendbuf, recvbuf, op):
        assert sendbuf is FAKE_MPI.IN_PLACE and op is FAKE_MPI.SUM
        recvbuf += sum(self.others)


FAKE_MPI = types.SimpleNamespace(IN_PLACE=object(), SUM=object())


def test_average_gradients_divides_the_ranks_sum_by_their_number(monkeypatch):
    # mpi4py may be absent: MPIWorld only needs its MPI.IN_PLACE and MPI.SUM, which the stand-in provides.
    monkeypatch.setitem(sys.modules, "mpi4py", types.SimpleNamespace(MPI=FAKE_MPI))
    rng = np.random.default_rng(0)
    shapes = [(2, 3), (4,)]
    grads = [[rng.standard_normal(shape).astype(np.float32) for shape in shapes] for _ in range(3)]
    losses = [0.5, 1.25, 3.0]
    others = [np.concatenate([g.ravel() for g in rank_grads] + [np.float32([loss])])
              for rank_grads, loss in zip(grads[1:], losses[1:])]
    params = [Tensor(np.zeros(shape, np.float32), requires_grad=True) for shape in shapes]
    for param, grad in zip(params, grads[0]):
        param.grad = grad.copy()
    frozen = Tensor(np.zeros(3, np.float32))  # no gradient: left out of the buffer on every rank
    loss = MPIWorld(FakeCommunicator(0, others)).average_gradients([params[0], frozen, params[1]], losses[0])
    assert loss == pytest.approx(np.mean(losses), rel=1e-7)
    for i, param in enumerate(params):
        np.testing.assert_allclose(param.grad, np.mean([rank_grads[i] for rank_grads in grads], axis=0), atol=1e-6)
    assert frozen.grad is None


def test_ranks_loss_terms_are_the_single_process_ones():
    """Each rank draws t and ε for the whole batch and keeps its rows: the mean of the ranks'
    losses is the one-process loss, and the generator ends in the same state on every rank."""
    schedule, model = NoiseSchedule.linear(T=50), tiny_unet()
    x0 = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)

    def loss(rows):
        rng = np.random.default_rng(2)
        value = float(training_loss(model, schedule, x0, rng, rows=rows).loss.item())
        return value, rng.bit_generator.state

    whole, whole_state = loss(slice(None))
    halves = [loss(Ranks(rank, 2).rows(len(x0))) for rank in range(2)]
    assert np.isclose(np.mean([value for value, _ in halves]), whole, rtol=1e-6)
    assert all(state == whole_state for _, state in halves)


@pytest.mark.parametrize("sampler, eta", [("ddim", 1.0), ("ddpm", 0.0)])
def test_ranks_shares_of_samples_are_the_single_process_rows(sampler, eta):
    """Every noise draw (x_T and each step's z) is made for all n images and sliced."""
    schedule, model = NoiseSchedule.linear(T=10), tiny_unet()
    whole = generate(model, schedule, 3, sampler, 4, eta=eta, seed=5)
    shares = [generate(model, schedule, 3, sampler, 4, eta=eta, seed=5, rows=Ranks(rank, 2).rows(3))
              for rank in range(2)]
    np.testing.assert_allclose(np.concatenate(shares), whole, rtol=1e-5, atol=1e-6)


def test_sync_check_setting_is_named_when_bad(monkeypatch):
    monkeypatch.setenv("MINIDIFF_SYNC_CHECK_EVERY", "often")
    with pytest.raises(ValueError, match="MINIDIFF_SYNC_CHECK_EVERY='often'"):
        sync_check_every()
    monkeypatch.setenv("MINIDIFF_SYNC_CHECK_EVERY", "5")
    assert sync_check_every() == 5


# ------------------------------------------------------------------ two ranks under mpiexec
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None or not MNIST_DIR.is_dir(),
    reason="needs mpi4py, mpiexec (pip install -e '.[test,mpi]') and the MNIST t10k in shared/data/mnist",
)


def launch(*argv, ranks=2, script=None, env=None, timeout=120):
    """``mpiexec -n ranks python -m minidiff argv`` (or ``python -c script argv``), one thread a rank."""
    program = ["-c", script] if script else ["-m", "minidiff"]
    env = {**os.environ, "MINIDIFF_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *program, *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def single(*argv):
    result = subprocess.run([sys.executable, "-m", "minidiff", *argv], env={**os.environ, "MINIDIFF_NUM_THREADS": "1"},
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def weights(run_dir):
    return load_checkpoint(run_dir).sections["model"]


@needs_mpi
def test_two_ranks_train_and_resume_to_the_single_process_weights(tmp_path):
    """Global batch 8 as 2 × 4: 2 steps, a checkpoint, a resume to 4 — with the parameter hashes
    compared every step — against one process with batch 8 for 4 steps."""
    check = {"MINIDIFF_SYNC_CHECK_EVERY": "1"}
    first = launch("train", *TINY, "--steps", "2", "--out", str(tmp_path / "mpi"), env=check)
    assert first.returncode == 0, first.stderr
    resumed = launch("train", "--resume", str(tmp_path / "mpi"), "--steps", "4", env=check)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("trained to step 4") == 1  # rank 0 alone reports
    single("train", *TINY, "--steps", "4", "--out", str(tmp_path / "one"))

    assert load_checkpoint(tmp_path / "mpi").step == 4
    mpi, one = weights(tmp_path / "mpi"), weights(tmp_path / "one")
    for name in one:
        np.testing.assert_allclose(mpi[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # Adam forgets a gradient's scale, so the weights alone would not see a sum for a mean: the
    # logged losses and gradient norms (the global batch's, one writer, no line twice) do.
    mpi_log, one_log = (log(tmp_path / name) for name in ("mpi", "one"))
    assert [record["step"] for record in mpi_log] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in mpi_log], [r[key] for r in one_log], rtol=1e-5, err_msg=key)


@needs_mpi
def test_two_ranks_sample_the_single_process_images(tmp_path):
    single("train", *TINY, "--steps", "1", "--out", str(tmp_path / "run"))
    flags = ["--n", "3", "--sampler", "ddpm", "--steps", "3", "--out", str(tmp_path / "grid.png")]
    result = launch("sample", str(tmp_path / "run"), *flags, "--npy", str(tmp_path / "mpi.npy"))
    assert result.returncode == 0, result.stderr
    single("sample", str(tmp_path / "run"), *flags, "--npy", str(tmp_path / "one.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "mpi.npy"), np.load(tmp_path / "one.npy"), rtol=1e-5, atol=1e-5)


@needs_mpi
def test_two_ranks_split_bpd_and_print_the_single_process_result_once(tmp_path):
    single("train", *TINY, "--steps", "1", "--out", str(tmp_path / "run"))
    flags = ["bpd", str(tmp_path / "run"), "--n", "5", "--timesteps", "3"]
    result = launch(*flags)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # rank 0 alone reports
    one = json.loads(single(*flags).stdout)
    assert json.loads(lines[0])["n"] == 5
    np.testing.assert_allclose(json.loads(lines[0])["bpd"], one["bpd"], rtol=1e-5)


@needs_mpi
def test_a_batch_that_does_not_split_over_the_ranks_is_one_clear_error(tmp_path):
    result = launch("train", *TINY, "--batch-size", "7", "--steps", "1", "--out", str(tmp_path))
    assert result.returncode != 0
    assert "minidiff train: error: batch_size (--batch-size) is the global batch and must divide by the 2 MPI " \
           "ranks, got 7" in result.stderr
    assert "Traceback" not in result.stderr


# Rank 1 dies without a word (as under the OOM killer) just before step 4; or its parameters drift.
DYING_RANK = """
import os, sys
from minidiff import train
from minidiff.__main__ import main
from minidiff.distributed import world
train_step = train.Trainer.train_step

def faulty_step(self):
    if world().rank == 1 and self.step == 3:
        if os.environ["FAULT"] == "die":
            os.kill(os.getpid(), 9)
        next(self.model.parameters()).data[0] += 1
    return train_step(self)

train.Trainer.train_step = faulty_step
sys.exit(main(sys.argv[1:]))
"""


@needs_mpi
def test_a_dying_rank_ends_the_job_and_the_last_checkpoint_is_intact(tmp_path):
    result = launch("train", *TINY, "--steps", "8", "--checkpoint-every", "2", "--out", str(tmp_path),
                    script=DYING_RANK, env={"FAULT": "die"}, timeout=60)  # a hang fails here
    assert result.returncode != 0
    assert "BAD TERMINATION" in result.stdout + result.stderr or "signal 9" in result.stdout + result.stderr
    assert load_checkpoint(tmp_path).step == 2


@needs_mpi
def test_the_sync_check_catches_ranks_whose_parameters_differ(tmp_path):
    result = launch("train", *TINY, "--steps", "8", "--out", str(tmp_path), script=DYING_RANK,
                    env={"FAULT": "drift", "MINIDIFF_SYNC_CHECK_EVERY": "2"}, timeout=60)
    assert result.returncode != 0
    assert "step 4: the parameters differ across ranks (rank 0: " in result.stderr


@needs_mpi
def test_ctrl_c_ends_the_job_with_rank_0s_checkpoint_of_the_last_step(tmp_path):
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "minidiff", "train", *TINY, "--steps", "100000",
               "--checkpoint-every", "1000", "--out", str(tmp_path)]
    job = subprocess.Popen(command, env={**os.environ, "MINIDIFF_NUM_THREADS": "1"}, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log_file, deadline = tmp_path / "log.jsonl", time.monotonic() + 60
    while not (log_file.exists() and len(log_file.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGINT)  # mpiexec passes it to every rank
    _, stderr = job.communicate(timeout=60)  # a hang fails here
    assert job.returncode == 130, stderr
    assert stderr.count("interrupted at step") == 1  # rank 0's word, once
    step = int(stderr.split("interrupted at step ")[1].split(";")[0])
    assert load_checkpoint(tmp_path).step == step == len(log_file.read_text().splitlines())
