"""Element-wise ops. Binary ops broadcast like NumPy; their backward sums the gradient back
to each input's shape with :func:`~minidiff.autograd.unbroadcast`."""
from __future__ import annotations

from ..autograd import Function, Tensor, unbroadcast
from ..backend import get_array_module
from .fusion import absorb

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "expm1", "log", "sqrt", "abs",
    "clamp", "clip", "maximum", "minimum", "where",
]


class Add(Function):
    def forward(self, a, b):
        self.save_for_backward(a.shape, b.shape)
        return a + b

    def backward(self, grad):
        a_shape, b_shape = self.saved
        return unbroadcast(grad, a_shape), unbroadcast(grad, b_shape)  # ∂(a+b)/∂a = ∂(a+b)/∂b = 1


class Sub(Function):
    def forward(self, a, b):
        self.save_for_backward(a.shape, b.shape)
        return a - b

    def backward(self, grad):
        a_shape, b_shape = self.saved
        grad_b = unbroadcast(-grad, b_shape) if self.needs_input_grad[1] else None  # ∂(a−b)/∂b = −1
        return unbroadcast(grad, a_shape), grad_b  # ∂(a−b)/∂a = 1


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a if self.needs_input_grad[1] else None, b if self.needs_input_grad[0] else None)
        return a * b

    def backward(self, grad):
        a, b = self.saved
        grad_a = unbroadcast(grad * b, self.inputs[0].shape) if self.needs_input_grad[0] else None  # ∂(ab)/∂a = b
        grad_b = unbroadcast(grad * a, self.inputs[1].shape) if self.needs_input_grad[1] else None  # ∂(ab)/∂b = a
        return grad_a, grad_b


class Div(Function):
    def forward(self, a, b):
        out = a / b
        self.save_for_backward(b, out if self.needs_input_grad[1] else None)
        return out

    def backward(self, grad):
        b, out = self.saved
        grad_a = unbroadcast(grad / b, self.inputs[0].shape) if self.needs_input_grad[0] else None  # ∂(a/b)/∂a = 1/b
        grad_b = unbroadcast(-grad * out / b, self.inputs[1].shape) if self.needs_input_grad[1] else None  # ∂(a/b)/∂b = −a/b² = −(a/b)/b
        return grad_a, grad_b


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, grad):
        return -grad  # ∂(−x)/∂x = −1


class Pow(Function):
    """``a ** b``; a constant exponent (the usual case) costs no logarithm in the backward."""

    def forward(self, a, b):
        out = a**b
        self.save_for_backward(a, b, out if self.needs_input_grad[1] else None)
        return out

    def backward(self, grad):
        a, b, out = self.saved
        grad_a = grad_b = None
        if self.needs_input_grad[0]:
            grad_a = unbroadcast(grad * b * a ** (b - 1), a.shape)  # ∂aᵇ/∂a = b·aᵇ⁻¹
        if self.needs_input_grad[1]:
            grad_b = unbroadcast(grad * out * get_array_module(a).log(a), b.shape)  # ∂aᵇ/∂b = aᵇ·ln a
        return grad_a, grad_b


class Exp(Function):
    def forward(self, x):
        out = get_array_module(x).exp(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved
        return grad * out  # ∂eˣ/∂x = eˣ


class Expm1(Function):
    def forward(self, x):
        out = get_array_module(x).expm1(x)  # eˣ − 1 without cancellation near x = 0
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved
        return grad * (out + 1)  # ∂(eˣ − 1)/∂x = eˣ


class Log(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return get_array_module(x).log(x)

    def backward(self, grad):
        (x,) = self.saved
        return grad / x  # ∂ ln x/∂x = 1/x


class Sqrt(Function):
    def forward(self, x):
        out = get_array_module(x).sqrt(x)
        self.save_for_backward(out)
        return out

    def backward(self, grad):
        (out,) = self.saved
        return grad / (2 * out)  # ∂√x/∂x = 1/(2√x)


class Abs(Function):
    def forward(self, x):
        xp = get_array_module(x)
        self.save_for_backward(xp.sign(x))
        return xp.abs(x)

    def backward(self, grad):
        (sign,) = self.saved
        return grad * sign  # ∂|x|/∂x = sign x (0 at x = 0, as in PyTorch)


class Clamp(Function):
    def forward(self, x, min=None, max=None):
        xp = get_array_module(x)
        inside = xp.ones(x.shape, dtype=bool)
        if min is not None:
            inside &= x >= min
        if max is not None:
            inside &= x <= max
        self.save_for_backward(inside)
        return xp.clip(x, min, max)

    def backward(self, grad):
        (inside,) = self.saved
        return grad * inside  # ∂ clamp(x)/∂x = 1 inside [min, max] (bounds included, as in PyTorch), else 0


class Extremum(Function):
    """Element-wise max or min of two tensors; where they tie, each gets half the gradient
    (PyTorch's ``maximum``/``minimum``)."""

    def forward(self, a, b, take_min=False):
        xp = get_array_module(a)
        out = (xp.minimum if take_min else xp.maximum)(a, b)
        self.save_for_backward(a == out, b == out)
        return out

    def backward(self, grad):
        a_won, b_won = self.saved
        share = grad / (a_won.astype(grad.dtype) + b_won)  # a tie splits the gradient in two
        grad_a = unbroadcast(share * a_won, self.inputs[0].shape) if self.needs_input_grad[0] else None  # ∂ max(a,b)/∂a = [a ≥ b]
        grad_b = unbroadcast(share * b_won, self.inputs[1].shape) if self.needs_input_grad[1] else None  # ∂ max(a,b)/∂b = [b ≥ a]
        return grad_a, grad_b


class Where(Function):
    def forward(self, a, b, condition=None):
        self.save_for_backward(condition)
        return get_array_module(a).where(condition, a, b)

    def backward(self, grad):
        (condition,) = self.saved
        xp = get_array_module(grad)
        grad_a = unbroadcast(xp.where(condition, grad, 0), self.inputs[0].shape) if self.needs_input_grad[0] else None  # ∂/∂a = [cond]
        grad_b = unbroadcast(xp.where(condition, 0, grad), self.inputs[1].shape) if self.needs_input_grad[1] else None  # ∂/∂b = [¬cond]
        return grad_a, grad_b


def add(a, b):
    fused = absorb(b, "add", a)  # a pending convolution + r may become one that adds r as it writes (fusion.py)
    if fused is None:
        fused = absorb(a, "add", b)
    return Add.apply(a, b) if fused is None else fused


def sub(a, b):
    return Sub.apply(a, b)


def mul(a, b):
    return Mul.apply(a, b)


def div(a, b):
    return Div.apply(a, b)


def neg(x):
    return Neg.apply(x)


def pow(x, exponent):
    """``x ** exponent``, the exponent a number or a tensor (then differentiated too)."""
    return Pow.apply(x, exponent)


def exp(x):
    return Exp.apply(x)


def expm1(x):
    return Expm1.apply(x)


def log(x):
    return Log.apply(x)


def sqrt(x):
    return Sqrt.apply(x)


def abs(x):
    return Abs.apply(x)


def clamp(x, min=None, max=None):
    """Limit ``x`` to ``[min, max]`` (either bound may be omitted); the gradient flows only inside."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    return Clamp.apply(x, min=min, max=max)


clip = clamp


def maximum(a, b):
    return Extremum.apply(a, b)


def minimum(a, b):
    return Extremum.apply(a, b, take_min=True)


def where(condition, a, b):
    """``a`` where ``condition`` holds, else ``b`` (all three broadcast); ``condition`` is not differentiated."""
    if isinstance(condition, Tensor):
        condition = condition.data
    like = next((t.data for t in (a, b) if isinstance(t, Tensor)), condition)
    return Where.apply(a, b, condition=get_array_module(like).asarray(condition, dtype=bool))
