"""Segments of a token stream, and the language-model loss over them.

Shared by the recurrent models' full-sequence loss and the training schemes
of `memkernels.training`. The loss is the head's log-likelihood of the targets
(`model.head.log_prob`, from the body's hidden states), so an adaptive head
never forms full-vocabulary scores; what it needs from the host (target counts
per cluster) is fetched for the whole rollout at once, with one sync.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memkernels.models.adaptive import IGNORE


class Segment(NamedTuple):
    inputs: Tensor                # (B, L) long
    targets: Tensor               # (B, L) long, -100 where no loss is taken
    padding_mask: Tensor | None   # (B, L) bool, True = real token


class LossPlan(NamedTuple):
    total: int      # target tokens over the whole rollout: the loss is a mean over them
    counts: list    # per segment: its row of `model.head.target_counts`


def split_segments(tokens: Tensor, segment_len: int) -> list[Segment]:
    """Language-model segments of a (B, N) stream: inputs[t], targets = inputs shifted by one.

    The last segment is padded to `segment_len` (padding_mask False, target -100).
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    segments = []
    for start in range(0, inputs.shape[1], segment_len):
        x, y = inputs[:, start:start + segment_len], targets[:, start:start + segment_len]
        missing = segment_len - x.shape[1]
        mask = None
        if missing:
            mask = F.pad(torch.ones_like(x, dtype=torch.bool), (0, missing), value=False)
            x, y = F.pad(x, (0, missing), value=0), F.pad(y, (0, missing), value=IGNORE)
        segments.append(Segment(x, y, mask))
    return segments


def loss_plan(model, segments: list[Segment]) -> LossPlan:
    """Everything the rollout's loss needs from the host, in one sync."""
    counts = model.head.target_counts(torch.stack([s.targets for s in segments]))
    return LossPlan(sum(sum(row[1:]) for row in counts), counts)


def segment_loss(model, hidden: Tensor, targets: Tensor, counts, total: int) -> Tensor:
    """This segment's share of the rollout's mean negative log-likelihood (at least float32)."""
    return -model.head.log_prob(hidden, targets, counts).sum() / total


def rollout_loss(model, segments: list[Segment], state):
    """(loss over all target tokens, final state) of running `segments` in one graph."""
    plan = loss_plan(model, segments)
    loss = 0.0
    for seg, counts in zip(segments, plan.counts):
        hidden, state = model.body(seg.inputs, state, seg.padding_mask)
        loss = loss + segment_loss(model, hidden, seg.targets, counts, plan.total)
    return loss, state


def stream_loss(model, tokens: Tensor, segment_len: int) -> Tensor:
    """Mean next-token cross-entropy of a (B, N) stream, segment by segment, in one graph."""
    state = model.initial_state(tokens.shape[0], segment_len)
    return rollout_loss(model, split_segments(tokens, segment_len), state)[0]


class SegmentRecurrentLM(nn.Module):
    """What the recurrent models (Memformer, Transformer-XL, the key-value memory, the DNC)
    share: a subclass defines `initial_state(batch_size, segment_len)`, `body(tokens, state,
    padding_mask, reset)` and a `head`; this gives `step` and the full-sequence loss."""

    def forward(self, tokens: Tensor, segment_len: int) -> Tensor:
        """Full-sequence training loss: mean next-token cross-entropy of (B, N) tokens, BPTT."""
        return stream_loss(self, tokens, segment_len)

    def step(self, tokens: Tensor, state, padding_mask: Tensor | None = None, reset: Tensor | None = None):
        """One segment: logits (B, L, vocab) for the next token at every position, and the next
        state. tokens (B, L) long; padding_mask (B, L) bool, True = real token; reset (B,) bool.
        With the adaptive head the logits are log-probabilities."""
        hidden, next_state = self.body(tokens, state, padding_mask, reset)
        return self.head.logits(hidden), next_state
