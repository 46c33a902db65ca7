"""Bad input raises a clear error naming the argument, expected and actual value."""
import pytest
import torch

import memkernels
from memkernels import dispatch


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device) if dtype.is_floating_point else \
        torch.zeros(*shape, dtype=dtype, device=device)


def read_args(**over):
    args = dict(q=_t(2, 5, 3, 8), k=_t(2, 4, 3, 8), v=_t(2, 4, 3, 8))
    return {**args, **over}


def slot_args(**over):
    args = dict(q=_t(2, 4, 3, 8), k=_t(2, 4, 3, 8), v=_t(2, 4, 3, 8), k_tok=_t(2, 5, 3, 8), v_tok=_t(2, 5, 3, 8))
    return {**args, **over}


READ_CASES = [
    (dict(k=_t(2, 4, 2, 8), v=_t(2, 4, 2, 8)), ValueError,
     r"k has 2 heads, which must divide q's 3 heads \(query head h reads key/value head h // \(H / H_kv\)\)"),
    (dict(k=_t(2, 4, 1, 8)), ValueError, r"v has key/value head count H_kv = 3 .* expected 1 to match k"),
    (dict(v=_t(2, 4, 3, 6)), ValueError, r"v has head dim D = 6 .* expected 8 to match q"),
    (dict(k=_t(3, 4, 3, 8)), ValueError, r"k has batch size B = 3 .* expected 2 to match q"),
    (dict(v=_t(2, 5, 3, 8)), ValueError, r"v has slot count K = 5 .* expected 4 to match k"),
    (dict(q=_t(2, 5, 24)), ValueError, r"q must be a 4-D tensor \(B, L, H, D\), got shape \(2, 5, 24\)"),
    (dict(q=_t(2, 0, 3, 8)), ValueError, r"q has an empty token count \(L = 0"),
    (dict(k=_t(2, 0, 3, 8)), ValueError, r"k has an empty slot count \(K = 0"),
    (dict(q=_t(2, 5, 3, 8, dtype=torch.int64)), TypeError, r"q must have a floating dtype .* got torch.int64"),
    (dict(k=_t(2, 4, 3, 8, dtype=torch.float64)), TypeError,
     r"k must have the dtype of q \(torch.float32\), got torch.float64"),
    (dict(q=[1.0]), TypeError, r"q must be a torch.Tensor, got list"),
    (dict(k=_t(2, 4, 3, 8, device="meta")), ValueError, r"k is on meta but q is on cpu"),
]


@pytest.mark.parametrize("override,error,message", READ_CASES)
def test_memory_read_rejects(override, error, message):
    with pytest.raises(error, match="memory_read: " + message):
        memkernels.memory_read(**read_args(**override))


SLOT_CASES = [
    (dict(k_tok=_t(2, 5, 3, 4)), ValueError, r"k_tok has head dim D = 4 .* expected 8"),
    (dict(v_tok=_t(2, 6, 3, 8)), ValueError, r"v_tok has token count L = 6 .* expected 5 to match k_tok"),
    (dict(v=_t(2, 3, 3, 8)), ValueError, r"v has slot count K = 3 .* expected 4 to match q"),
    (dict(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError,
     r"key_padding_mask must have shape \(B, L\) = \(2, 5\), got \(2, 4\)"),
    (dict(key_padding_mask=torch.ones(2, 5)), TypeError, r"key_padding_mask must have dtype torch.bool"),
    (dict(key_padding_mask=torch.ones(2, 5, dtype=torch.bool, device="meta")), ValueError,
     r"key_padding_mask is on meta but the inputs are on cpu"),
    (dict(tau=0.0), ValueError, r"tau must be a finite number > 0, got 0.0"),
    (dict(scale=float("nan")), ValueError, r"scale must be a finite real number or None, got nan"),
]


@pytest.mark.parametrize("override,error,message", SLOT_CASES)
def test_slot_attention_rejects(override, error, message):
    args = slot_args(**override)
    kwargs = {name: args.pop(name) for name in ("key_padding_mask", "tau", "scale") if name in args}
    with pytest.raises(error, match="slot_attention: " + message):
        memkernels.slot_attention(*args.values(), **kwargs)


NORM_CASES = [
    (dict(bias=_t(4, 16)), ValueError, r"bias has slot count K = 4 .* expected 3 to match m"),
    (dict(bias=_t(3, 8)), ValueError, r"bias has memory width W = 8 .* expected 16 to match m"),
    (dict(bias=_t(16)), ValueError, r"bias must be a 2-D tensor \(K, W\), got shape \(16,\)"),
    (dict(m=_t(2, 3, 16, dtype=torch.int32)), TypeError, r"m must have a floating dtype"),
    (dict(eps=-1.0), ValueError, r"eps must be a finite number > 0, got -1.0"),
]


@pytest.mark.parametrize("override,error,message", NORM_CASES)
def test_memory_norm_rejects(override, error, message):
    args = {"m": _t(2, 3, 16), "bias": _t(3, 16), **override}
    eps = args.pop("eps", 1e-12)
    with pytest.raises(error, match="memory_norm: " + message):
        memkernels.memory_norm(args["m"], args["bias"], eps=eps)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match=r"memory_read: backend must be 'auto' or one of .*got 'fast'"):
        memkernels.memory_read(**read_args(), backend="fast")


@pytest.fixture
def environment(monkeypatch):
    """monkeypatch for the environment dispatch reads: its cached decisions are dropped before
    and after the test, so neither sees the other's environment."""
    dispatch.clear_cache()
    yield monkeypatch
    monkeypatch.undo()
    dispatch.clear_cache()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals of a machine with no GPU")
def test_unavailable_backend_says_why(environment):
    environment.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dispatch.BackendUnavailable,
                       match=r"memory_norm: backend 'triton' cannot run here: it needs a CUDA GPU"):
        memkernels.memory_norm(_t(2, 3, 16), _t(3, 16), backend="triton")
    with pytest.raises(dispatch.BackendUnavailable, match=r"slot_attention: backend 'cuda' cannot run here: "):
        memkernels.slot_attention(*slot_args().values(), backend="cuda")


def test_interpreter_refuses_bfloat16(environment):
    environment.setenv("TRITON_INTERPRET", "1")
    reason = dispatch.why_unavailable("triton", torch.device("cpu"), torch.bfloat16)
    assert reason == "the Triton CPU interpreter has no bfloat16 arithmetic"


def test_auto_on_cpu_runs_the_reference():
    assert dispatch.select("memory_read", "auto", torch.device("cpu"), torch.float32) == "torch"


def test_head_dims_beyond_the_kernels_fall_back_or_refuse():
    # SDPA takes any head dim; the kernels stop at 256.
    assert dispatch.select("memory_read", "auto", torch.device("cuda"), torch.float16, 320) == "sdpa"
    assert dispatch.select("memory_read", "auto", torch.device("cuda"), torch.float16, 320,
                           kernels_only=True) == "torch"
    reason = dispatch.why_unavailable("triton", torch.device("cuda"), torch.float16, 320)
    assert reason == "its kernels take head dims up to 256, got 320"
    wide = read_args(q=_t(1, 2, 1, 320), k=_t(1, 3, 1, 320), v=_t(1, 3, 1, 320))
    with pytest.raises(dispatch.BackendUnavailable, match="memory_read: backend 'triton' cannot run here: its "
                                                          "kernels take head dims up to 256, got 320"):
        memkernels.memory_read(**wide, backend="triton")
    assert memkernels.memory_read(**wide).shape == (1, 2, 1, 320)
