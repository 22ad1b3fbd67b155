"""Group normalisation (Wu & He 2018), the normaliser of the DDPM U-Net.

One Function with the closed-form backward; the per-group statistics and their gradient are
the named kernels ``group_norm_forward`` / ``group_norm_backward`` (kernels/reference.py).
"""
from __future__ import annotations

from ..autograd import Function
from ..kernels import kernel

__all__ = ["group_norm"]


class GroupNorm(Function):
    r"""y = γ·x̂ + β with x̂ = (x − μ_g)/√(σ²_g + eps), μ_g and σ²_g taken over each group of
    C/G channels and all spatial positions of one image; γ, β are per channel."""

    def forward(self, x, weight, bias, num_groups, eps):
        n, c = x.shape[:2]
        x_hat, rstd = kernel("group_norm_forward", x)(x.reshape(n, num_groups, -1), eps)  # (N, G, C/G·H·W), (N, G)
        x_hat = x_hat.reshape(x.shape)  # (N, C, H, W)
        self.save_for_backward(x_hat, rstd, weight)
        self.affine_shape = (1, c) + (1,) * (x.ndim - 2)  # γ, β broadcast over N and space
        out = x_hat if weight is None else x_hat * weight.reshape(self.affine_shape)
        return out if bias is None else out + bias.reshape(self.affine_shape)

    def backward(self, grad):
        x_hat, rstd, weight = self.saved
        n, num_groups = rstd.shape
        per_channel = (0,) + tuple(range(2, grad.ndim))  # sum over images and positions
        grad_x = grad_weight = grad_bias = None
        if self.needs_input_grad[0]:
            grad_xhat = grad if weight is None else grad * weight.reshape(self.affine_shape)  # ∂y/∂x̂ = γ
            grad_x = kernel("group_norm_backward", grad_xhat)(
                grad_xhat.reshape(n, num_groups, -1), x_hat.reshape(n, num_groups, -1), rstd
            )  # ∂x̂/∂x: (1/σ)(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) per group: (N, G, C/G·H·W)
            grad_x = grad_x.reshape(grad.shape)
        if self.needs_input_grad[1]:
            grad_weight = (grad * x_hat).sum(axis=per_channel)  # ∂y/∂γ = x̂
        if self.needs_input_grad[2]:
            grad_bias = grad.sum(axis=per_channel)  # ∂y/∂β = 1
        return grad_x, grad_weight, grad_bias


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """``torch.nn.functional.group_norm``: x (N, C, *), weight and bias (C,) or None."""
    if len(x.shape) < 2:
        raise ValueError(f"group_norm: expected an input (N, C, *), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if num_groups < 1 or channels % num_groups:
        raise ValueError(
            f"group_norm: num_groups={num_groups} does not divide the C={channels} channels "
            f"(input shape {tuple(x.shape)})"
        )
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and tuple(param.shape) != (channels,):
            raise ValueError(f"group_norm: {name} of shape {tuple(param.shape)} for C={channels} channels")
    return GroupNorm.apply(x, weight, bias, num_groups=int(num_groups), eps=float(eps))
