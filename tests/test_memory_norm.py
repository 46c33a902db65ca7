"""memory_norm through the public API, every available backend, against float64 formulas."""
import pytest
import torch
import torch.nn.functional as F

import formulas
import memkernels
from utils import DEVICE, assert_close, backends_for, dtypes_for_device, grads

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
@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_forward_and_gradients_match_float64(backend, shape, dtype):
    m, bias = _inputs(shape, dtype, transposed=shape[0] > 2)
    out = memkernels.memory_norm(m, bias, backend=backend)
    expected = formulas.memory_norm(m, bias, 1e-12)
    assert out.shape == m.shape and out.dtype == dtype
    assert_close(out, expected, dtype)
    grad_out = torch.randn_like(out)
    for got, want in zip(grads(out, (m, bias), grad_out), grads(expected, (m, bias), grad_out.double())):
        assert_close(got, want, dtype, scale=4)


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_equals_normalize_of_sum_including_clamped_rows(backend):
    m, bias = _inputs((2, 3, 10), torch.float32)
    with torch.no_grad():
        m[1, 2] = -bias[2] + 1e-4  # norm ~3e-4 < eps: the row is divided by eps
    eps = 1e-2
    out = memkernels.memory_norm(m, bias, eps=eps, backend=backend)
    m_ref, bias_ref = (t.detach().clone().requires_grad_() for t in (m, bias))
    expected = F.normalize(m_ref + bias_ref, dim=-1, eps=eps)
    assert_close(out, expected, torch.float32)
    grad_out = torch.randn_like(out)
    for got, want in zip(grads(out, (m, bias), grad_out), grads(expected, (m_ref, bias_ref), grad_out)):
        assert_close(got, want, torch.float32, scale=10)


@pytest.mark.parametrize("backend", backends_for(torch.float64))
def test_gradcheck_float64(backend):
    m, bias = _inputs((3, 2, 6), torch.float64, transposed=True)
    assert torch.autograd.gradcheck(lambda *t: memkernels.memory_norm(*t, backend=backend), (m, bias))


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_batch_broadcast_input(backend):
    _, bias = _inputs((1, 4, 24), torch.float32)
    zero = torch.zeros(1, 4, 24, device=DEVICE).expand(3, -1, -1)
    out = memkernels.memory_norm(zero, bias, backend=backend)
    assert_close(out, formulas.memory_norm(zero, bias, 1e-12), torch.float32)


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_bitwise_deterministic(backend):
    m, bias = _inputs((37, 5, 48), torch.float32)
    runs = []
    for _ in range(2):
        out = memkernels.memory_norm(m, bias, backend=backend)
        runs.append((out, *grads(out, (m, bias), torch.ones_like(out))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_opcheck(backend):
    m, bias = _inputs((3, 4, 20), torch.float32, transposed=True)
    torch.library.opcheck(torch.ops.memkernels.memory_norm.default, (m, bias, 1e-12, backend))
