"""minidiff: a from-scratch diffusion-model library.

A small reverse-mode autograd over NumPy arrays, a conv/attention U-Net, the DDPM forward
process, ε-prediction training and reverse sampling, with Cython (CPU) and CuPy (GPU) kernels.
"""
from .autograd import Tensor, no_grad, is_grad_enabled

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "is_grad_enabled"]
