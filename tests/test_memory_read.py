"""memory_read through the public API, every available backend, against float64 formulas."""
import pytest
import torch

import memkernels

import formulas
from tolerance import assert_matches, reference_pair
from utils import backends_for, dtypes_for_device, grads, rand

# (B, L, K, H, D): odd sizes, K = 1, L = 1, non-power-of-two head dims.
SHAPES = [(2, 13, 7, 3, 24), (1, 1, 5, 2, 16), (2, 9, 1, 1, 8), (1, 6, 37, 2, 48), (2, 3, 4, 1, 80)]


def _inputs(shape, dtype, transposed=False):
    b, l, k, h, d = shape
    return rand(b, l, h, d, dtype=dtype, transposed=transposed), *(
        rand(b, k, h, d, dtype=dtype, transposed=transposed) for _ in range(2)
    )


@pytest.mark.parametrize("dtype", dtypes_for_device())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_forward_and_gradients_match_float64(backend, shape, dtype):
    q, k, v = _inputs(shape, dtype, transposed=shape[0] == 2)
    scale = 0.37
    out = memkernels.memory_read(q, k, v, scale=scale, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype
    grad_out = torch.randn_like(out)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_read, (q, k, v), grad_out,
                                                                scale=scale)
    assert_matches("out", out, exact, naive, dtype)
    for name, *results in zip(("dq", "dk", "dv"), grads(out, (q, k, v), grad_out), exact_grads, naive_grads):
        assert_matches(name, *results, dtype)


@pytest.mark.parametrize("backend", backends_for(torch.float64))
def test_gradcheck_float64(backend):
    q, k, v = _inputs((1, 3, 4, 2, 5), torch.float64, transposed=True)
    assert torch.autograd.gradcheck(
        lambda *t: memkernels.memory_read(*t, backend=backend), (q, k, v), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_default_scale_is_inverse_sqrt_head_dim(backend):
    q, k, v = _inputs((1, 4, 3, 2, 12), torch.float32)
    exact, naive = (formulas.memory_read(q, k, v, 12 ** -0.5, dtype=d) for d in (torch.float64, torch.float32))
    assert_matches("out", memkernels.memory_read(q, k, v, backend=backend), exact, naive, torch.float32)


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_bitwise_deterministic(backend):
    q, k, v = _inputs((2, 7, 19, 2, 16), torch.float32)
    runs = []
    for _ in range(2):
        out = memkernels.memory_read(q, k, v, backend=backend)
        runs.append((out, *grads(out, (q, k, v), torch.ones_like(out))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_opcheck(backend):
    q, k, v = _inputs((2, 5, 3, 2, 8), torch.float32, transposed=True)
    torch.library.opcheck(torch.ops.memkernels.memory_read.default, (q, k, v, 0.5, backend))
