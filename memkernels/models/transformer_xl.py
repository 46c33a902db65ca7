"""Transformer-XL (Dai et al. 2019): segment recurrence over a cache of hidden states.

Every layer keeps the last `mem_len` hidden states it was given (its inputs),
detached, and attends over [cache; segment] with relative positional
attention: score(i, j) = (q_i + u)·k_j + (q_i + v)·W_R r(i - j), r sinusoidal.
Its carried state grows with `mem_len` per layer: the contrast to Memformer's
fixed slots. Pre-layer-norm blocks; the cache holds the un-normalised inputs.

The cache grows to `mem_len` positions by default. With `fixed_cache=True` it
is always `mem_len` long: it starts as zeros, masked out, and real states
enter at its end, so a real key's distance to a query is what it would be in a
growing cache and the outputs for real tokens are the same; the state's shape
never changes, which a CUDA graph of `step` needs (`StreamingRunner`).
`body` returns hidden states, `step` adds the output head (full or adaptive
softmax, memkernels.models.adaptive).
"""
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memkernels.models.adaptive import WT103_CUTOFFS, output_head
from memkernels.models.layers import FeedForward, attendable, scaled_embedding, sinusoid
from memkernels.models.segments import SegmentRecurrentLM


@dataclass(frozen=True)
class TransformerXLConfig:
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_head: int = 64
    d_ff: int = 2048
    n_layers: int = 16
    mem_len: int = 1024
    dropout: float = 0.1
    fixed_cache: bool = False      # a cache of always mem_len positions (static shapes for CUDA graphs)
    head: str = "full"             # "full" softmax or "adaptive" softmax over `cutoffs`
    cutoffs: tuple[int, ...] = ()


def txl_wt103_base(**overrides) -> TransformerXLConfig:
    """The WikiText-103 base model: 16 layers, d 512, FFN 2048, 8 heads x 64, memory 1024,
    adaptive softmax with cutoffs 20k/40k/200k tied to the input (run_wt103_base.sh)."""
    return replace(TransformerXLConfig(vocab_size=267_735, head="adaptive", cutoffs=WT103_CUTOFFS), **overrides)


def txl_mnist(**overrides) -> TransformerXLConfig:
    """The MNIST-size baseline: 8 layers, d 128."""
    base = TransformerXLConfig(vocab_size=256, d_model=128, n_heads=4, d_head=32, d_ff=512, n_layers=8,
                               mem_len=256)
    return replace(base, **overrides)


class TransformerXLState(NamedTuple):
    memories: Tensor  # (n_layers, B, M, d): each layer's cached inputs, M <= mem_len (== with fixed_cache)
    mask: Tensor      # (B, M) bool: which cached positions hold real tokens


class RelativeAttention(nn.Module):
    def __init__(self, cfg: TransformerXLConfig):
        super().__init__()
        inner = cfg.n_heads * cfg.d_head
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * inner, bias=False)
        self.position = nn.Linear(cfg.d_model, inner, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.position_bias = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
        self.out = nn.Linear(inner, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, keys_in: Tensor, length: int, mask: Tensor) -> Tensor:
        """keys_in (B, M + L, d) = [cache; segment] normalised; queries are its last `length` rows."""
        total = keys_in.shape[1]
        q, k, v = self.qkv(keys_in).unflatten(-1, (3, self.n_heads, self.d_head)).unbind(2)
        q = q[:, -length:]
        distances = torch.arange(total - 1, -1, -1, device=keys_in.device)
        r = self.position(sinusoid(distances, keys_in.shape[-1]).to(keys_in.dtype))
        r = r.view(total, self.n_heads, self.d_head)
        content = torch.einsum("bihd,bjhd->bhij", q + self.content_bias, k)
        by_offset = torch.einsum("bihd,jhd->bhij", q + self.position_bias, r)
        # Column j' of by_offset holds distance total-1-j'; query i at key j needs distance M+i-j.
        rows = torch.arange(length, device=keys_in.device)[:, None]
        cols = torch.arange(total, device=keys_in.device)[None, :]
        index = (cols + (length - 1 - rows)).clamp(max=total - 1)
        position = by_offset.gather(-1, index.expand(*by_offset.shape[:2], -1, -1))
        scores = (content + position) * self.d_head ** -0.5
        probs = self.drop(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1))
        return self.out(torch.einsum("bhij,bjhd->bihd", probs, v).flatten(-2))


class TransformerXLLayer(nn.Module):
    def __init__(self, cfg: TransformerXLConfig):
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(cfg.d_model), RelativeAttention(cfg)
        self.ff_norm, self.ff = nn.LayerNorm(cfg.d_model), FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache, mask):
        keys_in = self.attn_norm(torch.cat([cache, x], dim=1))
        x = x + self.drop(self.attn(keys_in, x.shape[1], mask))
        return x + self.drop(self.ff(self.ff_norm(x)))


class TransformerXL(SegmentRecurrentLM):
    def __init__(self, cfg: TransformerXLConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = scaled_embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerXLLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = output_head(self.embed, cfg.head, cfg.cutoffs)

    def initial_state(self, batch_size: int, segment_len: int | None = None) -> TransformerXLState:
        """An empty cache, or with fixed_cache a masked-out one of mem_len zeros (segment_len is
        accepted for the common model interface)."""
        weight = self.embed.weight
        cached = self.cfg.mem_len if self.cfg.fixed_cache else 0
        memories = weight.new_zeros(self.cfg.n_layers, batch_size, cached, self.cfg.d_model)
        return TransformerXLState(memories, torch.zeros(batch_size, cached, dtype=torch.bool, device=weight.device))

    def body(self, tokens: Tensor, state: TransformerXLState, padding_mask: Tensor | None = None,
             reset: Tensor | None = None) -> tuple[Tensor, TransformerXLState]:
        """One segment without the head: hidden states (B, L, d) for the next token, and the updated caches."""
        batch, length = tokens.shape
        real = padding_mask if padding_mask is not None else \
            torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        cache_mask = state.mask if reset is None else state.mask & ~reset[:, None]
        cached = cache_mask.shape[1]
        causal = torch.ones(length, cached + length, dtype=torch.bool, device=tokens.device).tril(cached)
        key_real = torch.cat([cache_mask, real], dim=1)
        mask = attendable(causal[None] & key_real[:, None, :])[:, None]
        x = self.drop(self.embed(tokens) * self.cfg.d_model ** 0.5)
        layer_inputs = []
        for layer, cache in zip(self.layers, state.memories):
            layer_inputs.append(x)
            x = layer(x, cache, mask)
        # Forget what falls beyond mem_len before appending, so that the new cache's storage holds
        # exactly the kept positions (a slice of [cache; segment] would hold the whole of it).
        drop = max(cached + length - self.cfg.mem_len, 0)
        kept_new = [h[:, max(drop - cached, 0):] for h in layer_inputs]
        memories = torch.cat([state.memories[:, :, drop:], torch.stack(kept_new)], dim=2).detach()
        return self.norm(x), TransformerXLState(memories, key_real[:, drop:].contiguous())
