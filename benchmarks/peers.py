"""What each op is measured against, besides its own backends.

* eager    – `memkernels.reference`, the composite, run eagerly;
* compiled – `torch.compile` of that same composite;
* sdpa     – `F.scaled_dot_product_attention` (slot_attention: over the keys
             `[k; k_tok]` with a diagonal-plus-tokens boolean mask, values `[v; v_tok]`),
             with whichever kernel torch picks; `sdpa_kernels_used` names it;
* sdpa-cudnn – the same with cuDNN's kernel asked for (CUDA only; a shape cuDNN refuses
             raises `PeerUnavailable`);
* flex     – FlexAttention with the same masks (CUDA only: it needs compilation);
* normalize – `F.normalize(m + bias)` for memory_norm.

Each peer takes the op's public arguments and returns its output. Compiled peers are compiled
per shape (dynamic=False), with dynamo's recompile limit raised so that no shape of a
benchmark run falls back to eager unnoticed.
"""
import contextlib
import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from memkernels import reference

# Enough compiled variants per peer for every shape and mode of a benchmark run (the default, 8,
# is fewer than a run's shapes times its modes: past it dynamo runs the function eagerly).
RECOMPILE_LIMIT = 256
# The aten ops F.scaled_dot_product_attention dispatches to, by the kernel they name.
SDPA_KERNELS = {"cudnn": "cudnn", "efficient": "efficient", "flash_attention_for_cpu": "flash (cpu)",
                "flash": "flash", "attention_math": "math", "overrideable": "overrideable"}


class PeerUnavailable(RuntimeError):
    """A peer cannot run these inputs here (the benchmark skips it, with this reason)."""


def _sdpa_kernel(aten_op: str) -> str:
    return next((kernel for key, kernel in SDPA_KERNELS.items() if key in aten_op), aten_op.removeprefix("aten::"))


def sdpa_kernels_used(fn) -> str:
    """The SDPA kernels one call of fn() ran, named by the aten ops the profiler saw
    (`aten::_scaled_dot_product_<kernel>_attention...`): e.g. "flash", "cudnn", "efficient"."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    found = {_sdpa_kernel(e.name) for e in profile.events() if e.name.startswith("aten::_scaled_dot_product_")}
    return ", ".join(sorted(found)) or "none"


def _heads_first(*tensors):
    return [t.transpose(1, 2) for t in tensors]


@functools.cache
def _compiled(fn):
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
    return torch.compile(fn, dynamic=False)


@contextlib.contextmanager
def _cudnn_attention():
    """SDPA restricted to cuDNN's kernel; its refusal of a shape becomes PeerUnavailable."""
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        try:
            yield
        except RuntimeError as error:
            raise PeerUnavailable(f"cuDNN attention cannot run these inputs: {str(error).splitlines()[0]}") \
                from error


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
        def sdpa_cudnn(q, k, v, scale):
            with _cudnn_attention():
                return peers["sdpa"](q, k, v, scale)

        def flex(q, k, v, scale):
            _, attend = _flex()
            return attend(*_heads_first(q, k, v), scale=scale).transpose(1, 2)
        peers.update({"sdpa-cudnn": sdpa_cudnn, "flex": flex})
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
        def sdpa_cudnn(*args):
            with _cudnn_attention():
                return sdpa(*args)

        def flex(q, k, v, k_tok, v_tok, key_padding_mask, scale):
            if key_padding_mask is not None:
                raise ValueError("the flex peer is measured without a key padding mask")
            block = _slot_block_mask(q.shape[1], k_tok.shape[1], q.device)
            keys, values = torch.cat([k, k_tok], dim=1), torch.cat([v, v_tok], dim=1)
            return _flex()[1](*_heads_first(q, keys, values), block_mask=block, scale=scale).transpose(1, 2)
        peers.update({"sdpa-cudnn": sdpa_cudnn, "flex": flex})
    return peers


def memory_norm_peers(device):
    return {
        "eager": reference.memory_norm,
        "compiled": _compiled(reference.memory_norm),
        "normalize": lambda m, bias, eps: F.normalize(m + bias, dim=-1, eps=eps),
    }
