"""What defines a training run: :class:`TrainConfig`, the flags of ``python -m minidiff train``,
on :class:`RunConfig`, the fields every run folder has (an autoencoder run's too).

Every value is checked when the config is made (:meth:`RunConfig.problems`), naming the
flag; a config read back from a checkpoint is checked the same way, naming the file
(:meth:`RunConfig.from_checkpoint`), and there the fields that define the experiment
(``FIXED_ON_RESUME``) may not be overridden.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .backend import DEVICES
from .backbones import DEFAULT_PRESET, PRESETS, model_config
from .checkpoint import Checkpoint, CheckpointError
from .datasets import DATASETS
from .diffusion import MIN_SNR_GAMMA_RANGE, PREDICTIONS
from .objectives import OBJECTIVES, edm
from .objectives.flow import T_DISTRIBUTIONS
from .optim import LR_SCHEDULES
from .schedule import SCHEDULES, schedule_by_name


def _need(problems: list, config, ok: bool, name: str, what: str) -> None:
    """Add "<name> (--<flag>) must be <what>, got <value>" to ``problems`` unless ``ok``."""
    if not ok:
        problems.append(f"{name} (--{name.replace('_', '-')}) must be {what}, got {getattr(config, name)!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


@dataclasses.dataclass
class RunConfig:
    """What every trained run folder has: its data, its optimisation and its files. A diffusion run
    (:class:`TrainConfig`) and an autoencoder run (:class:`minidiff.autoencoder.AutoencoderConfig`)
    add their model's fields; both are resumed by :meth:`from_checkpoint`."""

    # data
    dataset: str = "mnist"
    data_dir: str | None = None
    limit_data: int | None = None  # train on the first N images only (quick experiments, tests)
    # optimisation (Ho et al. 2020, App. B, but a shorter warm-up for short MNIST runs)
    steps: int = 5000
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 500
    lr_schedule: str = "constant"  # after the warm-up: constant, or cosine decay to 0 at `steps`
    grad_clip: float = 1.0  # 0 turns clipping off
    ema_decay: float = 0.9999
    seed: int = 0
    # the run folder and what goes into it
    out: str | None = None  # default runs/<dataset>-<preset>
    sample_every: int = 1000  # 0: no preview grids
    sample_n: int = 16
    checkpoint_every: int = 500  # 0: only at the end (and on Ctrl-C)
    log_every: int = 10
    device: str = "cpu"

    # What defines the experiment a checkpoint belongs to: refused as an override on --resume.
    FIXED_ON_RESUME = ("dataset", "limit_data", "batch_size", "seed")

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with the shared fields, one entry per field, naming its flag."""
        problems = []
        for name in ("steps", "batch_size", "sample_n", "log_every"):
            _need(problems, self, _is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer")
        for name in ("warmup_steps", "sample_every", "checkpoint_every", "seed"):
            _need(problems, self, _is_int(getattr(self, name)) and getattr(self, name) >= 0, name,
                  "a non-negative integer")
        _need(problems, self, self.limit_data is None or _is_int(self.limit_data) and self.limit_data >= 1,
              "limit_data", "a positive integer")
        _need(problems, self, _is_real(self.lr) and self.lr > 0, "lr", "a positive finite number")
        _need(problems, self, _is_real(self.grad_clip) and self.grad_clip >= 0, "grad_clip",
              "a finite number >= 0 (0 turns clipping off)")
        _need(problems, self, _is_real(self.ema_decay) and 0 <= self.ema_decay < 1, "ema_decay", "in [0, 1)")
        for name, choices in (("dataset", DATASETS), ("device", DEVICES), ("lr_schedule", LR_SCHEDULES)):
            _need(problems, self, isinstance(getattr(self, name), str) and getattr(self, name) in choices, name,
                  "one of " + ", ".join(choices))
        _need(problems, self, isinstance(self.out, str) and self.out.strip() != "", "out", "a folder name")
        _need(problems, self, self.data_dir is None or isinstance(self.data_dir, str) and self.data_dir.strip() != "",
              "data_dir", "a folder name")
        return problems

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **overrides) -> RunConfig:
        """The config a checkpoint was trained with, writing to its folder, updated by ``overrides``.

        The checkpoint is the source of truth: a saved field that is not valid is refused naming the
        file; an override of a field in :data:`FIXED_ON_RESUME` that differs from the saved value is
        refused naming the flag (it would silently change the experiment); and ``steps`` must lie
        beyond the checkpoint's step. Other overrides (lr, steps, cadences, device) apply from here on.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        saved = {name: value for name, value in checkpoint.config.items() if name in names}
        saved["out"] = str(checkpoint.path.parent)
        try:
            cls(**saved)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {checkpoint.path}: its config is not valid: {exc}") from None
        changed = [name for name in cls.FIXED_ON_RESUME if name in overrides and overrides[name] != saved.get(name)]
        if changed:
            flags = ", ".join(f"--{name.replace('_', '-')} {overrides[name]} (saved: {saved.get(name)})"
                              for name in changed)
            raise ValueError(f"{flags}: cannot change on --resume, since the resumed run would no longer "
                             f"be the one in {checkpoint.path}; start a new run with another --out")
        config = cls(**{**saved, **overrides})
        if config.steps <= checkpoint.step:
            raise ValueError(f"--steps {config.steps} is not beyond the checkpoint's step {checkpoint.step}: "
                             "nothing to train; pass a larger --steps to continue")
        return config


@dataclasses.dataclass
class TrainConfig(RunConfig):
    """Everything that defines a diffusion training run; the CLI flags are these names with dashes."""

    hflip: bool = False  # off by default: digits are not mirror-symmetric
    # model
    backbone: str = "unet"  # the network (minidiff.backbones): unet or dit
    preset: str | None = None  # None: the backbone's default (mnist for unet, dit-s4 for dit)
    patch_size: int | None = None  # dit: None keeps the preset's
    dropout: float | None = None  # None keeps the preset's
    num_classes: int | None = None  # class-conditional when set
    p_uncond: float = 0.0  # > 0: labels dropped to the null class with this probability (classifier-free guidance)
    latent: str | None = None  # an autoencoder run folder: diffuse its scaled latents (minidiff.latent)
    # the objective (minidiff.objectives): ddpm uses the diffusion fields, edm and flow their own
    objective: str = "ddpm"
    sigma_data: float | None = None  # edm: None measures the training images' RMS (minidiff.objectives.edm)
    p_mean: float = edm.P_MEAN  # edm: ln σ ∼ N(P_mean, P_std²) (Karras et al. 2022, §5)
    p_std: float = edm.P_STD
    t_distribution: str = "uniform"  # flow: t ∼ U[0, 1] or logit-normal (Esser et al. 2024, §3.1)
    # diffusion
    schedule: str = "linear"
    zero_terminal_snr: bool = False  # rescale the schedule so ᾱ_{T−1} = 0 (Lin et al. 2023)
    timesteps: int = 1000
    prediction: str = "eps"
    min_snr_gamma: float | None = None
    learn_sigma: bool = False  # also learn Σ_θ, trained with L_hybrid (Nichol & Dhariwal 2021)
    sample_steps: int = 50  # DDIM steps of a preview grid

    FIXED_ON_RESUME = RunConfig.FIXED_ON_RESUME + (
        "hflip", "backbone", "preset", "patch_size", "dropout", "num_classes", "p_uncond", "latent", "objective",
        "sigma_data", "p_mean", "p_std", "t_distribution", "schedule", "zero_terminal_snr", "timesteps", "prediction",
        "min_snr_gamma", "learn_sigma")

    def __post_init__(self):
        if self.preset is None and self.backbone in PRESETS:
            self.preset = DEFAULT_PRESET[self.backbone]
        if self.out is None:
            self.out = f"runs/{self.dataset}-{self.preset}"
        super().__post_init__()

    def problems(self) -> list[str]:
        problems = super().problems()

        def need(ok, name, what):
            _need(problems, self, ok, name, what)

        for name in ("timesteps", "sample_steps"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive integer")
        for name in ("num_classes", "patch_size"):
            need(getattr(self, name) is None or _is_int(getattr(self, name)) and getattr(self, name) >= 1,
                 name, "a positive integer")
        need(self.dropout is None or _is_real(self.dropout) and 0 <= self.dropout < 1, "dropout", "in [0, 1)")
        low, high = MIN_SNR_GAMMA_RANGE
        need(self.min_snr_gamma is None or _is_real(self.min_snr_gamma) and low <= self.min_snr_gamma <= high,
             "min_snr_gamma", f"in [{low:g}, {high:g}] (Hang et al. 2023 use 5)")
        need(_is_real(self.p_uncond) and 0 <= self.p_uncond < 1, "p_uncond", "in [0, 1)")
        need(self.sigma_data is None or _is_real(self.sigma_data) and self.sigma_data > 0, "sigma_data",
             "a positive finite number")
        need(_is_real(self.p_mean), "p_mean", "a finite number")
        need(_is_real(self.p_std) and self.p_std > 0, "p_std", "a positive finite number")
        need(not self.p_uncond or self.num_classes is not None, "p_uncond",
             "0 without --num-classes (it drops class labels)")
        need(isinstance(self.backbone, str) and self.backbone in PRESETS, "backbone", "one of " + ", ".join(PRESETS))
        if self.backbone in PRESETS:
            need(isinstance(self.preset, str) and self.preset in PRESETS[self.backbone], "preset",
                 f"a {self.backbone} preset, one of " + ", ".join(PRESETS[self.backbone]))
        need(self.patch_size is None or self.backbone == "dit", "patch_size", "unset for --backbone unet")
        need(self.dropout is None or self.backbone == "unet", "dropout", "unset for --backbone dit (it has none)")
        need(self.latent is None or isinstance(self.latent, str) and self.latent.strip() != "", "latent",
             "an autoencoder run folder")
        need(not (self.hflip and self.latent), "hflip", "off with --latent (a latent flipped is not the latent of "
             "the image flipped)")
        for name, choices in (("schedule", SCHEDULES), ("prediction", PREDICTIONS), ("objective", OBJECTIVES),
                              ("t_distribution", T_DISTRIBUTIONS)):
            need(isinstance(getattr(self, name), str) and getattr(self, name) in choices, name,
                 "one of " + ", ".join(choices))
        for name in ("hflip", "zero_terminal_snr", "learn_sigma"):
            need(isinstance(getattr(self, name), bool), name, "true or false")
        if not problems:
            problems += self._objective_problems()
        if not problems and self.objective == "ddpm":
            problems += _schedule_problems(self.schedule, self.timesteps, self.prediction, self.zero_terminal_snr)
        return problems

    def _objective_problems(self) -> list[str]:
        """The flags of another objective than ``objective`` that were changed from their defaults: each
        would silently do nothing."""
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        own = OBJECTIVE_FIELDS[self.objective]
        return [f"--{name.replace('_', '-')} applies to --objective {owner}, not {self.objective}"
                for owner, names in OBJECTIVE_FIELDS.items() if owner != self.objective
                for name in names if name not in own and getattr(self, name) != defaults[name]]

    def run_config(self, autoencoder: dict | None = None) -> dict:
        """The JSON-ready config of a run: these fields plus the backbone's constructor arguments.

        With ``--latent``, ``autoencoder`` is the record of its autoencoder
        (:meth:`minidiff.latent.LatentSpace.record`), kept under ``"autoencoder"``; the model then
        takes that autoencoder's latents, (z_channels, h, w), instead of the images.
        """
        overrides = {"num_classes": self.num_classes, "null_class": bool(self.p_uncond), "learn_sigma": self.learn_sigma}
        for name in ("dropout", "patch_size"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        if autoencoder is not None:
            overrides.update(in_channels=autoencoder["latent_shape"][0], image_size=autoencoder["latent_shape"][1])
        config = {**dataclasses.asdict(self), "model": model_config(self.backbone, self.preset, **overrides)}
        return config if autoencoder is None else {**config, "autoencoder": autoencoder}

# The fields only one objective reads.
OBJECTIVE_FIELDS = {
    "ddpm": ("schedule", "zero_terminal_snr", "timesteps", "prediction", "min_snr_gamma", "learn_sigma"),
    "edm": ("sigma_data", "p_mean", "p_std"),
    "flow": ("t_distribution",),
    "consistency": ("sigma_data",),  # iCT's other settings are minidiff.consistency's constants
}

# The chain must end close to pure noise, or sampling from N(0, I) starts far from q(x_T).
MAX_FINAL_ALPHA_BAR = 0.05


def _schedule_problems(name: str, T: int, prediction: str, zero_terminal_snr: bool = False) -> list[str]:
    """Why ``--schedule name --timesteps T [--zero-terminal-snr]`` cannot train a ``prediction`` model (empty when it can)."""
    where = f"--schedule {name}{' --zero-terminal-snr' if zero_terminal_snr else ''} with --timesteps {T}"
    if T > 100_000:
        return [f"{where}: at most 100000 timesteps are supported"]
    try:
        schedule = schedule_by_name(name, T, zero_terminal_snr)
    except ValueError as exc:
        return [f"{where} is not a valid schedule ({exc})"]
    final = schedule.alphas_cumprod[-1]
    if final > MAX_FINAL_ALPHA_BAR:
        return [f"{where} ends at alphas_cumprod = {final:.3g}, far from pure noise (need <= {MAX_FINAL_ALPHA_BAR}); "
                "use more timesteps"]
    if final == 0 and prediction == "eps":
        # ε-prediction cannot recover x₀ where ᾱ = 0; better to say so before training than after.
        return [f"{where} reaches alphas_cumprod = 0 at the last step, where an eps-predicting model cannot "
                "recover x0; use --prediction v or x0, more timesteps, or another schedule"]
    return []


CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(TrainConfig))
