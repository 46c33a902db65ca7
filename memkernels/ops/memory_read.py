"""memory_read: every token query attends over all memory slots (paper §4.2.3).

`out[b,l,h] = softmax_j(scale * q[b,l,h]·k[b,j,h]) @ v[b,:,h]`, no mask: the memory is all
past. Read top to bottom:

1. input checks, shared by the public function and the registered ops;
2. the registered ops `memkernels::memory_read` (returns the output and the float32
   log-sum-exp the backward needs) and `memkernels::memory_read_backward`, with fake
   implementations and autograd, so torch.compile, opcheck, FakeTensor and
   FlopCounterMode see one opaque op whatever backend runs inside it;
3. the eager `autograd.Function`, which calls the backend's launchers directly;
4. the public function, which takes the eager path unless something must see the op
   (`memkernels.ops._eager.fast_path_allowed`).
"""
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memkernels import dispatch
from memkernels._validation import FLOATING_DTYPES, check_like, check_statistic, check_tensors, resolve_scale
from memkernels.ops._eager import fast_path_allowed
from memkernels.reference import accumulation_dtype

OP = "memory_read"


# --------------------------------------------------------------------------- input checks


def _check_inputs(q, k, v) -> None:
    ok = (isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
          and q.dim() == 4 and k.dim() == 4 and q.numel() > 0 and k.numel() > 0
          and q.dtype in FLOATING_DTYPES and q.dtype == k.dtype == v.dtype and q.device == k.device == v.device)
    if ok:
        batch, _, heads, head_dim = q.shape
        kshape = k.shape
        ok = v.shape == kshape and kshape[0] == batch and kshape[2] == heads and kshape[3] == head_dim
    if not ok:
        check_tensors(OP, {"q": (q, "BLHD"), "k": (k, "BKHD"), "v": (v, "BKHD")})


def _backend(requested: str, q: Tensor) -> str:
    return dispatch.select(OP, requested, q.device, q.dtype, int(q.shape[-1]))


def _check_op_inputs(q, k, v, scale, backend) -> str:
    _check_inputs(q, k, v)
    resolve_scale(OP, scale, q.shape[-1])
    return _backend(backend, q)


def _check_backward_inputs(dout, q, k, v, out, lse, scale, backend) -> str:
    _check_inputs(q, k, v)
    resolve_scale(OP, scale, q.shape[-1])
    check_like(OP, "dout", dout, "q", q)
    check_like(OP, "out", out, "q", q)
    batch, tokens, heads, _ = q.shape
    check_statistic(OP, "lse", lse, (batch, heads, tokens), accumulation_dtype(q.dtype), q.device)
    return _backend(backend, q)


# --------------------------------------------------------------------------- registered ops

torch.library.define(
    "memkernels::memory_read", "(Tensor q, Tensor k, Tensor v, float scale, str backend) -> (Tensor, Tensor)")
torch.library.define(
    "memkernels::memory_read_backward",
    "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale, str backend) "
    "-> (Tensor, Tensor, Tensor)")


@torch.library.impl("memkernels::memory_read", "CompositeExplicitAutograd")
def _forward_op(q, k, v, scale, backend):
    backend = _check_op_inputs(q, k, v, scale, backend)
    return dispatch.kernels(OP, backend).memory_read_forward(q, k, v, scale)


@torch.library.register_fake("memkernels::memory_read")
def _(q, k, v, scale, backend):
    _check_op_inputs(q, k, v, scale, backend)
    batch, tokens, heads, _ = q.shape
    lse = q.new_empty(batch, heads, tokens, dtype=accumulation_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


@torch.library.impl("memkernels::memory_read_backward", "CompositeExplicitAutograd")
def _backward_op(dout, q, k, v, out, lse, scale, backend):
    backend = _check_backward_inputs(dout, q, k, v, out, lse, scale, backend)
    return dispatch.kernels(OP, backend).memory_read_backward(dout, q, k, v, out, lse, scale)


@torch.library.register_fake("memkernels::memory_read_backward")
def _(dout, q, k, v, out, lse, scale, backend):
    _check_backward_inputs(dout, q, k, v, out, lse, scale, backend)
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale, ctx.backend = scale, backend


def _op_backward(ctx, dout, _dlse):
    grads = torch.ops.memkernels.memory_read_backward(dout, *ctx.saved_tensors, ctx.scale, ctx.backend)
    return *grads, None, None


torch.library.register_autograd("memkernels::memory_read", _op_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- eager autograd


class _MemoryRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, kernels):
        out, lse = kernels.memory_read_forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.kernels = scale, kernels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        return *ctx.kernels.memory_read_backward(dout, *ctx.saved_tensors, ctx.scale), None, None


# --------------------------------------------------------------------------- public function


def memory_read(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, backend: str = "auto") -> Tensor:
    """Cross-attention of segment tokens over the memory slots.

    Args:
        q: token queries (B, L, H, D), any strides.
        k, v: slot keys and values (B, K, H, D), K >= 1.
        scale: score scale, default D ** -0.5.
        backend: "auto", "torch", "triton" or "cuda" (see `memkernels.dispatch`).

    Returns (B, L, H, D) in q's dtype, contiguous. Differentiable in q, k and v
    (first order: the backward has no derivative of its own).
    """
    _check_inputs(q, k, v)
    head_dim = q.shape[-1]
    scale = resolve_scale(OP, scale, head_dim)
    if not fast_path_allowed((q, k, v)):
        return torch.ops.memkernels.memory_read(q, k, v, scale, _backend(backend, q))[0]
    _, kernels = dispatch.resolve(OP, backend, dispatch.device_type_of(q), q.dtype, head_dim)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _MemoryRead.apply(q, k, v, scale, kernels)
    return kernels.memory_read_forward(q, k, v, scale)[0]
