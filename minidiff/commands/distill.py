"""The ``python -m minidiff distill`` command: a teacher's run folder in, a few-step student's run folder out.

- ``--method pd``: progressive distillation (Salimans & Ho 2022, Algorithm 2) of a DDPM teacher trained
  with --prediction v or x0, from its --teacher-steps N DDIM steps down to --to-steps K, in log₂(N/K)
  rounds of --steps-per-round optimiser steps;
- ``--method cd``: consistency distillation (Song et al. 2023) of an --objective edm teacher on a grid of
  --grid-steps noise levels, for --steps steps; the student samples with --sampler consistency;
- ``--method reflow``: reflow (Liu et al. 2023) of an --objective flow teacher on --pairs (noise, sample)
  pairs drawn by --pair-steps Heun steps, for --steps steps.

``--teacher-guidance W`` makes every method's teacher the classifier-free guided one, so the student samples
guided digits at w = 0, one evaluation per step. The student inherits the teacher's network and data
(:class:`minidiff.fewstep.Student`); the optimisation and run flags are ``train``'s, and ``--resume STUDENT``
continues a student exactly as ``train --resume`` does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import checks
from ..checkpoint import checkpoint_path, load_checkpoint
from ..config import CONFIG_FIELDS, TrainConfig
from ..distill import SPACING as PD_SPACING
from ..distill import check_prediction
from ..fewstep import STUDENTS, halvings, teacher_record
from . import train

METHODS = tuple(STUDENTS)
# Each method's own flags and their defaults (None: required).
METHOD_FLAGS = {"pd": {"to_steps": None, "teacher_steps": 64, "steps_per_round": 1000},
                "cd": {"grid_steps": 18},  # N = 18: Song et al. 2023 distil CIFAR-10 on it
                "reflow": {"pairs": 2000, "pair_steps": 50}}
TEACHER_OBJECTIVE = {"pd": "ddpm", "cd": "edm", "reflow": "flow"}
STUDENT_OBJECTIVE = {"pd": "ddpm", "cd": "consistency", "reflow": "flow"}
# What a student takes from its teacher: the network and the data, never the optimisation or the
# teacher's training distribution of noise levels.
INHERITED = tuple(name for name in TrainConfig.FIXED_ON_RESUME
                  if name not in ("batch_size", "seed", "min_snr_gamma", "p_mean", "p_std")) + ("data_dir",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("teacher", nargs="?", help="the teacher: a checkpoint .npz or a run folder holding one")
    parser.add_argument("--method", choices=METHODS, default="pd",
                        help="pd: progressive distillation (Salimans & Ho 2022); cd: consistency distillation (Song "
                             "et al. 2023); reflow (Liu et al. 2023) (default: %(default)s)")
    parser.add_argument("--to-steps", type=int, metavar="K", help="pd: the student's DDIM steps, N halved 1+ times")
    parser.add_argument("--teacher-steps", type=int, metavar="N", help="pd: the teacher's DDIM steps (default: 64)")
    parser.add_argument("--steps-per-round", type=int, metavar="S", help="pd: optimiser steps per halving (default: 1000)")
    parser.add_argument("--grid-steps", type=int, metavar="N", help="cd: noise levels of the consistency grid (default: 18)")
    parser.add_argument("--pairs", type=int, metavar="M", help="reflow: (noise, sample) pairs to draw (default: 2000)")
    parser.add_argument("--pair-steps", type=int, metavar="N", help="reflow: Heun steps per pair (default: 50)")
    parser.add_argument("--teacher-guidance", type=float, metavar="W",
                        help="the teacher's classifier-free guidance weight, distilled into the student, which then "
                             "samples at --guidance 0 (default: 0, unguided)")
    train.add_arguments(parser, skip=("model", "objective", "diffusion"))


def run(args) -> int:
    explicit = {name: value for name, value in vars(args).items() if name in CONFIG_FIELDS}
    resume = getattr(args, "resume", None)
    if resume:
        if args.teacher or args.teacher_guidance is not None or any(
                getattr(args, name) is not None for flags in METHOD_FLAGS.values() for name in flags):
            raise ValueError("--resume continues a student with its own teacher and settings; give no TEACHER or "
                             "method flags")
        checkpoint = load_checkpoint(resume)
        record = checkpoint.config.get("distill")
        if not isinstance(record, dict) or record.get("method") not in STUDENTS:
            raise ValueError(f"{checkpoint.path} is not a distilled student; continue it with train --resume")
        if record["method"] == "pd" and checkpoint.step >= checkpoint.config["steps"]:
            raise ValueError(f"student {checkpoint.path} is fully distilled (step {checkpoint.step}); nothing to do")
        config = TrainConfig.from_checkpoint(checkpoint, **explicit)
        trainer = STUDENTS[record["method"]](config, record, resume=checkpoint)
    else:
        config, record = student_config(args, explicit)
        trainer = STUDENTS[args.method](config, record)
    path = trainer.fit()
    if trainer.world.is_root:
        print(f"{args.method if not resume else trainer.record['method']} student trained to step {trainer.step} in "
              f"{trainer.elapsed_s:.0f} s; checkpoint {path}")
    return 0


def method_settings(args) -> dict:
    """The chosen method's flags with their defaults; another method's flag is refused, naming it."""
    for method, flags in METHOD_FLAGS.items():
        for name in flags:
            if method != args.method and getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to --method {method}, not {args.method}")
    settings = {name: default if getattr(args, name) is None else getattr(args, name)
                for name, default in METHOD_FLAGS[args.method].items()}
    for name, value in settings.items():
        if value is None:
            raise ValueError(f"--method {args.method} needs --{name.replace('_', '-')}")
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return settings


def teacher_guidance(w, teacher) -> float:
    """w, refused in one line unless it is a finite number ≥ 0 and ``teacher`` has a null class to guide against."""
    w = checks.real(w, "--teacher-guidance", 0.0)
    if w and not (teacher.config.get("num_classes") and teacher.config.get("p_uncond")):
        raise ValueError(f"--teacher-guidance needs a class-conditional teacher with a null class (trained with "
                         f"--num-classes and --p-uncond > 0); {teacher.path} has none")
    return w


def student_config(args, explicit: dict):
    """(the student's TrainConfig, its distill record) for a fresh student of ``args.teacher``."""
    if not args.teacher:
        raise ValueError("give the TEACHER run folder (or --resume STUDENT)")
    settings = method_settings(args)
    teacher = load_checkpoint(args.teacher)
    objective = teacher.config["objective"]
    if objective != TEACHER_OBJECTIVE[args.method]:
        raise ValueError(f"--method {args.method} distils an --objective {TEACHER_OBJECTIVE[args.method]} teacher; "
                         f"{teacher.path} was trained with --objective {objective}")
    inherited = {name: teacher.config[name] for name in INHERITED if name in teacher.config}
    inherited["objective"] = STUDENT_OBJECTIVE[args.method]
    if args.method == "pd":
        check_prediction(teacher.config["prediction"])
        if not settings["teacher_steps"] <= teacher.config["timesteps"]:
            raise ValueError(f"--teacher-steps {settings['teacher_steps']} exceeds the teacher's "
                             f"{teacher.config['timesteps']} timesteps")
        if "steps" in explicit:
            raise ValueError("--method pd trains --steps-per-round steps in each of its rounds; give no --steps")
        explicit["steps"] = halvings(settings["teacher_steps"], settings["to_steps"]) * settings["steps_per_round"]
        settings["spacing"] = PD_SPACING
    if args.teacher_guidance:
        settings["teacher_guidance"] = teacher_guidance(args.teacher_guidance, teacher)
    suffix = settings.get("to_steps", "")
    out = explicit.pop("out", None) or f"{checkpoint_path(args.teacher).parent}-{args.method}{suffix}"
    config = TrainConfig(**{**inherited, **explicit, "out": str(Path(out))})
    return config, teacher_record(args.method, args.teacher, **settings)
