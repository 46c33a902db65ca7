"""MRBP gives BPTT's gradients with far less memory held for backward."""
import pytest
import torch

from memkernels.models import Memformer, memformer_mnist
from memkernels.training import bptt, checkpointed_bptt, mrbp, split_segments
from memkernels.training.saved_memory import SavedTensorBytes

from utils import DEVICE

VOCAB, SEG = 19, 6


def _model(dtype=torch.float32, dropout=0.0):
    torch.manual_seed(0)
    cfg = memformer_mnist(vocab_size=VOCAB, d_model=24, n_heads=2, d_ff=48, n_encoder_layers=2,
                          n_decoder_layers=2, n_slots=4, dropout=dropout)
    return Memformer(cfg).to(DEVICE, dtype)


def _gradients(model, scheme, segments, seed=3):
    model.zero_grad()
    torch.manual_seed(seed)
    loss, state = scheme(model, segments, model.initial_state(segments[0].inputs.shape[0], SEG))
    return loss, state, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("scheme", [mrbp, checkpointed_bptt], ids=["mrbp", "checkpointed"])
def test_gradients_equal_bptt_in_float64_with_dropout(scheme):
    model = _model(torch.float64, dropout=0.2).train()
    stream = torch.randint(0, VOCAB, (3, 5 * SEG - 2), device=DEVICE)  # last segment padded
    segments = split_segments(stream, SEG)
    loss, state, grads = _gradients(model, bptt, segments)
    other_loss, other_state, other_grads = _gradients(model, scheme, segments)
    assert other_loss == pytest.approx(loss, rel=1e-12)
    for got, want in zip(other_state, state):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert set(other_grads) == set(grads)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(other_grads[name], grad, atol=1e-11, rtol=1e-9, msg=name)


def test_mrbp_restores_the_rng_stream():
    model = _model(dropout=0.2).train()
    segments = split_segments(torch.randint(0, VOCAB, (2, 3 * SEG + 1), device=DEVICE), SEG)
    torch.manual_seed(5)
    bptt(model, segments, model.initial_state(2, SEG))
    after_bptt = torch.rand(3)
    torch.manual_seed(5)
    mrbp(model, segments, model.initial_state(2, SEG))
    torch.testing.assert_close(torch.rand(3), after_bptt)


def test_mrbp_holds_less_for_backward_than_bptt_on_a_long_rollout():
    model = _model()
    segments = split_segments(torch.randint(0, VOCAB, (4, 24 * SEG + 1), device=DEVICE), SEG)
    peaks = {}
    for scheme in (bptt, mrbp):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with SavedTensorBytes(exclude=model.parameters()) as meter:
            scheme(model, segments, model.initial_state(4, SEG))
        peaks[scheme.__name__] = meter.peak
        if DEVICE.type == "cuda":
            peaks[scheme.__name__ + "_cuda"] = torch.cuda.max_memory_allocated()
    assert peaks["mrbp"] < 0.2 * peaks["bptt"], peaks
    if DEVICE.type == "cuda":
        assert peaks["mrbp_cuda"] < peaks["bptt_cuda"], peaks


def test_advance_gives_the_steps_next_state_and_mrbp_runs_the_decoder_only_in_the_replay():
    model = _model(dropout=0.2).train()
    segments = split_segments(torch.randint(0, VOCAB, (2, 4 * SEG + 1), device=DEVICE), SEG)
    state = model.initial_state(2, SEG)
    torch.manual_seed(7)
    _, from_body = model.body(segments[0].inputs, state)
    torch.manual_seed(7)
    from_advance = model.advance(segments[0].inputs, state)
    for got, want in zip(from_advance, from_body):
        assert torch.equal(got, want)
    calls = {"decoder": 0, "encoder": 0}
    hooks = [model.decoder[0].register_forward_hook(lambda *_: calls.__setitem__("decoder", calls["decoder"] + 1)),
             model.encoder[0].register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))]
    mrbp(model, segments, state)
    for hook in hooks:
        hook.remove()
    assert calls == {"decoder": len(segments), "encoder": 2 * len(segments)}, calls


@pytest.mark.skipif(DEVICE.type != "cuda", reason="no CUDA GPU")
@pytest.mark.parametrize("scheme", [bptt, checkpointed_bptt, mrbp], ids=["bptt", "checkpointed", "mrbp"])
def test_training_schemes_sync_with_the_host_a_fixed_number_of_times_whatever_the_rollout_length(scheme):
    import warnings

    model = _model(dropout=0.1).train()
    syncs = {}
    for n_segments in (2, 6):
        segments = split_segments(torch.randint(0, VOCAB, (2, n_segments * SEG + 1), device=DEVICE), SEG)
        scheme(model, segments, model.initial_state(2, SEG))  # warm-up: first-call work is not the point
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                scheme(model, segments, model.initial_state(2, SEG))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs[n_segments] = sum("synchronizing" in str(w.message) for w in caught)
    assert syncs[2] == syncs[6], f"host syncs grow with the rollout: {syncs}"
