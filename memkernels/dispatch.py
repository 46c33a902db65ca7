"""Which backend runs an op: the one place that decides, and says why not.

Backends (what each can do per op is `memkernels.capabilities.TABLE`):
  * ``"torch"``  – the reference composite (`memkernels.reference`); runs anywhere.
  * ``"sdpa"``   – `F.scaled_dot_product_attention` composed with its own autograd
    (`memkernels.sdpa`; memory_read and slot_attention); runs anywhere torch does.
  * ``"triton"`` – fused Triton kernels; CUDA tensors, or CPU tensors when
    ``TRITON_INTERPRET=1`` (the Triton interpreter, used by the CPU test suite).
  * ``"cuda"``   – the compiled C++/CUDA extension `memkernels._C`; CUDA tensors.

``"auto"`` runs the fastest backend measured for the inputs' device kind, op, dtype, mode
(inference or training) and nearest measured shape (`memkernels.rules`), among those whose
table entry lists the dtype in ``auto_dtypes`` and that can run here; where no rule covers
the inputs, the first such backend in `capabilities.AUTO_ORDER`. The interpreter is a
testing device, never the fast path, so ``"auto"`` keeps CPU tensors off Triton.

Every refusal is a `BackendUnavailable` (a RuntimeError) whose message names the op, the
backend and the missing piece in one sentence.

Decisions are cached per (op, requested backend, device, dtype, head dim, grouped heads,
shape, mode): the environment (TRITON_INTERPRET, MEMKERNELS_JIT), the installed packages and
the rule files are read once, as Triton itself reads TRITON_INTERPRET once when a kernel is
defined. `clear_cache()` forgets them (tests that change the environment call it).
"""
import functools
import importlib
import importlib.util
import os

import torch

from memkernels import capabilities, rules
from memkernels.capabilities import BACKENDS, COMPOSITE_BACKENDS, MAX_KERNEL_HEAD_DIM, OPS  # noqa: F401  (re-exported)


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


def _machine_error(backend: str, device_type: str) -> str | None:
    """What the machine lacks for this backend on this device type, if anything."""
    if backend == "triton":
        if (error := triton_import_error()) is not None:
            return error
        if device_type == "cpu" and not triton_interpreter_enabled():
            return ("it needs a CUDA GPU and the inputs are on cpu "
                    "(set TRITON_INTERPRET=1 to run the Triton interpreter on the CPU)")
    if backend == "cuda":
        return cuda_extension_error()
    return None


@functools.lru_cache(maxsize=None)
def _why_unavailable(op: str, backend: str, device_type: str, dtype: torch.dtype, head_dim: int | None,
                     grouped: bool = False) -> str | None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in capabilities.TABLE[op]:
        return f"it does not implement {op}"
    entry = capabilities.support(op, backend, device_type)
    if entry is not None and None not in (head_dim, entry.max_head_dim) and head_dim > entry.max_head_dim:
        return f"its kernels take head dims up to {entry.max_head_dim}, got {head_dim}"
    if (error := _machine_error(backend, device_type)) is not None:
        return error
    if entry is None:
        return f"it needs CUDA tensors and the inputs are on {device_type}"
    if dtype not in entry.dtypes:
        return entry.refused_dtype_reason.format(dtype=capabilities.dtype_name(dtype))
    if grouped and not entry.grouped_heads:
        return "its kernels do not take grouped key/value heads (k and v with fewer heads than q)"
    return None


@torch.compiler.assume_constant_result
def why_unavailable(backend: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None,
                    op: str = "memory_read", grouped: bool = False) -> str | None:
    """None if `backend` can run `op` on tensors of this device and dtype, else the reason.

    `head_dim` is given for the attention ops, `grouped` when k and v have fewer heads than
    q. A constant for torch.compile: evaluated while tracing, so import probes and the
    just-in-time build never enter a graph.
    """
    return _why_unavailable(op, backend, device.type, dtype, head_dim, grouped)


def _auto(op, device_type, index, dtype, head_dim, grouped, shape, mode, kernels_only) -> str:
    measured = () if shape is None else rules.ranking(rules.device_kind(device_type, index), op, dtype, mode, shape)
    for backend in (*(measured or ()), *capabilities.auto_order(op, device_type)):
        if kernels_only and backend in COMPOSITE_BACKENDS:
            continue
        entry = capabilities.support(op, backend, device_type)
        if entry is not None and dtype in entry.auto_dtypes and \
                _why_unavailable(op, backend, device_type, dtype, head_dim, grouped) is None:
            return backend
    return "torch"


@functools.lru_cache(maxsize=None)
def _select(op: str, requested: str, device_type: str, index: int | None, dtype: torch.dtype,
            head_dim: int | None, grouped: bool, shape: tuple | None, mode: str, kernels_only: bool) -> str:
    if requested == "auto":
        return _auto(op, device_type, index, dtype, head_dim, grouped, shape, mode, kernels_only)
    if requested not in BACKENDS:
        raise ValueError(f"{op}: backend must be 'auto' or one of {BACKENDS}, got {requested!r}")
    reason = _why_unavailable(op, requested, device_type, dtype, head_dim, grouped)
    if reason is None and kernels_only and requested in COMPOSITE_BACKENDS:
        reason = (f"it composes torch's scaled_dot_product_attention with its own autograd, which the "
                  f"registered op torch.ops.memkernels.{op} cannot hold (memkernels.{op} runs it)")
    if reason is not None:
        raise BackendUnavailable(f"{op}: backend {requested!r} cannot run here: {reason}.")
    return requested


@torch.compiler.assume_constant_result
def select(op: str, requested: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None,
           grouped: bool = False, shape: tuple | None = None, mode: str = "fwd_bwd",
           kernels_only: bool = False) -> str:
    """The backend to run `op` with: `requested` if it can run, or the `"auto"` choice.

    `shape` (B, L, K, H, D) and `mode` ("fwd" or "fwd_bwd") select the measured rule's
    entry; `kernels_only` leaves out the composite backends (for the registered ops).
    """
    return _select(op, requested, device.type, device.index, dtype, head_dim, grouped, shape, mode, kernels_only)


@functools.lru_cache(maxsize=None)
def resolve(op: str, requested: str, device_type: str, index: int, dtype: torch.dtype, head_dim: int | None,
            grouped: bool = False, shape: tuple | None = None, mode: str = "fwd_bwd"):
    """(backend, module of its `<op>_forward` / `<op>_backward`, or None for a composite
    backend) in one cached lookup: the eager fast path of the public ops. Raises as `select`
    does."""
    backend = _select(op, requested, device_type, index, dtype, head_dim, grouped, shape, mode, False)
    return backend, None if backend in COMPOSITE_BACKENDS else kernels(op, backend)


def device_type_of(t: torch.Tensor) -> str:
    """t.device.type, without building a torch.device for the common cases."""
    return "cuda" if t.is_cuda else "cpu" if t.is_cpu else t.device.type


@functools.lru_cache(maxsize=None)
def kernels(op: str, backend: str):
    """The module holding `<op>_forward` and `<op>_backward` for a backend, imported once."""
    if backend == "torch":
        return importlib.import_module("memkernels.reference")
    if backend == "triton":
        return importlib.import_module(f"memkernels.triton_kernels.{op}")
    if backend == "cuda":
        return importlib.import_module("memkernels.cuda_kernels")
    if backend in COMPOSITE_BACKENDS:
        raise ValueError(f"{op}: backend {backend!r} has no kernels of its own (see memkernels.sdpa)")
    raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")


def clear_cache() -> None:
    """Forget every availability decision (after the environment changed)."""
    _why_unavailable.cache_clear()
    _select.cache_clear()
    resolve.cache_clear()
    rules.load.cache_clear()
