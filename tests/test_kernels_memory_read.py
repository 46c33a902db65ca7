"""memory_read's kernels, on every kernel backend, against the formulas in tests/formulas.py.

Each test runs the launchers of every backend that can run here (tests/utils.kernel_cases):
Triton under the interpreter on the CPU, Triton and the CUDA extension on a GPU. Outputs are
poisoned with NaN, and results are held to the one tolerance policy of tests/tolerance.py.
Shapes are tiny because the interpreter executes every program in numpy.
"""
import math

import pytest
import torch

from memkernels.triton_kernels import memory_read as triton_memory_read
from memkernels.triton_kernels._launch import next_power_of_2, split_float

import formulas
from tolerance import assert_matches, assert_statistic, reference_pair
from utils import kernel_cases, kernel_module, poison_outputs

CASES = kernel_cases()


@pytest.fixture
def kernels(request, monkeypatch):
    """The backend's memory_read launchers, with every output buffer poisoned with NaN."""
    backend, device = request.node.callspec.params["backend"], request.node.callspec.params["device"]
    poison_outputs(monkeypatch, backend, "memory_read", device)
    return kernel_module(backend, "memory_read")


def _inputs(B, L, K, H, D, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    return rand(B, L, H, D), rand(B, K, H, D), rand(B, K, H, D), rand(B, L, H, D)


def _lse(q, k, scale):
    k = k.double().repeat_interleave(q.shape[2] // k.shape[2], dim=2)  # grouped heads
    return torch.logsumexp(torch.einsum("blhd,bkhd->bhlk", q.double(), k) * scale, dim=-1)


def _run_and_check(kernels, q, k, v, dout, scale, dtype):
    out, lse = kernels.memory_read_forward(q, k, v, scale)
    assert out.dtype == dtype and out.is_contiguous() and lse.is_contiguous()
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_read, (q, k, v), dout, scale=scale)
    assert_matches("out", out, exact, naive, dtype)
    assert_statistic("lse", lse, _lse(q, k, scale), dtype)
    grads = kernels.memory_read_backward(dout, q, k, v, out, lse, scale)
    for name, grad, *references in zip(("dq", "dk", "dv"), grads, exact_grads, naive_grads):
        assert grad.dtype == dtype and grad.is_contiguous(), name
        assert_matches(name, grad, *references, dtype)
    return out, lse, grads


SHAPES = [
    # B, L, K, H, D
    pytest.param(2, 13, 7, 2, 24, id="L13-K7-D24"),
    pytest.param(2, 5, 1, 1, 16, id="K1"),
    pytest.param(1, 1, 9, 2, 8, id="L1-D8"),
    pytest.param(1, 6, 20, 1, 48, id="D48"),
    pytest.param(1, 3, 4, 1, 72, id="D72"),  # not a multiple of 16 (nor of 64)
]


@pytest.mark.parametrize("backend,device,dtype", CASES)
@pytest.mark.parametrize("B,L,K,H,D", SHAPES)
def test_matches_formula(kernels, backend, device, dtype, B, L, K, H, D):
    q, k, v, dout = _inputs(B, L, K, H, D, device, dtype)
    _run_and_check(kernels, q, k, v, dout, D ** -0.5, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_many_slots_and_tokens_stream_through_blocks(kernels, backend, device, dtype):
    # K = 300 slots take several trips through the online softmax and through the backward's
    # first pass over K (for delta) on every backend's tiles; L = 40 several through dk/dv.
    q, k, v, dout = _inputs(1, 40, 300, 2, 20, device, dtype, seed=1)
    # A large scale spreads the scores so the rescaling actually matters.
    _run_and_check(kernels, q * 3, k, v, dout, 0.5, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_very_negative_scores(kernels, backend, device, dtype):
    # Every real score is about -300: exp(-lse) of a padding slot would overflow float32.
    q, k, v, dout = _inputs(1, 4, 3, 1, 16, device, dtype, seed=5)
    k = (k.abs() + 1).to(dtype)
    q = torch.full_like(q, -2.0)
    _run_and_check(kernels, q, k, v, dout, 10.0, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_peaked_softmax_gradient_is_accurate(kernels, backend, device, dtype):
    # P is nearly one-hot, so dS = P (dP - delta) is a small difference. Were delta taken as
    # rowsum(dout * out) from the output rounded to the input dtype, that rounding alone would
    # be the size of dq itself (0.09 against 0.1 in bfloat16 on an H100, 0.01 against 0.09 in
    # float16): dq must match relative to its own size, not to a floor of 1.
    q, k, v, dout = _inputs(1, 4, 3, 1, 16, device, dtype, seed=5)
    k = (k.abs() + 1).to(dtype)
    q = torch.full_like(q, -2.0)
    out, lse = kernels.memory_read_forward(q, k, v, 10.0)
    dq, _, _ = kernels.memory_read_backward(dout, q, k, v, out, lse, 10.0)
    (_, (ref_dq, _, _)), _ = reference_pair(formulas.memory_read, (q, k, v), dout, scale=10.0)
    # float32 keeps ~3e-5 of a -300 score, which scale 10 carries into dq at ~5e-3 of its size.
    rel = {torch.float64: 1e-9, torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 3e-2}[dtype]
    err = (dq.cpu().double() - ref_dq.cpu()).abs().max().item()
    assert err <= rel * ref_dq.abs().max().item(), f"dq error {err:.3e} vs max |dq| {ref_dq.abs().max().item():.3e}"


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_strided_inputs_read_in_place(kernels, backend, device, dtype):
    B, L, K, H, D = 2, 11, 9, 2, 24
    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    # (B, H, L, D) storage seen as (B, L, H, D), as a head-major projection would hand it over.
    q = rand(B, H, L, D).transpose(1, 2)
    # Slices: every other slot of a larger memory, and the first D of a wider last dim.
    k = rand(B, 2 * K, H, D)[:, ::2]
    v = rand(B, K, H, D + 8)[..., :D]
    dout = rand(B, H, L, D).transpose(1, 2)
    assert not any(t.is_contiguous() for t in (q, k, v, dout))
    scale = D ** -0.5
    out, lse, grads = _run_and_check(kernels, q, k, v, dout, scale, dtype)

    # lse handed back with other strides must be read through them.
    lse_strided = lse.transpose(1, 2).contiguous().transpose(1, 2)
    (_, exact_grads), (_, naive_grads) = reference_pair(formulas.memory_read, (q, k, v), dout, scale=scale)
    for name, grad, *references in zip(("dq", "dk", "dv"), kernels.memory_read_backward(
            dout, q, k, v, out, lse_strided, scale), exact_grads, naive_grads):
        assert_matches(name, grad, *references, dtype)


@pytest.mark.parametrize("backend,device,dtype", CASES)
def test_bitwise_deterministic(kernels, backend, device, dtype):
    q, k, v, dout = _inputs(2, 21, 70, 1, 24, device, dtype, seed=4)
    out1, lse1 = kernels.memory_read_forward(q, k, v, 0.3)
    out2, lse2 = kernels.memory_read_forward(q, k, v, 0.3)
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)
    grads1 = kernels.memory_read_backward(dout, q, k, v, out1, lse1, 0.3)
    grads2 = kernels.memory_read_backward(dout, q, k, v, out1, lse1, 0.3)
    for g1, g2 in zip(grads1, grads2):
        assert torch.equal(g1, g2)


# --------------------------------------------------------------------------- grouped key/value heads

TRITON_CASES = [case for case in CASES if case.values[0] == "triton"]


@pytest.mark.parametrize("backend,device,dtype", TRITON_CASES)
@pytest.mark.parametrize("H_kv", [1, 2, 4])
def test_grouped_heads_read_shared_keys(kernels, backend, device, dtype, H_kv):
    # H = 4 query heads over H_kv key/value heads (1: multi-query, 4: one each); dk and dv come
    # back with H_kv heads, summed over each group. K = 37 ends in a partial block, L = 19 too.
    B, L, K, H, D = 1, 19, 37, 4, 16
    q, k, v, dout = _inputs(B, L, K, H, D, device, dtype, seed=7)
    k, v = k[:, :, :H_kv].contiguous(), v[:, :, :H_kv].contiguous()
    _, _, (dq, dk, dv) = _run_and_check(kernels, q, k, v, dout, D ** -0.5, dtype)
    assert dk.shape == dv.shape == (B, K, H_kv, D)


@pytest.mark.parametrize("backend,device,dtype", TRITON_CASES[:1])
def test_grouped_heads_strided_and_deterministic(kernels, backend, device, dtype):
    B, L, K, H, H_kv, D = 1, 9, 11, 4, 2, 8
    gen = torch.Generator().manual_seed(8)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    q, dout = rand(B, H, L, D).transpose(1, 2), rand(B, H, L, D).transpose(1, 2)
    k, v = rand(B, H_kv, K, D).transpose(1, 2), rand(B, K, 2 * H_kv, D)[:, :, ::2]
    first = _run_and_check(kernels, q, k, v, dout, 0.4, dtype)
    second = _run_and_check(kernels, q, k, v, dout, 0.4, dtype)
    for a, b in zip((*first[:2], *first[2]), (*second[:2], *second[2])):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- Triton's launch plans


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_tiles_follow_the_architecture_table(arch):
    for D in (1, 16, 24, 48, 64, 80, 96, 128, 256):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            cfg = triton_memory_read._memory_read_config(arch, 128, 128, 512, 1024, D, dtype)
            assert cfg == triton_memory_read._memory_read_config(arch, 128, 128, 512, 1024, D, dtype)
            smallest = 1 if dtype == torch.float64 else 16  # tl.dot needs 16; float64 does without it
            for tiles in cfg:
                assert tiles.block_d == max(16, next_power_of_2(D))
                for block in (tiles.block_rows, tiles.block_stream, tiles.block_d):
                    assert block >= smallest and block & (block - 1) == 0
                if dtype == torch.float64:  # bounded broadcast product in _common.mm
                    assert tiles.block_rows * tiles.block_stream * tiles.block_d <= 4096
                if dtype.itemsize == 2 and D <= 128:
                    # 64 rows per warpgroup on Hopper: no two warpgroups on the same rows (both
                    # would issue the whole product).
                    assert tiles.num_warps == (4 * tiles.block_rows // 64 if arch == 90 else 8)
    # The paper's L64 K64 keeps 64-row tiles (wgmma on Hopper) however few the heads.
    for tiles in triton_memory_read._memory_read_config(90, 8, 8, 64, 64, 64, torch.bfloat16):
        assert tiles.block_rows == 64 and tiles.num_warps == 4
    # Tiles never exceed the problem.
    tiles = triton_memory_read._memory_read_config(90, 8, 8, 13, 7, 64, torch.float16).forward
    assert (tiles.block_rows, tiles.block_stream) == (16, 16)


def test_float64_scale_is_not_rounded_to_float32():
    hi, lo = split_float(1 / math.sqrt(3))
    assert hi != 1 / math.sqrt(3)
    assert abs(hi + lo - 1 / math.sqrt(3)) < 1e-15
