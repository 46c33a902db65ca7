"""Synthetic long-range tasks whose answer lies several segments back.

Every sample is `n_segments` segments of `segment_len` tokens. A *source*
segment, `distance` segments before the last one, holds what must be
remembered; the segments between are random filler; the last segment asks
for it. Only the answer tokens are scored (`answer_mask`), so a model that
cannot see `distance` segments back is at chance.

* copy:    source `[SOURCE, a1..aP, filler]`, last `[QUERY, a1..aP, filler]`.
* recall:  source holds key/value pairs `[SOURCE, k1 v1 .. kP vP]`, the last
           segment asks `[QUERY, k_i, v_i]` for a random i: associative recall.
* brackets: source opens P brackets `[SOURCE, ( [ { ...]`; the last segment
           must close them in reverse order `[QUERY, ... } ] )]`.

Token ids: 0 pad, 1 SOURCE, 2 QUERY, then filler ids, then the symbols.
"""
from dataclasses import dataclass

import torch
from torch import Tensor

SOURCE, QUERY = 1, 2
TASKS = ("copy", "recall", "brackets")


@dataclass(frozen=True)
class TaskSpec:
    segment_len: int = 8
    n_segments: int = 5
    payload: int = 3
    n_symbols: int = 8
    n_filler: int = 8

    @property
    def vocab_size(self) -> int:
        return 3 + self.n_filler + self.n_symbols


def make_batch(task: str, spec: TaskSpec, batch: int, distances: Tensor, generator=None):
    """(tokens (B, N + 1), answer_mask (B, N)) for distances (B,) in 1 .. n_segments - 1.

    `answer_mask[b, i]` marks the targets (tokens[:, 1:]) that are scored.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    L, S, P = spec.segment_len, spec.n_segments, spec.payload
    if not 1 + 2 * P <= L:
        raise ValueError(f"segment_len {L} is too short for a payload of {P}")
    first_symbol = 3 + spec.n_filler
    tokens = torch.randint(3, first_symbol, (batch, S * L + 1), generator=generator)
    answer = torch.zeros(batch, S * L + 1, dtype=torch.bool)
    symbols = torch.randint(first_symbol, spec.vocab_size, (batch, 2 * P), generator=generator)
    last = (S - 1) * L
    for b in range(batch):
        start = (S - 1 - int(distances[b])) * L
        tokens[b, start] = SOURCE
        tokens[b, last] = QUERY
        if task == "copy":
            tokens[b, start + 1:start + 1 + P] = symbols[b, :P]
            tokens[b, last + 1:last + 1 + P] = symbols[b, :P]
            answer[b, last + 1:last + 1 + P] = True
        elif task == "recall":
            keys = torch.randperm(spec.n_symbols, generator=generator)[:P] + first_symbol
            pairs = torch.stack([keys, symbols[b, :P]], dim=1).flatten()
            tokens[b, start + 1:start + 1 + 2 * P] = pairs
            pick = int(torch.randint(P, (1,), generator=generator))
            tokens[b, last + 1], tokens[b, last + 2] = keys[pick], symbols[b, pick]
            answer[b, last + 2] = True
        else:
            half = spec.n_symbols // 2
            kinds = torch.randint(half, (P,), generator=generator)
            tokens[b, start + 1:start + 1 + P] = first_symbol + kinds
            tokens[b, last + 1:last + 1 + P] = first_symbol + half + kinds.flip(0)
            answer[b, last + 1:last + 1 + P] = True
    return tokens, answer[:, 1:]
