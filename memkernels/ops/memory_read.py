"""memory_read: every token query attends over all memory slots (paper §4.2.3).

`out[b,l,h] = softmax_j(scale * q[b,l,h]·k[b,j,h]) @ v[b,:,h]`, no mask: the
memory is all past. Registered as two custom ops, `memkernels::memory_read`
(returns the output and the float32 log-sum-exp the backward needs) and
`memkernels::memory_read_backward`, so autograd, fake tensors and
torch.compile see one opaque op whatever backend runs inside it.
"""
import torch
from torch import Tensor

from memkernels import dispatch
from memkernels._validation import check_tensors, resolve_scale
from memkernels.reference import accumulation_dtype

OP = "memory_read"


@torch.library.custom_op("memkernels::memory_read", mutates_args=())
def _forward(q: Tensor, k: Tensor, v: Tensor, scale: float, backend: str) -> tuple[Tensor, Tensor]:
    return dispatch.kernels(OP, backend).memory_read_forward(q, k, v, scale)


@_forward.register_fake
def _(q, k, v, scale, backend):
    batch, tokens, heads, _ = q.shape
    lse = q.new_empty(batch, heads, tokens, dtype=accumulation_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


@torch.library.custom_op("memkernels::memory_read_backward", mutates_args=())
def _backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    return dispatch.kernels(OP, backend).memory_read_backward(dout, q, k, v, out, lse, scale)


@_backward.register_fake
def _(dout, q, k, v, out, lse, scale, backend):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale, ctx.backend = scale, backend


def _autograd_backward(ctx, dout, _dlse):
    grads = _backward(dout, *ctx.saved_tensors, ctx.scale, ctx.backend)
    return *grads, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def memory_read(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, backend: str = "auto") -> Tensor:
    """Cross-attention of segment tokens over the memory slots.

    Args:
        q: token queries (B, L, H, D), any strides.
        k, v: slot keys and values (B, K, H, D), K >= 1.
        scale: score scale, default D ** -0.5.
        backend: "auto", "torch", "triton" or "cuda" (see `memkernels.dispatch`).

    Returns (B, L, H, D) in q's dtype, contiguous. Differentiable in q, k and v
    (first order: the backward op has no derivative of its own).
    """
    check_tensors(OP, {"q": (q, "BLHD"), "k": (k, "BKHD"), "v": (v, "BKHD")})
    scale = resolve_scale(OP, scale, q.shape[-1])
    backend = dispatch.select(OP, backend, q.device, q.dtype, int(q.shape[-1]))
    return _forward(q, k, v, scale, backend)[0]
