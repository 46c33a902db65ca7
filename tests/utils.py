"""Shared test helpers: devices, backends, random inputs, and the kernel-suite parameters.

The kernel tests (tests/test_kernels_*.py) run each op's launchers directly, on every kernel
backend that can run here: triton on the CPU under the interpreter (no bfloat16), triton
on a GPU, and the CUDA extension on a GPU. They share signatures, so one test serves all.
"""
import importlib
import os

import pytest
import torch

from memkernels import capabilities, dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _extension_import_error() -> str | None:
    try:
        importlib.import_module("memkernels._C")
        return None
    except ImportError as error:  # not built
        return f"memkernels._C is not built: {error}"


# Why the compiled extension cannot be imported here, or None; a mark that skips with it.
EXTENSION_IMPORT_ERROR = _extension_import_error()
needs_extension = pytest.mark.skipif(EXTENSION_IMPORT_ERROR is not None, reason=EXTENSION_IMPORT_ERROR or "")


def backends_for(dtype, op="memory_read", *, grouped=False, kernels_only=False):
    """pytest params: every backend that implements `op` (only those behind the registered ops
    with `kernels_only`), skipped with its reason where it cannot run here."""
    params = []
    for backend in capabilities.TABLE[op]:
        if kernels_only and backend in capabilities.COMPOSITE_BACKENDS:
            continue
        reason = dispatch.why_unavailable(backend, DEVICE, dtype, op=op, grouped=grouped)
        marks = [pytest.mark.skip(reason=f"{backend}: {reason}")] if reason else []
        params.append(pytest.param(backend, marks=marks, id=backend))
    return params


def gradcheck(fn, inputs, backend: str, **kwargs) -> bool:
    """torch.autograd.gradcheck, in its fast mode (u^T J v for random u and v: a few calls
    instead of two per input element) where the backend is the Triton interpreter, whose
    calls take tenths of a second; a wrong gradient fails either mode."""
    fast = backend == "triton" and DEVICE.type == "cpu"
    return torch.autograd.gradcheck(fn, inputs, fast_mode=fast, **kwargs)


def dtypes_for_device():
    dtypes = [torch.float32, torch.float16]
    return dtypes + [torch.bfloat16] if DEVICE.type == "cuda" else dtypes


def rand(*shape, dtype=torch.float32, transposed=False, requires_grad=True, device=DEVICE):
    """Random tensor; `transposed` gives a (B, X, H, D) view of (B, H, X, D) storage."""
    if transposed:
        b, x, h, d = shape
        t = torch.randn(b, h, x, d, device=device, dtype=dtype).transpose(1, 2)
    else:
        t = torch.randn(*shape, device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def grads(outputs, inputs, grad_out):
    return torch.autograd.grad(outputs, inputs, grad_out)


# --------------------------------------------------------------------------- kernel suite

_ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (backend, device): the dtypes it runs, and why it cannot run here (None if it can).
_KERNEL_TARGETS = {
    ("triton", "cpu"): ((torch.float32, torch.float16, torch.float64),
                        None if os.environ.get("TRITON_INTERPRET") == "1" else
                        "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1), which tests/conftest.py "
                        "sets only without a GPU"),
    ("triton", "cuda"): (_ALL_DTYPES, None if torch.cuda.is_available() else "no CUDA GPU on this machine"),
    ("cuda", "cuda"): ((torch.float32, torch.float16, torch.bfloat16),
                       None if torch.cuda.is_available() and dispatch.cuda_extension_error() is None else
                       dispatch.cuda_extension_error() or "no CUDA GPU on this machine"),
}


def kernel_cases(dtypes=_ALL_DTYPES):
    """pytest params (backend, device, dtype) for every kernel backend, skipped with a reason
    where it cannot run here."""
    params = []
    for (backend, device), (supported, why_not) in _KERNEL_TARGETS.items():
        for dtype in dtypes:
            if dtype not in supported:
                continue
            marks = [pytest.mark.skip(reason=f"{backend} on {device}: {why_not}")] if why_not else []
            params.append(pytest.param(backend, device, dtype, marks=marks,
                                       id=f"{backend}-{device}-{str(dtype).removeprefix('torch.')}"))
    return params


def kernel_module(backend: str, op: str):
    """The module with `<op>_forward` / `<op>_backward` of a kernel backend."""
    if backend == "triton":
        return importlib.import_module(f"memkernels.triton_kernels.{op}")
    return importlib.import_module("memkernels.cuda_kernels")


def poison_outputs(monkeypatch, backend: str, op: str, device: str):
    """Make every buffer the kernels allocate start as NaN, so that an element a kernel forgets
    to write shows up as a NaN in the result: the Triton launchers allocate through `_empty`;
    the CUDA extension allocates from torch's caching allocator, whose cached blocks are
    filled with NaN first."""
    if backend == "triton":
        monkeypatch.setattr(kernel_module(backend, op), "_empty", lambda shape, dtype, device: torch.full(
            shape, float("nan"), dtype=dtype, device=device))
    elif device == "cuda":
        torch.cuda.empty_cache()
        # Blocks of the small (<= 1 MiB requests) and the large pool, freed again at once.
        blocks = [torch.full((n,), float("nan"), device="cuda") for n in [2**18] * 8 + [2**24]]
        del blocks
