"""The NumPy reference kernels: the specification every fast kernel is tested against.

Written for clarity over speed, with the array module of their inputs (NumPy or CuPy), so
``MINIDIFF_KERNELS=reference`` gives a path a student can step through line by line.
"""
from __future__ import annotations

from ..backend import get_array_module


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis: ⌊(size + 2·padding − kernel)/stride⌋ + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, kh: int, kw: int, stride: int, padding: int, out=None):
    """Unfold every kh×kw patch of ``x`` into a column, so a convolution becomes one GEMM.

    x: (N, C, H, W) → cols: (C·kh·kw, N·Ho·Wo). Rows are ordered (c, i, j) like a flattened
    (C, kh, kw) weight; columns run over every output position of every image, so the whole
    batch is a single matrix product W·cols rather than N small ones. Padding is zeros.
    ``out``, if given, is a C-contiguous array of that shape and dtype to write into.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))) if padding else x
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=x.dtype) if out is None else out.reshape(c, kh, kw, n, ho, wo)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]  # (N, C, Ho, Wo)
            cols[:, i, j] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * ho * wo)


def col2im(cols, x_shape, kh: int, kw: int, stride: int, padding: int, out=None):
    """The adjoint of :func:`im2col`: scatter-add every column back onto its patch.

    cols: (C·kh·kw, N·Ho·Wo) → (N, C, H, W). Overlapping patches add up, which is exactly the
    gradient of im2col; contributions reach a pixel in (i, j) order, which the fast kernels
    follow so that they agree bit for bit. ``out``, if given, is a C-contiguous array of
    ``x_shape`` to write into.
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    cols = cols.reshape(c, kh, kw, n, ho, wo)
    padded = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += cols[:, i, j].transpose(1, 0, 2, 3)
    image = padded[:, :, padding : padding + h, padding : padding + w]
    if out is None:
        return image.copy() if padding else image
    out[...] = image
    return out


def sigmoid(x):
    """σ(x) = (1 + tanh(x/2))/2: exact, and never overflows the way 1/(1 + e⁻ˣ) does for x ≪ 0."""
    return 0.5 * (1 + get_array_module(x).tanh(0.5 * x))


def group_norm_forward(x, num_groups: int, weight, bias, eps: float, silu: bool):
    """Group normalisation (Wu & He 2018, Eq. 1–3), then the per-channel affine map, then
    optionally SiLU -- the GroupNorm → SiLU pair every DDPM ResBlock starts with, in one pass.

    x: (N, C, M); weight, bias: (C,) → (y (N, C, M), x̂ (N, C, M), rstd (N, G)) with
    x̂ = (x − μ_g)·rstd, rstd = 1/√(σ²_g + eps) over each group of C/G channels, a = γ·x̂ + β and
    y = a·σ(a) if ``silu`` else a. Two-pass variance σ² = mean((x − μ)²): it never subtracts two
    large nearly equal numbers, unlike E[x²] − μ².
    """
    xp = get_array_module(x)
    n, c, m = x.shape
    groups = x.reshape(n, num_groups, -1)  # (N, G, C/G·M)
    mean = groups.mean(axis=-1, keepdims=True)  # μ: (N, G, 1)
    centered = groups - mean
    rstd = 1 / xp.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)  # 1/σ: (N, G, 1)
    x_hat = (centered * rstd).reshape(n, c, m)
    a = x_hat * weight[:, None] + bias[:, None]
    return (a * sigmoid(a) if silu else a), x_hat, rstd[..., 0]


def group_norm_backward(grad_y, x_hat, rstd, weight, bias, silu: bool):
    """The gradient of :func:`group_norm_forward` → (dx (N, C, M), dγ (C,), dβ (C,))."""
    n, c, m = x_hat.shape
    num_groups = rstd.shape[1]
    grad_a = grad_y
    if silu:
        a = x_hat * weight[:, None] + bias[:, None]
        s = sigmoid(a)
        grad_a = grad_y * s * (1 + a * (1 - s))  # ∂(a·σ(a))/∂a = σ(a)(1 + a(1 − σ(a)))
    grad_weight = (grad_a * x_hat).sum(axis=(0, 2))  # ∂a/∂γ = x̂
    grad_bias = grad_a.sum(axis=(0, 2))  # ∂a/∂β = 1
    grad_xhat = (grad_a * weight[:, None]).reshape(n, num_groups, -1)  # ∂a/∂x̂ = γ: (N, G, C/G·M)
    x_hat = x_hat.reshape(n, num_groups, -1)
    mean_grad = grad_xhat.mean(axis=-1, keepdims=True)  # through μ
    mean_grad_xhat = (grad_xhat * x_hat).mean(axis=-1, keepdims=True)  # through σ
    grad_x = rstd[..., None] * (grad_xhat - mean_grad - x_hat * mean_grad_xhat)  # ∂x̂/∂x = (1/σ)(I − 1/M − x̂x̂ᵀ/M)
    return grad_x.reshape(n, c, m), grad_weight, grad_bias
