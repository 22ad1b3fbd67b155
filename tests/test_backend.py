"""Backend: array-module lookup, kernel selection and device errors (CPU-only checks)."""
import importlib.util
import subprocess
import sys

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


def run_python(code: str) -> None:
    """Run ``code`` in a fresh interpreter (a fresh process: nothing imported, nothing tuned yet)."""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_leaves_numpys_blas_thread_count_alone():
    """DESIGN.md, principle 7 (the check of issue 11): a user's own ``A @ B`` keeps its threads."""
    run_python(
        "import threadpoolctl, numpy; n = threadpoolctl.threadpool_info()[0]['num_threads']; "
        "import minidiff; assert threadpoolctl.threadpool_info()[0]['num_threads'] == n"
    )


def test_import_leaves_the_environment_alone():
    run_python(
        "import os; before = dict(os.environ); "
        "import minidiff, minidiff.functional, minidiff.unet, minidiff.optim; assert dict(os.environ) == before"
    )


def test_loading_the_extension_leaves_the_environment_alone():
    """OMP_WAIT_POLICY is set only while libgomp loads (it reads it then), then taken back."""
    run_python(
        "import os; before = dict(os.environ); from minidiff import backend; backend.extension(); "
        "assert dict(os.environ) == before"
    )


def test_performance_settings_limit_blas_for_the_block_only():
    run_python(
        "import threadpoolctl, numpy; from minidiff.backend import performance_settings\n"
        "def blas(): return [p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']\n"
        "before = blas()\n"
        "with performance_settings():\n"
        "    assert set(blas()) == {1}\n"
        "    with performance_settings(): assert set(blas()) == {1}\n"
        "    assert set(blas()) == {1}\n"
        "assert blas() == before"
    )


def test_a_forward_pass_reads_the_settings_once(monkeypatch):
    """The outermost module call holds MINIDIFF_KERNELS (and the conv algorithm and thread count)
    for the whole forward pass; a change of the environment takes effect at the next one, and
    outside a forward pass at once."""
    from minidiff import nn

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(backend.kernel_mode())
            monkeypatch.setenv("MINIDIFF_KERNELS", "auto")  # changed in the middle of the pass
            seen.append(backend.kernel_mode())
            return x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Probe()

        def forward(self, x):
            return self.inner(x)

    monkeypatch.setenv("MINIDIFF_KERNELS", "reference")
    Outer()(minidiff.Tensor(np.zeros(2)))
    assert seen == ["reference", "reference"]
    assert backend.kernel_mode() == ("cpu" if backend.extension() is not None else "reference")
    monkeypatch.setenv("MINIDIFF_KERNELS", "reference")
    with backend.settings_held():
        monkeypatch.setenv("MINIDIFF_KERNELS", "fast")  # a bad value is not even read inside the block
        assert backend.kernel_mode() == "reference"
    with pytest.raises(ValueError, match="MINIDIFF_KERNELS='fast'"):
        backend.kernel_mode()
