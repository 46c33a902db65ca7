"""DNCTransformer: every addressing step against its formula, the per-token recurrence, gradients, state handling."""
import math

import pytest
import torch
import torch.nn.functional as F

from memkernels.models import DNCConfig, DNCMemory, DNCTransformer, StreamingRunner
from memkernels.models.dnc import (
    USAGE_EPS,
    allocation_weights,
    content_read,
    content_weights,
    erase_and_add,
    unit_rows,
)
from memkernels.models.segments import split_segments

VOCAB, SEG, BATCH = 17, 4, 3
f64 = dict(dtype=torch.float64)


def tiny(dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, d_model=12, n_heads=2, d_ff=24, n_layers=2, memory_layer=0, n_slots=5,
               slot_width=4, n_reads=2, dropout=0.0, backend="torch")
    return DNCTransformer(DNCConfig(**{**cfg, **overrides})).to(dtype)


def cosine_softmax(key, strength, memory):
    """softmax_j(beta * k·M_j / (|k| |M_j|)), one key (W,), memory (N, W), written out."""
    scores = [strength * (key @ row) / (key.norm() * row.norm()) for row in memory]
    return torch.softmax(torch.stack(scores), dim=0)


def test_content_weights_and_read_match_the_cosine_formula():
    torch.manual_seed(1)
    keys, strengths, memory = torch.randn(2, 3, 4, **f64), 1 + torch.rand(2, 3, **f64) * 4, torch.randn(2, 5, 4, **f64)
    unit_keys, unit_memory = unit_rows(keys, "torch"), unit_rows(memory, "torch")
    weights = content_weights(unit_keys, strengths, unit_memory)
    reads = content_read(unit_keys, strengths, unit_memory, memory, "torch")
    for b in range(2):
        for r in range(3):
            want = cosine_softmax(keys[b, r], strengths[b, r], memory[b])
            torch.testing.assert_close(weights[b, r], want)
            torch.testing.assert_close(reads[b, r], want @ memory[b])


def test_content_weights_are_uniform_over_an_empty_memory():
    unit_keys = unit_rows(torch.randn(1, 1, 4, **f64), "torch")
    unit_memory = unit_rows(torch.zeros(1, 5, 4, **f64), "torch")
    weights = content_weights(unit_keys, torch.full((1, 1), 3.0, **f64), unit_memory)
    torch.testing.assert_close(weights, torch.full((1, 1, 5), 0.2, **f64))


def test_allocation_weights_match_the_sorted_product_formula():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.0, 0.0, 1.0, 0.2]], **f64)
    got = allocation_weights(usage)
    for b in range(2):
        u = USAGE_EPS + (1 - USAGE_EPS) * usage[b]
        want, freeness_before = torch.zeros(4, **f64), 1.0
        for j in sorted(range(4), key=lambda i: (u[i].item(), i)):
            want[j] = (1 - u[j]) * freeness_before
            freeness_before = freeness_before * u[j]
        torch.testing.assert_close(got[b], want)
    # by hand, up to USAGE_EPS: the least used slot (1) takes 0.9, then slot 3 0.7 x 0.1, ...
    torch.testing.assert_close(got[0], torch.tensor([0.5 * 0.1 * 0.3, 0.9, 0.1 * 0.1 * 0.3 * 0.5, 0.7 * 0.1], **f64),
                               atol=1e-5, rtol=0)
    assert got[1, 0] > 0.99 and got[1, 1] < 1e-5, "ties go to the lower slot index"


def test_erase_then_add_matches_the_elementwise_formula():
    torch.manual_seed(2)
    memory, weights = torch.randn(2, 3, 4, **f64), torch.rand(2, 3, **f64)
    erase, add = torch.rand(2, 4, **f64), torch.randn(2, 4, **f64)
    got = erase_and_add(memory, weights, erase, add)
    for b in range(2):
        for i in range(3):
            for w in range(4):
                want = memory[b, i, w] * (1 - weights[b, i] * erase[b, w]) + weights[b, i] * add[b, w]
                assert got[b, i, w].item() == pytest.approx(want.item(), rel=1e-12)


def _one_token_by_hand(memory_module, h, memory, usage):
    """DNC step for one token and one sample, from the interface vector, written out."""
    W, R = memory_module.width, memory_module.n_reads
    v = memory_module.interface(h)
    write_key, v = v[:W], v[W:]
    write_strength, v = 1 + math.log1p(math.exp(v[0].item())), v[1:]
    erase, v = torch.sigmoid(v[:W]), v[W:]
    add, v = v[:W], v[W:]
    write_gate, allocation_gate, v = torch.sigmoid(v[0]), torch.sigmoid(v[1]), v[2:]
    read_keys, read_strengths = v[:R * W].view(R, W), 1 + F.softplus(v[R * W:])
    content = cosine_softmax(write_key, write_strength, memory)
    write = write_gate * (allocation_gate * allocation_weights(usage[None])[0] + (1 - allocation_gate) * content)
    memory = memory * (1 - write[:, None] * erase[None]) + write[:, None] * add[None]
    usage = usage + write - usage * write
    reads = torch.stack([cosine_softmax(read_keys[r], read_strengths[r], memory) @ memory for r in range(R)])
    return memory_module.read_proj(reads.flatten()), memory, usage, write


def test_memory_recurrence_matches_the_dnc_step_token_by_token():
    torch.manual_seed(3)
    module = DNCMemory(6, n_slots=4, slot_width=3, n_reads=2, backend="torch").double()
    h = torch.randn(2, 3, 6, **f64)
    memory, usage = torch.randn(2, 4, 3, **f64), torch.rand(2, 4, **f64)
    real = torch.tensor([[True, True, True], [True, False, True]])
    reads, state, writes, _ = module(h, (memory, usage), real)
    for b in range(2):
        m, u = memory[b], usage[b]
        for t in range(3):
            if not real[b, t]:
                assert not writes[b, t].any()
                continue
            read, m, u, w = _one_token_by_hand(module, h[b, t], m, u)
            torch.testing.assert_close(reads[b, t], read)
            torch.testing.assert_close(writes[b, t], w)
        torch.testing.assert_close(state.memory[b], m)
        torch.testing.assert_close(state.usage[b], u)


def test_memory_recurrence_gradcheck_float64():
    torch.manual_seed(4)
    module = DNCMemory(4, n_slots=3, slot_width=2, n_reads=2, backend="torch").double()
    h = torch.randn(1, 3, 4, **f64, requires_grad=True)
    memory = torch.randn(1, 3, 2, **f64, requires_grad=True)
    usage = torch.tensor([[0.2, 0.7, 0.4]], **f64, requires_grad=True)
    real = torch.ones(1, 3, dtype=torch.bool)

    def run(h, memory, usage):
        reads, state, writes, _ = module(h, (memory, usage), real)
        return reads, state.memory, state.usage, writes

    assert torch.autograd.gradcheck(run, (h, memory, usage))


def test_whole_model_gradcheck_float64_with_the_entropy_term():
    # The routing term's KL is a constant to autograd by design (a stop-gradient weight on the gate),
    # so a numerical derivative of it disagrees; test_loss_terms_match_their_formulas covers it.
    model = tiny(torch.float64, d_model=4, d_ff=8, n_layers=1, n_slots=3, slot_width=2, entropy_weight=0.2)
    tokens = torch.randint(0, VOCAB, (2, 2 * 3 + 1), generator=torch.Generator().manual_seed(5))
    name = "memory.interface.weight"

    def loss(weight):
        return torch.func.functional_call(model, {name: weight}, (tokens, 3))

    weight = model.memory.interface.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (weight,), fast_mode=True)


def test_loss_terms_match_their_formulas():
    model = tiny(torch.float64, routing_weight=0.3, entropy_weight=0.2)
    stream = torch.randint(0, VOCAB, (BATCH, SEG + 1), generator=torch.Generator().manual_seed(6))
    tokens, targets = stream[:, :-1], stream[:, 1:]
    state = model.initial_state(BATCH)
    x = model.embedding(tokens)
    x = model.layers[0](x, torch.ones(SEG, SEG, dtype=torch.bool).tril()[None, None])
    reads, _, writes, gate = model.memory(model.controller_norm(x), state, torch.ones(BATCH, SEG, dtype=torch.bool))
    with_reads = model.norm(model.layers[1](x + reads, torch.ones(SEG, SEG, dtype=torch.bool).tril()[None, None]))
    without = model.norm(model.layers[1](x, torch.ones(SEG, SEG, dtype=torch.bool).tril()[None, None]))
    p, q = model.head.logits(with_reads).softmax(-1), model.head.logits(without).softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    spread = writes / writes.sum(-1, keepdim=True)
    entropy = -(spread * spread.log()).sum(-1) / math.log(5)
    nll = F.cross_entropy(model.head.logits(with_reads).flatten(0, 1), targets.flatten())
    want = nll + (0.3 * (kl * (1 - gate)).sum() + 0.2 * entropy.sum()) / (BATCH * SEG)
    torch.testing.assert_close(model(stream, SEG), want)


def test_streaming_runner_gives_the_full_sequence_loss():
    model = tiny().eval()
    stream = torch.randint(0, VOCAB, (BATCH, 4 * SEG - 2), generator=torch.Generator().manual_seed(7))
    runner = StreamingRunner(model, BATCH, SEG, graphs=False)
    total, count = 0.0, 0
    for seg in split_segments(stream, SEG):
        logits = runner(seg.inputs, padding_mask=seg.padding_mask)
        total += F.cross_entropy(logits.flatten(0, 1), seg.targets.flatten(), reduction="sum")
        count += int((seg.targets != -100).sum())
    with torch.no_grad():
        torch.testing.assert_close(model(stream, SEG), total / count)


def test_reset_matches_a_fresh_start_per_sample():
    model = tiny().eval()
    generator = torch.Generator().manual_seed(8)
    first, second = (torch.randint(0, VOCAB, (BATCH, SEG), generator=generator) for _ in range(2))
    _, state = model.step(first, model.initial_state(BATCH))
    assert state.usage.min() > 0
    logits, after = model.step(second, state, reset=torch.tensor([False, True, False]))
    fresh_logits, fresh_after = model.step(second[1:2], model.initial_state(1))
    torch.testing.assert_close(logits[1:2], fresh_logits)
    for got, want in zip(after, fresh_after):
        torch.testing.assert_close(got[1:2], want)
    continued, _ = model.step(second[:1], type(state)(*(t[:1] for t in state)))
    torch.testing.assert_close(logits[:1], continued)


def test_padding_never_changes_real_outputs_and_empty_segments_keep_state():
    model = tiny().eval()
    generator = torch.Generator().manual_seed(9)
    _, state = model.step(torch.randint(0, VOCAB, (BATCH, SEG), generator=generator), model.initial_state(BATCH))
    x = torch.randint(0, VOCAB, (BATCH, SEG), generator=generator)
    mask = torch.ones(BATCH, SEG, dtype=torch.bool)
    mask[1, 2:] = False
    mask[2] = False
    logits, new_state = model.step(x, state, padding_mask=mask)
    logits_garbage, state_garbage = model.step(x.masked_fill(~mask, 5), state, padding_mask=mask)
    torch.testing.assert_close(logits[mask], logits_garbage[mask])
    for new, garbage, old in zip(new_state, state_garbage, state):
        assert torch.equal(new, garbage)
        assert torch.equal(new[2], old[2])
    # row 1 after two real tokens equals a segment of just those two tokens
    _, short = model.step(x[1:2, :2], type(state)(*(t[1:2] for t in state)))
    for got, want in zip(new_state, short):
        torch.testing.assert_close(got[1:2], want)


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="memory_layer must be in -2..1"):
        DNCConfig(vocab_size=5, n_layers=2, memory_layer=2)
    with pytest.raises(ValueError, match="n_reads must be positive"):
        DNCConfig(vocab_size=5, n_reads=0)
