"""memory_read through the public API, every available backend, against float64 formulas."""
import pytest
import torch

import memkernels

import formulas
from tolerance import assert_matches, reference_pair
from utils import backends_for, dtypes_for_device, gradcheck, grads, rand

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
    assert gradcheck(lambda *t: memkernels.memory_read(*t, backend=backend), (q, k, v), backend,
                     eps=1e-6, atol=1e-6)


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


@pytest.mark.parametrize("backend", backends_for(torch.float32, kernels_only=True))
def test_opcheck(backend):
    q, k, v = _inputs((2, 5, 3, 2, 8), torch.float32, transposed=True)
    torch.library.opcheck(torch.ops.memkernels.memory_read.default, (q, k, v, 0.5, backend))


# --------------------------------------------------------------------------- grouped heads

# (B, L, K, H, H_kv, D): multi-query (H_kv = 1), groups of 2 and 3, and H_kv = H.
GROUPED_SHAPES = [(2, 7, 5, 4, 1, 16), (1, 9, 3, 4, 2, 8), (2, 3, 6, 6, 2, 24), (1, 5, 4, 3, 3, 8)]


def _grouped_inputs(shape, dtype, transposed):
    b, l, k, h, h_kv, d = shape
    return (rand(b, l, h, d, dtype=dtype, transposed=transposed),
            *(rand(b, k, h_kv, d, dtype=dtype, transposed=transposed) for _ in range(2)))


@pytest.mark.parametrize("shape", GROUPED_SHAPES, ids=str)
@pytest.mark.parametrize("backend", backends_for(torch.float32, grouped=True))
def test_grouped_heads_match_float64(backend, shape):
    q, k, v = _grouped_inputs(shape, torch.float32, transposed=shape[0] == 2)
    out = memkernels.memory_read(q, k, v, scale=0.41, backend=backend)
    grad_out = torch.randn_like(out)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_read, (q, k, v), grad_out,
                                                                scale=0.41)
    assert_matches("out", out, exact, naive, torch.float32)
    for name, *results in zip(("dq", "dk", "dv"), grads(out, (q, k, v), grad_out), exact_grads, naive_grads):
        assert results[0].shape == results[1].shape, name
        assert_matches(name, *results, torch.float32)


@pytest.mark.parametrize("backend", backends_for(torch.float64, grouped=True))
def test_grouped_heads_gradcheck_float64(backend):
    q, k, v = _grouped_inputs((1, 3, 4, 4, 2, 5), torch.float64, transposed=True)
    assert gradcheck(lambda *t: memkernels.memory_read(*t, backend=backend), (q, k, v), backend,
                     eps=1e-6, atol=1e-6)


def test_grouped_heads_read_the_shared_head():
    # Multi-query: every query head reads the one key/value head, exactly as if it were copied.
    q, k, v = _grouped_inputs((2, 4, 3, 4, 1, 8), torch.float64, transposed=False)
    shared = memkernels.memory_read(q, k, v, backend="torch")
    copied = memkernels.memory_read(q, k.expand(-1, -1, 4, -1), v.expand(-1, -1, 4, -1), backend="torch")
    torch.testing.assert_close(shared, copied, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", backends_for(torch.float32, grouped=True))
def test_grouped_heads_are_deterministic(backend):
    q, k, v = _grouped_inputs((2, 7, 19, 4, 2, 16), torch.float32, transposed=False)
    runs = []
    for _ in range(2):
        out = memkernels.memory_read(q, k, v, backend=backend)
        runs.append((out, *grads(out, (q, k, v), torch.ones_like(out))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


# --------------------------------------------------------------------------- the sdpa backend


def test_sdpa_backend_compiles_to_sdpa_itself():
    # Traced as torch's own attention op, with SDPA's autograd: no memkernels op in the graph.
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    q, k, v = _grouped_inputs((2, 5, 3, 4, 2, 8), torch.float32, transposed=True)
    compiled = torch.compile(lambda *t: memkernels.memory_read(*t, backend="sdpa"), backend=counter, fullgraph=True)
    compiled(q, k, v).sum().backward()
    targets = {str(node.target) for graph in counter.graphs for node in graph.graph.nodes}
    assert any("scaled_dot_product_attention" in t for t in targets), targets
    assert not any("memkernels" in t for t in targets), targets


def test_registered_op_refuses_the_composite_backend():
    q, k, v = _inputs((1, 2, 3, 1, 8), torch.float32)
    with pytest.raises(memkernels.BackendUnavailable, match="memory_read: backend 'sdpa' cannot run here: it "
                                                            "composes torch's scaled_dot_product_attention"):
        torch.ops.memkernels.memory_read(q, k, v, 0.5, "sdpa")
