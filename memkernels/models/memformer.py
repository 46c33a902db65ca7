"""Memformer (Wu et al. 2020): an encoder-decoder with an external dynamic memory.

Per segment s_t, with carried state (M_t, E_{t-1}):
* the decoder predicts the next token at every position of s_t, with causal
  self-attention and cross-attention to E_{t-1}, the previous segment's
  encoder output (which carries what the encoder read from memory);
* every encoder layer runs self-attention over s_t, a memory read of M_t
  (`memkernels.memory_read`) and a feed-forward; the last layer's output E_t
  is written into memory by slot attention and biased memory normalization
  (`MemoryWriter`: `slot_attention` + `memory_norm`), giving M_{t+1}.

The carried state, `MemformerState(memory (B, K, d), context (B, L, d),
context_mask (B, L))`, is constant in sequence length. Decisions the paper
leaves open, taken here:
* at a document start the decoder has no previous segment: it cross-attends to
  a learned start vector (broadcast over the segment), and memory starts at
  normalize(bias);
* a sample whose whole segment is padding keeps its state unchanged;
* pre-layer-norm blocks, sinusoidal positions, tied input/output embeddings;
  the output head is the full softmax or an adaptive softmax (`head=`,
  `cutoffs=`; memkernels.models.adaptive).

A segment runs in two parts. `advance` is the memory path (embedding, encoder,
writer): all that produces the next state. `body` runs it, then the decoder,
and returns hidden states; `step` adds the head. MRBP's rollout runs only
`advance`, so the decoder's dropout must not move the global random stream:
the memory path ends with one draw that seeds the decoder's own stream
(`branched_rng`), and the next segment's memory path draws the same numbers
whether the decoder ran or not.
"""
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memkernels.models.adaptive import WT103_CUTOFFS, output_head
from memkernels.models.layers import (
    Attention,
    DecoderLayer,
    FeedForward,
    TokenEmbedding,
    attendable,
    branched_rng,
    causal_mask,
    draw_seed,
)
from memkernels.models.segments import SegmentRecurrentLM
from memkernels.nn import MemoryReader, MemoryWriter


@dataclass(frozen=True)
class MemformerConfig:
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    n_kv_heads: int | None = None   # memory reads' key/value heads (None: n_heads; fewer: grouped-query)
    d_ff: int = 2048
    n_encoder_layers: int = 4
    n_decoder_layers: int = 16
    n_slots: int = 1024
    tau: float = 0.25
    dropout: float = 0.1
    backend: str = "auto"
    head: str = "full"              # "full" softmax or "adaptive" softmax over `cutoffs`
    cutoffs: tuple[int, ...] = ()


def memformer_wt103(**overrides) -> MemformerConfig:
    """The paper's WikiText-103 model: 4 encoder + 16 decoder layers, d 512, 1024 slots,
    with Transformer-XL's WikiText-103 head: adaptive softmax, cutoffs 20k/40k/200k, tied."""
    base = MemformerConfig(vocab_size=267_735, head="adaptive", cutoffs=WT103_CUTOFFS)
    return replace(base, **overrides)


def memformer_mnist(**overrides) -> MemformerConfig:
    """The paper's MNIST image model: 4 encoder + 8 decoder layers, d 128, 64 slots."""
    base = MemformerConfig(vocab_size=256, d_model=128, n_heads=4, d_ff=512, n_decoder_layers=8, n_slots=64)
    return replace(base, **overrides)


def _where_rows(take_new: Tensor, new: NamedTuple, old: NamedTuple):
    """Per sample (B,) choose between two states, field by field."""
    pick = lambda a, b: torch.where(take_new.view(-1, *[1] * (a.dim() - 1)), a, b)  # noqa: E731
    return type(new)(*(pick(a, b) for a, b in zip(new, old)))


class MemformerState(NamedTuple):
    memory: Tensor        # (B, K, d): M_t
    context: Tensor       # (B, L, d): E_{t-1}, the previous segment's encoder output
    context_mask: Tensor  # (B, L) bool: its real tokens


class EncoderLayer(nn.Module):
    """Self-attention over the segment, memory read, feed-forward."""

    def __init__(self, cfg: MemformerConfig):
        super().__init__()
        d = cfg.d_model
        self.self_norm, self.self_attn = nn.LayerNorm(d), Attention(d, cfg.n_heads, cfg.dropout)
        self.read_norm = nn.LayerNorm(d)
        self.reader = MemoryReader(d, cfg.n_heads, cfg.n_kv_heads, backend=cfg.backend)
        self.ff_norm, self.ff = nn.LayerNorm(d), FeedForward(d, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, memory, key_mask):
        h = self.self_norm(x)
        x = x + self.drop(self.self_attn(h, h, key_mask))
        x = x + self.drop(self.reader(self.read_norm(x), memory))
        return x + self.drop(self.ff(self.ff_norm(x)))


class Memformer(SegmentRecurrentLM):
    def __init__(self, cfg: MemformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embedding = TokenEmbedding(cfg.vocab_size, d, cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.writer = MemoryWriter(d, cfg.n_heads, cfg.n_slots, tau=cfg.tau, backend=cfg.backend)
        self.decoder = nn.ModuleList(
            DecoderLayer(d, cfg.n_heads, cfg.d_ff, cfg.dropout, cross=True) for _ in range(cfg.n_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.start_context = nn.Parameter(torch.randn(d) * 0.02)
        self.head = output_head(self.embedding.embed, cfg.head, cfg.cutoffs)
        self.write_observers: list = []

    def initial_state(self, batch_size: int, segment_len: int) -> MemformerState:
        """The state at a document start: normalize(bias) memory and the start context."""
        context = self.start_context.expand(batch_size, segment_len, -1)
        mask = torch.ones(batch_size, segment_len, dtype=torch.bool, device=context.device)
        return MemformerState(self.writer.initial_memory(batch_size), context, mask)

    def reset(self, state: MemformerState, reset: Tensor) -> MemformerState:
        """Per-sample reset at document boundaries: rows where `reset` (B,) is True start afresh."""
        return _where_rows(reset, self.initial_state(reset.shape[0], state.context.shape[1]), state)

    def advance(self, tokens: Tensor, state: MemformerState, padding_mask: Tensor | None = None,
                reset: Tensor | None = None) -> MemformerState:
        """The next state only: embedding, encoder and writer (no decoder, no head)."""
        return self._memory_path(tokens, state, padding_mask, reset)[2]

    def body(self, tokens: Tensor, state: MemformerState, padding_mask: Tensor | None = None,
             reset: Tensor | None = None) -> tuple[Tensor, MemformerState]:
        """One segment without the head: hidden states (B, L, d) for the next token, and the next state."""
        x, state, next_state, decoder_seed = self._memory_path(tokens, state, padding_mask, reset)
        with branched_rng(decoder_seed, tokens.device):
            h = x
            self_mask = causal_mask(tokens.shape[1], padding_mask, tokens.device)
            cross_mask = attendable(state.context_mask)[:, None, None, :]
            for layer in self.decoder:
                h = layer(h, self_mask, state.context, cross_mask)
        return self.decoder_norm(h), next_state

    def _memory_path(self, tokens, state, padding_mask, reset):
        """(embedded tokens, state after reset, next state, the decoder's seed)."""
        if reset is not None:
            state = self.reset(state, reset)
        batch, length = tokens.shape
        if length != state.context.shape[1]:
            raise ValueError(f"tokens has segment length {length}, but the state was made for segments of "
                             f"{state.context.shape[1]}: pad the last segment and pass padding_mask")
        real = padding_mask if padding_mask is not None else \
            torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        x = self.embedding(tokens)
        key_mask = attendable(real)[:, None, None, :]
        e = x
        for layer in self.encoder:
            e = layer(e, state.memory, key_mask)
        e = self.encoder_norm(e)
        memory = self.writer(state.memory, e, key_padding_mask=padding_mask)
        for observe in self.write_observers:
            observe(self.writer, state.memory, e, padding_mask)
        next_state = _where_rows(real.any(dim=-1), MemformerState(memory, e, real), state)
        return x, state, next_state, draw_seed(self.training and self.cfg.dropout > 0)
