"""Few-step students as ordinary training runs: a :class:`~minidiff.train.Trainer` whose loss has a teacher.

A student's run folder is a training run's (config.json, checkpoint.npz, log.jsonl, previews), so
``sample``, ``eval`` and ``figures`` read it as they read any other, and it resumes exactly as
``train`` does: the same checkpoint, the same random streams. Its config adds a ``"distill"``
record: the method, the teacher's checkpoint and its SHA-256 (a teacher that changed since is
refused on resume), and the step counts.

:class:`ProgressiveDistiller` runs the rounds of Salimans & Ho 2022, Algorithm 2 (the loss is
:func:`minidiff.distill.distillation_loss`): round r trains a student of N/2^(r+1) steps for
``steps_per_round`` optimiser steps from a copy of its teacher (θ ← η), and its weights then
become the next round's teacher (η ← θ), written to ``teacher_steps<n>.npz`` in the run folder so
that a run resumed mid-round finds it. Each round starts with a fresh Adam and EMA.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

from .checkpoint import CheckpointError, checkpoint_path, load_checkpoint, load_model
from .distill import check_prediction, distillation_loss
from .distill import SPACING as PD_SPACING
from .files import load_npz, save_npz
from .optim import EMA, Adam
from .train import Trainer
from .unet import as_denoiser


def fingerprint(path) -> str:
    """SHA-256 of a checkpoint file: what a student records of its teacher."""
    digest = hashlib.sha256()
    with open(checkpoint_path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_teacher(record: dict, device: str = "cpu"):
    """(teacher model, its run config) of a student's record, refused in one line when the file is
    missing, corrupt, or no longer the one the student began from."""
    path = Path(record["teacher"])
    checkpoint = load_checkpoint(path)  # missing or corrupt: CheckpointError naming the file
    if fingerprint(path) != record["teacher_fingerprint"]:
        raise CheckpointError(f"teacher checkpoint {checkpoint.path} changed since this student began from it "
                              f"(SHA-256 {record['teacher_fingerprint'][:12]}…); restore that file or start a new student")
    model, _, config = load_model(checkpoint, ema=True, device=device)
    return model, config


def halvings(teacher_steps: int, to_steps: int) -> int:
    """log₂(N/K): the rounds from a teacher of N steps to a student of K, refused unless K = N/2^m, m ≥ 1."""
    rounds = math.log2(teacher_steps / to_steps) if teacher_steps >= 1 and to_steps >= 1 else 0.5
    if rounds < 1 or rounds != int(rounds):
        raise ValueError(f"--to-steps {to_steps} must be the teacher's --teacher-steps {teacher_steps} halved one or "
                         f"more times (a power of two below it)")
    return int(rounds)


def pd_record(teacher, teacher_steps: int, to_steps: int, steps_per_round: int) -> dict:
    """The ``"distill"`` entry of a progressive-distillation student's config."""
    return dict(method="pd", teacher=str(checkpoint_path(teacher).resolve()), teacher_fingerprint=fingerprint(teacher),
                teacher_steps=teacher_steps, to_steps=to_steps, steps_per_round=steps_per_round, spacing=PD_SPACING)


class ProgressiveDistiller(Trainer):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2) of ``record``'s teacher, run by ``config``.

    ``config.steps`` must be ``steps_per_round`` times the rounds, log₂(N/K). A fresh student starts as
    a copy of the teacher's EMA weights; ``resume`` continues a student's checkpoint.
    """

    command = "distill"

    def __init__(self, config, record: dict, data=None, resume=None, progress: bool = True):
        super().__init__(config, data=data, resume=resume, progress=progress)
        check_prediction(config.prediction)
        self.record = self.run_config["distill"] = dict(record)
        rounds = halvings(record["teacher_steps"], record["to_steps"])
        if config.steps != rounds * record["steps_per_round"]:
            raise ValueError(f"--steps {config.steps} must be {rounds} rounds of {record['steps_per_round']}")
        self.teacher, _ = load_teacher(record, self.device)
        if resume is None:
            self._start_round(self.teacher)  # θ ← η
        elif not self._round_starts() and self.round() > 0:  # mid-round: that round's teacher
            self.teacher.load_state_dict(self._teacher_file(self.round()))

    def round(self) -> int:
        """The round the next optimiser step belongs to (the last one once training is done)."""
        return min(self.step // self.record["steps_per_round"], halvings(self.record["teacher_steps"],
                                                                           self.record["to_steps"]) - 1)

    def student_steps(self) -> int:
        """N/2^(r+1): the DDIM steps this round's student learns to sample in."""
        return self.record["teacher_steps"] >> (self.round() + 1)

    def _teacher_file(self, round_: int, state=None):
        """``teacher_steps<n>.npz``, round ``round_``'s teacher (n = its steps): written when ``state`` is given."""
        path = self.folder.path / f"teacher_steps{self.record['teacher_steps'] >> round_}.npz"
        if state is not None:
            return save_npz(state, path)
        if not path.exists():
            raise CheckpointError(f"{path} is missing: round {round_}'s teacher, written when the round began")
        return load_npz(path)

    def _start_round(self, teacher):
        """θ ← η: the student starts as a copy of ``teacher``, with a fresh Adam and EMA."""
        self.model.load_state_dict(teacher.state_dict())
        self.ema = EMA(self.model, decay=self.config.ema_decay)
        self.optimizer = Adam(self.model, lr=self.config.lr)

    def _round_starts(self) -> bool:
        """Whether the next optimiser step begins a round after the first."""
        return 0 < self.step < self.config.steps and self.step % self.record["steps_per_round"] == 0

    def train_step(self):
        if self._round_starts():  # η ← θ, N ← N/2
            state = self.model.state_dict()
            if self.world.is_root:
                self._teacher_file(self.round(), state)
            self.teacher.load_state_dict(state)
            self._start_round(self.teacher)
        return super().train_step()

    def objective(self, model, x0, labels, rows):
        return distillation_loss(model, as_denoiser(self.teacher, labels), self.schedule, x0, self.rng,
                                 student_steps=self.student_steps(), prediction=self.config.prediction,
                                 device=self.device, rows=rows).loss

    def preview_sampler(self) -> dict:
        return dict(sampler="ddim", steps=self.student_steps(), spacing=PD_SPACING)
