"""memory_read: every token query attends over all memory slots (paper §4.2.3).

`out[b,l,h] = softmax_j(scale * q[b,l,h]·k[b,j,g(h)]) @ v[b,:,g(h)]`, no mask: the memory is
all past. k and v may have fewer heads than q (grouped-query reads; H_kv = 1 is multi-query):
query head h reads key/value head g(h) = h // (H / H_kv), the convention of SDPA's
`enable_gqa` and flash-attention, and dk, dv sum over each group. Read top to bottom:

1. input checks, shared by the public function and the registered ops;
2. the registered ops `memkernels::memory_read` (returns the output and the float32
   log-sum-exp the backward needs) and `memkernels::memory_read_backward`, with fake
   implementations and autograd, so torch.compile, opcheck, FakeTensor and
   FlopCounterMode see one opaque op whatever backend runs inside it;
3. the eager `autograd.Function`, which calls the backend's launchers directly;
4. the public function, which casts under autocast (`memkernels.ops._autocast`), runs the
   `sdpa` backend as SDPA itself (`memkernels.sdpa`), and otherwise takes the eager path
   unless something must see the op (`memkernels.ops._eager.fast_path_allowed`).
"""
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memkernels import dispatch, sdpa
from memkernels._validation import (
    FLOATING_DTYPES,
    check_grouped_heads,
    check_like,
    check_statistic,
    check_tensors,
    resolve_scale,
)
from memkernels.ops import _autocast
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
        ok = (v.shape == kshape and kshape[0] == batch and kshape[3] == head_dim
              and kshape[2] > 0 and heads % kshape[2] == 0)
    if not ok:
        check_tensors(OP, {"q": (q, "BLHD"), "k": (k, ("B", "K", "H_kv", "D")), "v": (v, ("B", "K", "H_kv", "D"))})
        check_grouped_heads(OP, "k", k.shape[2], q.shape[2])


def _problem(q: Tensor, k: Tensor) -> tuple[int, bool, tuple[int, ...]]:
    """(head dim, grouped heads, (B, L, K, H, D)): what the backend choice depends on."""
    batch, tokens, heads, head_dim = q.shape
    return int(head_dim), int(k.shape[2]) != int(heads), (int(batch), int(tokens), int(k.shape[1]), int(heads),
                                                         int(head_dim))


def _backend(requested: str, q: Tensor, k: Tensor, mode: str = "fwd_bwd", kernels_only: bool = True) -> str:
    return dispatch.select(OP, requested, q.device, q.dtype, *_problem(q, k), mode, kernels_only)


def _check_op_inputs(q, k, v, scale, backend) -> str:
    _check_inputs(q, k, v)
    resolve_scale(OP, scale, q.shape[-1])
    return _backend(backend, q, k)


def _check_backward_inputs(dout, q, k, v, out, lse, scale, backend) -> str:
    _check_inputs(q, k, v)
    resolve_scale(OP, scale, q.shape[-1])
    check_like(OP, "dout", dout, "q", q)
    check_like(OP, "out", out, "q", q)
    batch, tokens, heads, _ = q.shape
    check_statistic(OP, "lse", lse, (batch, heads, tokens), accumulation_dtype(q.dtype), q.device)
    return _backend(backend, q, k)


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
_autocast.register("memkernels::memory_read", _autocast.LOWER_PRECISION)


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
        k, v: slot keys and values (B, K, H_kv, D), K >= 1, H_kv dividing H (H_kv < H:
            grouped-query heads; query head h reads head h // (H / H_kv)).
        scale: score scale, default D ** -0.5.
        backend: "auto", "torch", "sdpa", "triton" or "cuda" (see `memkernels.dispatch`).

    Returns (B, L, H, D) in q's dtype (the autocast dtype under torch.autocast), contiguous.
    Differentiable in q, k and v (first order: the backward has no derivative of its own).
    """
    if _autocast.enabled(q):
        q, k, v = _autocast.cast(_autocast.LOWER_PRECISION, q, k, v)
    _check_inputs(q, k, v)
    head_dim = q.shape[-1]
    scale = resolve_scale(OP, scale, head_dim)
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    mode = "fwd_bwd" if training else "fwd"
    if not fast_path_allowed((q, k, v)):
        chosen = _backend(backend, q, k, mode, kernels_only=False)
        if chosen == "sdpa":
            return sdpa.memory_read(q, k, v, scale)
        return torch.ops.memkernels.memory_read(q, k, v, scale, chosen)[0]
    chosen, kernels = dispatch.resolve(OP, backend, dispatch.device_type_of(q), q.get_device(), q.dtype,
                                       *_problem(q, k), mode)
    if chosen == "sdpa":
        return sdpa.memory_read(q, k, v, scale)
    if training:
        return _MemoryRead.apply(q, k, v, scale, kernels)
    return kernels.memory_read_forward(q, k, v, scale)[0]
