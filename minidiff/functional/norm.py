"""Group normalisation (Wu & He 2018), the normaliser of the DDPM U-Net, optionally fused with
the SiLU that follows it in every ResBlock; and layer normalisation (Ba et al. 2016), the DiT's.

One Function with the closed-form backward; the arithmetic lives in the named kernels
``group_norm_forward`` / ``group_norm_backward`` (kernels/reference.py is their specification).
Fusing SiLU saves a full pass over the activations each way and the array SiLU would keep for
its backward. Model code writes ``silu(group_norm(x))``; :func:`group_norm` leaves its result
pending (:mod:`~minidiff.functional.fusion`), and ``silu`` of it becomes the fused op -- pending
too: a 3×3 Winograd convolution of it whose filters need no gradient (sampling) takes
GroupNorm+SiLU into its input transform (:class:`~minidiff.functional.winograd.WinogradConv2d`),
and the normalised activations are never written out.
"""
from __future__ import annotations

from ..autograd import Function, is_grad_enabled
from ..backend import get_array_module
from ..kernels import kernel
from .fusion import pending
from .winograd import winograd_conv2d

__all__ = ["group_norm", "group_norm_silu", "layer_norm"]


class GroupNorm(Function):
    r"""y = γ·x̂ + β (then SiLU if ``silu``) with x̂ = (x − μ_g)/√(σ²_g + eps), μ_g and σ²_g taken
    over each group of C/G channels and all positions of one image; γ, β are per channel."""

    def forward(self, x, weight, bias, num_groups, eps, silu):
        xp = get_array_module(x)
        n, c = x.shape[:2]
        weight = xp.ones(c, dtype=x.dtype) if weight is None else weight
        bias = xp.zeros(c, dtype=x.dtype) if bias is None else bias
        shape, x = x.shape, x.reshape(n, c, -1)  # (N, C, M)
        y, mean, rstd = kernel("group_norm_forward", x)(x, num_groups, weight, bias, eps, silu)  # y: (N, C, M); μ, rstd: (N, G)
        self.silu = silu
        self.save_for_backward(x, mean, rstd, weight, bias)  # x, not x̂: the backward rebuilds x̂ from x, μ, rstd
        return y.reshape(shape)

    def backward(self, grad):
        x, mean, rstd, weight, bias = self.saved
        n, c = grad.shape[:2]
        # through SiLU (∂(aσ(a))/∂a), the affine map (∂a/∂x̂ = γ, ∂a/∂γ = x̂, ∂a/∂β = 1) and the
        # normalisation (∂x̂/∂x = (1/σ)(I − 1/M − x̂x̂ᵀ/M) per group): see the kernel
        grad_x, grad_weight, grad_bias = kernel("group_norm_backward", grad)(
            grad.reshape(n, c, -1), x, mean, rstd, weight, bias, self.silu
        )
        return (
            grad_x.reshape(grad.shape) if self.needs_input_grad[0] else None,
            grad_weight if self.needs_input_grad[1] else None,
            grad_bias if self.needs_input_grad[2] else None,
        )


def _check(name, x, num_groups, weight, bias):
    if len(x.shape) < 2:
        raise ValueError(f"{name}: expected an input (N, C, *), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if num_groups < 1 or channels % num_groups:
        raise ValueError(
            f"{name}: num_groups={num_groups} does not divide the C={channels} channels "
            f"(input shape {tuple(x.shape)})"
        )
    for param_name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (channels,):
            raise ValueError(f"{name}: {param_name} of shape {tuple(param.shape)} for C={channels} channels")


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """``torch.nn.functional.group_norm``: x (N, C, *), weight and bias (C,) or None."""
    _check("group_norm", x, num_groups, weight, bias)
    options = dict(num_groups=int(num_groups), eps=float(eps))

    def conv(w, b, padding: int, tile: int):  # conv(silu(group_norm(x))): the Winograd conv normalises as it reads x
        # Not when the filters' gradient is wanted: its backward would rebuild V from x, normalising again
        # (1.4–2.4 % of a training step), where the unfused conv keeps the normalised activation.
        if weight is None or bias is None or (is_grad_enabled() and getattr(w, "requires_grad", False)):
            return None
        return winograd_conv2d(x, w, b, padding, tile, norm=(weight, bias, options["num_groups"], options["eps"]))

    def silu():  # silu(group_norm(x)): the fused op, itself pending for a convolution to absorb
        return pending(GroupNorm, (x, weight, bias), dict(options, silu=True), x.shape, conv=conv)

    return pending(GroupNorm, (x, weight, bias), dict(options, silu=False), x.shape, silu=silu)  # arguments checked above


def group_norm_silu(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """``silu(group_norm(x, …))`` in one fused op (same values and gradients, one pass)."""
    _check("group_norm_silu", x, num_groups, weight, bias)
    return GroupNorm.apply(x, weight, bias, num_groups=int(num_groups), eps=float(eps), silu=True)


class LayerNorm(Function):
    r"""y = γ·x̂ + β with x̂ = (x − μ)/√(σ² + eps), μ and σ² taken over the last axis of each row
    (Ba et al. 2016, §3), the normaliser of a transformer block; γ, β are per feature or absent."""

    def forward(self, x, weight, bias, eps):
        xp = get_array_module(x)
        mean = x.mean(axis=-1, keepdims=True)  # μ: (..., 1)
        rstd = 1.0 / xp.sqrt(x.var(axis=-1, keepdims=True) + eps)  # 1/√(σ² + eps): (..., 1)
        x_hat = (x - mean) * rstd  # (..., D)
        self.save_for_backward(x_hat, rstd, weight)
        y = x_hat if weight is None else x_hat * weight
        return y if bias is None else y + bias

    def backward(self, grad):
        x_hat, rstd, weight = self.saved
        lead = tuple(range(grad.ndim - 1))
        grad_weight = (grad * x_hat).sum(axis=lead) if self.needs_input_grad[1] else None  # ∂y/∂γ = x̂
        grad_bias = grad.sum(axis=lead) if self.needs_input_grad[2] else None  # ∂y/∂β = 1
        if not self.needs_input_grad[0]:
            return None, grad_weight, grad_bias
        g = grad if weight is None else grad * weight  # ∂y/∂x̂ = γ
        # ∂x̂/∂x = (1/σ)(I − 1/D − x̂x̂ᵀ/D) per row: dx = (1/σ)(g − mean(g) − x̂·mean(g ⊙ x̂))
        grad_x = rstd * (g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
        return grad_x, grad_weight, grad_bias


def layer_norm(x, normalized_shape: int, weight=None, bias=None, eps: float = 1e-5):
    """``torch.nn.functional.layer_norm`` over the last axis: x (..., D), weight and bias (D,) or None."""
    if len(x.shape) < 1 or x.shape[-1] != normalized_shape:
        raise ValueError(f"layer_norm: expected an input (..., {normalized_shape}), got shape {tuple(x.shape)}")
    for param_name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (normalized_shape,):
            raise ValueError(f"layer_norm: {param_name} of shape {tuple(param.shape)} for D={normalized_shape} features")
    return LayerNorm.apply(x, weight, bias, eps=float(eps))
