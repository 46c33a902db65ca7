"""Zipf-distributed token ids: realistic traffic for a frequency-sorted vocabulary.

Word frequencies in text follow Zipf's law, p(rank r) proportional to r^-s with
s near 1, and language-model vocabularies (WikiText-103's included) number
words by frequency, most frequent first. Uniform random ids would send 92% of
the tokens of WikiText-103's 267,735 words past the adaptive softmax's 20,000-word
shortlist; Zipf ids with s = 1 send 20% there, the rest to the shortlist.
"""
import torch


def zipf_tokens(shape, vocab_size: int, exponent: float = 1.0, *, generator: torch.Generator | None = None,
                device=None) -> torch.Tensor:
    """Long tensor of `shape` with id r - 1 drawn with probability proportional to r^-exponent."""
    if vocab_size < 1 or exponent < 0:
        raise ValueError(f"need vocab_size >= 1 and exponent >= 0, got {vocab_size} and {exponent}")
    weights = torch.arange(1, vocab_size + 1, dtype=torch.float64).pow(-exponent)
    cdf = weights.cumsum(0)
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64) * cdf[-1]
    # searchsorted can return vocab_size only if uniform reaches cdf[-1] through rounding: clamp.
    ids = torch.searchsorted(cdf, uniform).clamp(max=vocab_size - 1)
    return ids.to(device)
