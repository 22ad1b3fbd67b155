"""Ops that move elements without changing them: their backward moves the gradient back."""
from __future__ import annotations

import itertools

import numpy as np

from ..autograd import Function, Tensor
from ..backend import get_array_module
from .chunking import batch_pieces, map_chunks

# A copy shared out over the threads must move at least this much: handing pieces to a worker
# costs about 100 µs, the time one core copies ~5 MB (concat, 28×28: 1.2 MB shared 143 µs,
# alone 46 µs; 4.8 MB 173 µs either way; 19 MB shared 740 µs, alone 1,094 µs). Re-checked once
# the chunk threads polled (cheaper hand-overs): 1 MB or 256 KB instead made a batch-64 forward
# +2.1 % and +0.3 % (Intel Xeon, 15 alternated rounds), so it stays.
SHARED_COPY_BYTES = 8 << 20

__all__ = ["reshape", "flatten", "transpose", "permute", "concat", "stack", "getitem", "pad"]


class Reshape(Function):
    def forward(self, x, shape=None):
        self.save_for_backward(x.shape)
        return x.reshape(shape)

    def backward(self, grad):
        (shape,) = self.saved
        return grad.reshape(shape)  # a reshape only renames elements: ∂y/∂x is the identity


class Transpose(Function):
    def forward(self, x, axes=None):
        axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
        self.save_for_backward(tuple(sorted(range(len(axes)), key=axes.__getitem__)))  # the inverse permutation
        return x.transpose(axes)

    def backward(self, grad):
        (inverse,) = self.saved
        return grad.transpose(inverse)  # the inverse permutation takes each gradient home


class Concat(Function):
    def forward(self, *xs, axis=0):
        xp = get_array_module(*xs)
        sizes = [x.shape[axis] for x in xs]
        self.save_for_backward(list(itertools.accumulate(sizes[:-1])), axis)  # where each input's slab ends
        if axis % xs[0].ndim == 0 or xp is not np:
            return xp.concatenate(xs, axis=axis)
        # joining along a later axis (the U-Net's skip channels) is a copy per image: the
        # images of a large batch are shared out over the threads like a convolution's chunks
        shape = list(xs[0].shape)
        shape[axis] = sum(sizes)
        out = xp.empty(shape, dtype=np.result_type(*xs))
        pieces = batch_pieces(shape[0], out.nbytes, SHARED_COPY_BYTES)
        map_chunks(lambda piece: xp.concatenate([x[piece] for x in xs], axis=axis, out=out[piece]), pieces, xp)
        return out

    def backward(self, grad):
        offsets, axis = self.saved
        return tuple(get_array_module(grad).split(grad, offsets, axis=axis))  # each input gets its own slab


class Stack(Function):
    def forward(self, *xs, axis=0):
        self.save_for_backward(axis)
        return get_array_module(*xs).stack(xs, axis=axis)

    def backward(self, grad):
        (axis,) = self.saved
        return tuple(get_array_module(grad).moveaxis(grad, axis, 0))  # input i gets slice i along axis


class GetItem(Function):
    def forward(self, x, index=None):
        self.save_for_backward(x.shape, x.dtype, index)
        return x[index]

    def backward(self, grad):
        shape, dtype, index = self.saved
        xp = get_array_module(grad)
        out = xp.zeros(shape, dtype=dtype)
        if _is_basic(index):
            out[index] = grad  # ∂x[i]/∂x scatters the gradient back to the picked elements
        else:
            xp.add.at(out, index, grad)  # … and an element picked twice collects both gradients
        return out


class Pad(Function):
    def forward(self, x, pad_width=None, value=0.0):
        self.save_for_backward(tuple(slice(before, before + n) for (before, _), n in zip(pad_width, x.shape)))
        return get_array_module(x).pad(x, pad_width, mode="constant", constant_values=value)

    def backward(self, grad):
        (interior,) = self.saved
        return grad[interior]  # the padding is constant: only the interior depends on x


def reshape(x, shape):
    return Reshape.apply(x, shape=tuple(shape) if not isinstance(shape, int) else (shape,))


def flatten(x, start_axis=0, end_axis=-1):
    """Merge axes ``start_axis..end_axis`` (inclusive) into one, like ``torch.flatten``."""
    start, end = start_axis % max(x.ndim, 1), end_axis % max(x.ndim, 1)
    return reshape(x, x.shape[:start] + (-1,) + x.shape[end + 1 :])


def transpose(x, axes=None):
    """Permute the axes (NumPy's ``transpose``: reverse them when ``axes`` is None)."""
    return Transpose.apply(x, axes=axes)


def permute(x, axes):
    return Transpose.apply(x, axes=axes)


def _check_same_shapes(name, tensors, axis=None):
    """Raise ValueError unless all shapes agree (except along ``axis``, when one is given)."""
    first = tensors[0].shape
    for t in tensors[1:]:
        free = None if axis is None or not first else axis % len(first)
        if len(t.shape) != len(first) or any(m != n and k != free for k, (m, n) in enumerate(zip(first, t.shape))):
            where = "" if axis is None else f" outside axis {axis}"
            raise ValueError(f"{name}: shapes {first} and {t.shape} differ{where}")


def concat(tensors, axis=0):
    """Join tensors along an existing ``axis`` (``torch.cat``)."""
    if not tensors:
        raise ValueError("concat: needs at least one tensor")
    _check_same_shapes("concat", tensors, axis)
    return Concat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join same-shape tensors along a new ``axis``."""
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    _check_same_shapes("stack", tensors)
    return Stack.apply(*tensors, axis=axis)


def _is_basic(index) -> bool:
    """True for indices of ints, slices, None and ``...`` only -- they never pick an element twice."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


def getitem(x, index):
    """``x[index]`` with NumPy's basic and advanced indexing; integer tensors in ``index`` are allowed."""
    xp = get_array_module(x.data if isinstance(x, Tensor) else x)

    def as_index(part):
        if isinstance(part, Tensor):
            return part.data.astype(xp.intp)  # a Tensor holds floats; as an index it means integers
        return xp.asarray(part) if isinstance(part, (list, np.ndarray)) else part

    index = tuple(map(as_index, index)) if isinstance(index, tuple) else as_index(index)
    return GetItem.apply(x, index=index)


def pad(x, pad_width, value=0.0):
    """Pad with the constant ``value``; ``pad_width`` as in ``numpy.pad`` (n, (before, after), or one pair per axis)."""
    widths = np.broadcast_to(np.asarray(pad_width, dtype=int), (x.ndim, 2))
    if (widths < 0).any():
        raise ValueError(f"pad: negative pad_width {pad_width}")
    return Pad.apply(x, pad_width=tuple(map(tuple, widths.tolist())), value=value)
