"""The command line: ``python -m minidiff <command> …`` (or the ``minidiff`` script).

Each command is a module exposing ``add_arguments(parser)`` and ``run(args) -> exit status``;
this file only wires them to subparsers. To add one, append ``(name, module, help)`` to
:data:`COMMANDS`.

Errors the user can fix — a bad flag value, a missing data folder, a corrupt checkpoint or one
of another model, an unavailable device — are reported as one line, ``minidiff <command>: error:
…``, with exit status 2, never as a traceback. Under ``mpirun`` a rank that exits with an error
ends the whole job (:mod:`minidiff.distributed`), so no rank is left waiting for it.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from . import bench
from .backend import DeviceError, performance_settings
from .commands import autoencoder, bpd, distill, evaluate, figures, sample, train
from .distributed import world
from .runfolder import RunFolderBusy
from .train import DivergenceError

COMMANDS = [
    ("train", train, "train a diffusion model (Ho et al. 2020, Algorithm 1)"),
    ("sample", sample, "draw images from a trained checkpoint"),
    ("distill", distill, "distil a teacher into a few-step student: progressive distillation, consistency distillation, reflow"),
    ("autoencoder", autoencoder, "train the KL autoencoder whose latents train --latent diffuses (Rombach et al. 2022)"),
    ("eval", evaluate, "score samples of a checkpoint: FID, Inception Score, precision/recall"),
    ("figures", figures, "draw the denoising trajectory and the spectral view of a checkpoint (PNG)"),
    ("bpd", bpd, "bits/dim of held-out images under the variational bound (Ho et al. 2020, Eq. 3)"),
    ("bench", bench, "time the U-Net's training step and forward pass (JSON)"),
]

# The library's own errors carry messages meant for the user: DataError and CheckpointError are
# ValueErrors, DeviceError, DivergenceError and RunFolderBusy RuntimeErrors; OSError covers e.g. an unwritable --out.
USER_ERRORS = (ValueError, OSError, DeviceError, DivergenceError, RunFolderBusy)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are the one line ``<prog>: error: <message>`` (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")

    def exit(self, status=0, message=None):
        if message:
            self._print_message(message, sys.stderr)
        world().end_job(status)
        sys.exit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minidiff", description="minidiff: diffusion models from scratch on NumPy.")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module, help in COMMANDS:
        subparser = subparsers.add_parser(name, help=help, description=help)
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run, parser=subparser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.print_help()
        return 0
    if unknown:  # reported by the command's parser, so the message names the command
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    with warnings.catch_warnings():
        # A warning (e.g. "training on the t10k images") is news for the user, not for a developer:
        # one line, without the source line that Python's default format appends.
        warnings.showwarning = lambda message, *_, **__: print(f"{args.parser.prog}: warning: {message}", file=sys.stderr)
        try:
            with performance_settings():  # BLAS on one thread, the allocator tuned: see backend.py
                return args.run(args)
        except USER_ERRORS as exc:
            args.parser.error(exc)  # exits with status 2
        except KeyboardInterrupt:
            print(f"{args.parser.prog}: interrupted", file=sys.stderr)
            world().end_job(130, interrupted=True)
            return 130  # the conventional status of a process stopped by SIGINT


if __name__ == "__main__":
    sys.exit(main())
