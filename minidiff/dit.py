"""The Diffusion Transformer of Peebles & Xie 2023 (DiT): a ViT over patches, conditioned by adaLN-Zero.

The image (or latent) x (N, C, H, W) is cut into p×p patches, each flattened and projected to a
token of width D, with a fixed 2-D sin-cos position embedding added (:func:`patchify`,
:func:`sincos_2d_embedding`). The L = HW/p² tokens pass through ``depth`` :class:`DiTBlock` s --
LayerNorm, multi-head self-attention, LayerNorm, an MLP -- whose LayerNorms are modulated by the
conditioning c = embed(t) + embed(y) (adaLN). A final adaLN LayerNorm and a linear map give
p·p·C_out values per token, put back in place by :func:`unpatchify`.

adaLN-Zero (§3.2): each block regresses six vectors (γ₁, β₁, α₁, γ₂, β₂, α₂) from c, and the
gates α start at zero, so every block starts as the identity; the final linear map starts at zero
too, so the untrained model outputs 0, like the U-Net whose zero-initialised convs it mirrors.

The interface is the U-Net's (:class:`minidiff.unet.UNet`): ``model(x, t, y)``, ``config``
rebuilding it, ``num_classes`` with an optional null class ∅ for classifier-free guidance, and
``learn_sigma`` doubling the output channels. Reference code: facebookresearch/DiT ``models.py``.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from . import nn
from .autograd import DEFAULT_DTYPE, Tensor
from .backend import device_of, to_device
from .unet import (_as_input, _check_indices, _check_noise_levels, _index_array, _noise_level_array, _zero_init,
                   timestep_embedding)

__all__ = ["patchify", "unpatchify", "sincos_1d_embedding", "sincos_2d_embedding", "modulate", "DiTBlock",
           "FinalLayer", "DiT", "PRESETS"]

FREQUENCY_EMBEDDING_SIZE = 256  # the sinusoid fed to the time MLP (DiT's TimestepEmbedder)


def patchify(x, p: int):
    """(N, C, H, W) → (N, L, p·p·C) with L = (H/p)(W/p) tokens in row-major order; each token is one
    p×p patch flattened as (row in patch, column in patch, channel) -- the inverse of :func:`unpatchify`
    ("Patchify", Peebles & Xie 2023, §3.2)."""
    n, c, height, width = x.shape
    h, w = height // p, width // p
    x = x.reshape(n, c, h, p, w, p)  # (N, C, h, p, w, p)
    x = x.transpose(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
    return x.reshape(n, h * w, p * p * c)  # (N, L, p·p·C)


def unpatchify(tokens, p: int, channels: int, height: int, width: int):
    """(N, L, p·p·C) → (N, C, H, W): every token back in its p×p place (the "Transformer decoder" of
    Peebles & Xie 2023, §3.2; DiT's ``unpatchify``)."""
    n = tokens.shape[0]
    h, w = height // p, width // p
    x = tokens.reshape(n, h, w, p, p, channels)  # (N, h, w, p, p, C)
    x = x.transpose(0, 5, 1, 3, 2, 4)  # (N, C, h, p, w, p)
    return x.reshape(n, channels, height, width)


def sincos_1d_embedding(dim: int, positions) -> np.ndarray:
    r"""(M, dim) sin-cos embedding of positions (M,): [sin(m ω₀), …, sin(m ω_{d/2−1}), cos(m ω₀), …],
    ω_i = 10000^{−i/(d/2)} (Vaswani et al. 2017, §3.5; MAE's ``get_1d_sincos_pos_embed_from_grid``)."""
    if dim % 2:
        raise ValueError(f"sincos_1d_embedding: dim={dim} must be even")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))  # ω_i: (dim/2,)
    angles = np.asarray(positions, dtype=np.float64).reshape(-1)[:, None] * omega[None, :]  # m·ω: (M, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (M, dim)


def sincos_2d_embedding(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    r"""(grid_h·grid_w, dim) fixed position embedding of the tokens of :func:`patchify`, row-major.

    Half the features embed the token's column j, half its row i, each with
    :func:`sincos_1d_embedding` of dim/2: E[i·grid_w + j] = [e_{dim/2}(j), e_{dim/2}(i)] -- the
    "standard ViT frequency-based positional embeddings" of Peebles & Xie 2023, §3.2, as DiT's
    ``get_2d_sincos_pos_embed`` (from MAE) computes them, its meshgrid putting w first. ``dim`` must divide by 4.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d_embedding: dim={dim} must be divisible by 4")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")  # (grid_h, grid_w) each
    return np.concatenate([sincos_1d_embedding(dim // 2, cols), sincos_1d_embedding(dim // 2, rows)], axis=1)


def modulate(x, shift, scale):
    """adaLN: x·(1 + γ) + β per image, with γ = ``scale`` and β = ``shift`` of shape (N, D) and x (N, L, D)
    (Peebles & Xie 2023, §3.2; DiT's ``modulate``)."""
    n, d = shift.shape
    return x * (1 + scale.reshape(n, 1, d)) + shift.reshape(n, 1, d)


def _xavier_linear(in_features: int, out_features: int, rng, dtype) -> nn.Linear:
    """A Linear with W ∼ U(±√(6/(fan_in + fan_out))) (Glorot & Bengio 2010) and b = 0: DiT's
    ``_basic_init`` for every Linear of its transformer."""
    layer = nn.Linear(in_features, out_features, rng=rng, dtype=dtype)
    bound = math.sqrt(6.0 / (in_features + out_features))
    layer.weight.data[...] = _rng(rng).uniform(-bound, bound, size=layer.weight.shape)
    layer.bias.data[...] = 0
    return layer


def _rng(rng):
    return nn.default_rng() if rng is None else rng


class Attention(nn.Module):
    """Multi-head self-attention over tokens (Vaswani et al. 2017, §3.2.2): one Linear to q, k, v
    (3D), softmax(q kᵀ/√(D/H)) v per head, heads concatenated, one Linear back (timm's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: width {dim} does not divide into {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = _xavier_linear(dim, 3 * dim, rng, dtype)
        self.proj = _xavier_linear(dim, dim, rng, dtype)

    def forward(self, x):
        n, length, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        qkv = self.qkv(x).reshape(n, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)  # (3, N, H, L, D/H)
        h = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, H, L, D/H), scale 1/√(D/H)
        return self.proj(h.transpose(0, 2, 1, 3).reshape(n, length, dim))  # (N, L, D)


class DiTBlock(nn.Module):
    r"""One transformer block with adaLN-Zero (Peebles & Xie 2023, §3.2, Fig. 3):

    .. math::
        (β_1, γ_1, α_1, β_2, γ_2, α_2) = \mathrm{Linear}(\mathrm{SiLU}(c)),\qquad
        x ← x + α_1 ⊙ \mathrm{Attn}(\mathrm{LN}(x)(1 + γ_1) + β_1),\qquad
        x ← x + α_2 ⊙ \mathrm{MLP}(\mathrm{LN}(x)(1 + γ_2) + β_2)

    The modulation Linear starts at zero, so α₁ = α₂ = 0 and the block is the identity at init.
    The MLP is Linear(D → rD), GELU (tanh), Linear(rD → D).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, affine=False, dtype=dtype)
        self.attn = Attention(dim, num_heads, rng=rng, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, affine=False, dtype=dtype)
        self.mlp = nn.Sequential(_xavier_linear(dim, hidden, rng, dtype), nn.GELU(), _xavier_linear(hidden, dim, rng, dtype))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(dim, 6 * dim, rng=rng, dtype=dtype)))

    def forward(self, x, c):
        d = x.shape[-1]
        mod = self.adaLN_modulation(c)  # (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mod[:, k * d:(k + 1) * d] for k in range(6))
        n = x.shape[0]
        x = x + gate_msa.reshape(n, 1, d) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, L, D)
        return x + gate_mlp.reshape(n, 1, d) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN LayerNorm (shift β, scale γ from c) then Linear(D → p·p·C_out), both starting at zero
    (Peebles & Xie 2023, §3.2; DiT's ``FinalLayer``): the untrained model outputs 0."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6, affine=False, dtype=dtype)
        self.linear = _zero_init(nn.Linear(dim, patch_size * patch_size * out_channels, rng=rng, dtype=dtype))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(dim, 2 * dim, rng=rng, dtype=dtype)))

    def forward(self, x, c):
        d = x.shape[-1]
        mod = self.adaLN_modulation(c)  # (N, 2D)
        return self.linear(modulate(self.norm_final(x), mod[:, :d], mod[:, d:]))  # (N, L, p·p·C_out)


PRESETS = {
    # Sized for a 2-core CPU: DiT-S's shape (Peebles & Xie 2023, Table 1) at width 128, 6 blocks of
    # 4 heads, 1.85M parameters. Patch 2 gives 196 tokens on 28×28, patch 4 gives 49.
    "dit-s2": dict(in_channels=1, image_size=28, patch_size=2, hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0),
    "dit-s4": dict(in_channels=1, image_size=28, patch_size=4, hidden_size=128, depth=6, num_heads=4, mlp_ratio=4.0),
    # For tests: two blocks of width 32.
    "dit-tiny": dict(in_channels=1, image_size=28, patch_size=4, hidden_size=32, depth=2, num_heads=2, mlp_ratio=2.0),
}


class DiT(nn.Module):
    """The Diffusion Transformer (Peebles & Xie 2023, §3.2, Fig. 3) behind the U-Net's interface ``model(x, t, y)``.

    Args:
        in_channels, image_size: the input's C and H = W (pixels, or an autoencoder's latents).
        patch_size: p, which must divide ``image_size``; L = (image_size/p)² tokens.
        hidden_size: the token width D (divisible by 4 for the 2-D position embedding).
        depth: the number of :class:`DiTBlock` s.
        num_heads: attention heads per block (dividing D).
        mlp_ratio: the MLP's hidden width over D.
        num_classes, null_class, learn_sigma: as for :class:`minidiff.unet.UNet`.
        rng, dtype: the initialisation's generator and the parameters' dtype.

    ``config`` holds the architecture arguments, so ``DiT(**config)`` rebuilds the model.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, patch_size: int = 2, hidden_size: int = 128,
                 depth: int = 6, num_heads: int = 4, mlp_ratio: float = 4.0, num_classes: int | None = None,
                 null_class: bool = False, learn_sigma: bool = False, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           num_classes=num_classes, null_class=null_class, learn_sigma=learn_sigma)
        if image_size % patch_size:
            raise ValueError(f"DiT: patch size {patch_size} does not divide the {image_size}×{image_size} input; "
                             f"use one of {', '.join(str(p) for p in range(1, image_size + 1) if image_size % p == 0)}")
        if hidden_size % 4:
            raise ValueError(f"DiT: hidden_size={hidden_size} must be divisible by 4 (the 2-D sin-cos embedding)")
        if null_class and num_classes is None:
            raise ValueError("DiT: null_class=True needs num_classes (the null row is label num_classes)")
        self.in_channels, self.patch_size, self.num_classes = in_channels, patch_size, num_classes
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.null_label = num_classes if null_class else None
        layer = dict(rng=rng, dtype=dtype)
        grid = image_size // patch_size

        # Patch embedding: a p×p patch flattened, then Linear(p·p·C → D) (DiT's stride-p conv, as a matmul).
        self.x_embedder = _xavier_linear(patch_size * patch_size * in_channels, hidden_size, rng, dtype)
        self.pos_embed = sincos_2d_embedding(hidden_size, grid, grid).astype(dtype)  # (L, D), fixed: not a Parameter
        # Time: sinusoid(256) → Linear → SiLU → Linear, weights N(0, 0.02²) (DiT's TimestepEmbedder).
        self.t_embedder = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size, **layer), nn.SiLU(),
                                        nn.Linear(hidden_size, hidden_size, **layer))
        for linear in (self.t_embedder[0], self.t_embedder[2]):
            linear.weight.data[...] = _rng(rng).normal(0.0, 0.02, size=linear.weight.shape)
            linear.bias.data[...] = 0
        if num_classes is not None:  # DiT's LabelEmbedder: N(0, 0.02²) rows, one more for ∅
            rows = num_classes + 1 if null_class else num_classes
            self.y_embedder = nn.Parameter(_rng(rng).normal(0.0, 0.02, size=(rows, hidden_size)), dtype=dtype)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, **layer) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, **layer)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DiT:
        """``DiT(**PRESETS[name], **overrides)``, e.g. ``DiT.from_preset("dit-s2", num_classes=10)``."""
        if name not in PRESETS:
            raise ValueError(f"DiT.from_preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def forward(self, x, t, y=None):
        """The model output for x (N, C, H, W) at timesteps or real noise levels t (N,) with labels y (N,):
        ε̂ (or x̂₀ / v, EDM's F_θ, the flow velocity: :mod:`minidiff.objectives`), (N, C, H, W), or
        (N, 2C, H, W) with ``learn_sigma`` (Peebles & Xie 2023, Fig. 3)."""
        self._check_inputs(x, t, y)
        like = self.x_embedder.weight
        x = _as_input(x, like)
        n, _, height, width = x.shape
        p = self.patch_size
        tokens = self.x_embedder(patchify(x, p)) + to_device(self.pos_embed, device_of(like.data))  # (N, L, D)
        t = _noise_level_array(t, like)  # integer timesteps, or EDM's and flow matching's real noise levels
        c = self.t_embedder(Tensor(timestep_embedding(t, FREQUENCY_EMBEDDING_SIZE, dtype=like.dtype)))  # (N, D)
        if y is not None:
            c = c + self.y_embedder[_index_array(y, like)]  # c = embed(t) + embed(y)
        for block in self.blocks:
            tokens = block(tokens, c)  # (N, L, D)
        return unpatchify(self.final_layer(tokens, c), p, self.out_channels, height, width)  # (N, C_out, H, W)

    @property
    def learned_variance(self) -> bool:
        """Whether the output stacks ε̂ and the variance interpolation v (2·in_channels channels), as the U-Net's."""
        return bool(self.config["learn_sigma"])

    def _check_inputs(self, x, t, y):
        if len(x.shape) != 4:
            raise ValueError(f"DiT: expected an image batch (N, C, H, W), got shape {tuple(x.shape)}")
        n, c, height, width = x.shape
        size = self.config["image_size"]
        if c != self.in_channels or (height, width) != (size, size):
            raise ValueError(f"DiT: input of shape {tuple(x.shape)}, but the model takes (N, {self.in_channels}, "
                             f"{size}, {size}) (its position embedding is fixed to that grid)")
        if n == 0:
            raise ValueError(f"DiT: empty batch (input shape {tuple(x.shape)})")
        if tuple(np.shape(t)) != (n,):
            raise ValueError(f"DiT: expected timesteps of shape ({n},), one per image, got shape {tuple(np.shape(t))}")
        _check_noise_levels(t, model="DiT")
        if self.num_classes is None and y is not None:
            raise ValueError("DiT: class labels y given to an unconditional model (built with num_classes=None)")
        if self.num_classes is not None:
            if y is None:
                raise ValueError(f"DiT: this model is class-conditional (num_classes={self.num_classes}); pass labels y")
            if tuple(np.shape(y)) != (n,):
                raise ValueError(f"DiT: expected labels of shape ({n},), got shape {tuple(np.shape(y))}")
            _check_indices("class labels y", y, 0, self.y_embedder.shape[0], model="DiT")

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
