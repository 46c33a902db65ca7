"""Which backend runs an op: the one place that decides, and says why not.

Backends:
  * ``"torch"``  – the reference composite (`memkernels.reference`); runs anywhere.
  * ``"triton"`` – fused Triton kernels; CUDA tensors, or CPU tensors when
    ``TRITON_INTERPRET=1`` (the Triton interpreter, used by the CPU test suite;
    it has no bfloat16 arithmetic).
  * ``"cuda"``   – the compiled C++/CUDA extension `memkernels._C`; CUDA tensors.

``"auto"`` picks, in order, the first backend that can run: on CUDA tensors
triton, then cuda, then torch; on any other device torch. The interpreter is a
testing device, never the fast path, so ``"auto"`` keeps CPU tensors on torch
even when ``TRITON_INTERPRET=1``.

Every refusal is a `BackendUnavailable` (a RuntimeError) whose message names the
op, the backend and the missing piece in one sentence.
"""
import functools
import importlib
import importlib.util
import os

import torch

BACKENDS = ("torch", "triton", "cuda")
MAX_KERNEL_HEAD_DIM = 256  # the attention kernels' largest head dim (Triton and CUDA)
OPS = ("memory_read", "slot_attention", "memory_norm")

_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch")}
_CPU_AUTO_ORDER = ("torch",)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run these inputs here."""


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.cache
def triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    return None


@functools.cache
def cuda_extension_error() -> str | None:
    """None when the extension loads, else why not.

    Where the package was installed without `memkernels._C` but a GPU is
    present, the extension is built just in time from csrc/ (once, cached by
    torch; MEMKERNELS_JIT=0 turns this off).
    """
    try:
        importlib.import_module("memkernels._C")
        return None
    except ImportError as error:
        missing = f"the memkernels._C extension is not built ({error})"
    if not torch.cuda.is_available() or os.environ.get("MEMKERNELS_JIT", "1") == "0":
        return missing
    try:
        importlib.import_module("memkernels._cuda_build").load()
    except Exception as error:  # a failed compiler run has many exception types
        return f"{missing}, and building it just in time failed ({error})"
    return None


@torch.compiler.assume_constant_result
def why_unavailable(backend: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None) -> str | None:
    """None if `backend` can run on tensors of this device and dtype, else the reason.

    `head_dim` is given for the attention ops: the fused kernels take at most
    MAX_KERNEL_HEAD_DIM (the reference takes any).

    A constant for torch.compile: evaluated while tracing, so import probes and
    the just-in-time build never enter a graph.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return None
    if head_dim is not None and head_dim > MAX_KERNEL_HEAD_DIM:
        return f"its kernels take head dims up to {MAX_KERNEL_HEAD_DIM}, got {head_dim}"
    if backend == "triton":
        if (error := triton_import_error()) is not None:
            return error
        if device.type == "cuda":
            return None
        if not triton_interpreter_enabled():
            return (
                f"it needs a CUDA GPU and the inputs are on {device.type} "
                "(set TRITON_INTERPRET=1 to run the Triton interpreter on the CPU)"
            )
        if dtype == torch.bfloat16:
            return "the Triton CPU interpreter has no bfloat16 arithmetic"
        return None
    if backend == "cuda":
        if (error := cuda_extension_error()) is not None:
            return error
        if device.type != "cuda":
            return f"it needs CUDA tensors and the inputs are on {device.type}"
        if dtype == torch.float64:
            return "its kernels take float16, bfloat16 and float32, not float64"
    return None


def auto_order(device_type: str) -> tuple[str, ...]:
    """The backends `"auto"` tries, in order, for tensors on this device type."""
    return _AUTO_ORDER.get(device_type, _CPU_AUTO_ORDER)


def select(op: str, requested: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None) -> str:
    """The backend to run `op` with: `requested` if it can run, or the `"auto"` choice."""
    if requested == "auto":
        return next(b for b in auto_order(device.type) if why_unavailable(b, device, dtype, head_dim) is None)
    if requested not in BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {requested!r}")
    reason = why_unavailable(requested, device, dtype, head_dim)
    if reason is not None:
        raise BackendUnavailable(f"{op}: backend {requested!r} cannot run here: {reason}.")
    return requested


def kernels(op: str, backend: str):
    """The module holding `<op>_forward` and `<op>_backward` for a backend."""
    if backend == "torch":
        return importlib.import_module("memkernels.reference")
    if backend == "triton":
        return importlib.import_module(f"memkernels.triton_kernels.{op}")
    if backend == "cuda":
        return importlib.import_module("memkernels.cuda_kernels")
    raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
