"""Few-step students as ordinary training runs: a :class:`~minidiff.train.Trainer` whose loss has a teacher.

A student's run folder is a training run's (config.json, checkpoint.npz, log.jsonl, previews), so
``sample``, ``eval`` and ``figures`` read it as they read any other, and it resumes exactly as ``train``
does: the same checkpoint, the same random streams. Its config adds a ``"distill"`` record: the method,
the teacher's checkpoint and its SHA-256 (a teacher that changed since is refused on resume), and the
method's settings. A fresh student starts as a copy of its teacher's EMA weights (θ ← η).

- :class:`ProgressiveDistiller` (``pd``): the rounds of Salimans & Ho 2022, Algorithm 2
  (:func:`minidiff.distill.distillation_loss`). Round r trains a student of N/2^(r+1) steps for
  ``steps_per_round`` optimiser steps from a copy of its teacher, and its weights then become the next
  round's teacher (η ← θ), written to ``teacher_steps<n>.npz`` so that a run resumed mid-round finds
  it. Each round starts with a fresh Adam and EMA.
- :class:`ConsistencyDistiller` (``cd``): consistency distillation of an EDM teacher (Song et al. 2023,
  Algorithm 2; :func:`minidiff.consistency.consistency_loss` with the teacher's Heun step); the student
  is an ``--objective consistency`` model.
- :class:`Reflower` (``reflow``): Liu et al. 2023's reflow of a flow model; the (noise, sample) pairs are
  drawn once into ``pairs.npz`` (:mod:`minidiff.reflow` says why stored) and the student, a flow model,
  is trained on them.

With ``teacher_guidance`` w > 0 in the record, every method's teacher is the classifier-free guided one
(:func:`minidiff.guidance.guided_denoiser`), so the student learns the guided sampler and draws guided
digits in one evaluation per step, at w = 0 (the fixed-w case of Meng et al. 2023's guided distillation).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, checkpoint_path, load_checkpoint, load_model
from .consistency import consistency_function, consistency_loss, consistency_sigmas
from .distill import SPACING as PD_SPACING
from .distill import check_prediction, distillation_loss
from .files import load_npz, save_npz
from .guidance import guided_denoiser
from .objectives import edm, flow
from .optim import EMA, Adam
from .sample import class_labels, generate
from .train import Trainer

PAIRS_NAME = "pairs.npz"


def fingerprint(path) -> str:
    """SHA-256 of a file: what a student records of its teacher's checkpoint and of its pairs."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_record(method: str, teacher, **settings) -> dict:
    """The ``"distill"`` entry of a student's config: the method, the teacher's file and SHA-256, the settings."""
    path = checkpoint_path(teacher).resolve()
    return dict(method=method, teacher=str(path), teacher_fingerprint=fingerprint(path), **settings)


def halvings(teacher_steps: int, to_steps: int) -> int:
    """log₂(N/K): the rounds from a teacher of N steps to a student of K, refused unless K = N/2^m, m ≥ 1."""
    rounds = math.log2(teacher_steps / to_steps) if teacher_steps >= 1 and to_steps >= 1 else 0.5
    if rounds < 1 or rounds != int(rounds):
        raise ValueError(f"--to-steps {to_steps} must be the teacher's --teacher-steps {teacher_steps} halved one or "
                         f"more times (a power of two below it)")
    return int(rounds)


class Student(Trainer):
    """A run of ``config`` that learns from ``record``'s teacher; ``resume`` continues a student's checkpoint."""

    command = "distill"

    def __init__(self, config, record: dict, data=None, resume=None, progress: bool = True):
        self.record = dict(record)
        self.teacher, self.teacher_schedule, self.teacher_config = self._load_teacher(config.device)
        super().__init__(config, data=data, resume=resume, progress=progress)
        self.run_config["distill"] = self.record
        if resume is None:
            self._start_from(self.teacher)  # θ ← η

    def _load_teacher(self, device):
        """(teacher model, its schedule, its run config), refused in one line when its file is missing, corrupt, or no
        longer the one this student began from."""
        path = Path(self.record["teacher"])
        checkpoint = load_checkpoint(path)  # missing or corrupt: CheckpointError naming the file
        if fingerprint(checkpoint.path) != self.record["teacher_fingerprint"]:
            raise CheckpointError(f"teacher checkpoint {checkpoint.path} changed since this student began from it "
                                  f"(SHA-256 {self.record['teacher_fingerprint'][:12]}…); restore that file or start "
                                  "a new student")
        return load_model(checkpoint, ema=True, device=device)

    def guided_teacher(self, labels):
        """The teacher as the samplers' ``model(x_t, t)`` towards ``labels``, guided with the record's weight w."""
        return guided_denoiser(self.teacher, labels, self.record.get("teacher_guidance", 0.0))

    def _start_from(self, teacher):
        """The student becomes a copy of ``teacher``, with a fresh Adam and EMA."""
        self.model.load_state_dict(teacher.state_dict())
        self.ema = EMA(self.model, decay=self.config.ema_decay)
        self.optimizer = Adam(self.model, lr=self.config.lr)


class ProgressiveDistiller(Student):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2); ``config.steps`` is ``steps_per_round``
    times the rounds, log₂(N/K)."""

    def __init__(self, config, record: dict, data=None, resume=None, progress: bool = True):
        check_prediction(config.prediction)
        self.rounds = halvings(record["teacher_steps"], record["to_steps"])
        if config.steps != self.rounds * record["steps_per_round"]:
            raise ValueError(f"--steps {config.steps} must be {self.rounds} rounds of {record['steps_per_round']}")
        super().__init__(config, record, data=data, resume=resume, progress=progress)
        if resume is not None and not self._round_starts() and self.round() > 0:  # mid-round: that round's teacher
            self.teacher.load_state_dict(self._teacher_file(self.round()))

    def round(self) -> int:
        """The round the next optimiser step belongs to (the last one once training is done)."""
        return min(self.step // self.record["steps_per_round"], self.rounds - 1)

    def student_steps(self) -> int:
        """N/2^(r+1): the DDIM steps this round's student learns to sample in."""
        return self.record["teacher_steps"] >> (self.round() + 1)

    def _round_starts(self) -> bool:
        """Whether the next optimiser step begins a round after the first."""
        return 0 < self.step < self.config.steps and self.step % self.record["steps_per_round"] == 0

    def _teacher_file(self, round_: int, state=None):
        """``teacher_steps<n>.npz``, round ``round_``'s teacher (n = its steps): written when ``state`` is given."""
        path = self.folder.path / f"teacher_steps{self.record['teacher_steps'] >> round_}.npz"
        if state is not None:
            return save_npz(state, path)
        if not path.exists():
            raise CheckpointError(f"{path} is missing: round {round_}'s teacher, written when the round began")
        return load_npz(path)

    def train_step(self):
        if self._round_starts():  # η ← θ, N ← N/2
            state = self.model.state_dict()
            if self.world.is_root:
                self._teacher_file(self.round(), state)
            self.teacher.load_state_dict(state)
            self._start_from(self.teacher)
        return super().train_step()

    def objective(self, model, x0, labels, rows):
        return distillation_loss(model, self.guided_teacher(labels), self.schedule, x0, self.rng,
                                 student_steps=self.student_steps(), prediction=self.config.prediction,
                                 device=self.device, rows=rows).loss

    def preview_sampler(self) -> dict:
        return dict(sampler="ddim", steps=self.student_steps(), spacing=PD_SPACING)


class ConsistencyDistiller(Student):
    """Consistency distillation (Song et al. 2023, Algorithm 2) of an EDM teacher on ``record["grid_steps"]``
    levels, pairs drawn uniformly; the student is an ``--objective consistency`` model."""

    def objective(self, model, x0, labels, rows):
        teacher = edm.denoiser(self.guided_teacher(labels), self.teacher_config["sigma_data"])
        return consistency_loss(consistency_function(model, self.config.sigma_data), x0, self.rng,
                                sigmas=consistency_sigmas(self.record["grid_steps"]),
                                teacher=teacher, device=self.device, rows=rows).loss


class Reflower(Student):
    """Reflow (Liu et al. 2023) of a flow teacher: ``record["pairs"]`` pairs (ε, the teacher's sample of ε by
    ``record["pair_steps"]`` Heun steps) in ``pairs.npz``, and flow matching on them. Each example the batcher
    draws is a pair stacked on the channel axis."""

    def training_data(self, data):
        """The pairs stacked on the channel axis (``data`` if given), checked as the teacher's images."""
        return super().training_data(self._pairs() if data is None else data)

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        path = self.folder.path / PAIRS_NAME
        if "pairs_fingerprint" in self.record:  # a resumed student: the very pairs it drew
            if not path.exists() or fingerprint(path) != self.record["pairs_fingerprint"]:
                raise CheckpointError(f"{path} is missing or changed since this student drew it; start a new student")
            pairs = load_npz(path)
        else:  # a fresh student draws its pairs once (every MPI rank alike; rank 0 keeps them)
            pairs = self._draw_pairs()
            if self.world.is_root:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_npz(pairs, path)
                self.record["pairs_fingerprint"] = fingerprint(path)
        return np.concatenate([pairs["x0"], pairs["noise"]], axis=1), pairs["labels"]

    def _draw_pairs(self) -> dict:
        """{x0, noise, labels}: ε ∼ N(0, I) from the run's seed, and the teacher's (guided) Heun sample of each."""
        n, config = self.record["pairs"], self.teacher_config
        image = (config["model"]["in_channels"], config["model"]["image_size"], config["model"]["image_size"])
        noise = np.random.default_rng((self.config.seed, 1)).standard_normal((n, *image)).astype(np.float32)
        labels = class_labels(n, config["num_classes"])
        x0 = generate(self.teacher, self.teacher_schedule, n, "heun", self.record["pair_steps"], x_T=noise,
                      labels=labels, objective="flow", guidance=self.record.get("teacher_guidance", 0.0),
                      progress=self.progress)
        return dict(x0=x0, noise=noise, labels=np.zeros(n, np.int64) if labels is None else labels)

    def _check_data(self, images, labels, dataset_classes):
        super()._check_data(images[:, : images.shape[1] // 2], labels, dataset_classes)

    def objective(self, model, pairs, labels, rows):
        channels = pairs.shape[1] // 2
        return flow.training_loss(model, pairs[:, :channels], self.rng, t_distribution=self.config.t_distribution,
                                  noise=pairs[:, channels:], device=self.device, rows=rows).loss


STUDENTS = {"pd": ProgressiveDistiller, "cd": ConsistencyDistiller, "reflow": Reflower}
