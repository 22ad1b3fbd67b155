"""The DDPM U-Net: the ε-prediction network ε_θ(x_t, t).

The architecture is the one of Ho et al. 2020, App. B (a PixelCNN++-style U-Net: wide ResNet
blocks, group normalisation, self-attention at low resolution, a sinusoidal time embedding added
inside every residual block), in the layout of improved-diffusion (Nichol & Dhariwal 2021,
``unet.py``): a stack of *input blocks* whose outputs are all kept as skips, a middle block, and
*output blocks* that each consume one skip by channel concatenation. DESIGN.md ("The reference
MNIST U-Net") is the specification; the ``mnist`` preset has exactly 1,623,169 parameters.

Initialisation. Every layer has PyTorch's default init (see :mod:`minidiff.nn`), except that, as
improved-diffusion's ``zero_module`` does, the last convolution of each residual branch -- the
second conv of a :class:`ResBlock`, the output projection of an :class:`AttentionBlock` -- and the
network's final convolution start at zero. Each block then starts as the identity and the
untrained model predicts ε̂ = 0, which keeps the early loss near 1 and the residual stack
well-conditioned however deep it is. It changes no parameter count.

Shapes follow the NCHW convention: x is (N, C, H, W), the time embedding (N, 4·base).

It runs past 300 lines because the U-Net and its four kinds of block (ResBlock, attention,
down/up-sampling) are one architecture, specified together in DESIGN.md and read together here.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from . import nn
from .autograd import DEFAULT_DTYPE, Tensor, no_grad
from .backend import device_of, get_array_module, to_device

__all__ = [
    "timestep_embedding",
    "ResBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
    "UNet",
    "PRESETS",
    "as_denoiser",
]


def timestep_embedding(t, dim: int, max_period: float = 10000.0, dtype=DEFAULT_DTYPE):
    r"""Sinusoidal embedding of timesteps or continuous noise levels: an array (N, dim) on the array module of ``t``.

    .. math::
        \mathrm{emb}(t) = [\sin(t\,\omega_0), …, \sin(t\,\omega_{h-1}),
                           \cos(t\,\omega_0), …, \cos(t\,\omega_{h-1})],\quad
        \omega_i = \exp(-\ln(\text{max\_period})\cdot i / h),\ h = \lfloor dim/2 \rfloor

    The positional encoding of Vaswani et al. 2017, §3.5, applied to the timestep as in Ho et al.
    2020, App. B -- half sines then half cosines, as improved-diffusion and diffusers order them
    (Vaswani interleaves them; the order only permutes the first Linear's inputs). ``t`` may be real:
    EDM's c_noise and flow matching's t are continuous (:mod:`minidiff.objectives`). An odd ``dim``
    gets a trailing zero column. Computed in float64, so that t·ω keeps its precision for
    t ≈ 1000, then cast to ``dtype``. It has no parameters and needs no gradient.
    """
    t = t.data if isinstance(t, Tensor) else t
    xp = get_array_module(t)
    t = xp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding: expected timesteps of shape (N,), got shape {t.shape}")
    half = dim // 2
    freqs = xp.exp(-math.log(max_period) * xp.arange(half, dtype=xp.float64) / half)  # ω_i: (half,)
    args = t.astype(xp.float64)[:, None] * freqs[None, :]  # t·ω: (N, half)
    emb = xp.concatenate([xp.sin(args), xp.cos(args)], axis=1)  # (N, 2·half)
    if dim % 2:
        emb = xp.concatenate([emb, xp.zeros_like(emb[:, :1])], axis=1)  # (N, dim)
    return emb.astype(dtype)


def _zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (improved-diffusion's ``zero_module``); returns it."""
    for param in module.parameters():
        param.data[...] = 0
    return module


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (Ho et al. 2020, App. B).

    h = conv3×3(SiLU(GroupNorm(x))) + Linear(SiLU(temb)) per channel;
    h = conv3×3(dropout(SiLU(GroupNorm(h)))); out = skip(x) + h, with skip a 1×1 conv when the
    channel count changes (the identity otherwise). The second conv starts at zero (module docstring).
    With ``temb_dim=None`` there is no time embedding: the ResnetBlock of the autoencoder
    (:mod:`minidiff.autoencoder`; Rombach et al. 2022 use this block with ``temb_channels=0``).
    (On the fast path each SiLU(GroupNorm(·)) runs as one kernel and the two additions happen as
    the convolutions write their outputs: :mod:`minidiff.functional.fusion`.)
    """

    def __init__(self, cin: int, cout: int, temb_dim: int | None, num_groups: int, dropout: float = 0.0,
                 rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, cin, dtype=dtype)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, rng=rng, dtype=dtype)
        self.temb_proj = nn.Linear(temb_dim, cout, rng=rng, dtype=dtype) if temb_dim is not None else None
        self.norm2 = nn.GroupNorm(num_groups, cout, dtype=dtype)
        self.dropout = nn.Dropout(dropout, rng=rng)
        self.conv2 = _zero_init(nn.Conv2d(cout, cout, 3, padding=1, rng=rng, dtype=dtype))
        self.skip = nn.Conv2d(cin, cout, 1, rng=rng, dtype=dtype) if cin != cout else nn.Identity()

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))  # (N, cout, H, W)
        if self.temb_proj is not None:
            emb = self.temb_proj(F.silu(temb))  # (N, cout)
            h = h + emb.reshape(*emb.shape, 1, 1)  # one shift per channel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions, with a residual connection.

    GroupNorm → 1×1 conv to q, k, v (3c channels) → softmax(q kᵀ/√c) v over positions → 1×1 conv
    → add to the input: the self-attention of Ho et al. 2020, App. B (after Wang et al. 2018's
    non-local block), with one head as in the DDPM U-Net. The output projection starts at zero.
    """

    def __init__(self, channels: int, num_groups: int, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels, dtype=dtype)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, rng=rng, dtype=dtype)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1, rng=rng, dtype=dtype))

    def forward(self, x):
        n, c, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, c, height * width)  # (N, 3, C, L)
        qkv = qkv.transpose(1, 0, 3, 2)  # (3, N, L, C): positions are the sequence, channels the features
        h = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=1.0 / math.sqrt(c))  # (N, L, C)
        h = h.transpose(0, 2, 1).reshape(n, c, height, width)  # (N, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Halve the resolution with a learned 3×3 conv, stride 2, padding 1 (28 → 14 → 7)."""

    def __init__(self, channels: int, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, rng=rng, dtype=dtype)

    def forward(self, x):
        return self.conv(x)  # (N, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour 2× then a 3×3 conv (Ho et al. 2020, App. B)."""

    def __init__(self, channels: int, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, rng=rng, dtype=dtype)

    def forward(self, x):
        return self.conv(F.upsample_nearest2d(x, scale=2))  # (N, C, 2H, 2W)


class TimestepSequential(nn.Sequential):
    """Layers applied in turn, the time embedding passed to those that take it (the ResBlocks).

    improved-diffusion's ``TimestepEmbedSequential``: one entry of the U-Net's block lists, whose
    output is one skip connection.
    """

    def forward(self, x, temb):
        for layer in self:
            x = layer(x, temb) if isinstance(layer, ResBlock) else layer(x)
        return x


PRESETS = {
    # DESIGN.md's reference MNIST U-Net: 1,623,169 parameters, 28 → 14 → 7, attention at 7×7.
    "mnist": dict(in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2,
                  attn_resolutions=(7,), num_groups=8, dropout=0.0, image_size=28),
    # The race's lighter U-Net (docs/experiments.md): the mnist preset with one ResBlock per level
    # instead of two, about 0.69× its multiply-adds per image, so a fixed CPU budget buys more steps.
    "mnist-lite": dict(in_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                       attn_resolutions=(7,), num_groups=8, dropout=0.0, image_size=28),
    # For tests and quick runs: still every kind of block (attention at 14×14, one down/up step)
    # but 176,849 parameters, about a tenth of the mnist preset.
    "tiny": dict(in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                 attn_resolutions=(14,), num_groups=4, dropout=0.0, image_size=28),
    # For an f = 4 autoencoder's 7×7×4 latents (train --latent), which cannot be halved: one level,
    # attention at 7×7, no down- or upsampling.
    "latent": dict(in_channels=4, base_channels=64, channel_mults=(1,), num_res_blocks=2,
                   attn_resolutions=(7,), num_groups=8, dropout=0.0, image_size=7),
}


class UNet(nn.Module):
    """The DDPM ε-prediction U-Net (Ho et al. 2020, App. B; layout of Nichol & Dhariwal 2021).

    Args:
        in_channels: image channels (the output has as many: it predicts ε).
        base_channels: channels at full resolution; level ``i`` has ``base_channels·channel_mults[i]``.
        channel_mults: one entry per resolution level; each level but the last halves H and W.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attn_resolutions: resolutions (side lengths, for ``image_size`` inputs) that get self-attention.
        num_groups: GroupNorm groups; must divide every channel count, concatenations included.
        dropout: dropout probability inside the ResBlocks.
        image_size: the side length the model is built for; fixes where attention sits. Other
            sizes are accepted when they halve evenly ``len(channel_mults) − 1`` times.
        num_classes: when set, a class-conditional model: a learned (num_classes, 4·base)
            embedding of the label y is added to the time embedding, as in improved-diffusion.
        null_class: with ``num_classes = K``, one more learned embedding row, label K: the null
            condition ∅ of classifier-free guidance (Ho & Salimans 2021; :mod:`minidiff.guidance`).
        learn_sigma: when True the output has 2·in_channels channels, ε̂ then the variance
            interpolation v of Nichol & Dhariwal 2021, Eq. 15 (their ``learn_sigma``).
        rng: NumPy Generator for the initialisation (the module default of :mod:`minidiff.nn` if None).
        dtype: parameter dtype (float64 for gradient checks).

    ``config`` holds the constructor's architecture arguments, so ``UNet(**config)`` rebuilds the
    model a checkpoint's ``state_dict`` belongs to.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults=(1, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(7,), num_groups: int = 8, dropout: float = 0.0,
                 image_size: int = 28, num_classes: int | None = None, null_class: bool = False,
                 learn_sigma: bool = False, rng=None,
                 dtype=DEFAULT_DTYPE):
        super().__init__()
        channel_mults, attn_resolutions = tuple(channel_mults), tuple(attn_resolutions)
        self.config = dict(in_channels=in_channels, base_channels=base_channels, channel_mults=channel_mults,
                           num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                           num_groups=num_groups, dropout=dropout, image_size=image_size,
                           num_classes=num_classes, null_class=null_class, learn_sigma=learn_sigma)
        self.in_channels, self.base_channels, self.num_classes = in_channels, base_channels, num_classes
        if null_class and num_classes is None:
            raise ValueError("UNet: null_class=True needs num_classes (the null row is label num_classes)")
        # ∅'s label, one past the classes; None without a null row.
        self.null_label = num_classes if null_class else None
        self.num_downsamples = len(channel_mults) - 1
        resolutions = [image_size // 2**level for level in range(len(channel_mults))]
        if image_size % 2**self.num_downsamples:
            raise ValueError(
                f"UNet: image_size={image_size} cannot be halved {self.num_downsamples} times evenly; "
                f"{_size_advice(image_size, self.num_downsamples)}"
            )
        unreachable = [r for r in attn_resolutions if r not in resolutions]
        if unreachable:
            raise ValueError(
                f"UNet: attn_resolutions {unreachable} are not among the resolutions this model visits "
                f"({', '.join(map(str, resolutions))} for image_size={image_size})"
            )
        layer = dict(rng=rng, dtype=dtype)
        temb_dim = 4 * base_channels

        # Sinusoid(base) → Linear → SiLU → Linear: the time embedding MLP (Ho et al. 2020, App. B).
        self.time_embed = nn.Sequential(
            nn.Linear(base_channels, temb_dim, **layer), nn.SiLU(), nn.Linear(temb_dim, temb_dim, **layer)
        )
        if num_classes is not None:
            # N(0, 1) entries, as torch.nn.Embedding initialises them.
            init_rng = nn.default_rng() if rng is None else rng
            rows = num_classes + 1 if null_class else num_classes
            self.label_embed = nn.Parameter(init_rng.standard_normal((rows, temb_dim)), dtype=dtype)

        def res_block(cin, cout):
            return ResBlock(cin, cout, temb_dim, num_groups, dropout, **layer)

        # Down: every input block's output is a skip, so the channel counts are recorded as they go.
        # Every entry is a TimestepSequential, so the forward pass treats them all alike.
        conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1, **layer)
        self.input_blocks = nn.ModuleList([TimestepSequential(conv_in)])
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                block = TimestepSequential(res_block(ch, base_channels * mult))
                ch = base_channels * mult
                if resolutions[level] in attn_resolutions:
                    block.append(AttentionBlock(ch, num_groups, **layer))
                self.input_blocks.append(block)
                skip_channels.append(ch)
            if level != self.num_downsamples:
                self.input_blocks.append(TimestepSequential(Downsample(ch, **layer)))
                skip_channels.append(ch)

        self.middle_block = TimestepSequential(
            res_block(ch, ch), AttentionBlock(ch, num_groups, **layer), res_block(ch, ch)
        )

        # Up: one more ResBlock per level than on the way down, so every skip is consumed.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                block = TimestepSequential(res_block(ch + skip_channels.pop(), base_channels * mult))
                ch = base_channels * mult
                if resolutions[level] in attn_resolutions:
                    block.append(AttentionBlock(ch, num_groups, **layer))
                if level != 0 and i == num_res_blocks:
                    block.append(Upsample(ch, **layer))
                self.output_blocks.append(block)

        self.out = nn.Sequential(
            nn.GroupNorm(num_groups, ch, dtype=dtype),
            _zero_init(nn.Conv2d(ch, in_channels * (2 if learn_sigma else 1), 3, padding=1, **layer)),
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> UNet:
        """``UNet(**PRESETS[name], **overrides)``: e.g. ``UNet.from_preset("mnist", dropout=0.1)``."""
        if name not in PRESETS:
            raise ValueError(f"UNet.from_preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(self, x, t, y=None):
        """ε̂ = ε_θ(x_t, t[, y]): x (N, C, H, W), t integer timesteps or real noise levels (N,) (EDM's
        and flow matching's, :mod:`minidiff.objectives`), y labels (N,) (``null_label``, when the model
        has one, is ∅: no condition).

        x is a Tensor or an array. A constant x (one that needs no gradient) is cast to the
        parameters' dtype, so a float64 NumPy batch does not silently run a float32 model in
        float64; a differentiated x must already match it.
        """
        self._check_inputs(x, t, y)
        like = self.time_embed[0].weight  # the device and dtype the parameters live in
        x = _as_input(x, like)
        t = _noise_level_array(t, like)
        temb = self.time_embed(Tensor(timestep_embedding(t, self.base_channels, dtype=like.dtype)))  # (N, 4·base)
        if y is not None:
            y = _index_array(y, like)
            temb = temb + self.label_embed[y]  # a row lookup, differentiable via getitem

        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, temb)  # (N, base·mult, H/2^level, W/2^level) at the current level
            hs.append(h)
        h = self.middle_block(h, temb)
        for block in self.output_blocks:
            h = block(F.concat([h, hs.pop()], axis=1), temb)  # (N, ch + skip channels, H, W)
        norm, conv = self.out  # a pair, so that checkpoints name them out.0 and out.1
        return conv(F.silu(norm(h)))  # (N, in_channels, H, W), or (N, 2·in_channels, H, W) with learn_sigma

    def _check_inputs(self, x, t, y):
        if len(x.shape) != 4:
            raise ValueError(f"UNet: expected an image batch (N, C, H, W), got shape {tuple(x.shape)}")
        n, c, height, width = x.shape
        if c != self.in_channels:
            raise ValueError(f"UNet: input has {c} channels (shape {tuple(x.shape)}) but the model takes {self.in_channels}")
        bad = [side for side in (height, width) if side % 2**self.num_downsamples]
        if bad:
            raise ValueError(
                f"UNet: input {height}×{width} cannot be halved {self.num_downsamples} times evenly; "
                f"{_size_advice(bad[0], self.num_downsamples)}"
            )
        if n == 0:
            raise ValueError(f"UNet: empty batch (input shape {tuple(x.shape)})")
        if tuple(np.shape(t)) != (n,):
            raise ValueError(f"UNet: expected timesteps of shape ({n},), one per image, got shape {tuple(np.shape(t))}")
        _check_noise_levels(t)
        if self.num_classes is None and y is not None:
            raise ValueError("UNet: class labels y given to an unconditional model (built with num_classes=None)")
        if self.num_classes is not None:
            if y is None:
                raise ValueError(f"UNet: this model is class-conditional (num_classes={self.num_classes}); pass labels y")
            if tuple(np.shape(y)) != (n,):
                raise ValueError(f"UNet: expected labels of shape ({n},), got shape {tuple(np.shape(y))}")
            _check_indices("class labels y", y, 0, self.label_embed.shape[0])

    @property
    def learned_variance(self) -> bool:
        """Whether the output stacks ε̂ and the variance interpolation v (2·in_channels channels): what
        :func:`minidiff.diffusion.call_model` accepts only from a model that says so."""
        return bool(self.config["learn_sigma"])

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def _size_advice(size: int, times: int) -> str:
    """The sizes nearest ``size`` that can be halved ``times`` times evenly, as advice."""
    step = 2**times
    lower, upper = (size // step) * step, (size // step + 1) * step
    return f"use a size divisible by {step} such as {f'{lower} or {upper}' if lower else upper}"


def _check_indices(what: str, values, low: int, high: int | None, model: str = "UNet") -> None:
    """Refuse timesteps or labels that are not integers in [low, high): casting 2.7 to 2, or letting
    −1 pick the last embedding row, would be a silently wrong result. (T is the schedule's: the
    samplers and the loss check t < T.)"""
    values = values.data if isinstance(values, Tensor) else values
    values = get_array_module(values).asarray(values)
    if not get_array_module(values).issubdtype(values.dtype, np.integer):
        raise ValueError(f"{model}: {what} must be integers, got dtype {values.dtype}")
    lowest, highest = int(values.min()), int(values.max())
    if lowest < low or high is not None and highest >= high:
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{model}: {what} must lie in {bound}, got {lowest}…{highest}")


def _check_noise_levels(t, model: str = "UNet") -> None:
    """Refuse timesteps that are negative integers, or noise levels that are not finite real numbers.
    Real levels are embedded as they are (EDM's c_noise is negative below σ = 1), never rounded."""
    t = t.data if isinstance(t, Tensor) else t
    xp = get_array_module(t)
    t = xp.asarray(t)
    if xp.issubdtype(t.dtype, np.integer):
        _check_indices("timesteps t", t, 0, None, model)
    elif not xp.issubdtype(t.dtype, np.floating):
        raise ValueError(f"{model}: timesteps t must be integers or real noise levels, got dtype {t.dtype}")
    elif not bool(xp.isfinite(t).all()):
        raise ValueError(f"{model}: noise levels t must be finite, got NaN or infinity")


def _noise_level_array(t, like: Tensor):
    """Integer timesteps as :func:`_index_array`; real noise levels as float64 on the device of ``like``."""
    t = t.data if isinstance(t, Tensor) else t
    xp = get_array_module(t)
    t = xp.asarray(t)
    if xp.issubdtype(t.dtype, np.integer):
        return _index_array(t, like)
    return to_device(t.astype(xp.float64), device_of(like.data))


def _as_input(x, like: Tensor) -> Tensor:
    """``x`` as a Tensor of the dtype of ``like``, copying only a constant (see UNet.forward)."""
    if not isinstance(x, Tensor):
        return Tensor(x, dtype=like.dtype)
    if x.dtype == like.dtype:
        return x
    if x.requires_grad:
        raise ValueError(
            f"UNet: input of dtype {x.dtype} requires grad but the parameters are {like.dtype}; "
            f"build the input as {like.dtype} (or the model with dtype={x.dtype})"
        )
    return Tensor(x.data, dtype=like.dtype)


def _index_array(values, like: Tensor):
    """Timesteps or labels (array, list or Tensor) as an integer array on the device of ``like``."""
    values = values.data if isinstance(values, Tensor) else values
    values = to_device(get_array_module(values).asarray(values), device_of(like.data))
    return values.astype(get_array_module(values).intp)


def as_denoiser(model, y=None):
    """Wrap any backbone (the U-Net, :class:`minidiff.dit.DiT`) as the samplers' ``model(x_t, t) -> output``
    on arrays, run under ``no_grad``; :mod:`minidiff.backbones` re-exports it.

    ``y`` fixes the class labels for a conditional model (one per image of the batch to sample).
    The arrays stay on their device: NumPy in, NumPy out; CuPy in, CuPy out.
    """

    def denoise(x_t, t):
        with no_grad():
            return model(x_t, t, y).data

    denoise.learned_variance = bool(getattr(model, "learned_variance", False))  # its output may have 2C channels
    return denoise
