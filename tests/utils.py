"""Shared test helpers: devices, backends, random inputs and per-dtype tolerances."""
import os

import pytest
import torch

from memkernels import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (atol, rtol) against the float64 formulas.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}


def backends_for(dtype):
    """pytest params: every backend, skipped with its reason where it cannot run."""
    params = []
    for backend in dispatch.BACKENDS:
        reason = dispatch.why_unavailable(backend, DEVICE, dtype)
        marks = [pytest.mark.skip(reason=f"{backend}: {reason}")] if reason else []
        params.append(pytest.param(backend, marks=marks, id=backend))
    return params


def dtypes_for_device():
    dtypes = [torch.float32, torch.float16]
    return dtypes + [torch.bfloat16] if DEVICE.type == "cuda" else dtypes


def rand(*shape, dtype=torch.float32, transposed=False, requires_grad=True):
    """Random tensor; `transposed` gives a (B, X, H, D) view of (B, H, X, D) storage."""
    if transposed:
        b, x, h, d = shape
        t = torch.randn(b, h, x, d, device=DEVICE, dtype=dtype).transpose(1, 2)
    else:
        t = torch.randn(*shape, device=DEVICE, dtype=dtype)
    return t.requires_grad_(requires_grad)


def assert_close(actual, expected, dtype, scale=1.0):
    atol, rtol = TOLERANCES[dtype]
    assert not torch.isnan(actual).any(), "output has NaN: some element was never written"
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol * scale)


def grads(outputs, inputs, grad_out):
    return torch.autograd.grad(outputs, inputs, grad_out)


# Triton kernel tests: CPU cases need the interpreter, CUDA cases a GPU (bfloat16 only there).
_NO_INTERPRETER = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="CPU tensors need the Triton interpreter (TRITON_INTERPRET=1), which tests/conftest.py sets "
           "only without a GPU")
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
TRITON_DEVICE_DTYPES = [
    *(pytest.param("cpu", dtype, marks=_NO_INTERPRETER, id=f"cpu-{str(dtype)[6:]}")
      for dtype in (torch.float32, torch.float16, torch.float64)),
    *(pytest.param("cuda", dtype, marks=_NO_CUDA, id=f"cuda-{str(dtype)[6:]}")
      for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)),
]


def poison_allocations(monkeypatch, module):
    """Make a kernel module's `_empty` hand out NaN-filled buffers, so an element a kernel
    forgets to write shows up as a NaN in the result."""
    monkeypatch.setattr(module, "_empty", lambda shape, dtype, device: torch.full(
        shape, float("nan"), dtype=dtype, device=device))


def check_max_error(name, actual, expected, tol):
    """Contiguous, finite (an unwritten poisoned element is NaN), and max |error| within
    tol of the reference's max |value|, floored at 1 so an all-zero gradient (dq when
    K = 1) is checked absolutely."""
    assert actual.shape == expected.shape, name
    assert actual.is_contiguous(), f"{name} is not contiguous"
    assert torch.isfinite(actual).all(), f"{name} has non-finite values (unwritten output?)"
    err = (actual.cpu().double() - expected).abs().max().item()
    ref = max(expected.abs().max().item(), 1.0)
    assert err <= tol * ref, f"{name}: max error {err:.3e} vs max |ref| {ref:.3e} (tol {tol:g})"
