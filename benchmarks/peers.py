"""What each op is measured against, besides its own backends.

* eager    – `memkernels.reference`, the composite, run eagerly;
* compiled – `torch.compile` of that same composite;
* sdpa     – `F.scaled_dot_product_attention` (slot_attention: over the keys
             `[k; k_tok]` with a diagonal-plus-tokens boolean mask, values `[v; v_tok]`);
* flex     – FlexAttention with the same masks (CUDA only: it needs compilation);
* normalize – `F.normalize(m + bias)` for memory_norm.

Each peer takes the op's public arguments and returns its output.
"""
import functools

import torch
import torch.nn.functional as F

from memkernels import reference


def _heads_first(*tensors):
    return [t.transpose(1, 2) for t in tensors]


@functools.cache
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return create_block_mask, _compiled(flex_attention)


def memory_read_peers(device):
    peers = {
        "eager": reference.memory_read,
        "compiled": _compiled(reference.memory_read),
        "sdpa": lambda q, k, v, scale: F.scaled_dot_product_attention(
            *_heads_first(q, k, v), scale=scale).transpose(1, 2),
    }
    if device.type == "cuda":
        def flex(q, k, v, scale):
            _, attend = _flex()
            return attend(*_heads_first(q, k, v), scale=scale).transpose(1, 2)
        peers["flex"] = flex
    return peers


@functools.cache
def _diagonal_plus_tokens(K, L, device):
    """(1, 1, K, K + L), built once per shape outside the timed calls."""
    own = torch.eye(K, dtype=torch.bool, device=device)
    tokens = torch.ones(K, L, dtype=torch.bool, device=device)
    return torch.cat([own, tokens], dim=1)[None, None]


def _slot_mask(K, L, key_padding_mask, device):
    """(B or 1, 1, K, K + L): slot i sees key i and every real token."""
    mask = _diagonal_plus_tokens(K, L, device)
    if key_padding_mask is not None:
        keep = torch.cat([torch.ones_like(key_padding_mask[:, :1]).expand(-1, K), key_padding_mask], dim=1)
        mask = mask & keep[:, None, None, :]
    return mask


@functools.cache
def _slot_block_mask(slots, tokens, device):
    """Built once per shape, outside the timed region."""
    create_block_mask, _ = _flex()
    return create_block_mask(lambda b, h, i, j: (j == i) | (j >= slots), None, None,
                             slots, slots + tokens, device=device)


def slot_attention_peers(device):
    def sdpa(q, k, v, k_tok, v_tok, key_padding_mask, scale):
        keys, values = torch.cat([k, k_tok], dim=1), torch.cat([v, v_tok], dim=1)
        mask = _slot_mask(q.shape[1], k_tok.shape[1], key_padding_mask, q.device)
        return F.scaled_dot_product_attention(*_heads_first(q, keys, values), attn_mask=mask,
                                              scale=scale).transpose(1, 2)

    peers = {"eager": reference.slot_attention, "compiled": _compiled(reference.slot_attention), "sdpa": sdpa}
    if device.type == "cuda":
        def flex(q, k, v, k_tok, v_tok, key_padding_mask, scale):
            if key_padding_mask is not None:
                raise ValueError("the flex peer is measured without a key padding mask")
            block = _slot_block_mask(q.shape[1], k_tok.shape[1], q.device)
            keys, values = torch.cat([k, k_tok], dim=1), torch.cat([v, v_tok], dim=1)
            return _flex()[1](*_heads_first(q, keys, values), block_mask=block, scale=scale).transpose(1, 2)
        peers["flex"] = flex
    return peers


def memory_norm_peers(device):
    return {
        "eager": reference.memory_norm,
        "compiled": _compiled(reference.memory_norm),
        "normalize": lambda m, bias, eps: F.normalize(m + bias, dim=-1, eps=eps),
    }
