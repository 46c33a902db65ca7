"""The CUDA backend's fast paths: which kernels a call takes, and (on a GPU) that they are right.

`memkernels.cuda_kernels.kernel_path` reports the path a call would take; its rules (dtype, head
dim, strides, alignment, the on/off switch) are the extension's own C++ code, which answers for
CPU tensors too, so they are checked here without a GPU. On a GPU the fast paths are also held
to the float64 formulas, on shapes that take several row and key tiles and every head-dim bucket.
The kernel suite (tests/test_kernels_*.py) runs them over its shapes when
MEMKERNELS_CUDA_FAST_PATHS=1 (benchmarks/gpu_session.sh does both passes).
"""
import os

import pytest
import torch

from memkernels import _cuda_build

import formulas
from tolerance import assert_matches, assert_statistic, reference_pair
from utils import needs_extension

pytestmark = needs_extension


def _dtype_id(dtype):
    return str(dtype).removeprefix("torch.")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def cuda_kernels():
    from memkernels import cuda_kernels

    return cuda_kernels


@pytest.fixture
def fast_paths(cuda_kernels):
    """The fast paths switched on for one test, then back as they were."""
    before = cuda_kernels.fast_paths_enabled()
    cuda_kernels.set_fast_paths(True)
    yield cuda_kernels
    cuda_kernels.set_fast_paths(before)


def _attention(B, rows, keys, H, D, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, H, D, generator=gen, dtype=torch.float64).to(device, dtype)
            for n in (rows, keys, keys)]


def _slot(B, K, L, H, D, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, H, D, generator=gen, dtype=torch.float64).to(device, dtype)
            for n in (K, K, K, L, L)]


def test_switch_defaults_to_the_environment(cuda_kernels):
    expected = os.environ.get("MEMKERNELS_CUDA_FAST_PATHS") == "1"
    assert cuda_kernels.fast_paths_enabled() is expected


def test_switched_off_every_op_takes_the_scalar_kernels(cuda_kernels):
    before = cuda_kernels.fast_paths_enabled()
    cuda_kernels.set_fast_paths(False)
    try:
        for op, tensors in [("memory_read", _attention(1, 64, 64, 2, 64, torch.bfloat16)),
                            ("slot_attention", _slot(1, 64, 64, 2, 64, torch.bfloat16)),
                            ("memory_norm", [torch.zeros(2, 4, 64), torch.zeros(4, 64)])]:
            path = cuda_kernels.kernel_path(op, *tensors)
            assert path.startswith("scalar: the fast paths are off"), (op, path)
            assert "MEMKERNELS_CUDA_FAST_PATHS=1" in path
    finally:
        cuda_kernels.set_fast_paths(before)


def test_build_has_the_requested_head_dim_buckets(cuda_kernels):
    assert cuda_kernels.tensor_core_head_dims() == _cuda_build.head_dims()


def _require_bucket(cuda_kernels, D):
    if not any(D <= bucket for bucket in cuda_kernels.tensor_core_head_dims()):
        pytest.skip(f"this build has no tensor-core bucket for D={D}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_dtype_id)
@pytest.mark.parametrize("D", [8, 24, 64, 72, 128, 136, 256])
def test_tensor_cores_take_16_bit_head_dims_that_are_multiples_of_8(fast_paths, dtype, D):
    _require_bucket(fast_paths, D)
    assert fast_paths.kernel_path("memory_read", *_attention(2, 5, 3, 2, D, dtype)) == "tensor-core"
    assert fast_paths.kernel_path("slot_attention", *_slot(2, 3, 5, 2, D, dtype)) == "tensor-core"


def _refused(cuda_kernels, op, tensors, reason):
    path = cuda_kernels.kernel_path(op, *tensors)
    assert path.startswith("scalar: ") and reason in path, path


def test_float32_takes_the_scalar_kernels(fast_paths):
    _refused(fast_paths, "memory_read", _attention(1, 4, 4, 1, 64, torch.float32), "float32")
    _refused(fast_paths, "slot_attention", _slot(1, 4, 4, 1, 64, torch.float32), "float32")


def test_head_dim_not_a_multiple_of_8_takes_the_scalar_kernels(fast_paths):
    _refused(fast_paths, "memory_read", _attention(1, 4, 4, 1, 60, torch.float16), "multiple of 8")


def test_strided_last_dim_takes_the_scalar_kernels(fast_paths):
    q, k, v = _attention(1, 4, 4, 1, 64, torch.float16)
    k = k.transpose(1, 3).contiguous().transpose(1, 3)  # same values, last-dim stride 4
    _refused(fast_paths, "memory_read", [q, k, v], "16-byte aligned")


def test_misaligned_rows_take_the_scalar_kernels(fast_paths):
    q, k, v = _attention(1, 4, 4, 1, 72, torch.bfloat16)
    _refused(fast_paths, "memory_read", [q[..., 1:65], k[..., :64], v[..., :64]], "16-byte aligned")
    # Aligned pointers with a row stride of 68 elements (136 bytes) are refused as well.
    q, k, v = _attention(1, 4, 4, 1, 68, torch.bfloat16)
    _refused(fast_paths, "memory_read", [q[..., :64], k[..., :64], v[..., :64]], "16-byte aligned")
    parts = _slot(1, 4, 4, 1, 72, torch.bfloat16)
    parts[4] = parts[4][..., 8:]
    parts[:4] = [t[..., :64] for t in parts[:4]]
    assert fast_paths.kernel_path("slot_attention", *parts) == "tensor-core"  # 8 elements = 16 bytes
    parts[3] = _slot(1, 4, 4, 1, 72, torch.bfloat16)[3][..., 4:68]
    _refused(fast_paths, "slot_attention", parts, "16-byte aligned")


@pytest.mark.parametrize("dtype,W", [(torch.bfloat16, 512), (torch.float16, 8), (torch.float32, 4),
                                     (torch.bfloat16, 16384), (torch.float32, 8192)],
                         ids=lambda x: _dtype_id(x) if isinstance(x, torch.dtype) else str(x))
def test_memory_norm_vectorizes_whole_16_byte_rows(fast_paths, dtype, W):
    m, bias = torch.zeros(2, 3, W, dtype=dtype), torch.zeros(3, W, dtype=dtype)
    assert fast_paths.kernel_path("memory_norm", m, bias) == "vectorized"


@pytest.mark.parametrize("case", ["partial vector", "too wide", "strided bias", "misaligned m"])
def test_memory_norm_other_rows_take_the_scalar_kernels(fast_paths, case):
    m, bias = torch.zeros(2, 3, 64, dtype=torch.bfloat16), torch.zeros(3, 64, dtype=torch.bfloat16)
    if case == "partial vector":
        m, bias = m[..., :12], bias[..., :12]
    elif case == "too wide":
        m, bias = torch.zeros(1, 1, 16392, dtype=torch.bfloat16), torch.zeros(1, 16392, dtype=torch.bfloat16)
    elif case == "strided bias":
        bias = torch.zeros(64, 3, dtype=torch.bfloat16).t()
    else:
        m = torch.zeros(2, 3, 72, dtype=torch.bfloat16)[..., 4:68]
    _refused(fast_paths, "memory_norm", [m, bias], "16-byte")


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)], ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_gpus_before_sm_80_take_the_scalar_kernels(fast_paths, capability):
    # cp.async and the m16n8k16 MMA compile there to CuTe's invalid-path trap, a device assert.
    _require_bucket(fast_paths, 64)
    for op, tensors in [("memory_read", _attention(2, 5, 3, 2, 64, torch.bfloat16)),
                        ("slot_attention", _slot(2, 3, 5, 2, 64, torch.float16))]:
        assert fast_paths.kernel_path(op, *tensors) == "tensor-core"  # CPU tensors: as on an sm_90
        path = fast_paths.kernel_path(op, *tensors, compute_capability=capability)
        assert path.startswith("scalar: ") and "older than sm_80" in path, path
    assert "older than sm_80" in fast_paths.tensor_core_arch_refusal(capability)


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)], ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_gpus_from_sm_80_take_the_tensor_cores(fast_paths, capability):
    _require_bucket(fast_paths, 64)
    assert fast_paths.tensor_core_arch_refusal(capability) is None
    assert fast_paths.kernel_path("memory_read", *_attention(2, 5, 3, 2, 64, torch.bfloat16),
                                  compute_capability=capability) == "tensor-core"
    assert fast_paths.kernel_path("slot_attention", *_slot(2, 3, 5, 2, 64, torch.float16),
                                  compute_capability=capability) == "tensor-core"


def test_info_says_why_an_old_gpu_gets_no_tensor_cores(cuda_kernels):
    from memkernels import info

    assert "tensor cores refused on this GPU (sm_75): the GPU is older than sm_80" in info._fast_paths_status((7, 5))
    assert "refused" not in info._fast_paths_status((9, 0))
    assert "refused" not in info._fast_paths_status(None)


def test_kernel_path_checks_its_arguments(cuda_kernels):
    q, k, v = _attention(1, 4, 4, 1, 64, torch.float16)
    with pytest.raises(RuntimeError, match="op must be memory_read, slot_attention or memory_norm"):
        cuda_kernels.kernel_path("memory_write", q, k, v)
    with pytest.raises(RuntimeError, match="memory_read takes \\(q, k, v\\), got 2 tensors"):
        cuda_kernels.kernel_path("memory_read", q, k)
    with pytest.raises(RuntimeError, match="kernel_path: .*k"):
        cuda_kernels.kernel_path("memory_read", q, k[..., :32], v)
    with pytest.raises(RuntimeError, match=r"compute_capability must be \(major, minor\), got 1 numbers"):
        cuda_kernels.kernel_path("memory_read", q, k, v, compute_capability=(8,))


# On a GPU: the fast paths against the float64 formulas --------------------------------------

GPU_SHAPES = [  # B, rows, keys, H, D: several row and key tiles, every bucket, ragged edges
    pytest.param(2, 130, 70, 3, 64, id="D64"),
    pytest.param(1, 67, 200, 2, 40, id="D40-in-bucket-64"),
    pytest.param(2, 65, 129, 1, 128, id="D128"),
    pytest.param(1, 33, 90, 2, 256, id="D256"),
    pytest.param(3, 1, 1, 1, 8, id="one-row-one-key"),
]


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_dtype_id)
@pytest.mark.parametrize("B,rows,keys,H,D", GPU_SHAPES)
def test_tensor_core_memory_read_matches_formula(fast_paths, dtype, B, rows, keys, H, D):
    _require_bucket(fast_paths, D)
    q, k, v = _attention(B, rows, keys, H, D, dtype, "cuda")
    assert fast_paths.kernel_path("memory_read", q, k, v) == "tensor-core"
    dout = torch.randn_like(q)
    scale = D ** -0.5
    out, lse = fast_paths.memory_read_forward(q, k, v, scale)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_read, (q, k, v), dout, scale=scale)
    assert_matches("out", out, exact, naive, dtype)
    s = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) * scale
    assert_statistic("lse", lse, torch.logsumexp(s, dim=-1), dtype)
    grads = fast_paths.memory_read_backward(dout, q, k, v, out, lse, scale)
    for name, grad, *references in zip(("dq", "dk", "dv"), grads, exact_grads, naive_grads):
        assert_matches(name, grad, *references, dtype)
    again = fast_paths.memory_read_backward(dout, q, k, v, out, lse, scale)
    assert all(torch.equal(a, b) for a, b in zip(grads, again)), "the backward must be bitwise deterministic"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_dtype_id)
@pytest.mark.parametrize("B,rows,keys,H,D", GPU_SHAPES)
def test_tensor_core_slot_attention_matches_formula(fast_paths, dtype, B, rows, keys, H, D):
    _require_bucket(fast_paths, D)
    inputs = _slot(B, rows, keys, H, D, dtype, "cuda")
    assert fast_paths.kernel_path("slot_attention", *inputs) == "tensor-core"
    mask = torch.rand(B, keys, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[0] = False  # a batch row with only padding: every slot keeps its own value
    mask = mask.cuda()
    inputs[2][0, :, :, 0] = -0.0
    scale = D ** -0.5
    dout = torch.randn_like(inputs[0])
    out, lse = fast_paths.slot_attention_forward(*inputs, mask, scale)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(
        formulas.slot_attention, inputs, dout, tau=1.0, scale=scale, key_padding_mask=mask)
    assert_matches("out", out, exact, naive, dtype)
    assert torch.equal(out[0].view(torch.int16), inputs[2][0].view(torch.int16)), "padding-only rows return v bitwise"
    grads = fast_paths.slot_attention_backward(dout, *inputs, mask, out, lse, scale)
    for name, grad, *references in zip(("dq", "dk", "dv", "dk_tok", "dv_tok"), grads, exact_grads, naive_grads):
        assert_matches(name, grad, *references, dtype)
    assert torch.all(grads[3][~mask] == 0) and torch.all(grads[4][~mask] == 0), "padding tokens need zero grads"
    # P = 1 on the own term exactly, not rebuilt through the rounded lse.
    assert torch.all(grads[0][0] == 0) and torch.all(grads[1][0] == 0), "padding-only rows: dq = dk = 0 exactly"
    assert torch.equal(grads[2][0].view(torch.int16), dout[0].view(torch.int16)), "padding-only rows: dv = dout"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_dtype_id)
@pytest.mark.parametrize("B,K,W", [(3, 5, 8), (2, 7, 520), (16, 64, 512), (2, 3, 8192)])
def test_vectorized_memory_norm_matches_formula(fast_paths, dtype, B, K, W):
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(B, K, W, generator=gen, dtype=torch.float64).to("cuda", dtype)
    bias = torch.randn(K, W, generator=gen, dtype=torch.float64).to("cuda", dtype)
    if fast_paths.kernel_path("memory_norm", m, bias) != "vectorized":
        pytest.skip(f"{dtype} W={W} is not vectorizable")
    m[0, 0] = -bias[0]  # a zero row: the eps clamp
    eps = 1e-5
    dout = torch.randn_like(m)
    out, norm = fast_paths.memory_norm_forward(m, bias, eps)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_norm, (m, bias), dout, eps=eps)
    assert_matches("out", out, exact, naive, dtype)
    assert_statistic("norm", norm, (m.double() + bias.double()).norm(dim=-1), dtype)
    grads = fast_paths.memory_norm_backward(dout, out, norm, eps)
    for name, grad, *references in zip(("dm", "dbias"), grads, exact_grads, naive_grads):
        assert_matches(name, grad, *references, dtype)
    again = fast_paths.memory_norm_backward(dout, out, norm, eps)
    assert all(torch.equal(a, b) for a, b in zip(grads, again)), "dbias must be bitwise deterministic"


# On a GPU: the cases of issue 18, with the fast paths off (scalar kernels) and on ----------

@pytest.fixture(params=[False, True], ids=["fast-paths-off", "fast-paths-on"])
def switched(request, cuda_kernels):
    """The fast paths off, then on, for one test; then back as they were."""
    before = cuda_kernels.fast_paths_enabled()
    cuda_kernels.set_fast_paths(request.param)
    yield cuda_kernels
    cuda_kernels.set_fast_paths(before)


def _assert_path(cuda_kernels, op, tensors):
    """The call takes the kernels the switch promises: tensor cores for 16-bit inputs of a built
    bucket on an sm_80+ GPU when the fast paths are on, the scalar kernels otherwise."""
    dtype, D = tensors[0].dtype, tensors[0].shape[-1]
    tensor_cores = (cuda_kernels.fast_paths_enabled() and dtype in (torch.float16, torch.bfloat16)
                    and any(D <= bucket for bucket in cuda_kernels.tensor_core_head_dims())
                    and torch.cuda.get_device_capability(tensors[0].device) >= (8, 0))
    path = cuda_kernels.kernel_path(op, *tensors)
    assert path == "tensor-core" if tensor_cores else path.startswith("scalar: "), path


def _bits(t):
    ints = {2: torch.int16, 4: torch.int32}
    return t.contiguous().view(ints[t.element_size()])


def _gpu_randn(gen, dtype):
    return lambda *shape: torch.randn(shape, generator=gen, dtype=torch.float64).to("cuda", dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_dtype_id)
def test_memory_read_peaked_softmax_gradient(switched, dtype):
    # The kernel suite's case (test_kernels_memory_read.py): P nearly one-hot, so dS = P (dP -
    # delta) is a small difference; delta from the output rounded to 16 bits was off by 92% of
    # dq in bfloat16. dq is held relative to its own size.
    rand = _gpu_randn(torch.Generator().manual_seed(5), dtype)
    q, k, v, dout = rand(1, 4, 1, 16), rand(1, 3, 1, 16), rand(1, 3, 1, 16), rand(1, 4, 1, 16)
    k = (k.double().abs() + 1).to(dtype)
    q = torch.full_like(q, -2.0)
    _assert_path(switched, "memory_read", (q, k, v))
    out, lse = switched.memory_read_forward(q, k, v, 10.0)
    dq = switched.memory_read_backward(dout, q, k, v, out, lse, 10.0)[0]
    (_, (ref_dq, _, _)), _ = reference_pair(formulas.memory_read, (q, k, v), dout, scale=10.0)
    rel = {torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 3e-2}[dtype]
    err = (dq.double() - ref_dq).abs().max().item()
    assert err <= rel * ref_dq.abs().max().item(), f"dq error {err:.3e} vs max |dq| {ref_dq.abs().max().item():.3e}"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_dtype_id)
def test_slot_attention_peaked_softmax_gradient(switched, dtype):
    # The kernel suite's case (test_kernels_slot_attention.py): the largest P of each slot is
    # above 0.99.
    rand = _gpu_randn(torch.Generator().manual_seed(5), dtype)
    q, k, v, k_tok, v_tok = rand(1, 3, 1, 16), rand(1, 3, 1, 16), rand(1, 3, 1, 16), rand(1, 5, 1, 16), \
        rand(1, 5, 1, 16)
    q, k, k_tok = ((t.double() * 1.5).to(dtype) for t in (q, k, k_tok))
    inputs = (q, k, v, k_tok, v_tok)
    dout = rand(1, 3, 1, 16)
    _assert_path(switched, "slot_attention", inputs)
    out, lse = switched.slot_attention_forward(*inputs, None, 1.0)
    dq = switched.slot_attention_backward(dout, *inputs, None, out, lse, 1.0)[0]
    (_, (ref_dq, *_)), _ = reference_pair(formulas.slot_attention, inputs, dout, tau=1.0, scale=1.0)
    rel = {torch.float32: 1e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    err = (dq.double() - ref_dq).abs().max().item()
    assert err <= rel * ref_dq.abs().max().item(), f"dq error {err:.3e} vs max |dq| {ref_dq.abs().max().item():.3e}"


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=_dtype_id)
def test_memory_read_strided_inputs_match_float64_bitwise_repeatably(switched, dtype):
    # Several row and key tiles with ragged ends, a head dim that fills no bucket, and every
    # operand read in place through its strides.
    B, L, K, H, D = 2, 130, 129, 3, 72
    rand = _gpu_randn(torch.Generator().manual_seed(11), dtype)
    q = rand(B, H, L, D).transpose(1, 2)
    k = rand(B, 2 * K, H, D)[:, ::2]
    v = rand(B, K, H, D + 8)[..., :D]
    dout = rand(B, H, L, D).transpose(1, 2)
    assert not any(t.is_contiguous() for t in (q, k, v, dout))
    _assert_path(switched, "memory_read", (q, k, v))
    scale = D ** -0.5
    runs = []
    for _ in range(2):
        out, lse = switched.memory_read_forward(q, k, v, scale)
        runs.append((out, lse, *switched.memory_read_backward(dout, q, k, v, out, lse, scale)))
    (exact, exact_grads), (naive, naive_grads) = reference_pair(formulas.memory_read, (q, k, v), dout, scale=scale)
    out, lse, *grads = runs[0]
    assert_matches("out", out, exact, naive, dtype)
    s = torch.einsum("blhd,bkhd->bhlk", q.double(), k.double()) * scale
    assert_statistic("lse", lse, torch.logsumexp(s, dim=-1), dtype)
    for name, grad, *references in zip(("dq", "dk", "dv"), grads, exact_grads, naive_grads):
        assert_matches(name, grad, *references, dtype)
    for name, first, second in zip(("out", "lse", "dq", "dk", "dv"), *runs):
        assert torch.equal(_bits(first), _bits(second)), f"{name} differs between two identical runs"


@needs_gpu
def test_slot_attention_padding_only_batch_is_exact(switched):
    # Many slots, a token count that fills no tile, tau 0.25, a (B, L) mask with strides (1, B),
    # and batch 0 all padding: its slots return v bit for bit (-0.0 included), and their
    # gradients are exact: dq = dk = 0 and dv = dout, as P = 1 on the own term exactly.
    dtype, tau = torch.bfloat16, 0.25
    B, K, L, H, D = 3, 1030, 131, 2, 128
    gen = torch.Generator().manual_seed(12)
    rand = _gpu_randn(gen, dtype)
    inputs = [rand(B, n, H, D) for n in (K, K, K, L, L)]
    inputs[2][0, ..., 0] = -0.0
    mask = (torch.rand(L, B, generator=gen) > 0.3).to("cuda").t()
    mask[0] = False
    assert not mask.is_contiguous() and mask[1:].any(dim=1).all()
    _assert_path(switched, "slot_attention", inputs)
    dout = rand(B, K, H, D)
    scale = D ** -0.5
    out, lse = switched.slot_attention_forward(*inputs, mask, scale / tau)
    grads = switched.slot_attention_backward(dout, *inputs, mask, out, lse, scale / tau)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(
        formulas.slot_attention, inputs, dout, tau=tau, scale=scale, key_padding_mask=mask)
    assert_matches("out", out, exact, naive, dtype)
    for name, grad, *references in zip(("dq", "dk", "dv", "dk_tok", "dv_tok"), grads, exact_grads, naive_grads):
        assert_matches(name, grad, *references, dtype)
    assert torch.equal(_bits(out[0]), _bits(inputs[2][0])), "a padding-only slot must return v bit for bit"
    dq, dk, dv, dk_tok, dv_tok = grads
    assert torch.all(dk_tok[~mask] == 0) and torch.all(dv_tok[~mask] == 0), "padding tokens need zero grads"
    assert torch.all(dq[0] == 0) and torch.all(dk[0] == 0), "a padding-only slot's dq and dk must be exactly 0"
    assert torch.equal(_bits(dv[0]), _bits(dout[0])), "a padding-only slot's dv must be dout bit for bit"
