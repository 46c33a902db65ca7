"""slot_attention through the public API, every available backend, against float64 formulas."""
import pytest
import torch

import memkernels

import formulas
from tolerance import assert_matches, reference_pair
from utils import DEVICE, backends_for, dtypes_for_device, gradcheck, grads, rand

# (B, K, L, H, D): odd sizes, K = 1, L = 1, non-power-of-two head dims.
SHAPES = [(2, 7, 13, 3, 24), (1, 1, 5, 2, 16), (2, 5, 1, 1, 8), (1, 6, 37, 2, 48), (2, 3, 4, 1, 80)]


def _inputs(shape, dtype, transposed=False):
    b, k, l, h, d = shape
    slots = [rand(b, k, h, d, dtype=dtype, transposed=transposed) for _ in range(3)]
    tokens = [rand(b, l, h, d, dtype=dtype, transposed=transposed) for _ in range(2)]
    return (*slots, *tokens)


def _random_mask(b, l):
    mask = torch.rand(b, l, device=DEVICE) > 0.4
    mask[0] = False  # the first sample is all padding: its slots must keep their values
    return mask


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", dtypes_for_device())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", backends_for(torch.float32, "slot_attention"))
def test_forward_and_gradients_match_float64(backend, shape, dtype, masked):
    inputs = _inputs(shape, dtype, transposed=shape[0] == 2)
    mask = _random_mask(shape[0], shape[2]) if masked else None
    out = memkernels.slot_attention(*inputs, tau=0.25, scale=0.3, key_padding_mask=mask, backend=backend)
    assert out.shape == inputs[0].shape and out.dtype == dtype
    grad_out = torch.randn_like(out)
    (exact, exact_grads), (naive, naive_grads) = reference_pair(
        formulas.slot_attention, inputs, grad_out, tau=0.25, scale=0.3, key_padding_mask=mask)
    assert_matches("out", out, exact, naive, dtype)
    if masked:
        assert torch.equal(out[0], inputs[2][0].detach()), "all-masked slots must keep their own value"
    names = ("dq", "dk", "dv", "dk_tok", "dv_tok")
    for name, *results in zip(names, grads(out, inputs, grad_out), exact_grads, naive_grads):
        assert_matches(name, *results, dtype)
    if masked:
        token_grads = grads(memkernels.slot_attention(*inputs, key_padding_mask=mask, backend=backend),
                            inputs[3:], grad_out)
        for g in token_grads:
            assert torch.count_nonzero(g[~mask]) == 0, "masked tokens must get zero gradient"


@pytest.mark.parametrize("backend", backends_for(torch.float64, "slot_attention"))
def test_gradcheck_float64(backend):
    inputs = _inputs((2, 3, 4, 2, 5), torch.float64, transposed=True)
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]], device=DEVICE)
    assert gradcheck(lambda *t: memkernels.slot_attention(*t, tau=0.5, key_padding_mask=mask, backend=backend),
                     inputs, backend, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", backends_for(torch.float32, "slot_attention"))
def test_all_masked_slot_keeps_its_value_exactly(backend):
    inputs = _inputs((2, 4, 6, 2, 16), torch.float32)
    mask = torch.zeros(2, 6, dtype=torch.bool, device=DEVICE)
    out = memkernels.slot_attention(*inputs, tau=0.25, key_padding_mask=mask, backend=backend)
    assert torch.equal(out, inputs[2].detach())


@pytest.mark.parametrize("backend", backends_for(torch.float32, "slot_attention"))
def test_bitwise_deterministic(backend):
    inputs = _inputs((2, 19, 7, 2, 16), torch.float32)
    runs = []
    for _ in range(2):
        out = memkernels.slot_attention(*inputs, tau=0.25, backend=backend)
        runs.append((out, *grads(out, inputs, torch.ones_like(out))))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("backend", backends_for(torch.float32, "slot_attention", kernels_only=True))
def test_opcheck(backend, masked):
    inputs = _inputs((2, 3, 5, 2, 8), torch.float32, transposed=True)
    mask = _random_mask(2, 5) if masked else None
    torch.library.opcheck(torch.ops.memkernels.slot_attention.default, (*inputs, mask, 2.0, backend))


def test_sdpa_composition_keeps_an_all_masked_slot_bit_for_bit():
    # The slot's own value comes back as it was (even -0.0), with dv = dout and no gradient
    # into its query or key, as on every backend.
    q, k, v, k_tok, v_tok = _inputs((2, 3, 4, 2, 8), torch.float32)
    with torch.no_grad():
        v[0, 1, 0, 0] = -0.0
    mask = torch.ones(2, 4, dtype=torch.bool, device=DEVICE)
    mask[0] = False
    out = memkernels.slot_attention(q, k, v, k_tok, v_tok, tau=0.25, key_padding_mask=mask, backend="sdpa")
    assert torch.equal(out[0], v[0]) and torch.signbit(out[0, 1, 0, 0])
    dout = torch.randn_like(out)
    dq, dk, dv, dk_tok, dv_tok = grads(out, (q, k, v, k_tok, v_tok), dout)
    assert torch.equal(dv[0], dout[0])
    assert not dq[0].any() and not dk[0].any() and not dk_tok[0].any() and not dv_tok[0].any()


def test_grouped_token_heads_are_refused_with_the_reason():
    q, k, v, k_tok, v_tok = _inputs((1, 3, 4, 4, 8), torch.float32)
    with pytest.raises(ValueError, match="k_tok has 2 heads and q has 4: slot_attention takes no grouped token "
                                         "heads, because each slot head writes its own value head"):
        memkernels.slot_attention(q, k, v, k_tok[:, :, :2], v_tok[:, :, :2])
