"""The `"sdpa"` backend: memory_read and slot_attention as `F.scaled_dot_product_attention`.

Both are exact compositions, differentiated by SDPA's own autograd and traced as SDPA by
torch.compile, so whichever fused kernel torch has for the device (flash, cuDNN,
memory-efficient, the CPU flash kernel, or the math fallback) runs them.

* memory_read is unmasked attention of the tokens over the slots: SDPA on (B, H, L, D) views
  of the inputs, with `enable_gqa` for grouped key/value heads (query head h reads head
  h // (H / H_kv), SDPA's convention and ours).
* slot_attention is attention of each slot over [its own key; the token keys]: SDPA over the
  keys [k; k_tok] with a boolean mask that lets slot i see key i and every real token. Its
  scores are K x (K + L) where the op needs K x (1 + L), which is why it loses at large K
  (the measured rule, `memkernels.rules`, says where). A slot whose tokens are all masked
  takes its own value by a select, so out == v bit for bit and dv == dout, as on every
  backend.

Inputs are validated by the public ops; `scale` already includes 1/tau for slot_attention.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def _heads_first(t: Tensor) -> Tensor:
    return t.transpose(1, 2)


def memory_read(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """(B, L, H, D), contiguous."""
    out = F.scaled_dot_product_attention(_heads_first(q), _heads_first(k), _heads_first(v), scale=scale,
                                         enable_gqa=k.shape[2] != q.shape[2])
    return out.transpose(1, 2).contiguous()


def _own_key_and_real_tokens(slots: int, key_padding_mask: Tensor | None, tokens: int, device) -> Tensor:
    """(B or 1, 1, K, K + L) bool: slot i sees key i and every real token."""
    own = torch.eye(slots, dtype=torch.bool, device=device)
    if key_padding_mask is None:
        visible = torch.cat([own, own.new_ones(slots, tokens)], dim=1)
        return visible[None, None]
    real = key_padding_mask[:, None, None, :].expand(-1, 1, slots, -1)
    return torch.cat([own[None, None].expand(real.shape[0], 1, -1, -1), real], dim=-1)


def slot_attention(q: Tensor, k: Tensor, v: Tensor, k_tok: Tensor, v_tok: Tensor,
                   key_padding_mask: Tensor | None, scale: float) -> Tensor:
    """(B, K, H, D), contiguous."""
    slots, tokens = q.shape[1], k_tok.shape[1]
    keys = _heads_first(torch.cat([k, k_tok], dim=1))
    values = _heads_first(torch.cat([v, v_tok], dim=1))
    mask = _own_key_and_real_tokens(slots, key_padding_mask, tokens, q.device)
    out = F.scaled_dot_product_attention(_heads_first(q), keys, values, attn_mask=mask, scale=scale)
    out = out.transpose(1, 2)
    if key_padding_mask is not None:
        out = torch.where(key_padding_mask.any(dim=1)[:, None, None, None], out, v)
    return out.contiguous()
