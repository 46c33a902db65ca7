"""Host overhead per call: every public op and backend on tiny shapes, where the work is negligible.

Three modes: `fwd` (no gradient needed), `fwd_grad` (forward with inputs that require grad,
which builds the autograd graph), `fwd_bwd` (forward and `torch.autograd.grad`). Beside the
ops, in the same run: a plain `torch.autograd.Function` over the same reference math (what
a hand-written op would cost; the target for the torch backend is <= 1.15x of it) and, as
the bar a fused op call is held to, `F.scaled_dot_product_attention` (memory_read and
slot_attention) or `F.normalize` (memory_norm) on the same tiny shapes.

    pytest benchmarks/test_overhead.py --benchmark-json=overhead.json
    python -m benchmarks.report overhead.json
"""
import pytest
import torch
import torch.nn.functional as F

import memkernels
from memkernels import reference

from .conftest import DEVICE, backends_here, synchronize

DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
MODES = ("fwd", "fwd_grad", "fwd_bwd")
# (B, L, K, H, D) for the attention ops, (B, K, W) for memory_norm: host cost dominates.
TINY = {"memory_read": (2, 8, 4, 2, 8), "slot_attention": (2, 8, 4, 2, 8), "memory_norm": (2, 4, 16)}


class _PlainMemoryRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale):
        out, lse = reference.memory_read_forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        return *reference.memory_read_backward(dout, *ctx.saved_tensors, ctx.scale), None


class _PlainSlotAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, k_tok, v_tok, scale):
        out, lse = reference.slot_attention_forward(q, k, v, k_tok, v_tok, None, scale)
        ctx.save_for_backward(q, k, v, k_tok, v_tok, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, k_tok, v_tok, out, lse = ctx.saved_tensors
        return *reference.slot_attention_backward(dout, q, k, v, k_tok, v_tok, None, out, lse, ctx.scale), None


class _PlainMemoryNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, bias, eps):
        out, norm = reference.memory_norm_forward(m, bias, eps)
        ctx.save_for_backward(out, norm)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, dout):
        return *reference.memory_norm_backward(dout, *ctx.saved_tensors, ctx.eps), None


def _inputs(op, grad):
    def rand(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=DTYPE).requires_grad_(grad)

    if op == "memory_norm":
        B, K, W = TINY[op]
        return rand(B, K, W), rand(K, W)
    B, L, K, H, D = TINY[op]
    if op == "memory_read":
        return rand(B, L, H, D), rand(B, K, H, D), rand(B, K, H, D)
    return rand(B, K, H, D), rand(B, K, H, D), rand(B, K, H, D), rand(B, L, H, D), rand(B, L, H, D)


def _heads_first(*tensors):
    return [t.transpose(1, 2) for t in tensors]


def _call(op, impl, inputs):
    """A zero-argument function computing the op's output by `impl`."""
    if op == "memory_read":
        q, k, v = inputs
        scale = q.shape[-1] ** -0.5
        return {
            "plain-function": lambda: _PlainMemoryRead.apply(q, k, v, scale),
            "sdpa": lambda: F.scaled_dot_product_attention(*_heads_first(q, k, v), scale=scale),
        }.get(impl) or (lambda: memkernels.memory_read(q, k, v, backend=impl.removeprefix("memkernels-")))
    if op == "slot_attention":
        q, k, v, k_tok, v_tok = inputs
        scale = q.shape[-1] ** -0.5
        return {
            "plain-function": lambda: _PlainSlotAttention.apply(q, k, v, k_tok, v_tok, scale),
            # the bar, not the same math: attention of the slots over the tokens
            "sdpa": lambda: F.scaled_dot_product_attention(*_heads_first(q, k_tok, v_tok), scale=scale),
        }.get(impl) or (lambda: memkernels.slot_attention(q, k, v, k_tok, v_tok,
                                                          backend=impl.removeprefix("memkernels-")))
    m, bias = inputs
    return {
        "plain-function": lambda: _PlainMemoryNorm.apply(m, bias, 1e-12),
        "normalize": lambda: F.normalize(m + bias, dim=-1, eps=1e-12),
    }.get(impl) or (lambda: memkernels.memory_norm(m, bias, backend=impl.removeprefix("memkernels-")))


def _step(op, impl, mode):
    inputs = _inputs(op, grad=mode != "fwd")
    forward = _call(op, impl, inputs)
    if mode != "fwd_bwd":
        return forward
    grad_out = torch.randn_like(forward())
    return lambda: torch.autograd.grad(forward(), inputs, grad_out, allow_unused=True)


def _cases():
    peers = {"memory_read": "sdpa", "slot_attention": "sdpa", "memory_norm": "normalize"}
    for op in TINY:
        for impl in [f"memkernels-{b}" for b in backends_here(DTYPE, op)] + ["plain-function", peers[op]]:
            for mode in MODES:
                yield pytest.param(op, impl, mode, id=f"{op}-{impl}-{mode}")


@pytest.mark.parametrize("op,impl,mode", _cases())
def test_host_overhead(benchmark, op, impl, mode):
    step = _step(op, impl, mode)
    calls = 50  # per round: one synchronisation per 50 calls keeps it out of the figure

    def run():
        for _ in range(calls):
            step()
        synchronize()

    for _ in range(3):
        run()
    benchmark.group = f"overhead {op} {mode} {DTYPE}"
    benchmark.pedantic(run, rounds=30, warmup_rounds=2)
    benchmark.extra_info.update({
        "kind": "overhead", "op": op, "mode": mode, "impl": impl, "shape": list(TINY[op]),
        "dtype": str(DTYPE).removeprefix("torch."), "device": str(DEVICE),
        "median_us_per_call": benchmark.stats.stats.median / calls * 1e6,
        "min_us_per_call": benchmark.stats.stats.min / calls * 1e6,
    })
