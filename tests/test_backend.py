"""Backend: array-module lookup, kernel selection and device errors (CPU-only checks)."""
import importlib.util

import numpy as np
import pytest

import minidiff
from minidiff import backend
from minidiff.kernels import cpu, kernel, reference

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def test_numpy_arrays_use_numpy():
    assert backend.get_array_module(np.zeros(3), None) is np
    assert backend.device_of(np.zeros(3)) == "cpu"


@pytest.mark.parametrize("mode", ["reference", "REFERENCE", " reference "])
def test_reference_mode_forces_reference_kernels(monkeypatch, mode):
    monkeypatch.setenv("MINIDIFF_KERNELS", mode)
    assert backend.kernel_mode() == "reference"
    assert kernel("im2col", np.zeros((1, 1, 3, 3))) is reference.im2col


def test_auto_mode_uses_compiled_kernels_when_built(monkeypatch):
    monkeypatch.delenv("MINIDIFF_KERNELS", raising=False)
    expected = "cpu" if backend.extension() is not None else "reference"
    assert backend.kernel_mode() == expected
    impl = kernel("im2col", np.zeros((1, 1, 3, 3)))
    assert impl is (cpu.im2col if expected == "cpu" else reference.im2col)


def test_unknown_kernel_mode_is_named(monkeypatch):
    monkeypatch.setenv("MINIDIFF_KERNELS", "fast")
    with pytest.raises(ValueError, match="MINIDIFF_KERNELS='fast'"):
        backend.kernel_mode()


def test_unknown_device_is_named():
    with pytest.raises(backend.DeviceError, match="unknown device 'tpu'"):
        backend.check_device("tpu")


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed: the no-CuPy message cannot be shown")
def test_cuda_without_cupy_says_how_to_get_it():
    with pytest.raises(backend.DeviceError, match=r"pip install 'minidiff\[gpu\]'"):
        minidiff.Tensor(np.zeros(2)).to("cuda")


def test_to_cpu_is_a_no_op():
    t = minidiff.Tensor(np.zeros(2))
    assert t.to("cpu") is t
