"""Vanilla Transformer decoder: full causal attention over the whole sequence.

No recurrence and no memory: every token attends to every earlier token, so
cost grows as O(N^2) in the sequence length, the line the recurrent models
are measured against.
"""
from dataclasses import dataclass

from torch import Tensor, nn

from memkernels.models.layers import DecoderLayer, TokenEmbedding, causal_mask


@dataclass(frozen=True)
class VanillaConfig:
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_layers: int = 16
    dropout: float = 0.1


class VanillaTransformer(nn.Module):
    def __init__(self, cfg: VanillaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cross=False) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.embedding.embed.weight

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """tokens (B, N) -> logits (B, N, vocab) for the next token at every position."""
        x = self.embedding(tokens)
        mask = causal_mask(tokens.shape[1], padding_mask, tokens.device)
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(self.norm(x))
