"""pytest-benchmark of each op, forward and forward+backward, every backend and peer.

`pytest benchmarks/test_ops.py --benchmark-json=out.json` writes the report;
`--benchmark-compare` works as usual. On a GPU the shapes are the targets of
the Triton issue in bfloat16; on a CPU small float32 shapes with the backends
that run there (the Triton interpreter is a correctness tool, never timed).
"""
import pytest
import torch

import memkernels
from memkernels import dispatch

from . import cost, peers
from .conftest import DEVICE

ON_GPU = DEVICE.type == "cuda"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
SIZE = torch.finfo(DTYPE).bits // 8

# (B, L, K, H, D)
READ_SHAPES = [(16, 512, k, 8, 64) for k in (64, 256, 1024)] if ON_GPU else [(2, 64, 32, 4, 32)]
SLOT_SHAPES = [(16, l, k, 8, 64) for k, l in ((64, 64), (256, 512), (1024, 512))] if ON_GPU else [(2, 64, 32, 4, 32)]
# (B, K, W)
NORM_SHAPES = [(16, 1024, 512), (64, 256, 512)] if ON_GPU else [(8, 64, 256)]
MODES = ("fwd", "fwd_bwd")


def _backends():
    usable = [b for b in dispatch.BACKENDS if dispatch.why_unavailable(b, DEVICE, DTYPE) is None]
    return [b for b in usable if ON_GPU or b == "torch"]


def _rand(*shape, grad):
    return torch.randn(*shape, device=DEVICE, dtype=DTYPE).requires_grad_(grad)


def _forward_or_training_step(forward, inputs, mode):
    if mode == "fwd":
        def step():
            with torch.no_grad():
                forward()
        return step
    grad_out = torch.randn_like(forward())

    def step():
        torch.autograd.grad(forward(), inputs, grad_out)
    return step


def _impls(peer_table):
    return [f"memkernels-{b}" for b in _backends()] + list(peer_table(DEVICE))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", _impls(peers.memory_read_peers))
@pytest.mark.parametrize("shape", READ_SHAPES, ids=lambda s: "B{}-L{}-K{}-H{}-D{}".format(*s))
def test_memory_read(measure, benchmark, shape, impl, mode):
    B, L, K, H, D = shape
    q, k, v = _rand(B, L, H, D, grad=mode != "fwd"), _rand(B, K, H, D, grad=mode != "fwd"), \
        _rand(B, K, H, D, grad=mode != "fwd")
    scale = D ** -0.5
    if impl.startswith("memkernels-"):
        backend = impl.removeprefix("memkernels-")
        forward = lambda: memkernels.memory_read(q, k, v, scale=scale, backend=backend)  # noqa: E731
    else:
        peer = peers.memory_read_peers(DEVICE)[impl]
        forward = lambda: peer(q, k, v, scale)  # noqa: E731
    benchmark.group = f"memory_read {mode} B{B} L{L} K{K} H{H} D{D} {DTYPE}"
    measure(impl, _forward_or_training_step(forward, (q, k, v), mode), *cost.memory_read(B, L, K, H, D, SIZE)[mode])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", _impls(peers.slot_attention_peers))
@pytest.mark.parametrize("shape", SLOT_SHAPES, ids=lambda s: "B{}-L{}-K{}-H{}-D{}".format(*s))
def test_slot_attention(measure, benchmark, shape, impl, mode):
    B, L, K, H, D = shape
    grad = mode != "fwd"
    q, k, v = (_rand(B, K, H, D, grad=grad) for _ in range(3))
    k_tok, v_tok = (_rand(B, L, H, D, grad=grad) for _ in range(2))
    tau, scale = 0.25, D ** -0.5
    if impl.startswith("memkernels-"):
        backend = impl.removeprefix("memkernels-")
        forward = lambda: memkernels.slot_attention(q, k, v, k_tok, v_tok, tau=tau, backend=backend)  # noqa: E731
    else:
        peer = peers.slot_attention_peers(DEVICE)[impl]
        forward = lambda: peer(q, k, v, k_tok, v_tok, None, scale / tau)  # noqa: E731
    benchmark.group = f"slot_attention {mode} B{B} L{L} K{K} H{H} D{D} {DTYPE}"
    measure(impl, _forward_or_training_step(forward, (q, k, v, k_tok, v_tok), mode),
            *cost.slot_attention(B, L, K, H, D, SIZE)[mode])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", _impls(peers.memory_norm_peers))
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=lambda s: "B{}-K{}-W{}".format(*s))
def test_memory_norm(measure, benchmark, shape, impl, mode):
    B, K, W = shape
    m, bias = _rand(B, K, W, grad=mode != "fwd"), _rand(K, W, grad=mode != "fwd")
    eps = 1e-12
    if impl.startswith("memkernels-"):
        backend = impl.removeprefix("memkernels-")
        forward = lambda: memkernels.memory_norm(m, bias, eps=eps, backend=backend)  # noqa: E731
    else:
        peer = peers.memory_norm_peers(DEVICE)[impl]
        forward = lambda: peer(m, bias, eps)  # noqa: E731
    benchmark.group = f"memory_norm {mode} B{B} K{K} W{W} {DTYPE}"
    measure(impl, _forward_or_training_step(forward, (m, bias), mode), *cost.memory_norm(B, K, W, SIZE)[mode])
