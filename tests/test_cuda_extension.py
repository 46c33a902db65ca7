"""The compiled CUDA extension `memkernels._C` against `memkernels.reference`.

On any machine: the extension imports and its six ops are registered for the
CUDA dispatch key (skipped, with the import error, where it was not built);
CPU tensors are refused with a clear error. On a GPU: every op's forward and
gradients match the float32 reference on odd shapes, three dtypes, masks,
non-contiguous inputs; outputs have no NaN; runs are bitwise deterministic; bad
inputs are refused. The GPU tests skip with a reason where there is no GPU.
"""
import importlib
import os

import pytest
import torch

from memkernels import reference

from utils import EXTENSION_IMPORT_ERROR, needs_extension

needs_gpu = pytest.mark.skipif(
    EXTENSION_IMPORT_ERROR is not None or not torch.cuda.is_available(),
    reason=EXTENSION_IMPORT_ERROR or "no CUDA GPU on this machine: the CUDA kernels cannot run",
)

OPS = [
    f"{op}_cuda_{direction}"
    for op in ("memory_read", "slot_attention", "memory_norm")
    for direction in ("forward", "backward")
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) against the float32 reference run on the same (rounded) inputs.
FWD_TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
BWD_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (6e-2, 6e-2)}


def _ck():
    return importlib.import_module("memkernels.cuda_kernels")


def _check(actual, expected, tol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.is_contiguous(), f"{what}: not contiguous"
    assert not torch.isnan(actual).any(), f"{what}: has NaN (some element never written?)"
    atol, rtol = tol
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _rand(*shape, dtype, transposed=False):
    """Random (B, X, H, D) tensor; `transposed` gives a view of (B, H, X, D) storage."""
    if transposed:
        b, x, h, d = shape
        return torch.randn(b, h, x, d, device="cuda", dtype=dtype).transpose(1, 2)
    return torch.randn(*shape, device="cuda", dtype=dtype)


def _equal_all(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


# -- any machine ------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("MEMKERNELS_CUDA", "1") == "0" or not os.path.exists(
    os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")),
    reason="no nvcc here (or MEMKERNELS_CUDA=0): the extension is not expected to be built")
def test_extension_is_built_wherever_nvcc_exists():
    assert EXTENSION_IMPORT_ERROR is None, EXTENSION_IMPORT_ERROR


@needs_extension
def test_extension_imports():
    module = importlib.import_module("memkernels._C")
    assert module.__name__ == "memkernels._C"
    assert _ck().memory_read_forward is not None


@needs_extension
@pytest.mark.parametrize("op", OPS)
def test_op_registered_for_cuda(op):
    importlib.import_module("memkernels._C")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"memkernels::{op}", "CUDA")
    assert hasattr(torch.ops.memkernels, op)


@needs_extension
def test_cpu_tensors_refused():
    ck = _ck()
    q = torch.randn(1, 3, 2, 8)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        ck.memory_read_forward(q, q, q, 0.5)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        ck.slot_attention_forward(q, q, q, q, q, None, 0.5)
    with pytest.raises(RuntimeError, match="m must be a CUDA tensor"):
        ck.memory_norm_forward(torch.randn(2, 3, 4), torch.randn(3, 4), 1e-12)


# -- memory_read ------------------------------------------------------------------

# (B, L, K, H, D)
MR_SHAPES = [
    (2, 13, 7, 3, 24),
    (2, 13, 1, 3, 24),  # K = 1
    (2, 1, 7, 3, 24),  # L = 1
    (1, 9, 5, 2, 80),  # D = 80 (128 bucket, masked lanes)
    (2, 17, 300, 2, 64),  # many key groups
    (1, 5, 33, 1, 256),  # largest head dim
    (1, 4, 6, 2, 1),  # D = 1
    (1, 3, 2100, 1, 32),  # K > 2048
]


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", MR_SHAPES, ids=str)
def test_memory_read_matches_reference(shape, dtype):
    ck = _ck()
    b, l, k, h, d = shape
    transposed = b == 2
    q = _rand(b, l, h, d, dtype=dtype, transposed=transposed)
    kk = _rand(b, k, h, d, dtype=dtype, transposed=transposed)
    v = _rand(b, k, h, d, dtype=dtype)
    scale = d ** -0.5
    out, lse = ck.memory_read_forward(q, kk, v, scale)
    ref_out, ref_lse = reference.memory_read_forward(q, kk, v, scale)
    _check(out, ref_out, FWD_TOL[dtype], "out")
    _check(lse, ref_lse, (1e-4, 1e-5), "lse")

    dout = _rand(b, l, h, d, dtype=dtype, transposed=not transposed)
    # same saved tensors on both sides: the backward is tested on its own
    got = ck.memory_read_backward(dout, q, kk, v, ref_out, ref_lse, scale)
    want = reference.memory_read_backward(dout, q, kk, v, ref_out, ref_lse, scale)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        _check(g, w, BWD_TOL[dtype], name)


@needs_gpu
def test_memory_read_deterministic():
    ck = _ck()
    q, k, v = (_rand(2, 37, 4, 64, dtype=torch.float32) for _ in range(3))
    k, v = k[:, :29], v[:, :29]
    dout = torch.randn_like(q)
    runs = []
    for _ in range(2):
        out, lse = ck.memory_read_forward(q, k, v, 0.125)
        runs.append((out, lse, *ck.memory_read_backward(dout, q, k, v, out, lse, 0.125)))
    assert _equal_all(*runs)


# -- slot_attention ---------------------------------------------------------------

# (B, K, L, H, D)
SA_SHAPES = [
    (2, 7, 13, 3, 24),
    (2, 1, 13, 3, 24),  # K = 1
    (2, 7, 1, 3, 24),  # L = 1
    (1, 5, 9, 2, 80),
    (2, 6, 300, 2, 64),  # many token groups
    (2, 300, 5, 1, 32),  # many slots (dk_tok / dv_tok loop)
    (1, 3, 5, 1, 256),
]


def _mask(b, l, all_false_row):
    mask = torch.rand(b, l, device="cuda") > 0.3
    mask[:, 0] = True
    if all_false_row:
        mask[-1] = False
    return mask


@needs_gpu
@pytest.mark.parametrize("masked", ["none", "mask", "all_false_row"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SA_SHAPES, ids=str)
def test_slot_attention_matches_reference(shape, dtype, masked):
    ck = _ck()
    b, k, l, h, d = shape
    transposed = b == 2
    q = _rand(b, k, h, d, dtype=dtype, transposed=transposed)
    kk = _rand(b, k, h, d, dtype=dtype)
    v = _rand(b, k, h, d, dtype=dtype, transposed=transposed)
    k_tok = _rand(b, l, h, d, dtype=dtype, transposed=transposed)
    v_tok = _rand(b, l, h, d, dtype=dtype)
    mask = None if masked == "none" else _mask(b, l, masked == "all_false_row")
    scale = d ** -0.5 / 0.25
    out, lse = ck.slot_attention_forward(q, kk, v, k_tok, v_tok, mask, scale)
    ref_out, ref_lse = reference.slot_attention_forward(q, kk, v, k_tok, v_tok, mask, scale)
    _check(out, ref_out, FWD_TOL[dtype], "out")
    _check(lse, ref_lse, (1e-4, 1e-5), "lse")
    if masked == "all_false_row":
        assert torch.equal(out[-1], v[-1]), "an all-masked slot must return its own value exactly"

    dout = _rand(b, k, h, d, dtype=dtype, transposed=not transposed)
    got = ck.slot_attention_backward(dout, q, kk, v, k_tok, v_tok, mask, ref_out, ref_lse, scale)
    want = reference.slot_attention_backward(dout, q, kk, v, k_tok, v_tok, mask, ref_out, ref_lse, scale)
    for name, g, w in zip(("dq", "dk", "dv", "dk_tok", "dv_tok"), got, want):
        _check(g, w, BWD_TOL[dtype], name)
    if mask is not None:
        padded = ~mask
        assert (got[3][padded] == 0).all() and (got[4][padded] == 0).all()


@needs_gpu
def test_slot_attention_mask_strided_and_deterministic():
    ck = _ck()
    b, k, l, h, d = 3, 11, 23, 2, 40
    q, kk, v = (_rand(b, k, h, d, dtype=torch.float16) for _ in range(3))
    k_tok, v_tok = (_rand(b, l, h, d, dtype=torch.float16, transposed=True) for _ in range(2))
    mask = (torch.rand(l, b, device="cuda") > 0.5).t()  # non-contiguous mask
    mask[:, 0] = True
    dout = torch.randn_like(q)
    runs = []
    for _ in range(2):
        out, lse = ck.slot_attention_forward(q, kk, v, k_tok, v_tok, mask, 0.3)
        grads = ck.slot_attention_backward(dout, q, kk, v, k_tok, v_tok, mask, out, lse, 0.3)
        runs.append((out, lse, *grads))
    assert _equal_all(*runs)
    ref_out, _ = reference.slot_attention_forward(q, kk, v, k_tok, v_tok, mask.contiguous(), 0.3)
    _check(runs[0][0], ref_out, FWD_TOL[torch.float16], "out")


# -- memory_norm ------------------------------------------------------------------

# (B, K, W)
MN_SHAPES = [(2, 7, 72), (1, 1, 1), (3, 5, 1000), (2, 4, 4096), (4, 33, 96)]


@needs_gpu
@pytest.mark.parametrize("layout", ["contiguous", "strided", "broadcast"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", MN_SHAPES, ids=str)
def test_memory_norm_matches_reference(shape, dtype, layout):
    ck = _ck()
    b, k, w = shape
    if layout == "contiguous":
        m = torch.randn(b, k, w, device="cuda", dtype=dtype)
    elif layout == "strided":
        m = torch.randn(b, k, 2 * w, device="cuda", dtype=dtype)[..., ::2]
    else:  # the initial memory: one (K, W) broadcast over the batch with stride 0
        m = torch.randn(k, w, device="cuda", dtype=dtype).expand(b, k, w)
    bias = torch.randn(w, k, device="cuda", dtype=dtype).t()  # non-contiguous bias
    eps = 1e-12
    out, norm = ck.memory_norm_forward(m, bias, eps)
    ref_out, ref_norm = reference.memory_norm_forward(m, bias, eps)
    _check(out, ref_out, FWD_TOL[dtype], "out")
    _check(norm, ref_norm, (1e-5, 1e-5), "norm")

    dout = torch.randn(b, k, w, device="cuda", dtype=dtype)
    got = ck.memory_norm_backward(dout, ref_out, ref_norm, eps)
    want = reference.memory_norm_backward(dout, ref_out, ref_norm, eps)
    for name, g, wnt in zip(("dm", "dbias"), got, want):
        _check(g, wnt, BWD_TOL[dtype], name)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_memory_norm_clamped_rows(dtype):
    ck = _ck()
    b, k, w = 3, 4, 50
    bias = torch.randn(k, w, device="cuda", dtype=dtype)
    m = torch.randn(b, k, w, device="cuda", dtype=dtype)
    m[1, 2] = -bias[2]  # x = 0: norm 0 < eps
    eps = 1e-3
    out, norm = ck.memory_norm_forward(m, bias, eps)
    ref_out, ref_norm = reference.memory_norm_forward(m, bias, eps)
    assert norm[1, 2].item() == 0.0
    _check(out, ref_out, FWD_TOL[dtype], "out")
    _check(norm, ref_norm, (1e-5, 1e-5), "norm")
    dout = torch.randn_like(m)
    got = ck.memory_norm_backward(dout, ref_out, ref_norm, eps)
    want = reference.memory_norm_backward(dout, ref_out, ref_norm, eps)
    for name, g, wnt in zip(("dm", "dbias"), got, want):
        _check(g, wnt, BWD_TOL[dtype], name)


@needs_gpu
def test_memory_norm_deterministic():
    ck = _ck()
    m = torch.randn(64, 32, 512, device="cuda")
    bias = torch.randn(32, 512, device="cuda")
    dout = torch.randn_like(m)
    runs = []
    for _ in range(2):
        out, norm = ck.memory_norm_forward(m, bias, 1e-12)
        runs.append((out, norm, *ck.memory_norm_backward(dout, out, norm, 1e-12)))
    assert _equal_all(*runs)


# -- errors and tracing -----------------------------------------------------------


@needs_gpu
def test_bad_inputs_refused():
    ck = _ck()
    q = torch.randn(1, 3, 2, 8, device="cuda")
    with pytest.raises(RuntimeError, match="float64"):
        ck.memory_read_forward(q.double(), q.double(), q.double(), 0.5)
    with pytest.raises(RuntimeError, match="float64"):
        ck.memory_norm_forward(torch.randn(2, 3, 4, device="cuda", dtype=torch.float64),
                               torch.randn(3, 4, device="cuda", dtype=torch.float64), 1e-12)
    with pytest.raises(RuntimeError, match="k is on cpu"):
        ck.memory_read_forward(q, q.cpu(), q, 0.5)
    with pytest.raises(RuntimeError, match="dtype"):
        ck.memory_read_forward(q, q.half(), q, 0.5)
    with pytest.raises(RuntimeError, match="k has head count H = 1"):
        ck.memory_read_forward(q, q[:, :, :1], q, 0.5)
    with pytest.raises(RuntimeError, match="head dim"):
        big = torch.randn(1, 2, 1, 300, device="cuda")
        ck.memory_read_forward(big, big, big, 0.5)
    with pytest.raises(RuntimeError, match="key_padding_mask has dtype Float, expected bool"):
        ck.slot_attention_forward(q, q, q, q, q, torch.ones(1, 3, device="cuda"), 0.5)
    with pytest.raises(RuntimeError, match="key_padding_mask has shape"):
        ck.slot_attention_forward(q, q, q, q, q, torch.ones(1, 4, device="cuda", dtype=torch.bool), 0.5)
    with pytest.raises(RuntimeError, match="bias has slot count K = 4"):
        ck.memory_norm_forward(torch.randn(2, 3, 4, device="cuda"), torch.randn(4, 3, device="cuda"), 1e-12)


@needs_gpu
def test_opcheck():
    _ck()
    q, k, v = (torch.randn(2, 5, 2, 16, device="cuda") for _ in range(3))
    mask = torch.tensor([[True] * 5, [False] * 5], device="cuda")
    ops = torch.ops.memkernels
    out, lse = ops.memory_read_cuda_forward(q, k, v, 0.25)
    torch.library.opcheck(ops.memory_read_cuda_forward, (q, k, v, 0.25))
    torch.library.opcheck(ops.memory_read_cuda_backward, (torch.randn_like(out), q, k, v, out, lse, 0.25))
    out, lse = ops.slot_attention_cuda_forward(q, k, v, k, v, mask, 0.25)
    torch.library.opcheck(ops.slot_attention_cuda_forward, (q, k, v, k, v, mask, 0.25))
    torch.library.opcheck(ops.slot_attention_cuda_backward,
                          (torch.randn_like(out), q, k, v, k, v, mask, out, lse, 0.25))
    m, bias = torch.randn(2, 3, 32, device="cuda"), torch.randn(3, 32, device="cuda")
    out, norm = ops.memory_norm_cuda_forward(m, bias, 1e-12)
    torch.library.opcheck(ops.memory_norm_cuda_forward, (m, bias, 1e-12))
    torch.library.opcheck(ops.memory_norm_cuda_backward, (torch.randn_like(out), out, norm, 1e-12))
