"""slot_attention: memory writing by slot attention (paper §4.2.4).

Slot i attends over its *own* key and the segment's token keys, never over
other slots, with temperature tau:
`p = softmax(scale/tau * [q_i·k_i, q_i·k_tok_1, ..., q_i·k_tok_L])`,
`out_i = p_self * v_i + sum_j p_j * v_tok_j`.
Registered as the custom ops `memkernels::slot_attention` (returns the output
and the float32 log-sum-exp) and `memkernels::slot_attention_backward`; the
backends receive the folded scale `scale / tau`.
"""
from typing import Optional

import torch
from torch import Tensor

from memkernels import dispatch
from memkernels._validation import check_key_padding_mask, check_positive, check_tensors, resolve_scale
from memkernels.reference import accumulation_dtype

OP = "slot_attention"


@torch.library.custom_op("memkernels::slot_attention", mutates_args=())
def _forward(
    q: Tensor, k: Tensor, v: Tensor, k_tok: Tensor, v_tok: Tensor,
    key_padding_mask: Optional[Tensor], scale: float, backend: str,
) -> tuple[Tensor, Tensor]:
    kernels = dispatch.kernels(OP, backend)
    return kernels.slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale)


@_forward.register_fake
def _(q, k, v, k_tok, v_tok, key_padding_mask, scale, backend):
    batch, slots, heads, _ = q.shape
    lse = q.new_empty(batch, heads, slots, dtype=accumulation_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


@torch.library.custom_op("memkernels::slot_attention_backward", mutates_args=())
def _backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, k_tok: Tensor, v_tok: Tensor,
    key_padding_mask: Optional[Tensor], out: Tensor, lse: Tensor, scale: float, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    kernels = dispatch.kernels(OP, backend)
    return kernels.slot_attention_backward(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale)


@_backward.register_fake
def _(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale, backend):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v, k_tok, v_tok))


def _setup_context(ctx, inputs, output):
    q, k, v, k_tok, v_tok, key_padding_mask, scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, k_tok, v_tok, key_padding_mask, out, lse)
    ctx.scale, ctx.backend = scale, backend


def _autograd_backward(ctx, dout, _dlse):
    grads = _backward(dout, *ctx.saved_tensors, ctx.scale, ctx.backend)
    return *grads, None, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def slot_attention(
    q: Tensor, k: Tensor, v: Tensor, k_tok: Tensor, v_tok: Tensor, *,
    tau: float = 1.0, scale: float | None = None, key_padding_mask: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Update every memory slot from itself and the segment's tokens.

    Args:
        q, k, v: slot query, key and value (B, K, H, D); in Memformer v is the raw slot.
        k_tok, v_tok: token keys and values (B, L, H, D).
        tau: softmax temperature (> 0); the paper uses 0.25.
        scale: score scale, default D ** -0.5; scores are scale / tau * q·k.
        key_padding_mask: optional (B, L) bool, True = real token. A slot whose
            tokens are all masked returns its own value exactly.
        backend: "auto", "torch", "triton" or "cuda" (see `memkernels.dispatch`).

    Returns (B, K, H, D) in q's dtype, contiguous. Differentiable in all five
    tensors; masked tokens receive zero gradient.
    """
    check_tensors(OP, {
        "q": (q, "BKHD"), "k": (k, "BKHD"), "v": (v, "BKHD"),
        "k_tok": (k_tok, "BLHD"), "v_tok": (v_tok, "BLHD"),
    })
    check_key_padding_mask(OP, key_padding_mask, k_tok.shape[0], k_tok.shape[1], q.device)
    scale = resolve_scale(OP, scale, q.shape[-1]) / check_positive(OP, "tau", tau)
    backend = dispatch.select(OP, backend, q.device, q.dtype, int(q.shape[-1]))
    return _forward(q, k, v, k_tok, v_tok, key_padding_mask, scale, backend)[0]
