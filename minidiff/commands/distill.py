"""The ``python -m minidiff distill`` command: a teacher's run folder in, a few-step student's run folder out.

``--method pd``: progressive distillation (Salimans & Ho 2022, Algorithm 2) of a DDPM teacher trained
with --prediction v or x0, from its --teacher-steps N DDIM steps down to --to-steps K, in log₂(N/K)
rounds of --steps-per-round optimiser steps (:class:`minidiff.fewstep.ProgressiveDistiller`).
The student inherits the teacher's network, schedule and data; the optimisation and run flags are
``train``'s, and ``--resume STUDENT`` continues a student exactly as ``train --resume`` does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import checkpoint_path, load_checkpoint
from ..config import CONFIG_FIELDS, FIXED_ON_RESUME, TrainConfig
from ..distill import check_prediction
from ..fewstep import ProgressiveDistiller, halvings, pd_record
from . import train

METHODS = ("pd",)
# What a student takes from its teacher: the network, the schedule and the data, never the optimisation.
INHERITED = tuple(name for name in FIXED_ON_RESUME if name not in ("batch_size", "seed", "min_snr_gamma")) + ("data_dir",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("teacher", nargs="?", help="the teacher: a checkpoint .npz or a run folder holding one")
    parser.add_argument("--method", choices=METHODS, default="pd",
                        help="pd: progressive distillation (Salimans & Ho 2022) (default: %(default)s)")
    parser.add_argument("--to-steps", type=int, metavar="K", help="the student's sampling steps: N halved 1+ times")
    parser.add_argument("--teacher-steps", type=int, default=64, metavar="N",
                        help="the teacher's DDIM steps the first student halves (default: %(default)s)")
    parser.add_argument("--steps-per-round", type=int, default=1000, metavar="S",
                        help="optimiser steps per halving (default: %(default)s)")
    train.add_arguments(parser, skip=("model", "diffusion", "steps"))


def run(args) -> int:
    explicit = {name: value for name, value in vars(args).items() if name in CONFIG_FIELDS}
    resume = getattr(args, "resume", None)
    if resume:
        if args.teacher or args.to_steps is not None:
            raise ValueError("--resume continues a student with its own teacher and steps; give no TEACHER or --to-steps")
        checkpoint = load_checkpoint(resume)
        record = checkpoint.config.get("distill")
        if not isinstance(record, dict):
            raise ValueError(f"{checkpoint.path} is not a distilled student; continue it with train --resume")
        if checkpoint.step >= checkpoint.config["steps"]:
            raise ValueError(f"student {checkpoint.path} is fully distilled (step {checkpoint.step}); nothing to do")
        config = TrainConfig.from_checkpoint(checkpoint, **explicit)
        trainer = ProgressiveDistiller(config, record, resume=checkpoint)
    else:
        trainer = ProgressiveDistiller(*student_config(args, explicit))
    path = trainer.fit()
    if trainer.world.is_root:
        print(f"distilled to {trainer.student_steps()} steps at step {trainer.step} in {trainer.elapsed_s:.0f} s; "
              f"checkpoint {path}")
    return 0


def student_config(args, explicit: dict):
    """(the student's TrainConfig, its distill record) for a fresh student of ``args.teacher``."""
    if not args.teacher:
        raise ValueError("give the TEACHER run folder (or --resume STUDENT)")
    if args.to_steps is None:
        raise ValueError("give --to-steps K, the student's sampling steps")
    if args.steps_per_round < 1:
        raise ValueError(f"--steps-per-round must be a positive integer, got {args.steps_per_round}")
    teacher = load_checkpoint(args.teacher)
    check_prediction(teacher.config["prediction"])
    if not args.teacher_steps <= teacher.config["timesteps"]:
        raise ValueError(f"--teacher-steps {args.teacher_steps} exceeds the teacher's {teacher.config['timesteps']} "
                         "timesteps")
    rounds = halvings(args.teacher_steps, args.to_steps)
    inherited = {name: teacher.config[name] for name in INHERITED if name in teacher.config}
    out = explicit.pop("out", None) or f"{checkpoint_path(args.teacher).parent}-pd{args.to_steps}"
    config = TrainConfig(**{**inherited, **explicit, "steps": rounds * args.steps_per_round, "out": str(Path(out))})
    return config, pd_record(args.teacher, args.teacher_steps, args.to_steps, args.steps_per_round)
