"""The ops under torch.autocast follow the torch ops they stand in for.

memory_read and slot_attention run in autocast's lower precision (as SDPA does), memory_norm
in float32 (as autocast's normalisations do). The reference for every check is the same call
with the casts written out and autocast off: results must be bitwise equal, in eager mode,
through the registered ops, under torch.compile, and for a whole Memformer training step.
CPU bfloat16 runs everywhere; CUDA float16 and bfloat16 need a GPU.
"""
import pytest
import torch

import memkernels
import memkernels.nn
from memkernels import capabilities, dispatch
from memkernels.models import Memformer, memformer_mnist

_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# (device, autocast dtype): CPU bfloat16 everywhere, CUDA float16 and bfloat16 on a GPU.
_TARGETS = [("cpu", torch.bfloat16), ("cuda", torch.float16), ("cuda", torch.bfloat16)]
_CASES = [pytest.param(device, dtype, id=f"{device}-{str(dtype).removeprefix('torch.')}",
                       marks=[_GPU] if device == "cuda" else []) for device, dtype in _TARGETS]


def _with_backends(op, extra=()):
    """(device, dtype, backend) for every backend that runs `op` on that device in that dtype
    (the Triton interpreter has no bfloat16, so CPU runs the reference and SDPA)."""
    params = []
    for device, dtype in _TARGETS:
        usable = [b for b in capabilities.TABLE[op]
                  if dispatch.why_unavailable(b, torch.device(device), dtype, op=op) is None]
        for backend in (*extra, *usable):
            params.append(pytest.param(device, dtype, backend, id=f"{device}-{str(dtype).removeprefix('torch.')}"
                                       f"-{backend}", marks=[_GPU] if device == "cuda" else []))
    return params


def _explicit(op, dtype):
    """`op` with its floating inputs cast to `dtype` by hand and autocast off."""
    def call(*args, **kwargs):
        cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return op(*cast, **kwargs)
    return call


def _leaves(device, *shapes):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]


def _same_step(fn_autocast, fn_explicit, leaves, device, dtype):
    """Run both under autocast; outputs and input gradients must be bitwise equal."""
    results = []
    for fn in (fn_autocast, fn_explicit):
        with torch.autocast(device, dtype=dtype):
            out = fn(*leaves)
        grads = torch.autograd.grad(out.float().square().sum(), leaves)
        results.append((out, grads))
    (out_a, grads_a), (out_e, grads_e) = results
    assert out_a.dtype == out_e.dtype and torch.equal(out_a, out_e)
    for ga, ge, leaf in zip(grads_a, grads_e, leaves):
        assert ga.dtype == leaf.dtype and torch.equal(ga, ge)
    return out_a


@pytest.mark.parametrize("device,dtype,backend", _with_backends("memory_read"))
def test_memory_read_runs_in_the_autocast_dtype(device, dtype, backend):
    leaves = _leaves(device, (2, 5, 4, 8), (2, 3, 4, 8), (2, 3, 4, 8))
    out = _same_step(lambda *t: memkernels.memory_read(*t, backend=backend),
                     _explicit(lambda *t: memkernels.memory_read(*t, backend=backend), dtype), leaves, device, dtype)
    assert out.dtype == dtype


@pytest.mark.parametrize("device,dtype,backend", _with_backends("slot_attention"))
def test_slot_attention_runs_in_the_autocast_dtype(device, dtype, backend):
    leaves = _leaves(device, *[(2, 3, 2, 8)] * 3, *[(2, 5, 2, 8)] * 2)
    mask = torch.tensor([[True] * 5, [True, False, True, False, False]], device=device)

    def op(*t):
        return memkernels.slot_attention(*t, tau=0.25, key_padding_mask=mask, backend=backend)
    out = _same_step(op, _explicit(op, dtype), leaves, device, dtype)
    assert out.dtype == dtype


@pytest.mark.parametrize("device,dtype,backend", _with_backends("memory_norm"))
def test_memory_norm_runs_in_float32(device, dtype, backend):
    m, bias = _leaves(device, (2, 3, 16), (3, 16))
    m16 = m.detach().to(dtype).requires_grad_()
    out = _same_step(lambda *t: memkernels.memory_norm(*t, backend=backend),
                     _explicit(lambda *t: memkernels.memory_norm(*t, backend=backend), torch.float32),
                     [m16, bias], device, dtype)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("device,dtype", _CASES)
def test_registered_ops_cast_like_the_public_ones(device, dtype):
    q, k, v = _leaves(device, (2, 5, 2, 8), (2, 3, 2, 8), (2, 3, 2, 8))
    with torch.autocast(device, dtype=dtype):
        out, lse = torch.ops.memkernels.memory_read(q, k, v, 0.5, "torch")
        norm_out, _ = torch.ops.memkernels.memory_norm(q.to(dtype).flatten(2), q[0].flatten(1), 1e-12, "torch")
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert torch.equal(out, memkernels.memory_read(q.to(dtype), k.to(dtype), v.to(dtype), scale=0.5, backend="torch"))
    assert norm_out.dtype == torch.float32


@pytest.mark.parametrize("device,dtype", _CASES)
def test_autocast_under_torch_compile(device, dtype):
    torch._dynamo.reset()
    leaves = _leaves(device, (2, 5, 2, 8), (2, 3, 2, 8), (2, 3, 2, 8))

    def read_then_norm(q, k, v):
        out = memkernels.memory_read(q, k, v, backend="torch")
        return memkernels.memory_norm(out.flatten(2), torch.ones_like(out[0].flatten(1)), backend="torch")
    compiled = torch.compile(read_then_norm, fullgraph=True)
    with torch.autocast(device, dtype=dtype):
        got, want = compiled(*leaves), read_then_norm(*leaves)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want)


def _tiny_memformer(device, dtype, backend):
    # Grouped memory reads where the backend takes them.
    grouped = backend == "auto" or dispatch.why_unavailable(backend, torch.device(device), dtype, grouped=True) is None
    cfg = memformer_mnist(vocab_size=19, d_model=32, n_heads=4, n_kv_heads=2 if grouped else None, d_ff=64,
                          n_encoder_layers=2, n_decoder_layers=1, n_slots=6, dropout=0.0, backend=backend)
    torch.manual_seed(0)
    return Memformer(cfg).to(device)


@pytest.mark.parametrize("device,dtype,backend", _with_backends("slot_attention", extra=("auto",)))
def test_memformer_training_step_matches_explicit_casts(monkeypatch, device, dtype, backend):
    # The memory path mixes dtypes under autocast (the slot's own value is the float32 memory,
    # its queries and keys come out of bfloat16 linears): the ops cast as written out here.
    tokens = torch.randint(0, 19, (3, 16), generator=torch.Generator().manual_seed(1)).to(device)
    grads = []
    for explicit in (False, True):
        model = _tiny_memformer(device, dtype, backend)
        if explicit:
            monkeypatch.setattr(memkernels.nn, "memory_read", _explicit(memkernels.memory_read, dtype))
            monkeypatch.setattr(memkernels.nn, "slot_attention", _explicit(memkernels.slot_attention, dtype))
            monkeypatch.setattr(memkernels.nn, "memory_norm", _explicit(memkernels.memory_norm, torch.float32))
        with torch.autocast(device, dtype=dtype):
            loss = model(tokens, 8)
        loss.backward()
        grads.append([("loss", loss.detach())] + [(n, p.grad) for n, p in model.named_parameters()
                                                 if p.grad is not None])
    assert [name for name, _ in grads[0]] == [name for name, _ in grads[1]]
    assert len(grads[0]) > 30
    for (name, with_autocast), (_, with_casts) in zip(*grads):
        assert torch.equal(with_autocast, with_casts), name


@pytest.mark.parametrize("autocast_on", [False, True], ids=["plain", "cpu-autocast-on"])
def test_meta_tensors_skip_autocast(autocast_on):
    """Shapes without data (meta tensors, as FLOP counting uses) pass through the public ops:
    torch has no autocast state for the meta device, so the ops must not ask for it."""
    q, k, v = (torch.empty(2, 5, 2, 8, device="meta") for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_on):
        out = memkernels.memory_read(q, k, v, backend="torch")
        norm = memkernels.memory_norm(q.flatten(2), torch.empty(5, 16, device="meta"), backend="torch")
    assert out.device.type == norm.device.type == "meta"
    assert out.shape == q.shape and norm.shape == (2, 5, 16) and norm.dtype == torch.float32
