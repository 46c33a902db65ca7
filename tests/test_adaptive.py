"""The adaptive softmax is the factorised distribution it claims, without full-vocabulary scores."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from memkernels.models import (
    AdaptiveSoftmax,
    FullSoftmax,
    Memformer,
    TransformerXL,
    memformer_mnist,
    txl_mnist,
    zipf_tokens,
)
from memkernels.models.adaptive import output_head
from memkernels.models.layers import scaled_embedding
from memkernels.training import split_segments

from utils import DEVICE

VOCAB, D, CUTOFFS = 1000, 16, (100, 300, 600)


def head(dtype=torch.float64):
    torch.manual_seed(0)
    embedding = scaled_embedding(VOCAB, D)
    adaptive = AdaptiveSoftmax(embedding, CUTOFFS)
    torch.nn.init.normal_(adaptive.cluster_bias)
    return adaptive.to(DEVICE, dtype)


def zipf_targets(shape, seed=0):
    targets = zipf_tokens(shape, VOCAB, 0.6, generator=torch.Generator().manual_seed(seed), device=DEVICE)
    targets.view(-1)[::7] = -100  # some positions take no loss
    return targets


def reference_log_probs(adaptive, hidden):
    """float64 log p(v) for every word, written out from the weights: head softmax times tail softmax."""
    h, w = hidden.double(), adaptive.weight.double()
    bounds = (0, *CUTOFFS, VOCAB)
    head_scores = torch.cat([h @ w[:bounds[1]].T, h @ adaptive.cluster_weight.double().T
                             + adaptive.cluster_bias.double()], -1)
    head_log_p = head_scores.log_softmax(-1)
    parts = [head_log_p[..., :bounds[1]]]
    for i in range(1, len(bounds) - 1):
        tail = (h @ w[bounds[i]:bounds[i + 1]].T).log_softmax(-1)
        parts.append(head_log_p[..., bounds[1] + i - 1, None] + tail)
    return torch.cat(parts, -1)


def test_log_prob_equals_the_float64_factorised_distribution_and_it_sums_to_one():
    adaptive = head()
    hidden = torch.randn(3, 40, D, dtype=torch.float64, device=DEVICE)
    targets = zipf_targets((3, 40))
    counts = adaptive.target_counts(targets.flatten()[None])[0]
    assert len(counts) == 5 and all(c > 0 for c in counts), f"every cluster must see traffic: {counts}"
    expected = reference_log_probs(adaptive, hidden)
    kept = targets != -100
    want = expected.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * kept
    torch.testing.assert_close(adaptive.log_prob(hidden, targets), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adaptive.log_prob(hidden, targets, counts), want, rtol=1e-12, atol=1e-12)
    log_probs = adaptive.logits(hidden)
    torch.testing.assert_close(log_probs, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 40, dtype=torch.float64, device=DEVICE))


def test_log_prob_gradients_equal_the_reference():
    adaptive = head()
    hidden = torch.randn(2, 30, D, dtype=torch.float64, device=DEVICE, requires_grad=True)
    targets = zipf_targets((2, 30), seed=1)
    params = [hidden, adaptive.weight, adaptive.cluster_weight, adaptive.cluster_bias]
    got = torch.autograd.grad(adaptive.log_prob(hidden, targets).sum(), params)
    reference = reference_log_probs(adaptive, hidden).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    want = torch.autograd.grad((reference * (targets != -100)).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_target_counts_count_ignored_then_each_cluster_per_row():
    adaptive = head()
    targets = torch.tensor([[5, 99, 100, 299, 300, 999, -100], [-100, -100, 0, 650, 650, 120, 1]], device=DEVICE)
    assert adaptive.target_counts(targets) == [(1, 2, 2, 1, 1), (2, 2, 1, 0, 2)]
    full = FullSoftmax(scaled_embedding(VOCAB, D).to(DEVICE))
    assert full.target_counts(targets) == [(1, 6), (2, 5)]


class LargestOutput(TorchDispatchMode):
    """The most elements any operator returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.largest = max([self.largest, *sizes])
        return out


def test_log_prob_never_forms_full_vocabulary_scores():
    adaptive = head(torch.float32)
    full = FullSoftmax(scaled_embedding(VOCAB, D).to(DEVICE))
    hidden = torch.randn(4, 32, D, device=DEVICE)
    targets = zipf_targets((4, 32))
    sizes = {}
    for name, module in (("adaptive", adaptive), ("full", full)):
        with LargestOutput() as meter:
            module.log_prob(hidden, targets)
        sizes[name] = meter.largest
    tokens = targets.numel()
    assert sizes["full"] >= tokens * VOCAB, "the meter must see the full head's scores"
    assert sizes["adaptive"] <= tokens * (CUTOFFS[0] + len(CUTOFFS)), sizes


def test_head_configuration_errors_are_clear():
    embedding = scaled_embedding(VOCAB, D)
    for bad in [(), (300, 100), (0, 100), (100, VOCAB)]:
        with pytest.raises(ValueError, match="cutoffs must be strictly increasing"):
            AdaptiveSoftmax(embedding, bad)
    with pytest.raises(ValueError, match="only apply to head='adaptive'"):
        output_head(embedding, "full", (100,))
    with pytest.raises(ValueError, match="head must be 'full' or 'adaptive'"):
        output_head(embedding, "sampled", ())


@pytest.mark.parametrize("kind", ["memformer", "txl"])
def test_models_with_the_adaptive_head_train_on_its_log_likelihood(kind):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, d_model=32, n_heads=2, d_ff=64, dropout=0.0, head="adaptive", cutoffs=CUTOFFS)
    model = Memformer(memformer_mnist(n_encoder_layers=1, n_decoder_layers=1, n_slots=4, **common)) \
        if kind == "memformer" else TransformerXL(txl_mnist(d_head=16, n_layers=1, mem_len=8, **common))
    model.to(DEVICE)
    stream = zipf_tokens((2, 3 * 8 - 2), VOCAB, 0.6, generator=torch.Generator().manual_seed(2), device=DEVICE)
    loss = model(stream, 8)
    state, total, expected = model.initial_state(2, 8), 0, 0.0
    for seg in split_segments(stream, 8):
        log_probs, state = model.step(seg.inputs, state, seg.padding_mask)
        kept = seg.targets != -100
        expected = expected - (log_probs.gather(-1, seg.targets.clamp(min=0)[..., None]).squeeze(-1) * kept).sum()
        total += int(kept.sum())
    torch.testing.assert_close(loss, expected / total, rtol=1e-5, atol=1e-6)


def test_zipf_tokens_follow_the_power_law():
    ids = zipf_tokens((200_000,), 50, exponent=1.0, generator=torch.Generator().manual_seed(0))
    assert ids.dtype == torch.long and ids.min() >= 0 and ids.max() < 50
    freq = torch.bincount(ids, minlength=50).double() / ids.numel()
    expected = 1 / torch.arange(1, 51, dtype=torch.float64)
    torch.testing.assert_close(freq[:5], (expected / expected.sum())[:5], rtol=0.03, atol=0)
    again = zipf_tokens((200_000,), 50, exponent=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)
