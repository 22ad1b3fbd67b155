"""Where arrays live and which kernels run on them.

Model code never names a device (DESIGN.md, principle 2): an op asks :func:`get_array_module`
for the module of its inputs (``numpy`` or ``cupy``) and calls that. Only named kernels split by
device, through :mod:`minidiff.kernels`.

Kernel selection (``MINIDIFF_KERNELS``):

* ``auto`` (default) -- the compiled Cython kernels (``minidiff._C``) when they are built, else
  the NumPy reference with one warning;
* ``reference`` -- always the plain NumPy reference, the specification a student can step through;
* ``cpu`` -- the Cython kernels, or an error if they are not built.

Convolution algorithm (``MINIDIFF_CONV``): ``auto`` (default) computes 3×3 stride-1
convolutions of 4 or more input channels by Winograd's F(2×2, 3×3) (F(4×4, 3×3) on maps of 20×20
and more, see ``conv_fast.winograd_tile``), 1×1 convolutions as one GEMM
per image and the others by im2col + GEMM, all in chunks on worker threads; ``im2col`` uses
chunked im2col for all of them (the baseline the benchmark compares with); ``reference`` the
textbook im2col convolution, one GEMM for the whole batch on one thread (what
``MINIDIFF_KERNELS=reference`` runs).

Threads (``MINIDIFF_NUM_THREADS``, else ``OMP_NUM_THREADS``, else every CPU this process may
use): the convolutions run their image chunks side by side on that many worker threads, each
chunk's kernels and GEMMs on one core; with ``MINIDIFF_KERNELS=reference`` everything runs on the
calling thread.

Importing minidiff changes nothing outside it (DESIGN.md, principle 7): the compiled extension is
loaded at the first kernel call, and the process-wide tuning that makes training fast -- NumPy's
BLAS on one thread, freed memory kept in the heap -- is applied only inside
:func:`performance_settings`, which the command line runs every command in (and a script
that trains or samples should enter too).

``MINIDIFF_REQUIRE_EXT=1`` turns the missing-extension warning into an error (CI sets it).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import sys
import threading
import warnings

import numpy as np

KERNEL_MODES = ("auto", "reference", "cpu")
CONV_ALGORITHMS = ("auto", "im2col", "reference")
DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide, or devices were mixed."""


_extension = None
_extension_loaded = False


def extension():
    """The compiled Cython module ``minidiff._C``, or ``None`` when it is not built.

    Loaded at the first call (the first kernel call), not on import. Idle OpenMP threads must
    sleep, not spin: between two of our kernels the cores belong to the convolutions' chunk
    workers, and spinning OpenMP workers made a U-Net step 1.7× to several times slower. libgomp
    reads ``OMP_WAIT_POLICY`` once, when the extension loads it, so the variable is set to
    ``PASSIVE`` for that moment only (a user's explicit setting wins) and the environment is
    then put back as it was.
    """
    global _extension, _extension_loaded
    if not _extension_loaded:
        previous = os.environ.get("OMP_WAIT_POLICY")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            _extension = _import_extension()
        finally:
            if previous is None:
                os.environ.pop("OMP_WAIT_POLICY", None)
        _extension_loaded = True
        if _extension is not None:
            _kernel_threads_from_settings(_extension)
    return _extension


def _import_extension():
    try:
        return importlib.import_module("minidiff._C")
    except ImportError as exc:
        if os.environ.get("MINIDIFF_REQUIRE_EXT") == "1":
            raise ImportError(
                "MINIDIFF_REQUIRE_EXT=1 but the compiled kernels (minidiff._C) cannot be "
                f"imported: {exc}. Rebuild with `pip install -e .`"
            ) from exc
        warnings.warn(
            f"minidiff: compiled kernels (minidiff._C) not available ({exc}); using the NumPy "
            "reference kernels, which are slower. Rebuild with `pip install -e .`",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


# Set by the MPI launchers (MPICH's Hydra, Open MPI) in every rank: how many ranks share this machine.
LOCAL_RANKS_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def num_threads() -> int:
    """Worker threads for the convolutions: ``MINIDIFF_NUM_THREADS``, else ``OMP_NUM_THREADS``,
    else the CPUs this process may run on, shared evenly by the MPI ranks on this machine (two
    ranks on 2 cores with 2 threads each took 19× longer per step). Read at every call (once
    per forward pass, see :func:`settings_held`)."""
    held = _held.values
    return held["num_threads"] if held is not None else _read_num_threads()


def _read_num_threads() -> int:
    for name in ("MINIDIFF_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
            return int(value)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_ranks = next((os.environ[name].strip() for name in LOCAL_RANKS_VARIABLES if os.environ.get(name, "").strip()), "1")
    return max(1, cpus // int(local_ranks)) if local_ranks.isdigit() and int(local_ranks) > 0 else cpus


def _kernel_threads_from_settings(extension):
    # OpenMP itself reads only OMP_NUM_THREADS; the kernels called outside the chunked convs
    # (GroupNorm, softmax, …) follow MINIDIFF_NUM_THREADS too. A bad value is named at the
    # first convolution instead of failing here.
    try:
        extension.set_num_threads(num_threads())
    except ValueError:
        pass


@contextlib.contextmanager
def performance_settings():
    """The process-wide settings minidiff's own work runs fastest with, for the ``with`` block.

    * NumPy's BLAS on one thread (threadpoolctl), restored on exit: the convolutions run their
      chunks on worker threads, one per core, each chunk's GEMMs on its own core; BLAS's
      threads and the workers taking turns on the same cores made every hand-over cost a
      wake-up and a spin.
    * glibc keeps freed memory in the heap instead of handing large blocks back to the OS.
      **This one is not undone on exit** (glibc cannot say what the previous thresholds were);
      it changes only how the allocator reuses memory, never a result.

    The command line runs every command inside it, and so should a script that trains or
    samples; outside it minidiff computes the same numbers, only slower. Nesting is harmless.
    """
    from threadpoolctl import threadpool_limits

    _reuse_freed_memory()
    with threadpool_limits(1, user_api="blas"):
        yield


def _reuse_freed_memory():
    # glibc hands large freed blocks back to the OS (mmap/munmap, heap trimming), so each fresh
    # multi-MB array page-faults on first touch, once per 4 KB: a GroupNorm over a 6 MB
    # activation took 12 ms instead of 2.4. Keeping freed blocks in the heap (as long-running
    # training wants anyway) makes the next step's arrays reuse them. glibc's ceiling for the
    # mmap threshold is 32 MiB; mallopt's parameter numbers are M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3.
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)
        libc.mallopt(-1, 1 << 30)
    except (OSError, AttributeError):  # not glibc (musl, …): nothing to tune
        pass


class _HeldSettings(threading.local):
    """The settings a forward pass on this thread read once at its start (``None`` outside one)."""

    values: dict | None = None


_held = _HeldSettings()


@contextlib.contextmanager
def settings_held():
    """:func:`kernel_mode`, :func:`conv_algorithm` and :func:`num_threads` read once, for the block.

    A model's forward pass asks for them at nearly every op: hundreds of environment reads at
    about a microsecond each, 5 % of a batch-1 forward. The outermost module call holds them
    (:func:`~minidiff.functional.fusion.module_call`), so a change of the environment takes
    effect at the next forward pass, and everywhere else at the next call. Nesting keeps the
    outer block's values.
    """
    if _held.values is not None:
        yield
        return
    _held.values = {"kernel_mode": _read_kernel_mode(), "conv_algorithm": _read_conv_algorithm(), "num_threads": _read_num_threads()}
    try:
        yield
    finally:
        _held.values = None


def kernel_mode() -> str:
    """The kernel family in force for CPU arrays: ``"reference"`` or ``"cpu"``.

    Read from ``MINIDIFF_KERNELS`` at every call (once per forward pass, see
    :func:`settings_held`), so tests and benchmarks can switch it.
    """
    held = _held.values
    return held["kernel_mode"] if held is not None else _read_kernel_mode()


def _read_kernel_mode() -> str:
    mode = os.environ.get("MINIDIFF_KERNELS", "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ValueError(f"MINIDIFF_KERNELS={mode!r}: expected one of {', '.join(KERNEL_MODES)}")
    if mode == "auto":
        return "cpu" if extension() is not None else "reference"
    if mode == "cpu" and extension() is None:
        raise ImportError("MINIDIFF_KERNELS=cpu but minidiff._C is not built; run `pip install -e .`")
    return mode


def conv_algorithm() -> str:
    """The convolution algorithm in force, from ``MINIDIFF_CONV``: ``"auto"``, ``"im2col"`` or ``"reference"``."""
    held = _held.values
    return held["conv_algorithm"] if held is not None else _read_conv_algorithm()


def _read_conv_algorithm() -> str:
    algorithm = os.environ.get("MINIDIFF_CONV", "auto").strip().lower() or "auto"
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"MINIDIFF_CONV={algorithm!r}: expected one of {', '.join(CONV_ALGORITHMS)}")
    return algorithm


def cupy():
    """Import CuPy lazily and check that a CUDA device answers; a one-line error otherwise."""
    try:
        import cupy as cp
    except ImportError as exc:
        raise DeviceError(
            "device 'cuda' needs CuPy: pip install 'minidiff[gpu]' (cupy-cuda12x)"
        ) from exc
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError without a driver
        raise DeviceError(f"device 'cuda': CuPy is installed but no CUDA device answers ({exc})") from exc
    if count == 0:
        raise DeviceError("device 'cuda': CuPy is installed but no CUDA device was found")
    return cp


def cuda_available() -> bool:
    """Whether ``device="cuda"`` would work here: CuPy imports and a CUDA device answers."""
    try:
        cupy()
    except DeviceError:
        return False
    return True


def is_cupy_array(array) -> bool:
    return type(array) is not np.ndarray and type(array).__module__.startswith("cupy")


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (chainer's idiom)."""
    for array in arrays:
        if is_cupy_array(array):
            import cupy as cp

            return cp
    return np


def device_of(array) -> str:
    return "cuda" if is_cupy_array(array) else "cpu"


def check_device(device: str) -> str:
    """Validate a device name and make sure it can be used; returns the normalised name."""
    name = str(device).lower()
    if name.startswith("cuda"):
        cupy()
        return "cuda"
    if name != "cpu":
        raise DeviceError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    return "cpu"


def to_device(array, device: str):
    """Copy ``array`` to ``device`` (a no-op when it is already there)."""
    device = check_device(device)
    if device == device_of(array):
        return array
    if device == "cuda":
        return cupy().asarray(array)
    return array.get()


def to_numpy(array) -> np.ndarray:
    """``array`` as a NumPy array, copied off the GPU when it is a CuPy array."""
    return array.get() if is_cupy_array(array) else np.asarray(array)


def same_device(*arrays) -> str:
    """The common device of ``arrays``; mixing CPU and CUDA arrays in one op is refused."""
    for a in arrays:
        if a is not None and type(a) is not np.ndarray:
            break
    else:
        return "cpu"
    devices = {device_of(a) for a in arrays if a is not None}
    if len(devices) > 1:
        raise DeviceError(
            "arrays on different devices in one op (cpu and cuda); move them with .to(device) first"
        )
    return devices.pop() if devices else "cpu"
