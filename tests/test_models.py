"""The reference models: shapes, state handling, masks, relative attention, backends agree."""
import pytest
import torch

from memkernels import dispatch
from memkernels.models import (
    Memformer,
    SlotDiagnostics,
    TransformerXL,
    VanillaConfig,
    VanillaTransformer,
    memformer_mnist,
    memformer_wt103,
    txl_mnist,
    txl_wt103_base,
)
from memkernels.models.transformer_xl import RelativeAttention
from memkernels.training import split_segments

from utils import DEVICE

VOCAB, SEG = 23, 8


def tiny_memformer(**overrides):
    cfg = memformer_mnist(vocab_size=VOCAB, d_model=32, n_heads=2, d_ff=64, n_encoder_layers=2,
                          n_decoder_layers=2, n_slots=5, dropout=0.0)
    torch.manual_seed(0)
    return Memformer(cfg.__class__(**{**cfg.__dict__, **overrides})).to(DEVICE)


def tiny_txl(mem_len=16):
    torch.manual_seed(0)
    return TransformerXL(txl_mnist(vocab_size=VOCAB, d_model=32, n_heads=2, d_head=16, d_ff=64, n_layers=2,
                                   mem_len=mem_len, dropout=0.0)).to(DEVICE)


def tokens(batch=3, length=SEG):
    return torch.randint(0, VOCAB, (batch, length), device=DEVICE)


def test_presets_match_the_paper():
    wt = memformer_wt103()
    assert (wt.n_encoder_layers, wt.n_decoder_layers, wt.d_model, wt.d_ff, wt.n_heads, wt.n_slots, wt.tau) == \
        (4, 16, 512, 2048, 8, 1024, 0.25)
    mn = memformer_mnist()
    assert (mn.n_encoder_layers, mn.n_decoder_layers, mn.d_model, mn.n_slots) == (4, 8, 128, 64)
    txl = txl_wt103_base()
    assert (txl.n_layers, txl.d_model, txl.d_ff, txl.n_heads, txl.d_head, txl.mem_len) == (16, 512, 2048, 8, 64, 1024)
    assert (txl_mnist().n_layers, txl_mnist().d_model) == (8, 128)


def test_memformer_state_is_constant_in_sequence_length():
    model = tiny_memformer()
    state = model.initial_state(3, SEG)
    shapes = [t.shape for t in state]
    for _ in range(4):
        logits, state = model.step(tokens(), state)
        assert logits.shape == (3, SEG, VOCAB)
        assert [t.shape for t in state] == shapes
    assert torch.allclose(state.memory.norm(dim=-1), torch.ones(3, 5, device=DEVICE), atol=1e-5)


def test_memformer_reset_matches_a_fresh_start_per_sample():
    model = tiny_memformer().eval()
    first, second = tokens(), tokens()
    _, state = model.step(first, model.initial_state(3, SEG))
    reset = torch.tensor([False, True, False], device=DEVICE)
    logits, after = model.step(second, state, reset=reset)
    fresh_logits, fresh_after = model.step(second[1:2], model.initial_state(1, SEG))
    torch.testing.assert_close(logits[1:2], fresh_logits)
    torch.testing.assert_close(after.memory[1:2], fresh_after.memory)
    continued, _ = model.step(second[:1], type(state)(*(t[:1] for t in state)))
    torch.testing.assert_close(logits[:1], continued)


def test_memformer_padding_never_changes_real_outputs_and_empty_segments_keep_state():
    model = tiny_memformer().eval()
    x = tokens()
    mask = torch.ones(3, SEG, dtype=torch.bool, device=DEVICE)
    mask[1, 5:] = False
    mask[2] = False
    state = model.initial_state(3, SEG)
    logits, new_state = model.step(x, state, padding_mask=mask)
    garbage = x.clone()
    garbage[~mask] = (garbage[~mask] + 7) % VOCAB
    logits_garbage, state_garbage = model.step(garbage, state, padding_mask=mask)
    torch.testing.assert_close(logits[1, :5], logits_garbage[1, :5])
    torch.testing.assert_close(new_state.memory, state_garbage.memory)
    for new, old in zip(new_state, state):
        torch.testing.assert_close(new[2], old[2])
    assert torch.isfinite(logits).all()


def test_memformer_rejects_a_segment_of_another_length():
    model = tiny_memformer()
    with pytest.raises(ValueError, match="segment length 5, but the state was made for segments of 8"):
        model.step(tokens(length=5), model.initial_state(3, SEG))


def test_relative_attention_position_term_matches_direct_formula():
    torch.manual_seed(1)
    model = tiny_txl()
    attn: RelativeAttention = model.layers[0].attn
    torch.nn.init.normal_(attn.position_bias)
    cached, length, d = 5, 4, 32
    keys_in = torch.randn(2, cached + length, d, device=DEVICE)
    causal = torch.ones(length, cached + length, dtype=torch.bool, device=DEVICE).tril(cached)[None, None]
    out = attn(keys_in, length, causal)
    q, k, v = attn.qkv(keys_in).unflatten(-1, (3, 2, 16)).unbind(2)
    q = q[:, -length:]
    from memkernels.models.layers import sinusoid
    expected_scores = torch.empty(2, 2, length, cached + length, device=DEVICE)
    for i in range(length):
        for j in range(cached + length):
            r = attn.position(sinusoid(torch.tensor([cached + i - j], device=DEVICE), d)).view(2, 16)
            content = ((q[:, i] + attn.content_bias) * k[:, j]).sum(-1)
            position = ((q[:, i] + attn.position_bias) * r).sum(-1)
            expected_scores[:, :, i, j] = (content + position) / 4
    probs = expected_scores.masked_fill(~causal, float("-inf")).softmax(-1)
    expected = attn.out(torch.einsum("bhij,bjhd->bihd", probs, v).flatten(-2))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_transformer_xl_cache_grows_to_mem_len_and_is_causal():
    model = tiny_txl(mem_len=12).eval()
    state = model.initial_state(3)
    x = tokens()
    for expected_len in (8, 12, 12):
        logits, state = model.step(x, state)
        assert state.memories.shape == (2, 3, expected_len, 32)
        assert not state.memories.requires_grad
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    a, _ = model.step(x, state)
    b, _ = model.step(changed, state)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])


def test_vanilla_transformer_is_causal():
    torch.manual_seed(0)
    model = VanillaTransformer(VanillaConfig(vocab_size=VOCAB, d_model=32, n_heads=2, d_ff=64, n_layers=2,
                                             dropout=0.0)).to(DEVICE)
    x = tokens(length=20)
    changed = x.clone()
    changed[:, 10] = (changed[:, 10] + 1) % VOCAB
    torch.testing.assert_close(model(x)[:, :10], model(changed)[:, :10])
    assert model(x).shape == (3, 20, VOCAB)


def test_slot_diagnostics_classify_every_slot():
    model = tiny_memformer()
    state = model.initial_state(3, SEG)
    with SlotDiagnostics(model) as diag:
        for _ in range(3):
            _, state = model.step(tokens(), state)
    assert diag.self_weights.shape == (3, 3, 5)
    assert ((diag.self_weights >= 0) & (diag.self_weights <= 1)).all()
    kinds = {k for seg in diag.slot_types() for sample in seg for k in sample}
    assert kinds <= {"retaining", "aggregating", "rewritten"}
    assert not model.write_observers


def test_split_segments_pads_the_last_segment():
    stream = torch.arange(20)[None]
    segments = split_segments(stream, 8)
    assert [s.inputs.shape[1] for s in segments] == [8, 8, 8]
    assert segments[0].padding_mask is None
    last = segments[-1]
    assert last.padding_mask.tolist() == [[True] * 3 + [False] * 5]
    assert last.targets.tolist() == [[17, 18, 19] + [-100] * 5]


@pytest.mark.skipif(dispatch.why_unavailable("triton", DEVICE, torch.float32) is not None,
                    reason=f"triton: {dispatch.why_unavailable('triton', DEVICE, torch.float32)}")
def test_memformer_on_triton_matches_the_reference_backend():
    reference_model, fused_model = tiny_memformer(backend="torch"), tiny_memformer(backend="triton")
    fused_model.load_state_dict(reference_model.state_dict())
    segments = split_segments(tokens(length=2 * SEG + 1), SEG)
    results = []
    for model in (reference_model, fused_model):
        state, loss = model.initial_state(3, SEG), 0
        for seg in segments:
            logits, state = model.step(seg.inputs, state, seg.padding_mask)
            loss = loss + torch.nn.functional.cross_entropy(logits.flatten(0, 1), seg.targets.flatten())
        loss.backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-4, rtol=1e-4)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-4, rtol=1e-3, msg=name)
