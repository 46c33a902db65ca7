"""slot_attention: memory writing by slot attention (paper §4.2.4).

Slot i attends over its *own* key and the segment's token keys, never over other slots,
with temperature tau:
`p = softmax(scale/tau * [q_i·k_i, q_i·k_tok_1, ..., q_i·k_tok_L])`,
`out_i = p_self * v_i + sum_j p_j * v_tok_j`.
Laid out as `memkernels.ops.memory_read` is: input checks, the registered ops
`memkernels::slot_attention` (output and float32 log-sum-exp) and
`memkernels::slot_attention_backward`, the eager `autograd.Function`, the public
function. The backends receive the folded scale `scale / tau`.

Grouped token heads (k_tok, v_tok with fewer heads than q) are refused, with the reason:
each slot head writes its own value head (v is the raw slot, all H heads), and a write
attends over only 1 + L keys per slot, so grouping the token heads would save little.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memkernels import dispatch, sdpa
from memkernels._validation import (
    FLOATING_DTYPES,
    check_key_padding_mask,
    check_like,
    check_positive,
    check_statistic,
    check_tensors,
    resolve_scale,
)
from memkernels.ops import _autocast
from memkernels.ops._eager import fast_path_allowed
from memkernels.reference import accumulation_dtype

OP = "slot_attention"


# --------------------------------------------------------------------------- input checks


def _check_inputs(q, k, v, k_tok, v_tok, key_padding_mask) -> None:
    ok = (isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
          and isinstance(k_tok, Tensor) and isinstance(v_tok, Tensor)
          and q.dim() == 4 and k_tok.dim() == 4 and q.numel() > 0 and k_tok.numel() > 0
          and q.dtype in FLOATING_DTYPES and q.dtype == k.dtype == v.dtype == k_tok.dtype == v_tok.dtype
          and q.device == k.device == v.device == k_tok.device == v_tok.device)
    if ok:
        batch, _, heads, head_dim = qshape = q.shape
        tshape = k_tok.shape
        ok = (k.shape == qshape and v.shape == qshape and v_tok.shape == tshape
              and tshape[0] == batch and tshape[2] == heads and tshape[3] == head_dim
              and (key_padding_mask is None
                   or (isinstance(key_padding_mask, Tensor) and key_padding_mask.dtype == torch.bool
                       and key_padding_mask.shape == tshape[:2] and key_padding_mask.device == q.device)))
    if not ok:
        _check_no_grouped_token_heads(q, k_tok)
        check_tensors(OP, {
            "q": (q, "BKHD"), "k": (k, "BKHD"), "v": (v, "BKHD"),
            "k_tok": (k_tok, "BLHD"), "v_tok": (v_tok, "BLHD"),
        })
        check_key_padding_mask(OP, key_padding_mask, k_tok.shape[0], k_tok.shape[1], q.device)


def _check_no_grouped_token_heads(q, k_tok) -> None:
    if not (isinstance(q, Tensor) and isinstance(k_tok, Tensor) and q.dim() == 4 and k_tok.dim() == 4):
        return
    heads, token_heads = q.shape[2], k_tok.shape[2]
    if 0 < token_heads < heads and heads % token_heads == 0:
        raise ValueError(
            f"{OP}: k_tok has {token_heads} heads and q has {heads}: slot_attention takes no grouped token "
            "heads, because each slot head writes its own value head (v is the raw slot, all H heads) and a "
            "write attends over only 1 + L keys per slot; project the tokens to q's H heads"
        )


def _problem(q: Tensor, k_tok: Tensor) -> tuple[int, bool, tuple[int, ...]]:
    """(head dim, grouped heads, (B, L, K, H, D)): what the backend choice depends on."""
    batch, slots, heads, head_dim = q.shape
    return int(head_dim), False, (int(batch), int(k_tok.shape[1]), int(slots), int(heads), int(head_dim))


def _backend(requested: str, q: Tensor, k_tok: Tensor, mode: str = "fwd_bwd", kernels_only: bool = True) -> str:
    return dispatch.select(OP, requested, q.device, q.dtype, *_problem(q, k_tok), mode, kernels_only)


def _check_op_inputs(q, k, v, k_tok, v_tok, key_padding_mask, scale, backend) -> str:
    _check_inputs(q, k, v, k_tok, v_tok, key_padding_mask)
    resolve_scale(OP, scale, q.shape[-1])
    return _backend(backend, q, k_tok)


def _check_backward_inputs(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale, backend) -> str:
    _check_inputs(q, k, v, k_tok, v_tok, key_padding_mask)
    resolve_scale(OP, scale, q.shape[-1])
    check_like(OP, "dout", dout, "q", q)
    check_like(OP, "out", out, "q", q)
    batch, slots, heads, _ = q.shape
    check_statistic(OP, "lse", lse, (batch, heads, slots), accumulation_dtype(q.dtype), q.device)
    return _backend(backend, q, k_tok)


# --------------------------------------------------------------------------- registered ops

torch.library.define(
    "memkernels::slot_attention",
    "(Tensor q, Tensor k, Tensor v, Tensor k_tok, Tensor v_tok, Tensor? key_padding_mask, float scale, "
    "str backend) -> (Tensor, Tensor)")
torch.library.define(
    "memkernels::slot_attention_backward",
    "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor k_tok, Tensor v_tok, Tensor? key_padding_mask, "
    "Tensor out, Tensor lse, float scale, str backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


@torch.library.impl("memkernels::slot_attention", "CompositeExplicitAutograd")
def _forward_op(q, k, v, k_tok, v_tok, key_padding_mask, scale, backend):
    backend = _check_op_inputs(q, k, v, k_tok, v_tok, key_padding_mask, scale, backend)
    return dispatch.kernels(OP, backend).slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale)


@torch.library.register_fake("memkernels::slot_attention")
def _(q, k, v, k_tok, v_tok, key_padding_mask, scale, backend):
    _check_op_inputs(q, k, v, k_tok, v_tok, key_padding_mask, scale, backend)
    batch, slots, heads, _ = q.shape
    lse = q.new_empty(batch, heads, slots, dtype=accumulation_dtype(q.dtype))
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


@torch.library.impl("memkernels::slot_attention_backward", "CompositeExplicitAutograd")
def _backward_op(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale, backend):
    backend = _check_backward_inputs(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale, backend)
    return dispatch.kernels(OP, backend).slot_attention_backward(
        dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale)


@torch.library.register_fake("memkernels::slot_attention_backward")
def _(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale, backend):
    _check_backward_inputs(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale, backend)
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v, k_tok, v_tok))


def _setup_context(ctx, inputs, output):
    q, k, v, k_tok, v_tok, key_padding_mask, scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, k_tok, v_tok, key_padding_mask, out, lse)
    ctx.scale, ctx.backend = scale, backend


def _op_backward(ctx, dout, _dlse):
    grads = torch.ops.memkernels.slot_attention_backward(dout, *ctx.saved_tensors, ctx.scale, ctx.backend)
    return *grads, None, None, None


torch.library.register_autograd("memkernels::slot_attention", _op_backward, setup_context=_setup_context)
_autocast.register("memkernels::slot_attention", _autocast.LOWER_PRECISION)


# --------------------------------------------------------------------------- eager autograd


class _SlotAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, k_tok, v_tok, key_padding_mask, scale, kernels):
        out, lse = kernels.slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale)
        ctx.save_for_backward(q, k, v, k_tok, v_tok, key_padding_mask, out, lse)
        ctx.scale, ctx.kernels = scale, kernels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        grads = ctx.kernels.slot_attention_backward(dout, *ctx.saved_tensors, ctx.scale)
        return *grads, None, None, None


# --------------------------------------------------------------------------- public function


def slot_attention(
    q: Tensor, k: Tensor, v: Tensor, k_tok: Tensor, v_tok: Tensor, *,
    tau: float = 1.0, scale: float | None = None, key_padding_mask: Optional[Tensor] = None,
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
        backend: "auto", "torch", "sdpa", "triton" or "cuda" (see `memkernels.dispatch`).

    Returns (B, K, H, D) in q's dtype (the autocast dtype under torch.autocast), contiguous.
    Differentiable in all five tensors; masked tokens receive zero gradient.
    """
    if _autocast.enabled(q):
        q, k, v, k_tok, v_tok = _autocast.cast(_autocast.LOWER_PRECISION, q, k, v, k_tok, v_tok)
    _check_inputs(q, k, v, k_tok, v_tok, key_padding_mask)
    scale = resolve_scale(OP, scale, q.shape[-1]) / check_positive(OP, "tau", tau)
    tensors = (q, k, v, k_tok, v_tok)
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    mode = "fwd_bwd" if training else "fwd"
    if not fast_path_allowed(tensors):
        chosen = _backend(backend, q, k_tok, mode, kernels_only=False)
        if chosen == "sdpa":
            return sdpa.slot_attention(q, k, v, k_tok, v_tok, key_padding_mask, scale)
        return torch.ops.memkernels.slot_attention(q, k, v, k_tok, v_tok, key_padding_mask, scale, chosen)[0]
    chosen, kernels = dispatch.resolve(OP, backend, dispatch.device_type_of(q), q.get_device(), q.dtype,
                                       *_problem(q, k_tok), mode)
    if chosen == "sdpa":
        return sdpa.slot_attention(q, k, v, k_tok, v_tok, key_padding_mask, scale)
    if training:
        return _SlotAttention.apply(q, k, v, k_tok, v_tok, key_padding_mask, scale, kernels)
    return kernels.slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale)[0]
