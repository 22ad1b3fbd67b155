"""Modules: parameters that know their names, layers with PyTorch's initialisation, and
``state_dict`` checkpoints as ``.npz`` files.

A :class:`Module` registers every :class:`Parameter` and sub-:class:`Module` assigned to it as an
attribute, in the order they are assigned, so ``named_parameters()`` yields dotted names
(``down.0.conv1.weight``) that are stable across runs and match the keys of ``state_dict()``.

Initialisation follows PyTorch's defaults so that results are comparable with the reference
implementations: weights and biases of :class:`Linear` and :class:`Conv2d` are drawn from
U(−1/√fan_in, 1/√fan_in), which is what ``kaiming_uniform_(a=√5)`` gives (see
:func:`kaiming_uniform_bound`). Random draws come from a NumPy ``Generator`` passed as ``rng=``
or, when none is given, from this module's default generator, reseeded by :func:`manual_seed`.

It runs past 300 lines because ``Module`` (parameters, children, ``state_dict``, devices) and the
handful of layers built on it are read together: each layer is a few lines once ``Module`` is known.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import numpy as np

from . import functional as F
from .autograd import DEFAULT_DTYPE, Tensor
from .backend import get_array_module, to_device
from .files import load_npz, save_npz
from .functional.fusion import module_call
from .functional.winograd import reusing_filters

_default_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the default generator used for initialisation and dropout when no ``rng`` is given."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)


def default_rng() -> np.random.Generator:
    """The module-level generator (looked up at each call, so :func:`manual_seed` takes effect)."""
    return _default_rng


class Parameter(Tensor):
    """A leaf tensor that a :class:`Module` owns and an optimizer updates.

    It always requires grad, and it copies its data: optimizers update ``.data`` in place, which
    must never write through to an array the caller still holds.
    """

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)
        self.data = self.data.copy()

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, then assign parameters and sub-modules as
    attributes, and define ``forward``. Calling the module calls ``forward``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__(): call super().__init__() first "
                f"in {type(self).__name__}.__init__"
            )
        # Re-assigning a name (e.g. a weight to None) must drop it from the registry.
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return module_call(self.forward, args, kwargs)  # ops may fuse inside; the outermost call's result is computed

    # ----------------------------------------------------------------- traversal
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix: str = ""):
        """This module and every descendant, each once, with its dotted name ("" for self)."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            # Reversed, so that popping from the stack visits children in definition order.
            for child_name, child in reversed(module._modules.items()):
                stack.append((f"{name}.{child_name}" if name else child_name, child))

    def modules(self):
        return (module for _, module in self.named_modules())

    def named_parameters(self, prefix: str = ""):
        """``(dotted name, Parameter)`` pairs: each module's own parameters, then its children's.

        A parameter shared by two modules is yielded once, under its first name.
        """
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self):
        return (param for _, param in self.named_parameters())

    @contextlib.contextmanager
    def frozen(self):
        """The parameters read-only for the block, so that what is derived from them is derived once.

        Sampling runs hundreds of forwards with the same weights. Inside this block a Winograd
        convolution transforms each filter once (U = G g Gᵀ, :func:`~minidiff.functional.winograd.reusing_filters`)
        rather than at every call: that transform writes 16/9 of the weights per forward, 6 % of a
        batch-1 forward of the mnist U-Net (benchmarks/frozen_ab.py). A write to a parameter inside the block raises NumPy's
        "assignment destination is read-only" instead of leaving a stale transform behind. (GPU arrays
        have no read-only flag; on a GPU the block changes nothing.)
        """
        arrays = [p.data for p in self.parameters() if isinstance(p.data, np.ndarray) and p.data.flags.writeable]
        for array in arrays:
            array.setflags(write=False)
        try:
            with reusing_filters():
                yield self
        finally:
            for array in arrays:
                array.setflags(write=True)

    def num_parameters(self) -> int:
        return sum(param.size for param in self.parameters())

    # ----------------------------------------------------------------- modes and devices
    def train(self, mode: bool = True):
        """Set ``.training`` on this module and all descendants (dropout reads it); returns self."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for param in self.parameters():
            param.grad = None

    def to(self, device: str):
        """Move every parameter (and its gradient) to ``device`` in place; returns self.

        In place, so that an optimizer or EMA built on these parameter objects keeps tracking them.
        """
        for param in self.parameters():
            param.data = to_device(param.data, device)
            if param.grad is not None:
                param.grad = to_device(param.grad, device)
        return self

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> OrderedDict:
        """Dotted parameter name → a NumPy copy of its data, in ``named_parameters()`` order."""
        return OrderedDict((name, np.array(param.numpy())) for name, param in self.named_parameters())

    def load_state_dict(self, state, strict: bool = True):
        """Copy ``state`` (name → array) into the parameters, keeping each one's dtype and device.

        With ``strict``, missing and unexpected keys are refused; shape mismatches always are.
        All problems are named in one error, so a mismatched checkpoint is diagnosed in one go.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        params = dict(self.named_parameters())
        missing = [name for name in params if name not in state]
        unexpected = [name for name in state if name not in params]
        mismatched = [
            f"{name} expected {params[name].shape} got {np.shape(value)}"
            for name, value in state.items()
            if name in params and tuple(np.shape(value)) != params[name].shape
        ]
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatch: " + ", ".join(mismatched))
        if problems:
            raise RuntimeError("load_state_dict: " + "; ".join(problems))
        for name, param in params.items():
            if name in state:
                # Assigning into the existing array casts to its dtype and keeps its device.
                param.data[...] = get_array_module(param.data).asarray(state[name])
        return missing, unexpected

    def save(self, path) -> None:
        """Write ``state_dict()`` to ``path`` as an ``.npz`` file, atomically."""
        save_npz(self.state_dict(), path)

    def load(self, path, strict: bool = True):
        """Load parameters from an ``.npz`` file written by :meth:`save`."""
        return self.load_state_dict(load_npz(path), strict=strict)

    # ----------------------------------------------------------------- printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n  " + "\n  ".join(lines) + "\n)"


# --------------------------------------------------------------------- initialisation
def kaiming_uniform_bound(fan_in: int) -> float:
    """The bound of PyTorch's default weight init, ``kaiming_uniform_(a=√5)``: 1/√fan_in.

    He et al. 2015 draw U(−b, b) with b = gain·√(3/fan_in); the leaky-ReLU gain with a = √5 is
    √(2/(1+a²)) = √(1/3), so b = √(1/3)·√(3/fan_in) = 1/√fan_in. PyTorch uses the same bound
    for the bias.
    """
    return 1.0 / math.sqrt(fan_in)


def _uniform(shape, bound, rng, dtype) -> Parameter:
    rng = default_rng() if rng is None else rng
    return Parameter(rng.uniform(-bound, bound, size=shape), dtype=dtype)


# --------------------------------------------------------------------- layers
class Linear(Module):
    """y = x Wᵀ + b, with W of shape (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = kaiming_uniform_bound(in_features)
        self.weight = _uniform((out_features, in_features), bound, rng, dtype)
        self.bias = _uniform((out_features,), bound, rng, dtype) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution (cross-correlation, as in PyTorch) over NCHW input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 rng=None, dtype=DEFAULT_DTYPE):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        bound = kaiming_uniform_bound(in_channels * kh * kw)
        self.weight = _uniform((out_channels, in_channels, kh, kw), bound, rng, dtype)
        self.bias = _uniform((out_channels,), bound, rng, dtype) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class GroupNorm(Module):
    """Group normalisation (Wu & He 2018) with a per-channel affine map initialised to identity."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, dtype=DEFAULT_DTYPE):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by num_groups={num_groups}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = Parameter(np.ones(num_channels), dtype=dtype) if affine else None
        self.bias = Parameter(np.zeros(num_channels), dtype=dtype) if affine else None

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.weight is not None}"


class LayerNorm(Module):
    """Layer normalisation over the last axis (Ba et al. 2016); ``affine=False`` as in DiT's blocks,
    whose scale and shift come from adaLN instead (Peebles & Xie 2023, §3.2)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, dtype=DEFAULT_DTYPE):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = Parameter(np.ones(num_features), dtype=dtype) if affine else None
        self.bias = Parameter(np.zeros(num_features), dtype=dtype) if affine else None

    def forward(self, x):
        return F.layer_norm(x, self.num_features, self.weight, self.bias, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


class GELU(Module):
    """GELU with the tanh approximation (Hendrycks & Gimpel 2016), the activation of DiT's MLP."""

    def forward(self, x):
        return F.gelu(x)


class SiLU(Module):
    """x·σ(x) (Elfwing et al. 2018; "swish"), the DDPM U-Net's activation."""

    def forward(self, x):
        return F.silu(x)


class Identity(Module):
    def forward(self, x):
        return x


class Dropout(Module):
    """Zero each element with probability ``p`` while training, scaling the rest by 1/(1−p).

    Draws from ``rng`` if given, else from the module-level default generator.
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p={p} must be in [0, 1)")
        self.p, self.rng = p, rng

    def forward(self, x):
        rng = default_rng() if self.rng is None else self.rng
        return F.dropout(x, self.p, training=self.training, rng=rng)

    def extra_repr(self):
        return f"p={self.p}"


class ModuleList(Module):
    """A list of modules, registered under their indices ("0", "1", …)."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def append(self, module: Module):
        setattr(self, str(len(self)), module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after the other: ``Sequential(a, b)(x) == b(a(x))``."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
