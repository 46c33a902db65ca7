"""memory_norm's kernels, on every kernel backend, against the formula in tests/formulas.py.

Each test runs the launchers of every backend that can run here (tests/utils.kernel_cases):
Triton under the interpreter on the CPU, Triton and the CUDA extension on a GPU. Outputs
(and dbias partials) are poisoned with NaN, and results are held to the one tolerance policy
of tests/tolerance.py.
"""
import pytest
import torch

from memkernels.triton_kernels import memory_norm as triton_memory_norm
from memkernels.triton_kernels._launch import cdiv

import formulas
from tolerance import assert_matches, assert_statistic, reference_pair
from utils import kernel_cases, kernel_module, poison_outputs

CASES = kernel_cases()


@pytest.fixture
def kernels(request, monkeypatch):
    """The backend's memory_norm launchers, with every output buffer poisoned with NaN."""
    backend, device = request.node.callspec.params["backend"], request.node.callspec.params["device"]
    poison_outputs(monkeypatch, backend, "memory_norm", device)
    return kernel_module(backend, "memory_norm")


def _inputs(B, K, W, device, dtype, seed=0, tiny_rows=(), zero_rows=()):
    """m, bias, dout; the (b, k) rows in tiny_rows get m + bias of norm ~1e-4 * sqrt(W), those in
    zero_rows m + bias = 0 exactly (what bfloat16 makes of a tiny row)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    m, bias, dout = rand(B, K, W), rand(K, W), rand(B, K, W)
    for b, k in tiny_rows:
        m[b, k] = -bias[k] + 1e-4 * rand(W)
    for b, k in zero_rows:
        m[b, k] = -bias[k]
    return m, bias, dout


def _run_and_check(kernels, m, bias, dout, eps, dtype):
    out, norm = kernels.memory_norm_forward(m, bias, eps)
    assert out.dtype == dtype and out.is_contiguous() and norm.is_contiguous()
    assert norm.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_norm, (m, bias), dout, eps=eps)
    assert_matches("out", out, exact, naive, dtype)
    assert_statistic("norm", norm, (m.double() + bias.double()).norm(dim=-1), dtype)
    dm, dbias = kernels.memory_norm_backward(dout, out, norm, eps)
    for name, grad, *references in zip(("dm", "dbias"), (dm, dbias), exact_grads, naive_grads):
        assert grad.dtype == dtype and grad.is_contiguous(), name
        assert_matches(name, grad, *references, dtype)
    return out, norm, dm, dbias


SHAPES = [
    # B, K, W
    pytest.param(3, 5, 40, id="W40"),
    pytest.param(2, 3, 100, id="W100"),
    pytest.param(1, 1, 1, id="W1"),
    pytest.param(4, 2, 64, id="W64"),
    pytest.param(2, 3, 1027, id="W1027"),  # odd, over a thousand: no vector width divides it
]


@pytest.mark.parametrize("backend,device,dtype", CASES)
@pytest.mark.parametrize("B,K,W", SHAPES)
def test_matches_formula(kernels, backend, device, dtype, B, K, W):
    m, bias, dout = _inputs(B, K, W, device, dtype)
    _run_and_check(kernels, m, bias, dout, 1e-12, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_clamped_rows(kernels, backend, device, dtype):
    # Rows (0, 1) and (2, 4) have ||m + bias|| ~ 6e-4 < eps (exactly 0 in bfloat16), row (1, 3)
    # exactly 0: out = x / eps, dx = dy / eps.
    eps = 1e-2
    m, bias, dout = _inputs(3, 5, 40, device, dtype, seed=1, tiny_rows=[(0, 1), (2, 4)], zero_rows=[(1, 3)])
    out, norm, dm, dbias = _run_and_check(kernels, m, bias, dout, eps, dtype)
    assert norm[0, 1] < eps and norm[2, 4] < eps and norm[1, 3] == 0  # the unclamped norm is saved
    assert (norm.flatten().sort().values[3:] > eps).all()


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_rows_wider_than_one_pass(kernels, backend, device, dtype):
    # W = 16500: past Triton's on-chip limit (two passes over chunks) and the CUDA kernels'
    # warp-per-row width; a clamped row on the long path too.
    m, bias, dout = _inputs(2, 2, 16500, device, dtype, seed=2, tiny_rows=[(1, 0)])
    _run_and_check(kernels, m, bias, dout, 1e-2, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_dbias_over_a_long_batch(kernels, backend, device, dtype):
    # 300 batch entries of few slots: Triton splits the batch into chunks whose float32
    # partials a second kernel adds in order; the CUDA kernels reduce over B in their own order.
    m, bias, dout = _inputs(300, 3, 40, device, dtype, seed=3, tiny_rows=[(299, 0)])
    _run_and_check(kernels, m, bias, dout, 1e-2, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_strided_inputs_read_in_place(kernels, backend, device, dtype):
    B, K, W = 3, 4, 40
    gen = torch.Generator().manual_seed(4)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    m = rand(B, W, K).transpose(1, 2)  # W is the strided dim
    bias = rand(K, 2 * W)[:, ::2]
    dout = rand(K, B, W).transpose(0, 1)
    assert not any(t.is_contiguous() for t in (m, bias, dout))
    out, norm, dm, dbias = _run_and_check(kernels, m, bias, dout, 1e-12, dtype)

    # A norm and an output handed back with other strides are read through them.
    norm_strided = norm.t().contiguous().t()
    out_strided = out.transpose(0, 1).contiguous().transpose(0, 1)
    (_, exact_grads), (_, naive_grads) = reference_pair(formulas.memory_norm, (m, bias), dout, eps=1e-12)
    grads = kernels.memory_norm_backward(dout, out_strided, norm_strided, 1e-12)
    for name, grad, *references in zip(("dm", "dbias"), grads, exact_grads, naive_grads):
        assert_matches(name, grad, *references, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
@pytest.mark.parametrize("shape", [(5, 3, 40), (300, 3, 40)], ids=["short-batch", "long-batch"])
def test_bitwise_deterministic(kernels, backend, device, dtype, shape):
    m, bias, dout = _inputs(*shape, device, dtype, seed=5)
    out1, norm1 = kernels.memory_norm_forward(m, bias, 1e-12)
    out2, norm2 = kernels.memory_norm_forward(m, bias, 1e-12)
    assert torch.equal(out1, out2) and torch.equal(norm1, norm2)
    dm1, dbias1 = kernels.memory_norm_backward(dout, out1, norm1, 1e-12)
    dm2, dbias2 = kernels.memory_norm_backward(dout, out1, norm1, 1e-12)
    assert torch.equal(dm1, dm2) and torch.equal(dbias1, dbias2)


# --------------------------------------------------------------------------- Triton's launch plans


def test_triton_config_is_a_pure_function_of_the_shape():
    config = triton_memory_norm._memory_norm_config
    # The bandwidth target: 16k rows of W = 512, few slots and a long batch.
    cfg = config(512, 32, 512)
    assert cfg == config(512, 32, 512)
    assert cfg.single_pass and cfg.block_w == 512
    assert cfg.bwd_b_tile * cfg.bwd_tiles_per_prog >= 32  # dbias partials stay a few % of traffic
    assert cdiv(32, cfg.bwd_block_ks) * cfg.bwd_n_chunks >= 256  # programs enough for every SM
    # Many slots, short batch: one chunk, dbias written directly.
    assert config(16, 1024, 512).bwd_n_chunks == 1
    # The paths the kernel tests above take.
    assert config(2, 3, 16384).single_pass and not config(2, 2, 16500).single_pass
    assert config(300, 3, 40).bwd_n_chunks > 1
