"""Drawing images from a trained model: :func:`generate` and what it needs.

:mod:`minidiff.sampling` holds the samplers, which work on any ``model(x_t, t)`` callable;
this module puts a trained U-Net in front of them: it picks the sampler by name, fixes the
class labels, draws x_T from a seed, reports progress, and records the "noise becomes a digit"
trajectory picture. Training uses :func:`generate` for its preview grids; the ``sample``
command is :mod:`minidiff.commands.sample`.
"""
from __future__ import annotations

import contextlib
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
from .objectives import OdeSampler, check_sampler
from .sampling import ddim_encode, ddim_sample, ddpm_sample, dpm_solver_pp_sample, respaced
from .sde import predictor_corrector_sample, probability_flow_sample, reverse_sde_sample

SAMPLER_FUNCTIONS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm-solver++": dpm_solver_pp_sample,
                     "reverse-sde": reverse_sde_sample, "pf-ode": probability_flow_sample,
                     "pc": predictor_corrector_sample}
# The ODE samplers of minidiff.objectives, for every objective (DDPM checkpoints through the VP bridge).
ODE_SOLVERS = ("heun", "euler", "midpoint")
# ... and a consistency model's Algorithm 1 (minidiff.consistency), driven by the same machinery; it is
# stochastic past one step and has no ODE to follow, so it neither interpolates nor inpaints.
ODE_SAMPLER_NAMES = ODE_SOLVERS + ("consistency",)
SAMPLERS = tuple(SAMPLER_FUNCTIONS) + ODE_SAMPLER_NAMES
# Steps when none are asked for: the full chain for ancestral sampling (Ho et al. 2020,
# Algorithm 2) and for the SDE samplers (Song et al. 2021b, Table 1: P1000, PC1000), 50 for DDIM
# (Song et al. 2021, §5) and for Heun on the probability-flow ODE (99 model calls), 20 for
# DPM-Solver++ (Lu et al. 2022b, §6); 18 for Heun (Karras et al. 2022, §3: 35 model calls on CIFAR-10),
# 50 for Euler and 25 for the midpoint rule (50 model calls).
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm-solver++": 20, "reverse-sde": None, "pf-ode": 50, "pc": None,
                 "heun": 18, "euler": 50, "midpoint": 25, "consistency": 1}
# Samplers that are a deterministic map of x_T (interpolation decodes with one of these).
DETERMINISTIC = ("ddim", "dpm-solver++", "pf-ode") + ODE_SOLVERS
# RePaint's step is DDIM's with σ_t(η): ddpm is η = 1. The ODE samplers inpaint through x̂₀.
INPAINTING_SAMPLERS = ("ddpm", "ddim") + ODE_SOLVERS
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
             x_T=None, init=None, strength: float = 1.0, mask=None, jumps=(1, 1), objective: str = "ddpm",
             sigma_data: float | None = None, ode_options=None, decode=None):
    """``n`` samples (float32 NumPy, (n, C, H, W), in [−1, 1]) from ``model`` on its own device;
    the sampler's final x₀ is clipped to [−1, 1], the data range, whatever the sampler and ``clip_denoised``.

    ``sampler`` is ``"ddpm"`` (ancestral, Ho et al. 2020, Algorithm 2, on ``steps`` respaced
    steps or the full chain), ``"ddim"`` (Song et al. 2021, with ``eta``), ``"dpm-solver++"``
    (Lu et al. 2022b), or one of the VP-SDE samplers of :mod:`minidiff.sde`: ``"reverse-sde"``,
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

    ``objective`` is the checkpoint's (:mod:`minidiff.objectives`): ``"edm"`` (with its ``sigma_data``)
    and ``"flow"`` models are drawn by the ODE samplers ``"heun"``, ``"euler"`` and (flow) ``"midpoint"``,
    which also draw from DDPM models through the VP bridge; ``ode_options`` (an
    :class:`~minidiff.objectives.OdeOptions`) sets their grid, churn and time shift. They edit through
    x̂₀: SDEdit starts part-way down their grid, inpainting re-imposes the known pixels of x̂₀ at every step.

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
    check_sampler(objective, sampler, SAMPLER_FUNCTIONS)
    ode = None
    if sampler in ODE_SAMPLER_NAMES:
        ode = OdeSampler.build(objective, sampler, num_steps, schedule=schedule, prediction=prediction,
                               sigma_data=sigma_data, options=ode_options)
        if tuple(jumps) != (1, 1):
            raise ValueError(f"RePaint's resampling jumps need --sampler ddpm or ddim, not {sampler}")
        if spacing not in (None, "uniform"):
            raise ValueError(f"--spacing applies to the DDPM chain's samplers, not {sampler}")
    if eta and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only, not {sampler}")
    if mask is not None and sampler not in INPAINTING_SAMPLERS:
        raise ValueError(f"inpainting takes RePaint's ancestral steps or an ODE sampler's: use sampler "
                         f"{', '.join(INPAINTING_SAMPLERS[:-1])} or {INPAINTING_SAMPLERS[-1]}, not {sampler}")
    if variance is not None and sampler != "ddpm":
        raise ValueError(f"variance applies to the ddpm sampler only, not {sampler}")
    config = model.config
    image_shape = (config["in_channels"], config["image_size"], config["image_size"])
    clip_denoised = clip_denoised and decode is None
    device = device_of(next(model.parameters()).data)
    shares = batch_shares(n, BATCH, rows)
    samples = []
    total_steps = denoising_steps(num_steps, init, strength, mask, jumps) * len(shares)
    # frozen: the weights cannot change while sampling, so each conv's filters are transformed once, not per step
    with performance_settings(), model.frozen(), _progress_bar(total_steps, progress) as bar:
        for k, batch, share in shares:
            rng = np.random.default_rng(seed if k == 0 else (seed, k))
            local = slice(share.start - batch.start, share.stop - batch.start)  # this share within the batch
            # x_T (or SDEdit's ε) is drawn on the host, so one seed gives the same samples on CPU and GPU.
            noise = to_device(rng.standard_normal((len(batch), *image_shape)).astype(np.float32)[local], device)
            denoiser = guided_denoiser(model, None if labels is None else labels[share.start:share.stop], guidance)
            rows_rng, report = RowsOf(rng, len(batch), local), _reporting(callback if k == 0 else None, bar)
            if x_T is not None:
                noise = to_device(np.asarray(x_T[share.start:share.stop], np.float32), device)
            guide = None if init is None else to_device(np.broadcast_to(init, noise.shape).astype(np.float32), device)
            if ode is not None:
                drawn = _draw_ode(ode, denoiser, noise, guide, strength, None if mask is None else to_device(mask, device),
                                  rows_rng, report, clip_denoised, dynamic_threshold)
                samples.append(to_numpy(drawn if decode is None else decode(drawn)))
                continue
            options = dict(rng=rows_rng, prediction=prediction, x_T=noise, callback=report,
                           clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
            if spacing is not None:
                options["spacing"] = spacing
            if sampler == "ddim":
                options["eta"] = eta
            sample = SAMPLER_FUNCTIONS[sampler]
            if x_T is None and mask is not None:
                sample = repaint_sample
                options.update(known=to_device(init, device), mask=to_device(mask, device), jump_length=jumps[0],
                               jump_n_sample=jumps[1], eta=eta)
                if sampler == "ddpm":  # RePaint's ancestral step, with DDPM's σ_t² (--variance)
                    options["variance"] = ddpm_variance(model, variance)
            elif x_T is None and init is not None:
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


@contextlib.contextmanager
def refusing_non_finite(checkpoint):
    """Inside the block, a sampler stopped by a non-finite model output (:class:`minidiff.checks.NonFiniteOutput`,
    naming the step by its timestep and the count) becomes one line naming ``checkpoint`` too: finite weights
    can still make NaN images (an overflowing activation), and no such image is written or scored (``sample``,
    ``eval``, ``figures``). NumPy's overflow warnings are silenced in the block: the refusal says what they would."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            yield
    except checks.NonFiniteOutput as exc:
        raise ValueError(f"checkpoint {checkpoint.path} makes non-finite images: {exc}; nothing written") from None


def _draw_ode(ode, network, noise, guide, strength, mask, rng, callback, clip_denoised, dynamic_threshold):
    """One batch from an :class:`~minidiff.objectives.OdeSampler`: from ``noise`` at the top of its grid,
    from ``guide`` noised to ``strength`` (SDEdit), or inpainting ``guide`` where ``mask`` is 1."""
    known = guide if mask is not None else None
    function = ode.model_function(network, clip_denoised, dynamic_threshold, known, mask)
    start, clean = 0, 0 * noise
    if guide is not None and mask is None:  # SDEdit: strength·steps steps from the guide noised to that level
        start, clean = ode.steps - strength_steps(strength, ode.steps), guide
    return ode.run(function, ode.noised(clean, noise, start), start, rng=rng, callback=callback)


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


def encode(model, schedule, images, steps: int = 50, labels=None, guidance: float = 0.0, prediction: str = "eps",
           sampler: str = "ddim", objective: str = "ddpm", sigma_data: float | None = None, ode_options=None):
    """x_T of ``images`` (N, C, H, W) with ``model`` guided as in :func:`generate`: the deterministic DDIM
    ODE run forwards (:func:`minidiff.sampling.ddim_encode`), or, for an ODE ``sampler``, that sampler's
    ODE run from the clean end to the noisy one (:meth:`minidiff.objectives.OdeSampler.encode`)."""
    device = device_of(next(model.parameters()).data)
    network = guided_denoiser(model, labels, guidance)
    with performance_settings():
        if sampler in ODE_SAMPLER_NAMES:
            ode = OdeSampler.build(objective, sampler, steps, schedule=schedule, prediction=prediction,
                                   sigma_data=sigma_data, options=ode_options)
            x_T = ode.encode(ode.model_function(network, clip_denoised=False), to_device(images, device))
        else:
            x_T = ddim_encode(network, schedule, to_device(images, device), steps, prediction=prediction)
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
