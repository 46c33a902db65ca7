"""Output heads tied to the input embedding: the full softmax and the adaptive softmax.

Both heads share one interface, so that a model's body (hidden states) and its
head can run and be measured apart:

* `logits(hidden (..., d)) -> (..., V)`: a next-token score for every word
  (what sampling needs); the adaptive head returns log-probabilities.
* `log_prob(hidden (..., d), targets (...), counts=None) -> (...)`: the
  log-likelihood of each target, 0 where the target is -100 (no loss taken).
  What training and perplexity need; the adaptive head computes it without
  forming full-vocabulary scores.
* `target_counts(targets (S, ...)) -> S tuples`: per row, the ignored targets,
  then the targets in each cluster, with one host sync for all S rows. Passing
  a row's tuple as `counts` lets `log_prob` run with no host sync of its own.

Adaptive softmax (Grave et al. 2017), as in Transformer-XL's WikiText-103 recipe
with div_val 1: the vocabulary, sorted by frequency, is cut at `cutoffs` into a
shortlist [0, c_0) and tail clusters [c_0, c_1), ..., [c_{n-1}, V).
    p(v) = p_head(v)                       v in the shortlist
    p(v) = p_head(tail i) * p_i(v)         v in tail i
p_head is one softmax over the shortlist words and one score per tail; p_i is
a softmax over tail i's words. Every cluster has the model width (div_val 1),
so the adaptive input is the one embedding table whose rows also serve as the
output words: the input side needs no code of its own.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100
WT103_CUTOFFS = (20_000, 40_000, 200_000)


def _promoted(t: Tensor) -> Tensor:
    """At least float32: log-softmax in bfloat16 loses the small probabilities."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class FullSoftmax(nn.Module):
    """Scores for every word from the tied embedding: logits = hidden @ E^T."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.weight = embedding.weight

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(hidden, self.weight)

    def log_prob(self, hidden: Tensor, targets: Tensor, counts: Sequence[int] | None = None) -> Tensor:
        """`counts` is accepted for the common interface: one cluster needs no routing."""
        scores = _promoted(self.logits(hidden)).flatten(0, -2)
        return -F.cross_entropy(scores, targets.flatten(), ignore_index=IGNORE, reduction="none").view_as(targets)

    def target_counts(self, targets: Tensor) -> list[tuple[int, int]]:
        """Per row of `targets` (S, ...): (ignored targets, real targets)."""
        ignored = (targets.flatten(1) == IGNORE).sum(1)
        return [(i, targets[0].numel() - i) for i in ignored.tolist()]


class AdaptiveSoftmax(nn.Module):
    """The adaptive softmax over `cutoffs`, tied to `embedding` (div_val 1)."""

    def __init__(self, embedding: nn.Embedding, cutoffs: Sequence[int]):
        super().__init__()
        vocab_size, d_model = embedding.weight.shape
        cutoffs = tuple(int(c) for c in cutoffs)
        if not cutoffs or list(cutoffs) != sorted(set(cutoffs)) or cutoffs[0] <= 0 or cutoffs[-1] >= vocab_size:
            raise ValueError(f"cutoffs must be strictly increasing, between 0 and vocab_size ({vocab_size}) "
                             f"exclusive, and at least one; got {cutoffs}")
        self.weight = embedding.weight
        self.bounds = (0, *cutoffs, vocab_size)
        self.register_buffer("cutoffs", torch.tensor(cutoffs), persistent=False)
        # One head score per tail cluster, at the scale of a word's score.
        self.cluster_weight = nn.Parameter(torch.randn(len(cutoffs), d_model) * d_model ** -0.5)
        self.cluster_bias = nn.Parameter(torch.zeros(len(cutoffs)))

    @property
    def n_clusters(self) -> int:
        return len(self.bounds) - 1

    def _head(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Head scores, (N, c_0) for the shortlist words and (N, n_tails) for the tail clusters, and their
        log-normaliser (N, 1). Left unnormalised: a target's log-probability needs only its own score."""
        words = _promoted(F.linear(hidden, self.weight[:self.bounds[1]]))
        clusters = _promoted(F.linear(hidden, self.cluster_weight, self.cluster_bias))
        norm = torch.logaddexp(words.logsumexp(-1), clusters.logsumexp(-1))[:, None]
        return words, clusters, norm

    def _tail(self, hidden: Tensor, cluster: int) -> Tensor:
        """(N, |tail|) log p_i(v) within tail cluster `cluster` (1-based)."""
        start, end = self.bounds[cluster], self.bounds[cluster + 1]
        return _promoted(F.linear(hidden, self.weight[start:end])).log_softmax(-1)

    def _cluster_of(self, targets: Tensor) -> Tensor:
        """-1 for ignored targets, 0 for the shortlist, i for tail i."""
        return torch.bucketize(targets, self.cutoffs, right=True).masked_fill(targets == IGNORE, -1)

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., V) log-probabilities of every word (at least float32): the factorised distribution in full."""
        flat = hidden.flatten(0, -2)
        words, clusters, norm = self._head(flat)
        clusters = clusters - norm
        parts = [words - norm] + [clusters[:, i - 1, None] + self._tail(flat, i) for i in range(1, self.n_clusters)]
        return torch.cat(parts, dim=-1).view(*hidden.shape[:-1], -1)

    def log_prob(self, hidden: Tensor, targets: Tensor, counts: Sequence[int] | None = None) -> Tensor:
        """log p(target) at every position: the head for every token, tail i only for targets in tail i.

        `counts`: this `targets`' row of `target_counts`; without it they are counted here (one host sync).
        """
        flat, flat_targets = hidden.flatten(0, -2), targets.flatten()
        if counts is None:
            counts = self.target_counts(flat_targets[None])[0]
        cluster = self._cluster_of(flat_targets)
        words, clusters, norm = self._head(flat)
        shortlist = flat_targets.clamp(0, self.bounds[1] - 1)
        log_p = torch.where(cluster <= 0, words.gather(1, shortlist[:, None]).squeeze(1),
                            clusters.gather(1, (cluster - 1).clamp(min=0)[:, None]).squeeze(1)) - norm.squeeze(1)
        # Sorting by cluster puts each group's rows together (ignored, shortlist, tail 1, ...); the
        # counts say where each starts, so every gather has a size known on the host: no sync.
        by_cluster = torch.argsort(cluster, stable=True)
        start = counts[0] + counts[1]
        for i in range(1, self.n_clusters):
            rows = by_cluster[start:start + counts[i + 1]]
            start += counts[i + 1]
            if rows.numel():
                within = self._tail(flat[rows], i).gather(1, (flat_targets[rows] - self.bounds[i])[:, None])
                log_p = log_p.index_put((rows,), log_p[rows] + within.squeeze(1))
        return log_p.masked_fill(cluster < 0, 0.0).view_as(targets)

    def target_counts(self, targets: Tensor) -> list[tuple[int, ...]]:
        """Per row of `targets` (S, ...): (ignored targets, targets in the shortlist, in tail 1, ...)."""
        cluster = self._cluster_of(targets.flatten(1))
        ids = torch.arange(-1, self.n_clusters, device=targets.device)
        counts = (cluster[..., None] == ids).sum(1)  # (S, 1 + n_clusters)
        return [tuple(row) for row in counts.tolist()]


def output_head(embedding: nn.Embedding, kind: str, cutoffs: Sequence[int]) -> nn.Module:
    """The head a model config asks for: "full" or "adaptive" (over `cutoffs`), tied to `embedding`."""
    if kind == "full":
        if cutoffs:
            raise ValueError(f"cutoffs {tuple(cutoffs)} only apply to head='adaptive'; the full head has none")
        return FullSoftmax(embedding)
    if kind == "adaptive":
        return AdaptiveSoftmax(embedding, cutoffs)
    raise ValueError(f"head must be 'full' or 'adaptive', got {kind!r}")
