"""KVMemoryTransformer: exact chunked top-k retrieval, oldest-out store, gated attention against formulas."""
import pytest
import torch
import torch.nn.functional as F

from memkernels.models import KVMemoryConfig, KVMemoryTransformer, StreamingRunner
from memkernels.models.kv_memory import KVMemoryAttention, retrieved_attention, top_k_entries, write_order
from memkernels.models.segments import split_segments

VOCAB, SEG, BATCH = 17, 5, 3


def tiny(dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, d_model=12, n_heads=2, d_ff=24, n_layers=2, capacity=7, top_k=3, chunk_size=2,
               dropout=0.0, backend="torch")
    model = KVMemoryTransformer(KVMemoryConfig(**{**cfg, **overrides})).to(dtype)
    for layer in model.layers:  # gates away from 1/2, different per head
        if hasattr(layer, "attn") and hasattr(layer.attn, "gate"):
            torch.nn.init.normal_(layer.attn.gate)
    return model


def brute_force_top_k(q, keys, valid, k):
    scores = torch.einsum("blhd,bchd->blhc", q, keys).masked_fill(~valid[:, None, None], float("-inf"))
    return scores.topk(k, dim=-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 11, 40])
def test_top_k_is_exact_for_every_chunk_size(chunk_size):
    torch.manual_seed(1)
    q, keys = torch.randn(2, 3, 2, 5), torch.randn(2, 11, 2, 5)
    valid = torch.rand(2, 11) > 0.3
    valid[1] = False
    valid[1, [2, 9]] = True  # fewer valid entries than k in row 1
    index = top_k_entries(q, keys, valid, 4, chunk_size)
    want = brute_force_top_k(q, keys, valid, 4)
    assert torch.equal(index[0], want.indices[0])
    assert torch.equal(index[1, ..., :2], want.indices[1, ..., :2])
    assert set(index[1, ..., :2].flatten().tolist()) == {2, 9}
    assert not valid[1].gather(0, index[1, ..., 2:].flatten()).any()


def test_write_order_keeps_the_newest_valid_entries_in_arrival_order():
    valid = torch.tensor([[False, False, True, True, True], [False, False, False, False, True]])
    real = torch.tensor([[True, False, True], [False, True, False]])
    order = write_order(valid, real, 5)
    # Row 1 has two entries (positions 4, 6): the last three empty positions (all zeros) fill the front.
    assert order.tolist() == [[2, 3, 4, 5, 7], [3, 5, 7, 4, 6]]


def _segment_keys(model, segments):
    """Run segments through the model, recording the memory layer's keys and values per segment."""
    recorded = []
    hook = model.layers[1].attn.register_forward_hook(lambda mod, args, out: recorded.append(out[1:]))
    state = model.initial_state(BATCH, SEG)
    for tokens, mask in segments:
        _, state = model.step(tokens, state, mask)
    hook.remove()
    return state, recorded


def test_store_holds_the_newest_real_entries_oldest_out_first():
    model = tiny().eval()
    generator = torch.Generator().manual_seed(2)
    segments = []
    for t in range(4):
        mask = torch.ones(BATCH, SEG, dtype=torch.bool)
        if t == 1:
            mask[0, 2:] = False
            mask[2] = False
        segments.append((torch.randint(0, VOCAB, (BATCH, SEG), generator=generator), mask))
    state, recorded = _segment_keys(model, segments)
    for b in range(BATCH):
        keys = torch.cat([k[b][mask[b]] for (k, _), (_, mask) in zip(recorded, segments)])
        values = torch.cat([v[b][mask[b]] for (_, v), (_, mask) in zip(recorded, segments)])
        assert state.valid[b].all()
        torch.testing.assert_close(state.keys[0, b], keys[-7:])
        torch.testing.assert_close(state.values[0, b], values[-7:])


def test_retrieved_attention_matches_the_softmax_over_present_entries():
    torch.manual_seed(3)
    q = torch.randn(2, 3, 2, 4, dtype=torch.float64)
    keys, values = torch.randn(2, 3, 5, 2, 4, dtype=torch.float64), torch.randn(2, 3, 5, 2, 4, dtype=torch.float64)
    present = torch.rand(2, 3, 5, 2) > 0.4
    present[0, 0, :, 0] = True
    present[0, 1, 1:, 1] = False
    present[0, 1, 0, 1] = True
    out = retrieved_attention(q, keys, values, present, backend="torch")
    scores = torch.einsum("blhd,blkhd->blhk", q, keys) / 2
    probs = scores.masked_fill(~present.transpose(2, 3), float("-inf")).softmax(-1)
    want = torch.einsum("blhk,blkhd->blhd", probs, values)
    some = present.any(dim=2)
    torch.testing.assert_close(out[some], want[some])
    torch.testing.assert_close(out[0, 1, 1], values[0, 1, 0, 1])


def test_retrieved_attention_gradcheck_float64():
    torch.manual_seed(4)
    q = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(1, 2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    values = torch.randn(1, 2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    present = torch.tensor([True, False, True]).view(1, 1, 3, 1).expand(1, 2, 3, 2)
    assert torch.autograd.gradcheck(lambda *t: retrieved_attention(*t, present, "torch"), (q, keys, values))


def test_memory_attention_matches_local_plus_gated_retrieval_formula():
    torch.manual_seed(5)
    cfg = KVMemoryConfig(vocab_size=VOCAB, d_model=8, n_heads=2, d_ff=16, n_layers=1, capacity=6, top_k=2,
                         chunk_size=4, dropout=0.0, backend="torch")
    attn = KVMemoryAttention(cfg).double()
    torch.nn.init.normal_(attn.gate)
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    keys, values = torch.randn(2, 6, 2, 4, dtype=torch.float64), torch.randn(2, 6, 2, 4, dtype=torch.float64)
    valid = torch.tensor([[False, False, True, True, True, True], [False] * 6])
    mask = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    out, k, v = attn(x, mask, keys, values, valid)

    q, k_want, v_want = attn.qkv(x).view(2, 4, 3, 2, 4).unbind(2)
    torch.testing.assert_close(k, k_want)
    local = (torch.einsum("bihd,bjhd->bhij", q, k_want) / 2).masked_fill(~mask[0], float("-inf")).softmax(-1)
    local = torch.einsum("bhij,bjhd->bihd", local, v_want)
    gate = torch.sigmoid(attn.gate)
    want = local.clone()
    top = brute_force_top_k(q, keys, valid, 2).indices  # (B, L, H, k)
    for i in range(4):
        for h in range(2):
            chosen = top[0, i, h]
            weights = (keys[0, chosen, h] @ q[0, i, h] / 2).softmax(0)
            retrieved = weights @ values[0, chosen, h]
            want[0, i, h] = local[0, i, h] + gate[h] * (retrieved - local[0, i, h])
    torch.testing.assert_close(out, attn.out(want.flatten(-2)))


def test_whole_model_gradcheck_float64_through_the_store():
    model = tiny(torch.float64, d_model=4, d_ff=8, n_layers=1, capacity=4, top_k=2, chunk_size=3)
    tokens = torch.randint(0, VOCAB, (2, 3 * 3 + 1), generator=torch.Generator().manual_seed(6))
    attn = model.layers[0].attn
    names = ["layers.0.attn.gate", "layers.0.attn.qkv.weight"]

    def loss(gate, qkv):
        return torch.func.functional_call(model, {names[0]: gate, names[1]: qkv}, (tokens, 3))

    inputs = (attn.gate.detach().clone().requires_grad_(), attn.qkv.weight.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(loss, inputs, fast_mode=True)


def test_streaming_runner_gives_the_full_sequence_loss():
    model = tiny().eval()
    stream = torch.randint(0, VOCAB, (BATCH, 4 * SEG - 1), generator=torch.Generator().manual_seed(7))
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
    _, state = model.step(first, model.initial_state(BATCH, SEG))
    logits, after = model.step(second, state, reset=torch.tensor([False, True, False]))
    fresh_logits, fresh_after = model.step(second[1:2], model.initial_state(1, SEG))
    torch.testing.assert_close(logits[1:2], fresh_logits)
    for got, want in zip(after, fresh_after):
        torch.testing.assert_close(got[:, 1:2] if got.dim() == 5 else got[1:2], want)
    continued, _ = model.step(second[:1], type(state)(state.keys[:, :1], state.values[:, :1], state.valid[:1]))
    torch.testing.assert_close(logits[:1], continued)


def test_padding_never_changes_real_outputs_and_empty_segments_keep_state():
    model = tiny().eval()
    generator = torch.Generator().manual_seed(9)
    _, state = model.step(torch.randint(0, VOCAB, (BATCH, SEG), generator=generator), model.initial_state(BATCH))
    x = torch.randint(0, VOCAB, (BATCH, SEG), generator=generator)
    mask = torch.ones(BATCH, SEG, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2] = False
    logits, new_state = model.step(x, state, padding_mask=mask)
    garbage = x.masked_fill(~mask, 5)
    logits_garbage, state_garbage = model.step(garbage, state, padding_mask=mask)
    torch.testing.assert_close(logits[mask], logits_garbage[mask])
    for a, b in zip(new_state, state_garbage):
        assert torch.equal(a, b)
    assert torch.equal(new_state.keys[:, 2], state.keys[:, 2]) and torch.equal(new_state.valid[2], state.valid[2])
    assert torch.isfinite(logits).all()


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="top_k must be in 1..capacity"):
        KVMemoryConfig(vocab_size=5, capacity=4, top_k=5)
    with pytest.raises(ValueError, match="memory_layers must be distinct"):
        KVMemoryConfig(vocab_size=5, n_layers=2, memory_layers=(1, -1))
