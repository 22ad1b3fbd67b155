"""Resampling of (N, C, H, W) images: nearest-neighbour upsampling and average pooling.

Both are reshapes of the image into s×s blocks: (N, C, H, s, W, s) ↔ (N, C, H·s, W·s).
"""
from __future__ import annotations

from ..autograd import Function
from ..backend import get_array_module
from ..kernels import kernel

__all__ = ["upsample_nearest2d", "avg_pool2d"]


def _check_image(name, x):
    if len(x.shape) != 4:
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")


class UpsampleNearest2d(Function):
    """y[n, c, i, j] = x[n, c, ⌊i/s⌋, ⌊j/s⌋] (the kernels ``upsample_nearest_forward/backward``)."""

    def forward(self, x, scale):
        self.scale = scale
        return kernel("upsample_nearest_forward", x)(x, scale)  # (N, C, H·s, W·s)

    def backward(self, grad):
        return kernel("upsample_nearest_backward", grad)(grad, self.scale)  # ∂y/∂x: each s×s block sums to its source pixel


class AvgPool2d(Function):
    """y[n, c, i, j] = mean of the k×k block x[n, c, k·i : k·i + k, k·j : k·j + k] (stride k)."""

    def forward(self, x, kernel_size):
        n, c, h, w = x.shape
        k = kernel_size
        self.x_shape, self.k = x.shape, k
        ho, wo = h // k, w // k  # trailing rows / columns that fill no block are dropped, as in PyTorch
        return x[:, :, : ho * k, : wo * k].reshape(n, c, ho, k, wo, k).mean(axis=(3, 5))

    def backward(self, grad):
        xp = get_array_module(grad)
        n, c, ho, wo = grad.shape
        k = self.k
        grad_x = xp.zeros(self.x_shape, dtype=grad.dtype)
        block_grad = xp.broadcast_to((grad / (k * k))[:, :, :, None, :, None], (n, c, ho, k, wo, k))  # ∂y/∂x = 1/k² inside each block
        grad_x[:, :, : ho * k, : wo * k] = block_grad.reshape(n, c, ho * k, wo * k)
        return grad_x


def upsample_nearest2d(x, scale: int = 2):
    """Nearest-neighbour upsampling by an integer factor: (N, C, H, W) → (N, C, H·scale, W·scale)."""
    _check_image("upsample_nearest2d", x)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"upsample_nearest2d: scale must be a positive integer, got {scale!r}")
    return UpsampleNearest2d.apply(x, scale=int(scale))


def avg_pool2d(x, kernel_size: int = 2):
    """``torch.nn.functional.avg_pool2d`` with stride = kernel_size and no padding:
    (N, C, H, W) → (N, C, ⌊H/k⌋, ⌊W/k⌋)."""
    _check_image("avg_pool2d", x)
    if int(kernel_size) != kernel_size or not 1 <= kernel_size <= min(x.shape[2:]):
        raise ValueError(f"avg_pool2d: kernel_size {kernel_size!r} must be an integer in 1..{min(x.shape[2:])} for input {tuple(x.shape)}")
    return AvgPool2d.apply(x, kernel_size=int(kernel_size))
