"""A decoder with a Differentiable Neural Computer memory (Graves et al. 2016) as controller interface.

The decoder's hidden state after layer `memory_layer` is the controller: at
every token t its normalised state h_t emits, through one linear map, a write
key k^w with strength beta^w, an erase vector e, a write vector a, a write gate
g^w, an allocation gate g^a, and R read keys k^r_i with strengths beta^r_i
(strengths 1 + softplus, gates and erase sigmoid). Then, per token, as the DNC
defines it, on the N x W memory M and the usage u (both start at zero):

    C(M, k, beta)[j] = softmax_j(beta cos(k, M[j]))                content weights
    phi = argsort(u) ascending;  a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]   allocation
    w^w = g^w (g^a a + (1 - g^a) C(M, k^w, beta^w))                write weights
    M  <- M o (1 - w^w e^T) + w^w a^T                               erase, then add
    u  <- u + w^w - u o w^w                                         usage
    r_i = C(M, k^r_i, beta^r_i)^T M                                 reads, after the write

and h_t gains read_proj([r_1 .. r_R]). Cosines are formed from rows normalised
by `memkernels.memory_norm` (with a zero bias and eps 1e-6, DNC's epsilon); the
reads are `memkernels.memory_read` with the read heads as its queries, beta
folded into them (q_i = beta_i k^r_i/|k^r_i|, slot keys M/|M|, values M,
scale 1). The write weights need the content weights themselves, which
memory_read does not return, so they are formed directly from the same
normalised rows. Left out of the DNC: the temporal link matrix and the free
gates (reads do not free slots), as in the seed design this follows.

Per token the write must finish before the next token's allocation, so the
recurrence is a loop over the segment's tokens (the decoder layers themselves
run over the whole segment at once). A padded token neither writes nor moves
usage; a sample whose whole segment is padding keeps its state; `reset`
zeroes memory and usage of the rows it marks.

Optional loss terms (the seed's), added by `forward(tokens, segment_len)` with
weights `routing_weight` and `entropy_weight`, averaged over real tokens:
* routing: KL(p_memory || p_no_memory).detach() * (1 - g^w): the write gate is
  pushed open where the reads change the next-token distribution (p_no_memory:
  the same hidden state without the reads);
* entropy: the entropy of the write weights w^w / sum(w^w), divided by log N:
  diffuse writes cost more.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memkernels.models.adaptive import output_head
from memkernels.models.layers import DecoderLayer, TokenEmbedding, causal_mask
from memkernels.models.segments import SegmentRecurrentLM, split_segments
from memkernels.ops.memory_norm import memory_norm
from memkernels.ops.memory_read import memory_read

COSINE_EPS = 1e-6
# DNC keeps usage off exact 0 and 1 before sorting it: the allocation's product stays informative.
USAGE_EPS = 1e-6


@dataclass(frozen=True)
class DNCConfig:
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_layers: int = 6
    memory_layer: int = -1        # the reads are added after this layer (negative: from the end)
    n_slots: int = 64             # N
    slot_width: int = 128         # W
    n_reads: int = 4              # R
    dropout: float = 0.1
    backend: str = "auto"         # memkernels backend of memory_norm and memory_read
    head: str = "full"
    cutoffs: tuple[int, ...] = ()
    routing_weight: float = 0.0   # the seed's routing loss term, in forward()
    entropy_weight: float = 0.0   # the seed's write-entropy loss term, in forward()

    def __post_init__(self):
        if not -self.n_layers <= self.memory_layer < self.n_layers:
            raise ValueError(f"memory_layer must be in -{self.n_layers}..{self.n_layers - 1}, got {self.memory_layer}")
        for name in ("n_slots", "slot_width", "n_reads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class DNCState(NamedTuple):
    memory: Tensor  # (B, N, W)
    usage: Tensor   # (B, N), in [0, 1]


def unit_rows(x: Tensor, backend: str) -> Tensor:
    """x (B, K, W) with every row divided by max(|row|, COSINE_EPS), by memory_norm with a zero bias."""
    return memory_norm(x, x.new_zeros(x.shape[1:]), eps=COSINE_EPS, backend=backend)


def content_weights(unit_keys: Tensor, strengths: Tensor, unit_memory: Tensor) -> Tensor:
    """softmax_j(beta_i cos(k_i, M[j])) from unit keys (B, R, W) and unit memory rows (B, N, W)
    (`unit_rows`); strengths (B, R) -> (B, R, N)."""
    return torch.softmax(strengths[..., None] * torch.einsum("brw,bnw->brn", unit_keys, unit_memory), dim=-1)


def content_read(unit_keys: Tensor, strengths: Tensor, unit_memory: Tensor, memory: Tensor, backend: str) -> Tensor:
    """content_weights(unit_keys, strengths, unit_memory) @ memory, as one memory_read: (B, R, W)."""
    queries = strengths[..., None] * unit_keys
    return memory_read(queries[:, :, None], unit_memory[:, :, None], memory[:, :, None], scale=1.0,
                       backend=backend)[:, :, 0]


def allocation_weights(usage: Tensor) -> Tensor:
    """DNC's allocation weighting (B, N): the least used slots first, each taking what the
    less used ones left. Ties are broken by slot index (a stable sort)."""
    usage = USAGE_EPS + (1 - USAGE_EPS) * usage
    sorted_usage, order = torch.sort(usage, dim=-1, stable=True)
    before = torch.cumprod(torch.cat([torch.ones_like(sorted_usage[:, :1]), sorted_usage[:, :-1]], dim=-1), dim=-1)
    return torch.zeros_like(usage).scatter(-1, order, (1 - sorted_usage) * before)


def erase_and_add(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """M o (1 - w e^T) + w a^T: memory (B, N, W), weights (B, N), erase and add (B, W)."""
    return memory * (1 - weights[:, :, None] * erase[:, None, :]) + weights[:, :, None] * add[:, None, :]


def updated_usage(usage: Tensor, weights: Tensor) -> Tensor:
    return usage + weights - usage * weights


class DNCMemory(nn.Module):
    """The per-token DNC recurrence on controller states; returns projected reads to add to them."""

    def __init__(self, d_model: int, n_slots: int, slot_width: int, n_reads: int, backend: str = "auto"):
        super().__init__()
        self.n_slots, self.width, self.n_reads, self.backend = n_slots, slot_width, n_reads, backend
        # write key, write strength, erase, write vector, write gate, allocation gate, read keys, read strengths
        self.split = (slot_width, 1, slot_width, slot_width, 1, 1, n_reads * slot_width, n_reads)
        self.interface = nn.Linear(d_model, sum(self.split))
        self.read_proj = nn.Linear(n_reads * slot_width, d_model)

    def initial_state(self, batch_size: int, like: Tensor) -> DNCState:
        return DNCState(like.new_zeros(batch_size, self.n_slots, self.width), like.new_zeros(batch_size, self.n_slots))

    def forward(self, controller: Tensor, state: DNCState, real: Tensor):
        """controller (B, L, d), state, real (B, L) bool.

        Returns (reads projected (B, L, d), next state, write weights (B, L, N), write gates (B, L)).
        """
        parts = self.interface(controller).split(self.split, dim=-1)
        write_key, write_strength, erase, add, write_gate, allocation_gate, read_keys, read_strengths = parts
        write_strength, read_strengths = 1 + F.softplus(write_strength), 1 + F.softplus(read_strengths)
        erase, write_gate, allocation_gate = erase.sigmoid(), write_gate.sigmoid(), allocation_gate.sigmoid()
        # The keys do not depend on the memory: normalised for the whole segment at once; the memory
        # is normalised once per token, after its write (for the reads, then the next token's write).
        batch, length = controller.shape[:2]
        write_key = unit_rows(write_key, self.backend)
        read_keys = unit_rows(read_keys.reshape(batch, length * self.n_reads, self.width), self.backend)
        read_keys = read_keys.view(batch, length, self.n_reads, self.width)
        memory, usage = state
        unit_memory = unit_rows(memory, self.backend)
        reads, writes = [], []
        for t in range(length):
            content = content_weights(write_key[:, t, None], write_strength[:, t], unit_memory)[:, 0]
            mixed = allocation_gate[:, t] * allocation_weights(usage) + (1 - allocation_gate[:, t]) * content
            weights = write_gate[:, t] * mixed * real[:, t, None]
            writes.append(weights)
            keep = real[:, t, None]
            memory = torch.where(keep[..., None], erase_and_add(memory, weights, erase[:, t], add[:, t]), memory)
            usage = torch.where(keep, updated_usage(usage, weights), usage)
            unit_memory = unit_rows(memory, self.backend)
            reads.append(content_read(read_keys[:, t], read_strengths[:, t], unit_memory, memory, self.backend))
        projected = self.read_proj(torch.stack(reads, dim=1).flatten(-2))
        return projected, DNCState(memory, usage), torch.stack(writes, dim=1), write_gate[..., 0]


class DNCTransformer(SegmentRecurrentLM):
    def __init__(self, cfg: DNCConfig):
        super().__init__()
        self.cfg = cfg
        self.memory_layer = cfg.memory_layer % cfg.n_layers
        self.embedding = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cross=False) for _ in range(cfg.n_layers))
        self.controller_norm = nn.LayerNorm(cfg.d_model)
        self.memory = DNCMemory(cfg.d_model, cfg.n_slots, cfg.slot_width, cfg.n_reads, cfg.backend)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = output_head(self.embedding.embed, cfg.head, cfg.cutoffs)

    def initial_state(self, batch_size: int, segment_len: int | None = None) -> DNCState:
        """Zero memory and usage (segment_len is accepted for the common model interface)."""
        return self.memory.initial_state(batch_size, self.embedding.embed.weight)

    def reset(self, state: DNCState, reset: Tensor) -> DNCState:
        keep = ~reset
        return DNCState(state.memory * keep[:, None, None], state.usage * keep[:, None])

    def body(self, tokens: Tensor, state: DNCState, padding_mask: Tensor | None = None,
             reset: Tensor | None = None) -> tuple[Tensor, DNCState]:
        """One segment without the head: hidden states (B, L, d) and the next state.

        tokens (B, L) long; padding_mask (B, L) bool, True = real token; reset (B,) bool.
        """
        hidden, state, _ = self._segment(tokens, state, padding_mask, reset, auxiliary=False)
        return hidden, state

    def forward(self, tokens: Tensor, segment_len: int) -> Tensor:
        """Full-sequence training loss, BPTT: mean next-token cross-entropy of (B, N) tokens, plus
        routing_weight x the routing term and entropy_weight x the write-entropy term."""
        state = self.initial_state(tokens.shape[0])
        auxiliary = self.cfg.routing_weight > 0 or self.cfg.entropy_weight > 0
        nll, extra, targets, real_tokens = 0.0, 0.0, 0, 0
        for seg in split_segments(tokens, segment_len):
            hidden, state, terms = self._segment(seg.inputs, state, seg.padding_mask, None, auxiliary)
            nll = nll - self.head.log_prob(hidden, seg.targets).sum()
            targets += int((seg.targets != -100).sum())
            if auxiliary:
                extra = extra + self.cfg.routing_weight * terms["routing"] + self.cfg.entropy_weight * terms["entropy"]
                real_tokens += seg.inputs.numel() if seg.padding_mask is None else int(seg.padding_mask.sum())
        return nll / targets + (extra / real_tokens if auxiliary else 0.0)

    def _segment(self, tokens, state, padding_mask, reset, auxiliary: bool):
        """(hidden, next state, {"routing", "entropy"}: sums over real tokens, when auxiliary)."""
        if reset is not None:
            state = self.reset(state, reset)
        batch, length = tokens.shape
        real = padding_mask if padding_mask is not None else \
            torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        mask = causal_mask(length, padding_mask, tokens.device)
        x = self.embedding(tokens)
        for layer in self.layers[:self.memory_layer + 1]:
            x = layer(x, mask)
        reads, next_state, writes, write_gate = self.memory(self.controller_norm(x), state, real)
        next_state = DNCState(*(torch.where(real.any(dim=1).view(-1, *[1] * (new.dim() - 1)), new, old)
                                for new, old in zip(next_state, state)))
        hidden = self._rest(x + self.drop(reads), mask)
        if not auxiliary:
            return hidden, next_state, None
        p_memory = self.head.logits(hidden).float().log_softmax(-1)
        with torch.no_grad():
            p_plain = self.head.logits(self._rest(x, mask)).float().log_softmax(-1)
            divergence = (p_memory.exp() * (p_memory - p_plain)).sum(-1)
        routing = (divergence * (1 - write_gate) * real).sum()
        spread = writes / writes.sum(-1, keepdim=True).clamp_min(torch.finfo(writes.dtype).tiny)
        entropy = -(spread * spread.clamp_min(torch.finfo(writes.dtype).tiny).log()).sum(-1)
        entropy = (entropy * real).sum() / torch.log(torch.tensor(float(self.cfg.n_slots)))
        return hidden, next_state, {"routing": routing, "entropy": entropy}

    def _rest(self, x, mask):
        for layer in self.layers[self.memory_layer + 1:]:
            x = layer(x, mask)
        return self.norm(x)
