"""A decoder with a key-value memory store and nearest-key retrieval (as Memorizing Transformers' kNN memory).

Chosen layers (`memory_layers`) keep a store of the keys and values their
attention computed for earlier tokens: `capacity` entries per batch row, per
head. Per segment, in such a layer, every query head
* attends causally over the segment (local attention);
* retrieves the `top_k` stored keys with the highest inner product with its
  query (exact: the store is scored `chunk_size` entries at a time and the
  running top-k merged, so scores never take more than L x (top_k + chunk_size)
  per head), and attends over those entries (`memkernels.memory_read`);
* mixes the two, out = local + g_h (retrieved - local), g_h = sigmoid of a
  learned per-head gate; a query with no stored entry yet reads local only.
After the segment, its real tokens' keys and values enter the store at its
end; when it is full the oldest entries leave first.

The carried state, `KVMemoryState(keys, values, valid)`, has a fixed shape: the
store starts empty (zeros, `valid` False) and entries are kept in order of
arrival, newest last, empty places first. Padded tokens are never written; a
sample whose whole segment is padding keeps its state; `reset` empties the
store of the rows it marks. The stored entries keep their autograd history
within a rollout (backpropagation through time, as Memformer's memory); the
retrieval itself (which entries) is not differentiable, attention over them is.
Positions are sinusoidal within the segment; blocks are pre-layer-norm.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memkernels.models.adaptive import output_head
from memkernels.models.layers import DecoderLayer, FeedForward, TokenEmbedding, causal_mask
from memkernels.models.segments import SegmentRecurrentLM
from memkernels.ops.memory_read import memory_read

# Score given to empty store places inside memory_read: exp(-1e4) is 0 in every dtype, so they
# take no weight, and it is finite in float16, so a query whose retrieved places are all empty
# gets finite scores (its output is then replaced by local attention).
EMPTY_SCORE = -1e4


@dataclass(frozen=True)
class KVMemoryConfig:
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_layers: int = 8
    memory_layers: tuple[int, ...] = (-1,)   # which layers keep a store (negative: from the end)
    capacity: int = 1024                     # stored entries per batch row, per memory layer
    top_k: int = 32                          # entries each query head retrieves
    chunk_size: int = 512                    # stored entries scored at once during retrieval
    dropout: float = 0.1
    backend: str = "auto"                    # memkernels backend of the retrieved-entry attention
    head: str = "full"
    cutoffs: tuple[int, ...] = ()

    def __post_init__(self):
        if not 1 <= self.top_k <= self.capacity:
            raise ValueError(f"top_k must be in 1..capacity ({self.capacity}), got {self.top_k}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        layers = [i % self.n_layers for i in self.memory_layers if -self.n_layers <= i < self.n_layers]
        if len(layers) != len(self.memory_layers) or len(set(layers)) != len(layers):
            raise ValueError(f"memory_layers must be distinct layer indices in -{self.n_layers}..{self.n_layers - 1},"
                             f" got {self.memory_layers}")


class KVMemoryState(NamedTuple):
    keys: Tensor    # (n_memory_layers, B, capacity, H, D): stored keys, oldest first, empty places before them
    values: Tensor  # (n_memory_layers, B, capacity, H, D)
    valid: Tensor   # (B, capacity) bool: which places hold an entry


@torch.no_grad()
def top_k_entries(queries: Tensor, keys: Tensor, valid: Tensor, k: int, chunk_size: int) -> Tensor:
    """Indices (B, L, H, k) into the store of the k valid keys with the highest inner product q·key.

    queries (B, L, H, D), keys (B, C, H, D), valid (B, C), k <= C. Exact: the store is scored
    chunk_size entries at a time and merged into a running top-k. Where fewer than k entries
    are valid the rest of the indices point at empty places (check `valid` at them).
    """
    best_scores = best_index = None
    for start in range(0, keys.shape[1], chunk_size):
        chunk = keys[:, start:start + chunk_size]
        scores = torch.einsum("blhd,bchd->blhc", queries, chunk)
        scores = scores.masked_fill(~valid[:, None, None, start:start + chunk.shape[1]], float("-inf"))
        index = torch.arange(start, start + chunk.shape[1], device=keys.device).expand_as(scores)
        if best_scores is not None:
            scores, index = torch.cat([best_scores, scores], dim=-1), torch.cat([best_index, index], dim=-1)
        top = scores.topk(min(k, scores.shape[-1]), dim=-1)
        best_scores, best_index = top.values, index.gather(-1, top.indices)
    return best_index


def gather_entries(store: Tensor, index: Tensor) -> Tensor:
    """store (B, C, H, D), index (B, L, H, k) -> entries (B, L, k, H, D), differentiable in store."""
    batch, length, heads, k = index.shape
    by_head = store.transpose(1, 2)                                   # (B, H, C, D)
    flat = index.permute(0, 2, 1, 3).reshape(batch, heads, length * k, 1)
    picked = by_head.gather(2, flat.expand(-1, -1, -1, store.shape[-1]))
    return picked.view(batch, heads, length, k, -1).permute(0, 2, 3, 1, 4)


def retrieved_attention(q: Tensor, keys: Tensor, values: Tensor, present: Tensor, backend: str) -> Tensor:
    """Each query head attends over its own retrieved entries: (B, L, H, D).

    q (B, L, H, D); keys, values (B, L, k, H, D); present (B, L, k, H) bool (empty places
    take no weight). memory_read attends every query of a sample over the same slots; with
    the L axis folded into the batch, each query is its own sample and its k entries its
    slots, so the shapes fit. memory_read has no mask: an extra feature column carries it
    (1 in the query, 0 or EMPTY_SCORE in the key, 0 in the value), with the scale applied to
    the query beforehand so that the column enters the scores unscaled.
    """
    batch, length, k, heads, head_dim = keys.shape
    folded = lambda t: t.reshape(batch * length, -1, heads, t.shape[-1])  # noqa: E731
    mask_column = torch.where(present, 0.0, EMPTY_SCORE).to(q.dtype).unsqueeze(-1)
    q_aug = torch.cat([q * head_dim ** -0.5, torch.ones_like(q[..., :1])], dim=-1)
    k_aug = torch.cat([keys, mask_column], dim=-1)
    v_aug = torch.cat([values, torch.zeros_like(mask_column)], dim=-1)
    out = memory_read(folded(q_aug), folded(k_aug), folded(v_aug), scale=1.0, backend=backend)
    return out[..., :head_dim].view(batch, length, heads, head_dim)


def write_order(valid: Tensor, real: Tensor, capacity: int) -> Tensor:
    """(B, capacity) positions in [store; segment] that form the next store: the newest
    `capacity` valid entries in order of arrival, empty places first (a stable sort puts the
    invalid positions before the valid ones, each group in its own order)."""
    present = torch.cat([valid, real], dim=1)
    return torch.sort(present.to(torch.uint8), dim=1, stable=True).indices[:, -capacity:]


class KVMemoryAttention(nn.Module):
    """Local causal attention and attention over retrieved store entries, mixed by a per-head gate."""

    def __init__(self, cfg: KVMemoryConfig):
        super().__init__()
        self.n_heads, self.top_k, self.chunk_size, self.backend = cfg.n_heads, cfg.top_k, cfg.chunk_size, cfg.backend
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.gate = nn.Parameter(torch.zeros(cfg.n_heads))
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, mask: Tensor, keys: Tensor, values: Tensor, valid: Tensor):
        """x (B, L, d) normalised; mask (B or 1, 1, L, L); the store (B, C, H, D) x 2 and valid (B, C).

        Returns (output (B, L, d), this segment's keys and values (B, L, H, D)).
        """
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).unbind(2)
        local = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0).transpose(1, 2)
        index = top_k_entries(q, keys, valid, self.top_k, self.chunk_size)
        present = valid.gather(1, index.flatten(1)).view(index.shape).transpose(2, 3)  # (B, L, k, H)
        retrieved = retrieved_attention(q, gather_entries(keys, index), gather_entries(values, index), present,
                                        self.backend)
        gate = torch.sigmoid(self.gate)[:, None] * present.any(dim=2)[..., None]
        mixed = local + gate * (retrieved - local)
        return self.out(mixed.flatten(-2)), k, v


class KVMemoryLayer(nn.Module):
    def __init__(self, cfg: KVMemoryConfig):
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(cfg.d_model), KVMemoryAttention(cfg)
        self.ff_norm, self.ff = nn.LayerNorm(cfg.d_model), FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, keys, values, valid):
        attended, k, v = self.attn(self.attn_norm(x), mask, keys, values, valid)
        x = x + self.drop(attended)
        return x + self.drop(self.ff(self.ff_norm(x))), k, v


class KVMemoryTransformer(SegmentRecurrentLM):
    def __init__(self, cfg: KVMemoryConfig):
        super().__init__()
        self.cfg = cfg
        self.memory_layers = sorted(i % cfg.n_layers for i in cfg.memory_layers)
        self.embedding = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.dropout)
        self.layers = nn.ModuleList(
            KVMemoryLayer(cfg) if i in self.memory_layers else
            DecoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cross=False) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = output_head(self.embedding.embed, cfg.head, cfg.cutoffs)

    def initial_state(self, batch_size: int, segment_len: int | None = None) -> KVMemoryState:
        """An empty store (segment_len is accepted for the common model interface)."""
        weight = self.embedding.embed.weight
        heads = self.cfg.n_heads
        shape = (len(self.memory_layers), batch_size, self.cfg.capacity, heads, self.cfg.d_model // heads)
        return KVMemoryState(weight.new_zeros(shape), weight.new_zeros(shape),
                             torch.zeros(batch_size, self.cfg.capacity, dtype=torch.bool, device=weight.device))

    def reset(self, state: KVMemoryState, reset: Tensor) -> KVMemoryState:
        """Rows where `reset` (B,) is True start with an empty store."""
        keep = ~reset
        entries = keep[None, :, None, None, None]
        return KVMemoryState(state.keys * entries, state.values * entries, state.valid & keep[:, None])

    def body(self, tokens: Tensor, state: KVMemoryState, padding_mask: Tensor | None = None,
             reset: Tensor | None = None) -> tuple[Tensor, KVMemoryState]:
        """One segment without the head: hidden states (B, L, d) and the next state.

        tokens (B, L) long; padding_mask (B, L) bool, True = real token; reset (B,) bool.
        """
        if reset is not None:
            state = self.reset(state, reset)
        batch, length = tokens.shape
        real = padding_mask if padding_mask is not None else \
            torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        mask = causal_mask(length, padding_mask, tokens.device)
        order = write_order(state.valid, real, self.cfg.capacity)
        keep = lambda t: t.gather(1, order.view(*order.shape, 1, 1).expand(-1, -1, *t.shape[2:]))  # noqa: E731
        written = real[:, :, None, None]
        x = self.embedding(tokens)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            if i not in self.memory_layers:
                x = layer(x, mask)
                continue
            store = self.memory_layers.index(i)
            x, k, v = layer(x, mask, state.keys[store], state.values[store], state.valid)
            # Padded tokens enter as zeros, so that empty places always hold zeros.
            new_keys.append(keep(torch.cat([state.keys[store], k * written], dim=1)))
            new_values.append(keep(torch.cat([state.values[store], v * written], dim=1)))
        valid = torch.cat([state.valid, real], dim=1).gather(1, order)
        return self.norm(x), KVMemoryState(torch.stack(new_keys), torch.stack(new_values), valid)
