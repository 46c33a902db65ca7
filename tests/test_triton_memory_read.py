"""memkernels.triton_kernels.memory_read against the float64 formula in tests/formulas.py.

CPU cases run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when
there is no GPU); CUDA cases, bfloat16 included, run when a GPU is present. Shapes are tiny
because the interpreter executes every program in numpy.
"""
import math

import pytest
import torch
import triton

import formulas
from utils import TRITON_DEVICE_DTYPES, check_max_error, poison_allocations
from memkernels.triton_kernels import memory_read as mr
from memkernels.triton_kernels._launch import split_float

# Max-abs error relative to the reference's max-abs value.
_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}


DEVICE_DTYPES = TRITON_DEVICE_DTYPES


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the launchers allocate starts as NaN, so an element a kernel forgets to
    write shows up as a NaN in the result."""
    poison_allocations(monkeypatch, mr)


@pytest.fixture
def small_blocks(monkeypatch):
    """16-wide L and K blocks (the smallest tl.dot allows), so K = 37 takes three trips
    through the online softmax and L = 40 three through the dk/dv loop."""
    def config(n_heads_total, L, K, D, dtype):
        return mr._ReadConfig(block_l=16, block_k=16, block_d=max(16, triton.next_power_of_2(D)),
                              num_warps=4, num_stages=1)
    monkeypatch.setattr(mr, "_memory_read_config", config)


def _rand(shape, device, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _inputs(B, L, K, H, D, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = _rand((B, L, H, D), device, dtype, gen)
    k = _rand((B, K, H, D), device, dtype, gen)
    v = _rand((B, K, H, D), device, dtype, gen)
    dout = _rand((B, L, H, D), device, dtype, gen)
    return q, k, v, dout


def _reference(q, k, v, dout, scale):
    """Float64 out, lse and gradients by autograd on the independent formula."""
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    out = formulas.memory_read(q64, k64, v64, scale)
    out.backward(dout.detach().cpu().double())
    scores = torch.einsum("blhd,bkhd->bhlk", q64, k64).detach() * scale
    return out.detach(), torch.logsumexp(scores, dim=-1), q64.grad, k64.grad, v64.grad


def _check(name, actual, expected, dtype, tol=None):
    check_max_error(name, actual, expected, _TOL[dtype] if tol is None else tol)


def _run_and_check(q, k, v, dout, scale, dtype, tol=None):
    out, lse = mr.memory_read_forward(q, k, v, scale)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == dtype and lse.dtype == acc_dtype
    ref_out, ref_lse, ref_dq, ref_dk, ref_dv = _reference(q, k, v, dout, scale)
    _check("out", out, ref_out, dtype, tol)
    # lse only depends on q, k and the exp/log accuracy of the accumulation dtype.
    _check("lse", lse, ref_lse, dtype, tol=1e-10 if dtype == torch.float64 else 1e-5)
    dq, dk, dv = mr.memory_read_backward(dout, q, k, v, out, lse, scale)
    for name, grad, ref in (("dq", dq, ref_dq), ("dk", dk, ref_dk), ("dv", dv, ref_dv)):
        assert grad.dtype == dtype, name
        _check(name, grad, ref, dtype, tol)


SHAPES = [
    # B, L, K, H, D
    pytest.param(2, 13, 7, 2, 24, id="L13-K7-D24"),
    pytest.param(2, 5, 1, 1, 16, id="K1"),
    pytest.param(1, 1, 9, 2, 8, id="L1-D8"),
    pytest.param(1, 6, 20, 1, 48, id="D48"),
]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("B,L,K,H,D", SHAPES)
def test_matches_formula(B, L, K, H, D, device, dtype):
    q, k, v, dout = _inputs(B, L, K, H, D, device, dtype)
    _run_and_check(q, k, v, dout, D ** -0.5, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_multi_block_online_softmax(small_blocks, device, dtype):
    # K = 37 over 16-slot blocks: the running max and sum get rescaled twice; L = 40 gives
    # three L-blocks and a partial last one; D = 20 pads to 32.
    q, k, v, dout = _inputs(1, 40, 37, 2, 20, device, dtype, seed=1)
    # A large scale spreads the scores so the rescaling actually matters.
    _run_and_check(q * 3, k, v, dout, 0.5, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES[:1] + DEVICE_DTYPES[3:4])
def test_default_config_with_many_slots(device, dtype):
    # The shipped heuristic with K above its largest block (64): several K iterations.
    q, k, v, dout = _inputs(1, 3, 150, 1, 16, device, dtype, seed=2)
    assert triton.cdiv(150, mr._memory_read_config(1, 3, 150, 16, dtype).block_k) > 1
    _run_and_check(q, k, v, dout, 0.25, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_very_negative_scores(device, dtype):
    # Every real score is about -300: exp(-lse) of a padding slot would overflow float32.
    q, k, v, dout = _inputs(1, 4, 3, 1, 16, device, dtype, seed=5)
    k = (k.abs() + 1).to(dtype)
    q = torch.full_like(q, -2.0)
    # Scores of -300 keep only ~1e-5 absolute precision in float32, and P inherits it.
    tol = {torch.float64: 1e-10, torch.float32: 1e-3}.get(dtype, 5e-2)
    _run_and_check(q, k, v, dout, 10.0, dtype, tol)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_peaked_softmax_gradient_is_accurate(device, dtype):
    # P is nearly one-hot, so dS = P (dP - delta) is a small difference. Were delta taken as
    # rowsum(dout * out) from the output rounded to the input dtype, that rounding alone would
    # be the size of dq itself (0.09 against 0.1 in bfloat16 on an H100, 0.01 against 0.09 in
    # float16): dq must match relative to its own size, not to a floor of 1.
    q, k, v, dout = _inputs(1, 4, 3, 1, 16, device, dtype, seed=5)
    k = (k.abs() + 1).to(dtype)
    q = torch.full_like(q, -2.0)
    out, lse = mr.memory_read_forward(q, k, v, 10.0)
    dq, _, _ = mr.memory_read_backward(dout, q, k, v, out, lse, 10.0)
    ref_dq = _reference(q, k, v, dout, 10.0)[2]
    # float32 keeps ~3e-5 of a -300 score, which scale 10 carries into dq at ~5e-3 of its size.
    rel = {torch.float64: 1e-9, torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 3e-2}[dtype]
    err = (dq.cpu().double() - ref_dq).abs().max().item()
    assert err <= rel * ref_dq.abs().max().item(), f"dq error {err:.3e} vs max |dq| {ref_dq.abs().max().item():.3e}"


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_strided_inputs_read_in_place(device, dtype):
    B, L, K, H, D = 2, 11, 9, 2, 24
    gen = torch.Generator().manual_seed(3)
    # (B, H, L, D) storage seen as (B, L, H, D), as a head-major projection would hand it over.
    q = _rand((B, H, L, D), device, dtype, gen).transpose(1, 2)
    # Slices: every other slot of a larger memory, and the first D of a wider last dim.
    k = _rand((B, 2 * K, H, D), device, dtype, gen)[:, ::2]
    v = _rand((B, K, H, D + 8), device, dtype, gen)[..., :D]
    dout = _rand((B, H, L, D), device, dtype, gen).transpose(1, 2)
    assert not any(t.is_contiguous() for t in (q, k, v, dout))
    scale = D ** -0.5
    _run_and_check(q, k, v, dout, scale, dtype)

    out, lse = mr.memory_read_forward(q, k, v, scale)
    # lse handed back with other strides must be read through them.
    lse_strided = lse.transpose(1, 2).contiguous().transpose(1, 2)
    grads = mr.memory_read_backward(dout, q, k, v, out, lse_strided, scale)
    contiguous = [t.contiguous() for t in (q, k, v, dout)]
    out_c, lse_c = mr.memory_read_forward(*contiguous[:3], scale)
    grads_c = mr.memory_read_backward(contiguous[3], *contiguous[:3], out_c, lse_c, scale)
    # Contiguous inputs take the kernel variant without strides, which a GPU may lay out (and
    # so reduce) differently: across layouts the guarantee is agreement to rounding.
    for name, got, ref in zip(("out", "lse", "dq", "dk", "dv"), (out_c, lse_c, *grads_c), (out, lse, *grads)):
        _check(name, got, ref.cpu().double(), dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_deterministic(small_blocks, device, dtype):
    q, k, v, dout = _inputs(2, 21, 19, 1, 24, device, dtype, seed=4)
    out1, lse1 = mr.memory_read_forward(q, k, v, 0.3)
    out2, lse2 = mr.memory_read_forward(q, k, v, 0.3)
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)
    grads1 = mr.memory_read_backward(dout, q, k, v, out1, lse1, 0.3)
    grads2 = mr.memory_read_backward(dout, q, k, v, out1, lse1, 0.3)
    for g1, g2 in zip(grads1, grads2):
        assert torch.equal(g1, g2)


def test_config_is_a_pure_function_of_the_shape():
    for D in (1, 16, 24, 48, 64, 80, 96, 128, 256):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            cfg = mr._memory_read_config(128, 64, 1024, D, dtype)
            assert cfg == mr._memory_read_config(128, 64, 1024, D, dtype)
            assert cfg.block_d == max(16, triton.next_power_of_2(D))
            smallest = 1 if dtype == torch.float64 else 16  # tl.dot needs 16; float64 does without it
            for block in (cfg.block_l, cfg.block_k, cfg.block_d):
                assert block >= smallest and block & (block - 1) == 0
            if dtype == torch.float64:  # bounded broadcast product in _memory_read_mm
                assert cfg.block_l * cfg.block_k * cfg.block_d <= 4096
    # Few heads and a short segment: L is split finer so there are enough programs.
    assert mr._memory_read_config(8, 64, 32, 64, torch.float16).block_l == 16


def test_float64_scale_is_not_rounded_to_float32():
    hi, lo = split_float(1 / math.sqrt(3))
    assert hi != 1 / math.sqrt(3)
    assert abs(hi + lo - 1 / math.sqrt(3)) < 1e-15
