"""memory_norm through the public API, every available backend, against float64 formulas."""
import pytest
import torch
import torch.nn.functional as F

import memkernels

import formulas
from tolerance import assert_matches, reference_pair
from utils import DEVICE, backends_for, dtypes_for_device, gradcheck, grads

# (B, K, W): odd widths, K = 1, B = 1.
SHAPES = [(3, 5, 40), (1, 1, 7), (2, 9, 100), (4, 3, 512)]


def _inputs(shape, dtype, transposed=False):
    b, k, w = shape
    m = torch.randn(b, w, k, device=DEVICE, dtype=dtype).transpose(1, 2) if transposed else \
        torch.randn(b, k, w, device=DEVICE, dtype=dtype)
    bias = torch.randn(k, w, device=DEVICE, dtype=dtype)
    return m.requires_grad_(), bias.requires_grad_()


@pytest.mark.parametrize("dtype", dtypes_for_device())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", backends_for(torch.float32, "memory_norm"))
def test_forward_and_gradients_match_float64(backend, shape, dtype):
    m, bias = _inputs(shape, dtype, transposed=shape[0] > 2)
    out = memkernels.memory_norm(m, bias, backend=backend)
    assert out.shape == m.shape and out.dtype == dtype
    grad_out = torch.randn_like(out)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_norm, (m, bias), grad_out,
                                                                eps=1e-12)
    assert_matches("out", out, exact, naive, dtype)
    for name, *results in zip(("dm", "dbias"), grads(out, (m, bias), grad_out), exact_grads, naive_grads):
        assert_matches(name, *results, dtype)


@pytest.mark.parametrize("backend", backends_for(torch.float32, "memory_norm"))
def test_equals_normalize_of_sum_including_clamped_rows(backend):
    m, bias = _inputs((2, 3, 10), torch.float32)
    with torch.no_grad():
        m[1, 2] = -bias[2] + 1e-4  # norm ~3e-4 < eps: the row is divided by eps
    eps = 1e-2
    out = memkernels.memory_norm(m, bias, eps=eps, backend=backend)
    # F.normalize itself, in float64 (exact) and in float32 (the naive computation)
    grad_out = torch.randn_like(out)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(
        lambda m, bias, dtype: F.normalize(m + bias, dim=-1, eps=eps), (m, bias), grad_out)
    assert_matches("out", out, exact, naive, torch.float32)
    for name, *results in zip(("dm", "dbias"), grads(out, (m, bias), grad_out), exact_grads, naive_grads):
        assert_matches(name, *results, torch.float32)


@pytest.mark.parametrize("backend", backends_for(torch.float64, "memory_norm"))
def test_gradcheck_float64(backend):
    m, bias = _inputs((3, 2, 6), torch.float64, transposed=True)
    assert gradcheck(lambda *t: memkernels.memory_norm(*t, backend=backend), (m, bias), backend)


@pytest.mark.parametrize("backend", backends_for(torch.float32, "memory_norm"))
def test_batch_broadcast_input(backend):
    _, bias = _inputs((1, 4, 24), torch.float32)
    zero = torch.zeros(1, 4, 24, device=DEVICE).expand(3, -1, -1)
    out = memkernels.memory_norm(zero, bias, backend=backend)
    exact, naive = (formulas.memory_norm(zero, bias, 1e-12, dtype=d) for d in (torch.float64, torch.float32))
    assert_matches("out", out, exact, naive, torch.float32)


@pytest.mark.parametrize("backend", backends_for(torch.float32, "memory_norm"))
def test_bitwise_deterministic(backend):
    m, bias = _inputs((37, 5, 48), torch.float32)
    runs = []
    for _ in range(2):
        out = memkernels.memory_norm(m, bias, backend=backend)
        runs.append((out, *grads(out, (m, bias), torch.ones_like(out))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("backend", backends_for(torch.float32, "memory_norm", kernels_only=True))
def test_opcheck(backend):
    m, bias = _inputs((3, 4, 20), torch.float32, transposed=True)
    torch.library.opcheck(torch.ops.memkernels.memory_norm.default, (m, bias, 1e-12, backend))
