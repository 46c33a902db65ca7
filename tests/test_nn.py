"""The drop-in modules: shapes, semantics against hand-written formulas, gradients, torch.compile."""
import pytest
import torch
import torch.nn.functional as F

from memkernels.nn import BiasedMemoryNorm, MemoryReader, MemoryWriter

import formulas
from utils import DEVICE, backends_for, gradcheck

D_MODEL, HEADS, SLOTS = 24, 3, 5


def _memory_and_tokens(batch=2, tokens=7):
    torch.manual_seed(0)
    memory = F.normalize(torch.randn(batch, SLOTS, D_MODEL, device=DEVICE), dim=-1)
    return memory, torch.randn(batch, tokens, D_MODEL, device=DEVICE)


def test_reader_is_cross_attention_over_slots():
    reader = MemoryReader(D_MODEL, HEADS).to(DEVICE)
    memory, x = _memory_and_tokens()
    out = reader(x, memory)
    split = lambda t: t.unflatten(-1, (HEADS, D_MODEL // HEADS))  # noqa: E731
    attended = formulas.memory_read(split(reader.query(x)), split(reader.key(memory)),
                                    split(reader.value(memory)), (D_MODEL // HEADS) ** -0.5)
    expected = reader.out(attended.flatten(-2).float())
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("backend", backends_for(torch.float64, grouped=True))
def test_grouped_reader_matches_formula_and_gradcheck(backend, n_kv_heads):
    torch.manual_seed(0)
    reader = MemoryReader(16, 4, n_kv_heads, backend=backend).to(DEVICE, torch.float64)
    assert reader.key.out_features == reader.value.out_features == n_kv_heads * 4
    x = torch.randn(2, 3, 16, device=DEVICE, dtype=torch.float64, requires_grad=True)
    memory = torch.randn(2, 5, 16, device=DEVICE, dtype=torch.float64, requires_grad=True)
    split = lambda t, heads: t.unflatten(-1, (heads, 4))  # noqa: E731
    expected = reader.out(formulas.memory_read(split(reader.query(x), 4), split(reader.key(memory), n_kv_heads),
                                               split(reader.value(memory), n_kv_heads), 0.5).flatten(-2))
    torch.testing.assert_close(reader(x, memory), expected, rtol=1e-12, atol=1e-12)
    assert gradcheck(reader, (x, memory), backend, eps=1e-6, atol=1e-6)


def test_reader_refuses_kv_heads_that_do_not_divide_the_heads():
    with pytest.raises(ValueError, match=r"n_kv_heads \(3\) must be a positive divisor of n_heads \(4\)"):
        MemoryReader(16, 4, 3)


def test_writer_shares_key_projection_and_keeps_slots_on_the_sphere():
    writer = MemoryWriter(D_MODEL, HEADS, SLOTS).to(DEVICE)
    memory, x = _memory_and_tokens()
    new_memory = writer(memory, x)
    split = lambda t: t.unflatten(-1, (HEADS, D_MODEL // HEADS))  # noqa: E731
    updated = formulas.slot_attention(
        split(writer.query(memory)), split(writer.key(memory)), split(memory),
        split(writer.key(x)), split(writer.value(x)), tau=0.25, scale=(D_MODEL // HEADS) ** -0.5,
    )
    expected = formulas.memory_norm(updated.flatten(-2), writer.norm.bias, 1e-12)
    assert new_memory.shape == memory.shape
    torch.testing.assert_close(new_memory.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_memory.norm(dim=-1), torch.ones(2, SLOTS, device=DEVICE))


def test_writer_with_all_tokens_masked_only_forgets():
    writer = MemoryWriter(D_MODEL, HEADS, SLOTS).to(DEVICE)
    memory, x = _memory_and_tokens()
    mask = torch.zeros(2, 7, dtype=torch.bool, device=DEVICE)
    expected = F.normalize(memory + writer.norm.bias, dim=-1)
    torch.testing.assert_close(writer(memory, x, key_padding_mask=mask), expected)


def test_initial_memory_is_normalized_bias_and_trains_the_bias():
    norm = BiasedMemoryNorm(SLOTS, D_MODEL).to(DEVICE)
    memory = norm.initial_memory(3)
    assert memory.shape == (3, SLOTS, D_MODEL)
    torch.testing.assert_close(memory[2], F.normalize(norm.bias, dim=-1))
    memory.sum().backward()
    assert norm.bias.grad is not None and norm.bias.grad.abs().sum() > 0


def test_modules_backpropagate_into_every_parameter():
    reader, writer = MemoryReader(D_MODEL, HEADS).to(DEVICE), MemoryWriter(D_MODEL, HEADS, SLOTS).to(DEVICE)
    x = torch.randn(2, 7, D_MODEL, device=DEVICE, requires_grad=True)
    memory = writer.initial_memory(2)
    for _ in range(2):  # two segments: the second write sees the first's memory
        memory = writer(memory, reader(x, memory))
    memory.square().sum().backward()
    params = [*reader.named_parameters(), *writer.named_parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in params)
    assert x.grad is not None


def test_head_count_must_divide_width():
    with pytest.raises(ValueError, match=r"d_model \(24\) must be a positive multiple of n_heads \(5\)"):
        MemoryReader(24, 5)


class _TinyMemoryLayer(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.reader = MemoryReader(D_MODEL, HEADS, backend=backend)
        self.writer = MemoryWriter(D_MODEL, HEADS, SLOTS, backend=backend)

    def forward(self, x, memory, mask):
        h = x + self.reader(x, memory)
        return h, self.writer(memory, h, key_padding_mask=mask)


@pytest.mark.parametrize("backend", backends_for(torch.float32))
def test_torch_compile_fullgraph_has_no_graph_break(backend):
    torch._dynamo.reset()
    layer = _TinyMemoryLayer(backend).to(DEVICE)
    memory, x = _memory_and_tokens()
    mask = torch.ones(2, 7, dtype=torch.bool, device=DEVICE)
    mask[1, 4:] = False
    compiled = torch.compile(layer, fullgraph=True)
    eager_out = layer(x, memory, mask)
    compiled_out = compiled(x, memory, mask)
    for got, want in zip(compiled_out, eager_out):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    sum(o.sum() for o in compiled_out).backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_flop_counter_counts_the_memory_ops():
    from torch.utils.flop_counter import FlopCounterMode

    import memkernels

    B, L, K, H, D = 2, 5, 7, 3, 8
    q = torch.randn(B, L, H, D, device=DEVICE, requires_grad=True)
    k, v = torch.randn(2, B, K, H, D, device=DEVICE).unbind(0)
    with FlopCounterMode(display=False) as counter:
        memkernels.memory_read(q, k, v, backend="torch").sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    forward = 4 * B * H * L * K * D
    assert counts["memkernels.memory_read"] == forward
    assert counts["memkernels.memory_read_backward"] == 5 * forward // 2
