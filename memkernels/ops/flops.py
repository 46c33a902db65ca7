"""FLOP formulas for the custom ops, so `torch.utils.flop_counter.FlopCounterMode` counts them.

A custom op is opaque to the flop counter: without these, a model's memory
reads and writes would count as zero FLOPs whatever backend runs them. The
numbers are docs/SPEC.md's cost model (multiply and add counted separately); a
backward is 2.5x its forward (five matrix products against two), memory_norm's
about 2x.
"""
import torch
from torch.utils.flop_counter import register_flop_formula

from memkernels.ops import memory_norm, memory_read, slot_attention  # noqa: F401  (the ops must be defined first)

_ops = torch.ops.memkernels


def _memory_read(q_shape, k_shape):
    batch, tokens, heads, head_dim = q_shape
    return 4 * batch * heads * tokens * k_shape[1] * head_dim


def _slot_attention(q_shape, k_tok_shape):
    batch, slots, heads, head_dim = q_shape
    return 4 * batch * heads * slots * (k_tok_shape[1] + 1) * head_dim


def _memory_norm(m_shape):
    batch, slots, width = m_shape
    return 4 * batch * slots * width


@register_flop_formula(_ops.memory_read)
def _(q, k, v, scale, backend, *, out_shape=None, **kwargs):
    return _memory_read(q, k)


@register_flop_formula(_ops.memory_read_backward)
def _(dout, q, k, *args, out_shape=None, **kwargs):
    return 5 * _memory_read(q, k) // 2


@register_flop_formula(_ops.slot_attention)
def _(q, k, v, k_tok, *args, out_shape=None, **kwargs):
    return _slot_attention(q, k_tok)


@register_flop_formula(_ops.slot_attention_backward)
def _(dout, q, k, v, k_tok, *args, out_shape=None, **kwargs):
    return 5 * _slot_attention(q, k_tok) // 2


@register_flop_formula(_ops.memory_norm)
def _(m, *args, out_shape=None, **kwargs):
    return _memory_norm(m)


@register_flop_formula(_ops.memory_norm_backward)
def _(dout, *args, out_shape=None, **kwargs):
    return 2 * _memory_norm(dout)
