"""Transformer building blocks shared by the reference models.

Pre-layer-norm residual blocks (stable without warm-up at small scale),
sinusoidal positions, and attention through `F.scaled_dot_product_attention`
with boolean masks (True = may attend).
"""
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoid(positions: Tensor, d_model: int) -> Tensor:
    """(N,) float positions -> (N, d_model) sinusoidal encodings."""
    inv_freq = torch.exp(torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
                         * (-math.log(10000.0) / d_model))
    angles = positions.float()[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def attendable(mask: Tensor) -> Tensor:
    """A key mask where rows with no real key may attend to every key instead.

    Such rows belong to fully padded inputs: their outputs are never used, but
    softmax over nothing would put NaN into the batch.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


class Attention(nn.Module):
    """Multi-head attention of x over `source` (self-attention when source is x)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, source: Tensor, mask: Tensor | None = None) -> Tensor:
        """mask: bool, broadcastable to (B, H, L_x, L_source)."""
        heads = lambda t: t.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)  # noqa: E731
        q = heads(self.query(x))
        k, v = (heads(t) for t in self.key_value(source).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(attended.transpose(1, 2).flatten(-2))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class DecoderLayer(nn.Module):
    """Causal self-attention, optional cross-attention to a context, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, cross: bool):
        super().__init__()
        self.self_norm, self.self_attn = nn.LayerNorm(d_model), Attention(d_model, n_heads, dropout)
        self.cross_norm = nn.LayerNorm(d_model) if cross else None
        self.cross_attn = Attention(d_model, n_heads, dropout) if cross else None
        self.ff_norm, self.ff = nn.LayerNorm(d_model), FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, self_mask, context=None, context_mask=None):
        h = self.self_norm(x)
        x = x + self.drop(self.self_attn(h, h, self_mask))
        if self.cross_attn is not None:
            x = x + self.drop(self.cross_attn(self.cross_norm(x), context, context_mask))
        return x + self.drop(self.ff(self.ff_norm(x)))


def causal_mask(length: int, padding_mask: Tensor | None, device) -> Tensor:
    """(B or 1, 1, L, L) bool: causal, and padded keys hidden."""
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if padding_mask is not None:
        mask = attendable(mask & padding_mask[:, None, None, :])
    return mask


def scaled_embedding(vocab_size: int, d_model: int) -> nn.Embedding:
    """N(0, 1/d) weights: times sqrt(d) they enter at unit scale, and as the tied output
    projection they start with logits of unit scale rather than sqrt(d)."""
    embed = nn.Embedding(vocab_size, d_model)
    nn.init.normal_(embed.weight, std=d_model ** -0.5)
    return embed


class TokenEmbedding(nn.Module):
    """Scaled token embedding plus sinusoidal positions within the segment."""

    def __init__(self, vocab_size: int, d_model: int, dropout: float):
        super().__init__()
        self.embed = scaled_embedding(vocab_size, d_model)
        self.scale = d_model ** 0.5
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = sinusoid(torch.arange(tokens.shape[1], device=tokens.device), self.embed.embedding_dim)
        return self.drop(self.embed(tokens) * self.scale + positions.to(self.embed.weight.dtype))


def draw_seed(needed: bool) -> int | None:
    """One draw of the CPU generator to seed a branch's own stream (None when it needs no randomness).

    A draw from the CPU generator is a host-side computation: no device sync.
    """
    return int(torch.randint(0, 2**62, ())) if needed else None


@contextmanager
def branched_rng(seed: int | None, device: torch.device):
    """Run a block on its own random stream, seeded by `seed`, leaving the global streams as they were.

    The code after the block then draws the same random numbers whether the
    block ran or not. seed None: the block needs no randomness and runs as is.
    """
    if seed is None:
        yield
        return
    index = (device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else None
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        torch.default_generator.manual_seed(seed)
        if index is not None:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
