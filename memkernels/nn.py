"""Drop-in modules for a memory-augmented transformer (docs/SPEC.md, `memkernels.nn`).

Memory is a (B, K, W) tensor of K slots of width W = d_model. The reader is
used in every encoder layer, the writer (slot attention + biased memory
normalization) at the last one. Every module takes `backend=` and passes it
to the ops; `MemoryWriter` with an attention-only backend (`"sdpa"`) leaves its
normalization on `"auto"`.
"""
import torch
from torch import Tensor, nn

from memkernels import reference
from memkernels.capabilities import COMPOSITE_BACKENDS
from memkernels.ops.memory_norm import memory_norm
from memkernels.ops.memory_read import memory_read
from memkernels.ops.slot_attention import slot_attention


def _head_dim(d_model: int, n_heads: int) -> int:
    if n_heads < 1 or d_model % n_heads != 0:
        raise ValueError(f"d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})")
    return d_model // n_heads


class MemoryReader(nn.Module):
    """Tokens read the memory by cross-attention: Q = x W_Q, K = M W_K, V = M W_V.

    forward(x (B, L, d_model), memory (B, K, d_model)) -> (B, L, d_model), after
    the output projection (no residual: the layer around it adds that).
    `n_kv_heads` (a divisor of n_heads, default n_heads) gives the slots fewer key/value
    heads than the tokens have query heads: grouped-query reads, multi-query at 1, which
    divide the slots' projected keys and values by n_heads / n_kv_heads.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, backend: str = "auto"):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads)
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if self.n_kv_heads < 1 or n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must be a positive divisor of n_heads ({n_heads})")
        self.backend = backend
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, self.n_kv_heads * self.head_dim)
        self.value = nn.Linear(d_model, self.n_kv_heads * self.head_dim)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        q = self.query(x).unflatten(-1, (self.n_heads, self.head_dim))
        k = self.key(memory).unflatten(-1, (self.n_kv_heads, self.head_dim))
        v = self.value(memory).unflatten(-1, (self.n_kv_heads, self.head_dim))
        return self.out(memory_read(q, k, v, backend=self.backend).flatten(-2))


class BiasedMemoryNorm(nn.Module):
    """m <- normalize(m + bias) per slot: forgetting towards the learnable bias direction.

    The bias is initialised N(0, 1/width), so each slot's bias has norm about 1
    and the initial memory normalize(bias) is a random point on the unit sphere;
    training then sets each slot's forgetting speed through the bias norm.
    """

    def __init__(self, n_slots: int, width: int, *, eps: float = 1e-12, backend: str = "auto"):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(n_slots, width) / width ** 0.5)
        self.eps, self.backend = eps, backend

    def forward(self, memory: Tensor) -> Tensor:
        return memory_norm(memory, self.bias, eps=self.eps, backend=self.backend)

    def initial_memory(self, batch_size: int) -> Tensor:
        """normalize(bias) for every sample: (batch_size, K, W).

        Returned as a batch-broadcast view (stride 0 over the batch) that carries
        the gradient to the bias; clone it before writing into it in place.
        """
        zero = self.bias.new_zeros(1, *self.bias.shape)
        return self(zero).expand(batch_size, -1, -1)


class MemoryWriter(nn.Module):
    """Slot attention over [own slot; segment tokens], then biased memory normalization.

    Q_m = M W_Q, K_m = M W_K, K_x = x W_K (W_K shared between slots and tokens),
    V_x = x W_V, and the slot's own value is the raw slot (split into heads),
    as in the paper. forward(memory (B, K, d), x (B, L, d), key_padding_mask
    (B, L) bool or None) -> next memory (B, K, d), every slot of unit norm.
    """

    def __init__(self, d_model: int, n_heads: int, n_slots: int, *, tau: float = 0.25,
                 eps: float = 1e-12, backend: str = "auto"):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads)
        self.tau, self.backend = tau, backend
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.norm = BiasedMemoryNorm(n_slots, d_model, eps=eps,
                                     backend="auto" if backend in COMPOSITE_BACKENDS else backend)

    def forward(self, memory: Tensor, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        heads = (self.n_heads, self.head_dim)
        q = self.query(memory).unflatten(-1, heads)
        k = self.key(memory).unflatten(-1, heads)
        k_tok = self.key(x).unflatten(-1, heads)
        v_tok = self.value(x).unflatten(-1, heads)
        updated = slot_attention(
            q, k, memory.unflatten(-1, heads), k_tok, v_tok,
            tau=self.tau, key_padding_mask=key_padding_mask, backend=self.backend,
        )
        return self.norm(updated.flatten(-2))

    def initial_memory(self, batch_size: int) -> Tensor:
        return self.norm.initial_memory(batch_size)

    @torch.no_grad()
    def self_weight(self, memory: Tensor, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """(B, K, H) float32: the attention weight each slot keeps on itself when writing.

        The diagnostic of the paper's Figure 6 (near 1: the slot retains, near 0:
        it is rewritten). Computed with the reference op, off the training path.
        """
        heads = (self.n_heads, self.head_dim)
        q = self.query(memory).unflatten(-1, heads)
        k = self.key(memory).unflatten(-1, heads)
        scale = self.head_dim ** -0.5 / self.tau
        _, lse = reference.slot_attention_forward(
            q, k, memory.unflatten(-1, heads), self.key(x).unflatten(-1, heads),
            self.value(x).unflatten(-1, heads), key_padding_mask, scale)
        own_score = (q.float() * k.float()).sum(-1) * scale
        return torch.exp(own_score - lse.float().transpose(1, 2))
