"""The `"cuda"` backend: thin wrappers over the compiled extension `memkernels._C`.

Importing this module loads the extension (`memkernels._C`, or its JIT build
through `memkernels._cuda_build.load`), which registers the C++ ops
`memkernels::<op>_cuda_forward` / `memkernels::<op>_cuda_backward` (CUDA
kernels; CPU tensors are refused with a clear error). `memkernels.dispatch`
imports it only once the extension is known to load. The functions here have the names and
signatures of `memkernels.reference.<op>_forward` / `<op>_backward` and compute
the same functions with the same saved statistics (float32 `lse` / `norm`).

Which kernels a call runs: the scalar kernels, or a fast path (tensor-core
attention for float16/bfloat16, vectorized memory_norm) where the inputs allow
and the fast paths are on; `kernel_path` says which and why, and
`capabilities.CUDA_FAST_PATHS` lists the rules.

Fake (meta) implementations are registered for all six ops so that they trace
under `torch.compile` / FakeTensor: every output is contiguous.
"""
import torch
from torch import Tensor

from memkernels._cuda_build import load

_extension = load()  # registers torch.ops.memkernels.*_cuda_*

_ops = torch.ops.memkernels


def kernel_path(op: str, *tensors: Tensor, compute_capability: tuple[int, int] | None = None) -> str:
    """"tensor-core", "vectorized" or "scalar: <why>" for `op`'s forward inputs.

    memory_read takes (q, k, v), slot_attention (q, k, v, k_tok, v_tok), memory_norm
    (m, bias). CPU tensors are answered as if they were on an sm_90 with enough shared memory;
    `compute_capability` (major, minor) stands in for the GPU's, e.g. (7, 5) for a T4.
    """
    return _extension.kernel_path(op, list(tensors), compute_capability)


def tensor_core_arch_refusal(compute_capability: tuple[int, int]) -> str | None:
    """Why a GPU of this compute capability (major, minor) cannot run the tensor-core kernels
    (they need sm_80: cp.async and the m16n8k16 MMA); None from sm_80 on."""
    major, minor = compute_capability
    return _extension.tensor_core_arch_reason(int(major), int(minor)) or None


def set_fast_paths(enabled: bool) -> None:
    """Let later calls take the fast paths (True) or only the scalar kernels (False)."""
    _extension.set_fast_paths(bool(enabled))


def fast_paths_enabled() -> bool:
    return _extension.fast_paths_enabled()


def tensor_core_head_dims() -> tuple[int, ...]:
    """The head-dim buckets this build has tensor-core kernels for (MEMKERNELS_HEAD_DIMS)."""
    return tuple(int(d) for d in _extension.tensor_core_head_dims().split(",") if d)


# memory_read ----------------------------------------------------------------

def memory_read_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """out (B, L, H, D) in q's dtype and lse (B, H, L) float32."""
    out, lse = _ops.memory_read_cuda_forward(q, k, v, float(scale))
    return out, lse


def memory_read_backward(dout, q, k, v, out, lse, scale):
    """(dq, dk, dv), contiguous, in q's dtype."""
    dq, dk, dv = _ops.memory_read_cuda_backward(dout, q, k, v, out, lse, float(scale))
    return dq, dk, dv


# slot_attention -------------------------------------------------------------

def slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale):
    """out (B, K, H, D) in q's dtype and lse (B, H, K) float32. `scale` includes 1/tau."""
    out, lse = _ops.slot_attention_cuda_forward(q, k, v, k_tok, v_tok, key_padding_mask, float(scale))
    return out, lse


def slot_attention_backward(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale):
    """(dq, dk, dv, dk_tok, dv_tok), contiguous, in q's dtype."""
    grads = _ops.slot_attention_cuda_backward(
        dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, float(scale)
    )
    return tuple(grads)


# memory_norm ----------------------------------------------------------------

def memory_norm_forward(m: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """out (B, K, W) in m's dtype and the unclamped row norm (B, K) float32."""
    out, norm = _ops.memory_norm_cuda_forward(m, bias, float(eps))
    return out, norm


def memory_norm_backward(dout, out, norm, eps):
    """(dm (B, K, W), dbias (K, W)) in out's dtype; dbias sums over the batch in order."""
    dm, dbias = _ops.memory_norm_cuda_backward(dout, out, norm, float(eps))
    return dm, dbias


# fake implementations (shapes only) -----------------------------------------

def _like(t: Tensor, shape, dtype=None) -> Tensor:
    return t.new_empty(tuple(shape), dtype=dtype if dtype is not None else t.dtype)


@torch.library.register_fake("memkernels::memory_read_cuda_forward")
def _(q, k, v, scale):
    b, l, h, _d = q.shape
    return _like(q, q.shape), _like(q, (b, h, l), torch.float32)


@torch.library.register_fake("memkernels::memory_read_cuda_backward")
def _(dout, q, k, v, out, lse, scale):
    return _like(q, q.shape), _like(k, k.shape, q.dtype), _like(v, v.shape, q.dtype)


@torch.library.register_fake("memkernels::slot_attention_cuda_forward")
def _(q, k, v, k_tok, v_tok, key_padding_mask, scale):
    b, n_slots, h, _d = q.shape
    return _like(q, q.shape), _like(q, (b, h, n_slots), torch.float32)


@torch.library.register_fake("memkernels::slot_attention_cuda_backward")
def _(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale):
    return (
        _like(q, q.shape),
        _like(q, q.shape),
        _like(q, q.shape),
        _like(q, k_tok.shape),
        _like(q, k_tok.shape),
    )


@torch.library.register_fake("memkernels::memory_norm_cuda_forward")
def _(m, bias, eps):
    return _like(m, m.shape), _like(m, m.shape[:-1], torch.float32)


@torch.library.register_fake("memkernels::memory_norm_cuda_backward")
def _(dout, out, norm, eps):
    return _like(out, out.shape), _like(out, out.shape[1:])
