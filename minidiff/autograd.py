"""A minimal reverse-mode autograd over NumPy (or CuPy) arrays.

A :class:`Tensor` holds an array, an optional ``.grad`` and, when it was produced by an op, the
:class:`Function` node that made it. :meth:`Tensor.backward` walks the graph in reverse
topological order -- found iteratively, so a deep U-Net never hits Python's recursion limit --
and calls each node's ``backward``, accumulating gradients when a tensor is used twice.

Ops are written as :class:`Function` subclasses with ``forward`` and ``backward`` side by side
(see :mod:`minidiff.functional`). They work on raw arrays; ``Function.apply`` wraps them.

It runs past 300 lines because ``Tensor``'s operator overloads are one-line delegations to
:mod:`minidiff.functional` that a reader expects to find on the class itself, beside the graph walk.
"""
from __future__ import annotations

import numpy as np

from .backend import device_of, get_array_module, same_device, to_device, to_numpy

DEFAULT_DTYPE = np.float32

_grad_enabled = True

# Callables hook(ctx, output) run after every op's forward; minidiff.flops counts FLOPs with one
# while a counter is open. Empty otherwise: the ops themselves never count.
apply_hooks: list = []


class no_grad:
    """Context manager (and decorator) that records no graph: for sampling and evaluation."""

    def __enter__(self):
        global _grad_enabled
        self._previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc_info):
        global _grad_enabled
        _grad_enabled = self._previous

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper


def is_grad_enabled() -> bool:
    return _grad_enabled


def _as_array(data, dtype=None):
    if dtype is None and type(data) is np.ndarray and data.dtype.kind == "f":  # an op's output: kept as it is
        return data
    if isinstance(data, Tensor):
        data = data.data
    xp = get_array_module(data)
    if dtype is None:
        is_float_array = hasattr(data, "dtype") and xp.issubdtype(data.dtype, xp.floating)
        dtype = data.dtype if is_float_array else DEFAULT_DTYPE
    return xp.asarray(data, dtype=dtype)


class Tensor:
    """An array with an optional gradient and the op that produced it.

    ``Tensor(array)`` keeps the dtype of a floating-point array (so float64 gradient checks stay
    float64) and turns anything else -- lists, scalars, integer arrays -- into float32.
    """

    __array_priority__ = 100  # so ``ndarray + Tensor`` defers to Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx: Function | None = None

    # ----------------------------------------------------------------- array facts
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    device = property(lambda self: device_of(self.data))

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device}{grad})"

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied back from the GPU when needed)."""
        return to_numpy(self.data)

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def to(self, device: str) -> Tensor:
        """This tensor on ``device`` ("cpu" or "cuda"): itself if already there, else a new leaf."""
        data = to_device(self.data, device)
        if data is self.data:
            return self
        return Tensor(data, requires_grad=self.requires_grad)

    def zero_grad(self):
        self.grad = None

    # ----------------------------------------------------------------- backward
    def backward(self, grad=None, retain_graph: bool = False):
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf that requires grad.

        ``grad`` is the upstream gradient; it may be omitted only for a one-element tensor.
        Unless ``retain_graph``, each node's saved arrays are released once used, which keeps
        the peak memory of a training step to what the backward pass still needs.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (built under no_grad, or from constants)")
        xp = get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() on a tensor of shape {self.shape} needs a gradient argument of the "
                    "same shape; reduce it to a scalar first (e.g. .sum() or .mean())"
                )
            grad = xp.ones_like(self.data)
        grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): gradient of shape {grad.shape} for a tensor of shape {self.shape}")

        grads = {id(self): grad}
        given_to_leaves = set()  # ids of arrays already stored as some leaf's .grad
        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            ctx = node._ctx
            if ctx is None:  # a leaf
                if id(g) in given_to_leaves:  # e.g. Add hands one array to both inputs: never alias two .grad
                    g = g.copy()
                node.grad = g if node.grad is None else node.grad + g
                given_to_leaves.add(id(node.grad))
                continue
            input_grads = ctx.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for tensor, input_grad in zip(ctx.inputs, input_grads):
                if tensor is None or input_grad is None or not tensor.requires_grad:
                    continue
                if input_grad.shape != tensor.shape:
                    raise RuntimeError(
                        f"{type(ctx).__name__}.backward returned a gradient of shape {input_grad.shape} "
                        f"for an input of shape {tensor.shape}"
                    )
                input_grad = input_grad.astype(tensor.dtype, copy=False)
                key = id(tensor)
                grads[key] = input_grad if key not in grads else grads[key] + input_grad
            if not retain_graph:
                node._ctx = None

    # ----------------------------------------------------------------- operators
    def _F(self):
        return _functional or _import_functional()

    def __add__(self, other):
        return self._F().add(self, other)

    def __radd__(self, other):
        return self._F().add(other, self)

    def __sub__(self, other):
        return self._F().sub(self, other)

    def __rsub__(self, other):
        return self._F().sub(other, self)

    def __mul__(self, other):
        return self._F().mul(self, other)

    def __rmul__(self, other):
        return self._F().mul(other, self)

    def __truediv__(self, other):
        return self._F().div(self, other)

    def __rtruediv__(self, other):
        return self._F().div(other, self)

    def __neg__(self):
        return self._F().neg(self)

    def __pow__(self, exponent):
        return self._F().pow(self, exponent)

    def __matmul__(self, other):
        return self._F().matmul(self, other)

    def __rmatmul__(self, other):
        return self._F().matmul(other, self)

    def __getitem__(self, index):
        return self._F().getitem(self, index)

    # ----------------------------------------------------------------- methods
    def sum(self, axis=None, keepdims=False):
        return self._F().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return self._F().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return self._F().max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self._F().reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return self._F().transpose(self, axes or None)

    def permute(self, *axes):
        return self.transpose(*axes)

    @property
    def T(self):
        return self.transpose()

    def exp(self):
        return self._F().exp(self)

    def log(self):
        return self._F().log(self)

    def sqrt(self):
        return self._F().sqrt(self)

    def tanh(self):
        return self._F().tanh(self)

    def sigmoid(self):
        return self._F().sigmoid(self)

    def relu(self):
        return self._F().relu(self)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from ``root`` that need a gradient, every input before its users.

    An explicit stack instead of recursion: a U-Net graph is thousands of nodes deep.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.inputs:
                if parent is not None and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of size 1, so its
    gradient is the sum of the upstream gradient over exactly those axes.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, size in enumerate(shape) if size == 1 and grad.shape[extra + i] != 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


class Function:
    """One differentiable op. Subclasses define ``forward`` and ``backward`` on raw arrays.

    ``forward(*arrays, **options)`` returns the output array and may call
    :meth:`save_for_backward` with what the backward needs (and nothing more);
    ``backward(grad_output)`` returns one gradient per positional input (``None`` for inputs that
    need none -- check ``self.needs_input_grad`` to skip the work).

    Positional inputs are tensors (or ``None``, e.g. a missing bias); plain arrays and Python
    numbers are wrapped as constants of the first tensor's dtype. Keyword options are not
    differentiated.
    """

    def __init__(self, inputs: tuple):
        self.inputs = inputs
        # under no_grad nothing will run backward, so no input needs a gradient and forward saves nothing
        self.needs_input_grad = tuple([t is not None and t.requires_grad for t in inputs]) if _grad_enabled else (False,) * len(inputs)
        self.saved: tuple = ()

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def forward(self, *arrays, **options):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options) -> Tensor:
        tensors = _as_tensors(inputs)
        arrays = [None if t is None else t.data for t in tensors]
        same_device(*arrays)
        ctx = cls(tensors)
        output = ctx.forward(*arrays, **options)
        for hook in apply_hooks:
            hook(ctx, output)
        result = Tensor(output)
        if _grad_enabled and any(ctx.needs_input_grad):
            result.requires_grad = True
            result._ctx = ctx
        return result


_functional = None


def _import_functional():
    # minidiff.functional imports this module, so it is imported at the first operator, not above
    global _functional
    from . import functional

    _functional = functional
    return functional


def _as_tensors(inputs) -> tuple:
    for x in inputs:
        if x is not None and not isinstance(x, Tensor):
            break
    else:
        return inputs
    like = next((x for x in inputs if isinstance(x, Tensor)), None)
    dtype = like.dtype if like is not None else None
    converted = []
    for x in inputs:
        if x is None or isinstance(x, Tensor):
            converted.append(x)
        else:
            xp = get_array_module(like.data) if like is not None else get_array_module(x)
            converted.append(Tensor(xp.asarray(x), dtype=dtype))
    return tuple(converted)
