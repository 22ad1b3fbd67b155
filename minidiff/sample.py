"""Drawing images from a trained model: :func:`generate` and what it needs.

:mod:`minidiff.sampling` holds the samplers, which work on any ``model(x_t, t)`` callable;
this module puts a trained U-Net in front of them: it picks the sampler by name, fixes the
class labels, draws x_T from a seed, reports progress, and records the "noise becomes a digit"
trajectory picture. Training uses :func:`generate` for its preview grids; the ``sample``
command is :mod:`minidiff.commands.sample`.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from . import checks
from .backend import device_of, performance_settings, to_device, to_numpy
from .distributed import RowsOf, batch_shares, world
from .files import atomic_write
from .editing import repaint_sample, repaint_timesteps, sdedit_start, strength_steps
from .guidance import guided_denoiser
from .images import save_image_grid
from .sampling import ddim_encode, ddim_sample, ddpm_sample, dpm_solver_pp_sample, respaced
from .sde import predictor_corrector_sample, probability_flow_sample, reverse_sde_sample

SAMPLER_FUNCTIONS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm-solver++": dpm_solver_pp_sample,
                     "reverse-sde": reverse_sde_sample, "pf-ode": probability_flow_sample,
                     "pc": predictor_corrector_sample}
SAMPLERS = tuple(SAMPLER_FUNCTIONS)
# Steps when none are asked for: the full chain for ancestral sampling (Ho et al. 2020,
# Algorithm 2) and for the SDE samplers (Song et al. 2021, Table 1: P1000, PC1000), 50 for DDIM
# (Song et al. 2021, §5) and for Heun on the probability-flow ODE (99 model calls), 20 for
# DPM-Solver++ (Lu et al. 2022, §6).
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm-solver++": 20, "reverse-sde": None, "pf-ode": 50, "pc": None}
# Samplers that are a deterministic map of x_T (interpolation decodes with one of these).
DETERMINISTIC = ("ddim", "dpm-solver++", "pf-ode")
# RePaint's step is DDIM's with σ_t(η): ddpm is η = 1.
INPAINTING_SAMPLERS = ("ddpm", "ddim")
GRID_SCALE = 2  # 28-pixel digits are too small to judge at 1:1


def sampler_steps(sampler: str, steps: int | None, T: int) -> int:
    """The number of denoising steps ``sampler`` will take on a T-step schedule."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps is not None:
        if not 1 <= steps <= T:
            raise ValueError(f"--steps {steps} is outside [1, {T}], the checkpoint's timesteps")
        return steps
    default = DEFAULT_STEPS[sampler]
    return T if default is None else min(default, T)


def class_labels(n: int, num_classes: int | None, label: int | None = None):
    """Labels for ``n`` samples: ``label`` for all, or 0, 1, …, K−1, 0, … (None when unconditional)."""
    if num_classes is None:
        if label is not None:
            raise ValueError("--label needs a class-conditional checkpoint (one trained with --num-classes)")
        return None
    if label is None:
        return np.arange(n) % num_classes
    if not 0 <= label < num_classes:
        raise ValueError(f"--label {label} is outside the checkpoint's classes 0..{num_classes - 1}")
    return np.full(n, label)


def generate(model, schedule, n: int, sampler: str = "ddim", steps: int | None = None, eta: float = 0.0,
             seed: int = 0, labels=None, prediction: str = "eps", callback=None, progress: bool = False,
             rows: slice = slice(None), spacing: str | None = None, clip_denoised: bool = True,
             dynamic_threshold: float | None = None, variance: str | None = None, guidance: float = 0.0,
             x_T=None, init=None, strength: float = 1.0, mask=None, jumps=(1, 1), decode=None):
    """``n`` samples (float32 NumPy, (n, C, H, W), in [−1, 1]) from ``model`` on its own device;
    the sampler's final x₀ is clipped to [−1, 1], the data range, whatever the sampler and ``clip_denoised``.

    ``sampler`` is ``"ddpm"`` (ancestral, Ho et al. 2020, Algorithm 2, on ``steps`` respaced
    steps or the full chain), ``"ddim"`` (Song et al. 2021, with ``eta``), ``"dpm-solver++"``
    (Lu et al. 2022), or one of the VP-SDE samplers of :mod:`minidiff.sde`: ``"reverse-sde"``,
    ``"pf-ode"`` or ``"pc"`` (predictor–corrector). ``labels`` (n,) condition a class-conditional
    model, towards which ``guidance`` w > 0 pushes (classifier-free guidance,
    :func:`minidiff.guidance.guided_denoiser`). ``callback(index, t, x_t, x0_hat)`` sees every
    step of the first batch. ``spacing`` (None: the sampler's default), ``clip_denoised`` and
    ``dynamic_threshold`` go to the sampler; ``variance`` is DDPM's σ_t² (None: ``"learned"``
    for a model with ``learn_sigma``, else ``"fixed_small"``).

    Editing (:mod:`minidiff.editing`): ``x_T`` (n, C, H, W) replaces the drawn starting noise
    (interpolation); an ``init`` image (C, H, W) in [−1, 1] is noised to ``strength`` and
    denoised from there (SDEdit); ``init`` with a ``mask`` (H, W; 1 where to paint) is inpainted
    by RePaint with resampling ``jumps`` = (jump_length, jump_n_sample), for ``sampler`` ddpm or ddim.

    ``decode`` maps what the model generates to images: a latent diffusion run's decoder
    (:meth:`minidiff.latent.LatentSpace.decode`). Latents are not confined to [−1, 1], so with a
    ``decode`` the predicted x̂₀ is not clipped.

    The samples are drawn :data:`BATCH` at a time, so memory stays bounded: batch k draws x_T and
    its noise from ``default_rng(seed)`` for k = 0 and ``default_rng((seed, k))`` after, so ``seed``
    fixes every draw. ``rows`` draws only those of the n samples (an MPI rank's share): each
    draw is still made for the whole batch and sliced, so they are exactly the rows one process
    drawing all n would return.
    """
    num_steps = sampler_steps(sampler, steps, schedule.T)
    n, seed = checks.integer(n, "n", 0), checks.integer(seed, "seed", 0)
    for name, array in (("x_T", x_T), ("init", init), ("mask", mask)):  # an int image would be read as [-1, 1]
        if array is not None:
            checks.float_array(array, name)
    if eta and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only, not {sampler}")
    if mask is not None and sampler not in INPAINTING_SAMPLERS:
        raise ValueError(f"inpainting takes RePaint's ancestral steps: use sampler {' or '.join(INPAINTING_SAMPLERS)}, "
                         f"not {sampler}")
    if variance is not None and sampler != "ddpm":
        raise ValueError(f"variance applies to the ddpm sampler only, not {sampler}")
    config = model.config
    image_shape = (config["in_channels"], config["image_size"], config["image_size"])
    clip_denoised = clip_denoised and decode is None
    device = device_of(next(model.parameters()).data)
    shares = batch_shares(n, BATCH, rows)
    samples = []
    total_steps = denoising_steps(num_steps, init, strength, mask, jumps) * len(shares)
    with performance_settings(), _progress_bar(total_steps, progress) as bar:
        for k, batch, share in shares:
            rng = np.random.default_rng(seed if k == 0 else (seed, k))
            local = slice(share.start - batch.start, share.stop - batch.start)  # this share within the batch
            # x_T (or SDEdit's ε) is drawn on the host, so one seed gives the same samples on CPU and GPU.
            noise = to_device(rng.standard_normal((len(batch), *image_shape)).astype(np.float32)[local], device)
            denoiser = guided_denoiser(model, None if labels is None else labels[share.start:share.stop], guidance)
            options = dict(rng=RowsOf(rng, len(batch), local), prediction=prediction, x_T=noise,
                           callback=_reporting(callback if k == 0 else None, bar))
            options.update(clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
            if spacing is not None:
                options["spacing"] = spacing
            if sampler == "ddim":
                options["eta"] = eta
            sample = SAMPLER_FUNCTIONS[sampler]
            if x_T is not None:
                options["x_T"] = to_device(np.asarray(x_T[share.start:share.stop], np.float32), device)
            elif mask is not None:
                sample = repaint_sample
                options.update(known=to_device(init, device), mask=to_device(mask, device), jump_length=jumps[0],
                               jump_n_sample=jumps[1], eta=eta)
                if sampler == "ddpm":  # RePaint's ancestral step, with DDPM's σ_t² (--variance)
                    options["variance"] = ddpm_variance(model, variance)
            elif init is not None:
                guide = to_device(np.broadcast_to(init, noise.shape).astype(np.float32), device)
                chain = respaced(schedule, num_steps, options.get("spacing", default_spacing(sample)))
                options["x_T"], options["t_start"] = sdedit_start(chain, guide, strength, noise)
            if sample is SAMPLER_FUNCTIONS["ddpm"]:
                options["variance"] = ddpm_variance(model, variance)
            drawn = sample(denoiser, schedule, noise.shape, num_steps, **options)
            samples.append(to_numpy(drawn if decode is None else decode(drawn)))
    if not samples:  # an MPI rank with no share: an empty batch of what the others return
        empty = np.zeros((1, *image_shape), np.float32)
        return to_numpy(empty if decode is None else decode(to_device(empty, device)))[:0]
    # The data range, as every picture of them shows it: without clip_denoised, or on the SDE samplers,
    # the last step can overshoot [−1, 1] a little, and eval and `sample --npy` promise the data range.
    return np.clip(np.concatenate(samples), -1.0, 1.0).astype(np.float32, copy=False)


def default_spacing(sampler) -> str:
    """The spacing ``sampler`` (a sampling function) uses when given none: its own default."""
    return inspect.signature(sampler).parameters["spacing"].default


def ddpm_variance(model, variance: str | None = None) -> str:
    """DDPM's σ_t² for ``model``: ``variance``, or by default its own (Nichol & Dhariwal 2021, Eq. 15)
    when it learnt them, else β̃_t. ``"learned"`` is refused for a model that has none."""
    learned = bool(model.config.get("learn_sigma"))
    if variance == "learned" and not learned:
        raise ValueError("--variance learned needs a checkpoint trained with --learn-sigma")
    return variance or ("learned" if learned else "fixed_small")


# Samples drawn at once by generate(): the U-Net's activations for this many images fit in memory.
BATCH = 500


def generate_on_ranks(model, schedule, n: int, *args, progress: bool = False, **kwargs):
    """:func:`generate` split across the ranks of an MPI job (its arguments), each drawing its share:
    all n samples on rank 0 and None on the others; in a single process, just :func:`generate`."""
    ranks = world()
    share = generate(model, schedule, n, *args, progress=progress and ranks.is_root, rows=ranks.rows(n), **kwargs)
    return ranks.gather_rows(share)


def seed_noise(seed: int, image_shape) -> np.ndarray:
    """The x_T (1, C, H, W) that ``generate(n=1, seed=seed)`` starts from: what interpolation between seeds joins."""
    return np.random.default_rng(seed).standard_normal((1, *image_shape)).astype(np.float32)


def denoising_steps(num_steps: int, init, strength: float, mask, jumps) -> int:
    """Model steps per batch: all of them, SDEdit's share, or RePaint's steps down between jumps."""
    if mask is not None:
        visited = repaint_timesteps(num_steps, *jumps)
        return sum(later < earlier for earlier, later in zip(visited, visited[1:]))
    return num_steps if init is None else strength_steps(strength, num_steps)


def encode(model, schedule, images, steps: int = 50, labels=None, guidance: float = 0.0, prediction: str = "eps"):
    """x_T of ``images`` (N, C, H, W) by the deterministic DDIM ODE run forwards
    (:func:`minidiff.sampling.ddim_encode`) with ``model`` guided as in :func:`generate`."""
    device = device_of(next(model.parameters()).data)
    with performance_settings():
        x_T = ddim_encode(guided_denoiser(model, labels, guidance), schedule, to_device(images, device), steps,
                          prediction=prediction)
    return to_numpy(x_T)


def _progress_bar(total: int, progress: bool):
    """A tqdm bar over the sampling steps (disabled unless ``progress``), closed however sampling ends."""
    from tqdm import tqdm

    return tqdm(total=total, desc="sampling", unit="step", leave=False, dynamic_ncols=True, disable=not progress)


def _reporting(callback, bar):
    """``callback`` (or nothing) followed by one tick of ``bar``: a sampler's per-step callback."""

    def step(index, t, x_t, x0_hat):
        if callback is not None:
            callback(index, t, x_t, x0_hat)
        bar.update(1)

    return step


class TrajectoryRecorder:
    """A sampler callback keeping x_t and x̂₀ of the first ``rows`` samples at ``columns`` steps.

    :meth:`picture` lays them out as one grid: a row per sample, and for each chosen step a pair
    of columns x_t | x̂₀, from pure noise on the left to the final digit on the right. Only the
    chosen steps are kept, so even a 1000-step DDPM run costs a few images of memory.
    """

    def __init__(self, num_steps: int, columns: int = 8, rows: int = 4):
        self.keep = set(np.unique(np.round(np.linspace(0, num_steps - 1, min(columns, num_steps))).astype(int)).tolist())
        self.rows = rows
        self.frames = []  # (x_t, x̂₀) pairs, each (rows, C, H, W)

    def __call__(self, index, t, x_t, x0_hat):
        if index in self.keep:
            self.frames.append((to_numpy(x_t[: self.rows]), to_numpy(x0_hat[: self.rows])))

    def picture(self) -> np.ndarray:
        """(rows·2·steps, C, H, W) in row-major order, for ``save_image_grid(nrow=2·steps)``."""
        columns = [image for pair in self.frames for image in pair]  # x_t, x̂₀, x_t, x̂₀, …
        return np.stack(columns, axis=1).reshape((-1,) + columns[0].shape[1:])

    def save(self, path) -> Path:
        return save_image_grid(self.picture(), path, nrow=2 * len(self.frames), scale=GRID_SCALE)


def save_npy(array: np.ndarray, path) -> Path:
    """``np.save`` written atomically, so a reader never finds half an array."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.save(f, array)
    return path
