"""The plain path and the fast path through a whole U-Net (DESIGN.md, principle 1).

The fused U-Net (GroupNorm+SiLU in one op, the residual and time-embedding adds inside the
Winograd convolutions) against the same model with fusion off, and a training step on the
plain path (``MINIDIFF_KERNELS=reference``: textbook conv, reference kernels, one thread)
against the same step on the fast path."""
import threading

import numpy as np
import pytest

import minidiff.functional as F
from minidiff import autograd, no_grad
from minidiff.functional import chunking
from minidiff.optim import Adam
from minidiff.unet import UNet

LR = 1e-3


def tiny_unet(dtype, seed=0):
    """The tiny preset with every parameter moved off its initial value (its zero-initialised
    convolutions would otherwise make the output, and most gradients, zero)."""
    rng = np.random.default_rng(seed)
    model = UNet.from_preset("tiny", rng=rng, dtype=dtype)
    for param in model.parameters():
        param.data += rng.normal(0.0, 0.1, param.shape).astype(dtype)
    return model


def batch(dtype, n=3, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1, 28, 28)).astype(dtype), rng.integers(0, 1000, n),
            rng.standard_normal((n, 1, 28, 28)).astype(dtype))


class recorded_ops:
    """``with recorded_ops() as ops:`` → the names of the Functions applied in the block, in order."""

    def __enter__(self):
        self.names = []
        autograd.apply_hooks.append(self._record)
        return self.names

    def __exit__(self, *exc_info):
        autograd.apply_hooks.remove(self._record)

    def _record(self, ctx, output):
        self.names.append(type(ctx).__name__ + (".silu" if getattr(ctx, "silu", False) else "")
                          + (".norm" if getattr(ctx, "num_groups", 0) else ""))


def forward_and_gradients(model, x, t, noise):
    model.zero_grad()
    with recorded_ops() as ops:
        eps = model(x, t)
        loss = F.mse_loss(eps, noise)
    loss.backward()
    return eps.numpy(), [p.grad.copy() for p in model.parameters()], ops


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_fused_and_unfused_unet_agree_in_output_and_every_gradient(monkeypatch, dtype, rtol):
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    model, (x, t, noise) = tiny_unet(dtype), batch(dtype)
    fused_eps, fused_grads, fused_ops = forward_and_gradients(model, x, t, noise)
    with F.no_fusion():
        eps, grads, ops = forward_and_gradients(model, x, t, noise)
    # every ResBlock's two GroupNorm+SiLU pairs fused, and the output head's (not into the convs after
    # them: their filters need gradients); the adds gone into convs
    resblocks = sum(type(m).__name__ == "ResBlock" for m in model.modules())
    assert fused_ops.count("GroupNorm.silu") == 2 * resblocks + 1 and "WinogradConv2d.norm" not in fused_ops
    assert not any(name.endswith((".silu", ".norm")) for name in ops)
    assert ops.count("Add") - fused_ops.count("Add") == 2 * resblocks
    np.testing.assert_allclose(fused_eps, eps, rtol=rtol, atol=rtol * np.abs(eps).max())
    for (name, _), fused, unfused in zip(model.named_parameters(), fused_grads, grads):
        np.testing.assert_allclose(fused, unfused, rtol=rtol, atol=rtol * np.abs(unfused).max(), err_msg=name)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_a_no_grad_forward_normalises_inside_the_convs_with_the_values_of_the_ops_as_written(monkeypatch, dtype, rtol):
    """Sampling's forward: every GroupNorm+SiLU of the ResBlocks and the output head runs inside the 3×3 conv
    that reads it (no GroupNorm op of its own), and the output is that of the ops written out."""
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    model, (x, t, _) = tiny_unet(dtype), batch(dtype)
    with no_grad():
        with recorded_ops() as fused_ops:
            fused = model(x, t).numpy()
        with F.no_fusion(), recorded_ops() as ops:
            plain = model(x, t).numpy()
    resblocks = sum(type(m).__name__ == "ResBlock" for m in model.modules())
    assert fused_ops.count("WinogradConv2d.norm") == 2 * resblocks + 1 and "GroupNorm.silu" not in fused_ops
    assert ops.count("GroupNorm") - fused_ops.count("GroupNorm") == 2 * resblocks + 1
    np.testing.assert_allclose(fused, plain, rtol=rtol, atol=rtol * np.abs(plain).max())


def training_step(model, x, t, noise):
    """Forward, MSE loss, backward and one Adam step, as Algorithm 1's loop body runs them
    (here on a fixed batch): → (ε̂, gradients, parameters after the step, ops applied)."""
    eps, grads, ops = forward_and_gradients(model, x, t, noise)
    Adam(model.parameters(), lr=LR).step()
    return eps, grads, [p.data.copy() for p in model.parameters()], ops


def test_reference_mode_runs_a_training_step_on_one_thread_on_the_plain_path(monkeypatch):
    """MINIDIFF_KERNELS=reference: the textbook conv and no fused op, and not one thread started
    (a debugger's breakpoint stays on the main thread); the same numbers as the fast path, to
    float32 precision."""
    x, t, noise = batch(np.float32)
    monkeypatch.setenv("MINIDIFF_NUM_THREADS", "2")
    monkeypatch.setattr(chunking, "COLUMN_CHUNK_BYTES", 1 << 14)  # many chunks: the fast path would share them out
    chunking.shutdown_workers()  # so that no pool left by an earlier test hides a new one
    monkeypatch.setenv("MINIDIFF_KERNELS", "reference")
    before = set(threading.enumerate())
    plain = training_step(tiny_unet(np.float32), x, t, noise)
    assert set(threading.enumerate()) == before
    assert "Conv2d" in plain[3] and not {"ChunkedConv2d", "PointwiseConv2d", "WinogradConv2d", "GroupNorm.silu"} & set(plain[3])

    monkeypatch.setenv("MINIDIFF_KERNELS", "auto")
    fast = training_step(tiny_unet(np.float32), x, t, noise)
    assert set(threading.enumerate()) != before and "WinogradConv2d" in fast[3]  # the check above can fail
    np.testing.assert_allclose(plain[0], fast[0], rtol=1e-4, atol=1e-4 * np.abs(fast[0]).max())
    for plain_grad, fast_grad in zip(plain[1], fast[1]):
        np.testing.assert_allclose(plain_grad, fast_grad, rtol=1e-3, atol=1e-4 * np.abs(fast_grad).max())
    # Adam's first step moves each weight by ±lr·g/(|g| + ε): a gradient near zero whose sign the
    # two paths' roundings disagree on makes up to 2·lr of difference; every other weight agrees
    differences = np.abs(np.concatenate([(a - b).ravel() for a, b in zip(plain[2], fast[2])]))
    assert differences.max() <= 2.01 * LR and np.mean(differences < 1e-6) > 0.999
