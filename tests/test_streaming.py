"""StreamingRunner gives the model's own step outputs; Transformer-XL's fixed cache changes nothing real."""
import pytest
import torch

from memkernels.models import Memformer, StreamingRunner, TransformerXL, memformer_mnist, txl_mnist

from utils import DEVICE

VOCAB, SEG, BATCH = 29, 8, 3
NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def build(kind, **overrides):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, d_model=32, n_heads=2, d_ff=64, dropout=0.0)
    if kind == "memformer":
        model = Memformer(memformer_mnist(n_encoder_layers=2, n_decoder_layers=2, n_slots=5, **common, **overrides))
    else:
        model = TransformerXL(txl_mnist(d_head=16, n_layers=2, mem_len=20, **{"fixed_cache": True, **common,
                                                                                **overrides}))
    return model.to(DEVICE).eval()


def script(segments=5):
    """Inputs for `segments` calls: tokens, padding mask or None, reset or None (a padded segment, a reset)."""
    generator = torch.Generator().manual_seed(1)
    calls = []
    for t in range(segments):
        tokens = torch.randint(0, VOCAB, (BATCH, SEG), generator=generator).to(DEVICE)
        mask = reset = None
        if t == 2:
            mask = torch.ones(BATCH, SEG, dtype=torch.bool, device=DEVICE)
            mask[0, 5:] = False
            mask[2] = False
        if t == 3:
            reset = torch.tensor([False, True, False], device=DEVICE)
        calls.append((tokens, mask, reset))
    return calls


def eager_outputs(model, output, calls):
    forward = model.step if output == "logits" else model.body
    state, outputs = model.initial_state(BATCH, SEG), []
    with torch.no_grad():
        for tokens, mask, reset in calls:
            out, state = forward(tokens, state, mask, reset)
            outputs.append(out)
    return outputs, state


@pytest.mark.parametrize("output", ["logits", "hidden"])
@pytest.mark.parametrize("kind", ["memformer", "txl"])
def test_eager_runner_is_bitwise_the_models_step(kind, output):
    model = build(kind)
    calls = script()
    want, want_state = eager_outputs(model, output, calls)
    runner = StreamingRunner(model, BATCH, SEG, output=output, graphs=False)
    assert not runner.graphed
    for (tokens, mask, reset), expected in zip(calls, want):
        assert torch.equal(runner(tokens, padding_mask=mask, reset=reset), expected)
    for got, expected in zip(runner.state, want_state):
        assert torch.equal(got, expected)
    runner.reset_state()
    assert torch.equal(runner(*calls[0]), want[0]), "reset_state starts every row afresh"


def test_fixed_cache_transformer_xl_matches_the_growing_cache_on_real_tokens():
    growing, fixed = build("txl", fixed_cache=False), build("txl")
    calls = script(6)  # 48 tokens: the 20-position cache fills, then slides
    want, _ = eager_outputs(growing, "logits", calls)
    got, state = eager_outputs(fixed, "logits", calls)
    assert state.memories.shape == (2, BATCH, 20, 32) and state.mask.shape == (BATCH, 20)
    for (_, mask, _), g, w in zip(calls, got, want):
        real = mask if mask is not None else torch.ones(BATCH, SEG, dtype=torch.bool, device=DEVICE)
        torch.testing.assert_close(g[real], w[real], rtol=1e-5, atol=1e-5)


def test_runner_refuses_what_it_cannot_stream():
    growing = build("txl", fixed_cache=False)
    runner = StreamingRunner(growing, BATCH, SEG, graphs=False)
    tokens = torch.zeros(BATCH, SEG, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"state changed shape.*fixed_cache=True"):
        runner(tokens)
    model = build("memformer")
    runner = StreamingRunner(model, BATCH, SEG, graphs=False)
    with pytest.raises(ValueError, match=r"tokens must be \(3, 8\) long"):
        runner(tokens[:, :5])
    with pytest.raises(ValueError, match=r"reset must be \(3,\) bool"):
        runner(tokens, reset=torch.zeros(BATCH, device=DEVICE))
    with pytest.raises(ValueError, match="call model.eval"):
        StreamingRunner(model.train(), BATCH, SEG)
    if DEVICE.type != "cuda":
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
            StreamingRunner(model.eval(), BATCH, SEG, graphs=True)


@NO_GPU
@pytest.mark.parametrize("output", ["logits", "hidden"])
@pytest.mark.parametrize("kind", ["memformer", "txl"])
def test_graph_replay_matches_eager_steps(kind, output):
    model = build(kind)
    calls = script(6)
    want, want_state = eager_outputs(model, output, calls)
    runner = StreamingRunner(model, BATCH, SEG, output=output)
    assert runner.graphed
    for (tokens, mask, reset), expected in zip(calls, want):
        got = runner(tokens, padding_mask=mask, reset=reset).clone()
        # The graph always passes a mask and a reset; eager calls without them may pick other kernels.
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for got, expected in zip(runner.state, want_state):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    runner.reset_state()
    torch.testing.assert_close(runner(*calls[0]), want[0], rtol=1e-4, atol=1e-4)
