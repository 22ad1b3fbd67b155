"""The ``sample`` flags for guidance and editing: ``--label all``, ``--guidance``, ``--init`` with
``--strength`` (SDEdit) or ``--mask`` (RePaint), ``--interpolate`` and ``--interpolate-images``;
:func:`plan` turns them into what :func:`minidiff.sample.generate` draws."""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from ..editing import interpolation_path
from ..images import load_image
from ..objectives import OdeOptions
from ..sample import DETERMINISTIC, INPAINTING_SAMPLERS, class_labels, denoising_steps, encode, seed_noise

DEFAULT_STRENGTH = 0.6  # SDEdit's middle ground between faithful to the guide and realistic (Meng et al. 2022)


def label_flag(text: str):
    """``--label``: a class index or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index or 'all', got {text!r}") from None


def add_guidance_argument(parser: argparse.ArgumentParser) -> None:
    """``--guidance W``, shared by ``sample`` and ``eval`` so that eval scores what sample shows."""
    parser.add_argument("--guidance", type=float, default=0.0, metavar="W",
                        help="classifier-free guidance weight w: eps = (1+w) eps(x, c) - w eps(x, null); needs a "
                             "checkpoint trained with --p-uncond (default: %(default)s, plain conditional)")


def check_guidance(args, model=None) -> None:
    """Refuse a ``--guidance`` that is not a finite w >= 0, or (given the ``model``) one its checkpoint cannot
    follow: guidance needs the null class of a model trained with label dropout."""
    if not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ValueError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if model is not None and args.guidance and model.null_label is None:
        kind = "unconditional" if model.num_classes is None else "class-conditional without a null class"
        raise ValueError(f"--guidance needs a checkpoint trained with --num-classes and --p-uncond; this one is {kind}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", type=label_flag, default=None,
                        help="class to draw, for class-conditional checkpoints; 'all': one row of --n samples per "
                             "class (default: cycle through 0..K-1)")
    add_guidance_argument(parser)
    parser.add_argument("--init", default=None, metavar="PNG",
                        help="img2img (SDEdit): noise this image to --strength and denoise it; with --mask, inpaint it")
    parser.add_argument("--strength", type=float, default=None,
                        help=f"SDEdit: 0 returns --init, 1 starts from (almost) pure noise (default: {DEFAULT_STRENGTH})")
    parser.add_argument("--mask", default=None, metavar="PNG",
                        help="inpainting (RePaint): repaint the white pixels of this mask of --init, keep the black "
                             "ones; --sampler ddpm or ddim (RePaint), or an ODE sampler")
    parser.add_argument("--jump-length", type=int, default=1, help="RePaint resampling: jump back N steps (paper: 10)")
    parser.add_argument("--jump-n-sample", type=int, default=1,
                        help="RePaint resampling: go through each jump N times (paper: 10; 1: no resampling)")
    parser.add_argument("--interpolate", type=int, nargs=2, default=None, metavar=("SEED_A", "SEED_B"),
                        help="--n images along the arc between the x_T of two seeds (deterministic samplers)")
    parser.add_argument("--interpolate-images", nargs=2, default=None, metavar=("A.png", "B.png"),
                        help="--n images along the arc between the DDIM encodings of two images")


def check_arguments(args) -> None:
    """Refuse editing flags that cannot go together, naming them (before the checkpoint is read)."""
    check_guidance(args)
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise ValueError(f"--strength must lie in [0, 1], got {args.strength}")
    if args.jump_length < 1 or args.jump_n_sample < 1:
        raise ValueError(f"--jump-length and --jump-n-sample must be at least 1, got {args.jump_length} and "
                         f"{args.jump_n_sample}")
    edits = [flag for flag, value in (("--init", args.init), ("--interpolate", args.interpolate),
                                      ("--interpolate-images", args.interpolate_images)) if value is not None]
    if len(edits) > 1:
        raise ValueError(f"{' and '.join(edits)} cannot be combined; give one of them")
    needs_init = [flag for flag, given in (("--strength", args.strength is not None), ("--mask", args.mask))
                  if given and args.init is None]
    if needs_init:
        raise ValueError(f"{needs_init[0]} edits an image: give it with --init")
    if args.mask and args.strength is not None:
        raise ValueError("--strength is SDEdit's; --mask inpaints from pure noise and takes no --strength")
    if (args.jump_length, args.jump_n_sample) != (1, 1) and not args.mask:
        raise ValueError("--jump-length and --jump-n-sample are RePaint's resampling: they need --mask")
    if args.mask and (args.sampler or "ddim") not in INPAINTING_SAMPLERS:
        raise ValueError(f"--mask inpaints with RePaint's ancestral steps or an ODE sampler's: use sampler "
                         f"{', '.join(INPAINTING_SAMPLERS[:-1])} or {INPAINTING_SAMPLERS[-1]}, not {args.sampler} "
                         "(--sampler)")
    if edits and edits[0].startswith("--interpolate"):
        if (args.sampler or "ddim") not in DETERMINISTIC or args.eta:
            raise ValueError(f"{edits[0]} needs a deterministic sampler ({', '.join(DETERMINISTIC)}; ddim with --eta 0), "
                             f"not --sampler {args.sampler}" + (f" --eta {args.eta}" if args.eta else ""))
        if args.label == "all":
            raise ValueError(f"{edits[0]} draws one class: give --label K, not --label all")


def input_files(args) -> list[tuple[str, str]]:
    """(flag, path) of the images the editing flags read: what no output may overwrite."""
    return [("--init", args.init), ("--mask", args.mask),
            *(("--interpolate-images", path) for path in args.interpolate_images or ())]


@dataclass
class Plan:
    """What to draw: ``n`` images with ``labels``, the grid's ``nrow``, generate()'s editing keywords,
    and the model ``steps`` each batch takes (what a trajectory picture spreads its columns over)."""

    n: int
    labels: object
    nrow: int | None
    options: dict = field(default_factory=dict)
    steps: int = 0


def plan(args, model, schedule, drawn_as: dict, num_steps: int) -> Plan:
    """The images ``args`` asks for, refused in one line where the checkpoint cannot make them; ``drawn_as``
    holds the checkpoint's prediction, objective and σ_data (:func:`minidiff.commands.sample.checkpoint_options`)."""
    num_classes = model.num_classes
    check_guidance(args, model)
    options = dict(guidance=args.guidance)
    channels, size = model.config["in_channels"], model.config["image_size"]
    if args.interpolate or args.interpolate_images:
        labels = _one_label(args.n, model, args.label, "--interpolate" if args.interpolate else "--interpolate-images")
        if args.interpolate:
            ends = [seed_noise(seed, (channels, size, size)) for seed in args.interpolate]
        else:
            images = np.stack([_image(path, "--interpolate-images", channels, size)[0] for path in args.interpolate_images])
            ends = np.split(encode(model, schedule, images, num_steps, None if labels is None else labels[:2],
                                   args.guidance, sampler=args.sampler, ode_options=OdeOptions.from_args(args),
                                   **drawn_as), 2)
        options["x_T"] = interpolation_path(*ends, args.n)
        return Plan(args.n, labels, args.n, options, num_steps)

    if args.label == "all":
        if num_classes is None:
            raise ValueError("--label needs a class-conditional checkpoint (one trained with --num-classes)")
        n, labels, nrow = args.n * num_classes, np.repeat(np.arange(num_classes), args.n), args.n
    else:
        n, labels = args.n, class_labels(args.n, num_classes, args.label)
        # One class per column when the labels cycle through all of them.
        nrow = num_classes if labels is not None and args.label is None and args.n >= num_classes else None
    if args.init:
        options["init"], (width, height) = _image(args.init, "--init", channels, size)
        if args.mask:
            mask, mask_size = load_image(args.mask, "--mask", 1, size, nearest=True)  # resized with --init
            if mask_size != (width, height):
                raise ValueError(f"--mask {args.mask} is {mask_size[0]}×{mask_size[1]} but --init {args.init} is "
                                 f"{width}×{height}; the mask must match the image")
            if args.jump_n_sample > 1 and args.jump_length >= num_steps:  # no step to jump back from: a silent no-op
                raise ValueError(f"--jump-length {args.jump_length} must be less than the {num_steps} sampling steps")
            options.update(mask=(mask > 0).astype(np.float32), jumps=(args.jump_length, args.jump_n_sample))
        else:
            options["strength"] = DEFAULT_STRENGTH if args.strength is None else args.strength
    steps = denoising_steps(num_steps, options.get("init"), options.get("strength", 1.0), options.get("mask"),
                            options.get("jumps", (1, 1)))
    return Plan(n, labels, nrow, options, steps)


def _one_label(n: int, model, label, flag: str):
    """n copies of ``label`` (the null class when none is given and the model has one)."""
    if model.num_classes is None or label is not None:
        return class_labels(n, model.num_classes, label)
    if model.null_label is None:
        raise ValueError(f"{flag} on a class-conditional checkpoint needs --label K")
    return np.full(n, model.null_label)


def _image(path, flag: str, channels: int, size: int):
    """An input image at the model's size, saying on stderr when it had to be resized."""
    image, (width, height) = load_image(path, flag, channels, size)
    if (width, height) != (size, size):
        print(f"minidiff sample: {flag} {path} is {width}×{height}; resized to the model's {size}×{size}",
              file=sys.stderr)
    return image, (width, height)
