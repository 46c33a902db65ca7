"""memkernels.triton_kernels.memory_norm against the float64 formula in tests/formulas.py.

CPU cases run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when
there is no GPU); CUDA cases, bfloat16 included, run when a GPU is present.
"""

import pytest
import torch
import triton

import formulas
from utils import TRITON_DEVICE_DTYPES, check_max_error, poison_allocations
from memkernels.triton_kernels import memory_norm as mn

# Max-abs error relative to the reference's max-abs value (floored at 1).
_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}


DEVICE_DTYPES = TRITON_DEVICE_DTYPES


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the launchers allocate (dbias partials included) starts as NaN, so an
    element a kernel forgets to write shows up as a NaN in the result."""
    poison_allocations(monkeypatch, mn)


@pytest.fixture(autouse=True)
def fresh_configs():
    """Configs are cached per shape; tests that patch the module's constants need them recomputed."""
    mn._memory_norm_config.cache_clear()
    yield
    mn._memory_norm_config.cache_clear()


@pytest.fixture
def looped_rows(monkeypatch):
    """Rows wider than 32 take the two-pass chunked path (4-wide chunks), as W > 16384 would."""
    monkeypatch.setattr(mn, "_NORM_MAX_ONCHIP_W", 32)


@pytest.fixture
def dbias_partials(monkeypatch):
    """One row per tile and a tiny program target: with B = 5, K = 3 each program walks two
    batch tiles and dbias is reduced from three float32 partials."""
    monkeypatch.setattr(mn, "_NORM_TILE", 64)
    monkeypatch.setattr(mn, "_NORM_TARGET_PROGRAMS", 6)


def _rand(shape, device, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def _inputs(B, K, W, device, dtype, seed=0, tiny_rows=(), zero_rows=()):
    """m, bias, dout; the (b, k) rows in tiny_rows get m + bias of norm ~1e-4 * sqrt(W), those in
    zero_rows m + bias = 0 exactly (what bfloat16 makes of a tiny row)."""
    gen = torch.Generator().manual_seed(seed)
    m = _rand((B, K, W), device, dtype, gen)
    bias = _rand((K, W), device, dtype, gen)
    for b, k in tiny_rows:
        m[b, k] = -bias[k] + 1e-4 * _rand((W,), device, dtype, gen)
    for b, k in zero_rows:
        m[b, k] = -bias[k]
    dout = _rand((B, K, W), device, dtype, gen)
    return m, bias, dout


def _reference(m, bias, dout, eps):
    m64, bias64 = (t.detach().cpu().double().requires_grad_() for t in (m, bias))
    out = formulas.memory_norm(m64, bias64, eps)
    out.backward(dout.detach().cpu().double())
    norm = (m64 + bias64).detach().norm(dim=-1)
    return out.detach(), norm, m64.grad, bias64.grad


def _check(name, actual, expected, dtype, tol=None):
    check_max_error(name, actual, expected, _TOL[dtype] if tol is None else tol)


def _run_and_check(m, bias, dout, eps, dtype):
    out, norm = mn.memory_norm_forward(m, bias, eps)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == dtype and norm.dtype == acc_dtype
    ref_out, ref_norm, ref_dm, ref_dbias = _reference(m, bias, dout, eps)
    _check("out", out, ref_out, dtype)
    _check("norm", norm, ref_norm, dtype, tol=1e-12 if dtype == torch.float64 else 1e-5)
    dm, dbias = mn.memory_norm_backward(dout, out, norm, eps)
    assert dm.dtype == dtype and dbias.dtype == dtype
    _check("dm", dm, ref_dm, dtype)
    _check("dbias", dbias, ref_dbias, dtype)
    return out, norm, dm, dbias


SHAPES = [
    # B, K, W
    pytest.param(3, 5, 40, id="W40"),
    pytest.param(2, 3, 100, id="W100"),
    pytest.param(1, 1, 1, id="W1"),
    pytest.param(4, 2, 64, id="W64"),
]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("B,K,W", SHAPES)
def test_matches_formula(B, K, W, device, dtype):
    m, bias, dout = _inputs(B, K, W, device, dtype)
    _run_and_check(m, bias, dout, 1e-12, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_clamped_rows(device, dtype):
    # Rows (0, 1) and (2, 4) have ||m + bias|| ~ 6e-4 < eps (exactly 0 in bfloat16), row (1, 3)
    # exactly 0: out = x / eps, dx = dy / eps.
    eps = 1e-2
    m, bias, dout = _inputs(3, 5, 40, device, dtype, seed=1, tiny_rows=[(0, 1), (2, 4)], zero_rows=[(1, 3)])
    out, norm, dm, dbias = _run_and_check(m, bias, dout, eps, dtype)
    assert norm[0, 1] < eps and norm[2, 4] < eps and norm[1, 3] == 0  # the unclamped norm is saved
    assert (norm.flatten().sort().values[3:] > eps).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_rows_too_wide_for_chip(looped_rows, device, dtype):
    cfg = mn._memory_norm_config(3, 5, 100)
    assert not cfg.single_pass and cfg.block_w < 100
    m, bias, dout = _inputs(3, 5, 100, device, dtype, seed=2, tiny_rows=[(1, 2)])
    _run_and_check(m, bias, dout, 1e-2, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_dbias_from_partials(dbias_partials, device, dtype):
    cfg = mn._memory_norm_config(5, 3, 40)
    assert cfg.bwd_tiles_per_prog == 2 and cfg.bwd_n_chunks == 3
    m, bias, dout = _inputs(5, 3, 40, device, dtype, seed=3, tiny_rows=[(4, 0)])
    _run_and_check(m, bias, dout, 1e-2, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_strided_inputs_read_in_place(device, dtype):
    B, K, W = 3, 4, 40
    gen = torch.Generator().manual_seed(4)
    m = _rand((B, W, K), device, dtype, gen).transpose(1, 2)  # W is the strided dim
    bias = _rand((K, 2 * W), device, dtype, gen)[:, ::2]
    dout = _rand((K, B, W), device, dtype, gen).transpose(0, 1)
    assert not any(t.is_contiguous() for t in (m, bias, dout))
    out, norm, dm, dbias = _run_and_check(m, bias, dout, 1e-12, dtype)

    # A norm and an output handed back with other strides are read through them.
    norm_strided = norm.t().contiguous().t()
    out_strided = out.transpose(0, 1).contiguous().transpose(0, 1)
    grads = mn.memory_norm_backward(dout, out_strided, norm_strided, 1e-12)
    for name, grad, ref in zip(("dm", "dbias"), grads, (dm, dbias)):
        _check(name, grad, ref.cpu().double(), dtype)
    # Contiguous inputs take the kernel variant without strides: on a GPU it may vectorise, so
    # reduce in another order; the guarantee across layouts is agreement to rounding.
    out_c, norm_c = mn.memory_norm_forward(m.contiguous(), bias.contiguous(), 1e-12)
    grads_c = mn.memory_norm_backward(dout.contiguous(), out_c, norm_c, 1e-12)
    for name, got, ref in zip(("out", "norm", "dm", "dbias"), (out_c, norm_c, *grads_c), (out, norm, dm, dbias)):
        _check(name, got, ref.cpu().double(), dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("path", ["one-chunk", "partials"])
def test_deterministic(path, monkeypatch, device, dtype):
    if path == "partials":
        monkeypatch.setattr(mn, "_NORM_TILE", 64)
        monkeypatch.setattr(mn, "_NORM_TARGET_PROGRAMS", 6)
    m, bias, dout = _inputs(5, 3, 40, device, dtype, seed=5)
    out1, norm1 = mn.memory_norm_forward(m, bias, 1e-12)
    out2, norm2 = mn.memory_norm_forward(m, bias, 1e-12)
    assert torch.equal(out1, out2) and torch.equal(norm1, norm2)
    dm1, dbias1 = mn.memory_norm_backward(dout, out1, norm1, 1e-12)
    dm2, dbias2 = mn.memory_norm_backward(dout, out1, norm1, 1e-12)
    assert torch.equal(dm1, dm2) and torch.equal(dbias1, dbias2)


def test_config_is_a_pure_function_of_the_shape():
    # The bandwidth target: 16k rows of W = 512, few slots and a long batch.
    cfg = mn._memory_norm_config(512, 32, 512)
    assert cfg == mn._memory_norm_config(512, 32, 512)
    assert cfg.single_pass and cfg.block_w == 512
    assert cfg.bwd_b_tile * cfg.bwd_tiles_per_prog >= 32  # dbias partials stay a few % of traffic
    assert triton.cdiv(32, cfg.bwd_block_ks) * cfg.bwd_n_chunks >= 256  # programs enough for every SM
    # Many slots, short batch: one chunk, dbias written directly.
    assert mn._memory_norm_config(16, 1024, 512).bwd_n_chunks == 1
    assert mn._memory_norm_config(2, 3, 16384).single_pass
    assert not mn._memory_norm_config(2, 3, 16385).single_pass
