"""Segments of a token stream, and the language-model loss over them.

Shared by the recurrent models' full-sequence loss and the training schemes
of `memkernels.training`.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Segment(NamedTuple):
    inputs: Tensor                # (B, L) long
    targets: Tensor               # (B, L) long, -100 where no loss is taken
    padding_mask: Tensor | None   # (B, L) bool, True = real token


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
            x, y = F.pad(x, (0, missing), value=0), F.pad(y, (0, missing), value=-100)
        segments.append(Segment(x, y, mask))
    return segments


def target_count(segments) -> int:
    return sum(int((s.targets != -100).sum()) for s in segments)


def segment_loss(logits: Tensor, targets: Tensor, total: int) -> Tensor:
    logits = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets.flatten(), ignore_index=-100, reduction="sum") / total


def rollout_loss(model, segments: list[Segment], state):
    """(loss over all target tokens, final state) of running `segments` in one graph."""
    total = target_count(segments)
    loss = 0.0
    for seg in segments:
        logits, state = model.step(seg.inputs, state, seg.padding_mask)
        loss = loss + segment_loss(logits, seg.targets, total)
    return loss, state


def stream_loss(model, tokens: Tensor, segment_len: int) -> Tensor:
    """Mean next-token cross-entropy of a (B, N) stream, segment by segment, in one graph."""
    state = model.initial_state(tokens.shape[0], segment_len)
    return rollout_loss(model, split_segments(tokens, segment_len), state)[0]
