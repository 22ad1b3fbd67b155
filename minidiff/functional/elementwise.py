"""Element-wise ops. Binary ops broadcast like NumPy; their backward sums the gradient back
to each input's shape with :func:`~minidiff.autograd.unbroadcast`."""
from __future__ import annotations

from ..autograd import Function, unbroadcast
from ..backend import get_array_module

__all__ = ["add", "mul"]


class Add(Function):
    def forward(self, a, b):
        self.save_for_backward(a.shape, b.shape)
        return a + b

    def backward(self, grad):
        a_shape, b_shape = self.saved
        return unbroadcast(grad, a_shape), unbroadcast(grad, b_shape)  # ∂(a+b)/∂a = ∂(a+b)/∂b = 1


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a if self.needs_input_grad[1] else None, b if self.needs_input_grad[0] else None)
        return a * b

    def backward(self, grad):
        a, b = self.saved
        grad_a = unbroadcast(grad * b, self.inputs[0].shape) if self.needs_input_grad[0] else None  # ∂(ab)/∂a = b
        grad_b = unbroadcast(grad * a, self.inputs[1].shape) if self.needs_input_grad[1] else None  # ∂(ab)/∂b = a
        return grad_a, grad_b


def add(a, b):
    return Add.apply(a, b)


def mul(a, b):
    return Mul.apply(a, b)
