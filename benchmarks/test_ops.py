"""pytest-benchmark of each op, forward and forward+backward, every backend and peer.

`pytest benchmarks/test_ops.py --benchmark-json=out.json` writes the report (eager wall time
and, on CUDA, kernel time per call: see benchmarks/conftest.py); `--benchmark-compare` works
as usual. On a GPU the shapes are the target shapes in bfloat16 (MEMKERNELS_BENCH=quick: the
subset `gpu_session.sh quick` measures); on a CPU small float32 shapes with the backends that
run there (the Triton interpreter is a correctness tool, never timed).
"""
import pytest
import torch

import memkernels

from . import cost, peers
from .conftest import DEVICE, PROFILE, backends_here
from .fast_paths import fast_paths_on

ON_GPU = DEVICE.type == "cuda"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
SIZE = torch.finfo(DTYPE).bits // 8


def attention_shapes(on_gpu: bool, profile: str) -> list[tuple]:
    """(B, L, K, H, D): on a GPU B 16, H 8, L in {64, 512}, D in {64, 128} and K in {64, 256, 1024}
    ({64, 1024} for quick); one small shape on a CPU."""
    if not on_gpu:
        return [(2, 64, 32, 4, 32)]
    slots = (64, 1024) if profile == "quick" else (64, 256, 1024)
    return [(16, tokens, k, 8, head_dim) for head_dim in (64, 128) for tokens in (64, 512) for k in slots]


ATTENTION_SHAPES = attention_shapes(ON_GPU, PROFILE)
# (B, K, W)
NORM_SHAPES = [(16, 1024, 512), (64, 256, 512)] if ON_GPU else [(8, 64, 256)]
MODES = ("fwd", "fwd_bwd")


def _training_or_inference_step(forward, inputs, mode):
    if mode == "fwd":
        def step():
            with torch.no_grad():
                forward()
        return step
    grad_out = torch.randn_like(forward())

    def step():
        torch.autograd.grad(forward(), inputs, grad_out)
    return step


# The CUDA backend twice: as `auto` runs it (scalar kernels) and with its fast paths on.
FAST = "memkernels-cuda-fast"


def _impls(op, peer_table):
    ours = [f"memkernels-{b}" for b in backends_here(DTYPE, op)]
    return ours + ([FAST] if "memkernels-cuda" in ours else []) + list(peer_table(DEVICE))


def _backend(impl: str) -> str:
    return "cuda" if impl == FAST else impl.removeprefix("memkernels-")


def _with_fast_paths(step):
    """step with the CUDA fast paths on for its duration (forward and backward)."""
    def run():
        with fast_paths_on():
            step()
    return run


def _tensors(shapes, grad):
    return tuple(torch.randn(*s, device=DEVICE, dtype=DTYPE).requires_grad_(grad) for s in shapes)


def _bench(measure, benchmark, op, mode, impl, shape, shapes, forward_of, costs):
    """Benchmark forward_of(tensors) on fresh inputs of `shapes` per set."""
    def make_step(_set_index):
        inputs = _tensors(shapes, grad=mode != "fwd")
        step = _training_or_inference_step(lambda: forward_of(inputs), inputs, mode)
        return _with_fast_paths(step) if impl == FAST else step

    set_bytes = sum(torch.Size(s).numel() for s in shapes) * SIZE
    benchmark.group = f"{op} {mode} {' '.join(f'{n}{v}' for n, v in zip(_dims(op), shape))} {DTYPE}"
    info = {"kind": "kernel", "op": op, "mode": mode, "impl": impl, "shape": list(shape),
            "dtype": str(DTYPE).removeprefix("torch.")}
    try:
        if "sdpa" in impl:  # which of SDPA's kernels this entry times
            info["sdpa_kernel"] = peers.sdpa_kernels_used(make_step(0))
        measure(info, make_step, set_bytes, *costs[mode])
    except peers.PeerUnavailable as why:
        pytest.skip(str(why))


def _dims(op):
    return "BKW" if op == "memory_norm" else "BLKHD"


def _shape_id(shape):
    return "-".join(map(str, shape))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", _impls("memory_read", peers.memory_read_peers))
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=_shape_id)
def test_memory_read(measure, benchmark, shape, impl, mode):
    B, L, K, H, D = shape
    scale = D ** -0.5
    if impl.startswith("memkernels-"):
        backend = _backend(impl)
        forward_of = lambda t: memkernels.memory_read(*t, scale=scale, backend=backend)  # noqa: E731
    else:
        peer = peers.memory_read_peers(DEVICE)[impl]
        forward_of = lambda t: peer(*t, scale)  # noqa: E731
    _bench(measure, benchmark, "memory_read", mode, impl, shape, [(B, L, H, D), (B, K, H, D), (B, K, H, D)],
           forward_of, cost.memory_read(B, L, K, H, D, SIZE))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", _impls("slot_attention", peers.slot_attention_peers))
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=_shape_id)
def test_slot_attention(measure, benchmark, shape, impl, mode):
    B, L, K, H, D = shape
    tau, scale = 0.25, D ** -0.5
    if impl.startswith("memkernels-"):
        backend = _backend(impl)
        forward_of = lambda t: memkernels.slot_attention(*t, tau=tau, backend=backend)  # noqa: E731
    else:
        peer = peers.slot_attention_peers(DEVICE)[impl]
        forward_of = lambda t: peer(*t, None, scale / tau)  # noqa: E731
    _bench(measure, benchmark, "slot_attention", mode, impl, shape, [(B, K, H, D)] * 3 + [(B, L, H, D)] * 2,
           forward_of, cost.slot_attention(B, L, K, H, D, SIZE))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", _impls("memory_norm", peers.memory_norm_peers))
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=_shape_id)
def test_memory_norm(measure, benchmark, shape, impl, mode):
    B, K, W = shape
    eps = 1e-12
    if impl.startswith("memkernels-"):
        backend = _backend(impl)
        forward_of = lambda t: memkernels.memory_norm(*t, eps=eps, backend=backend)  # noqa: E731
    else:
        peer = peers.memory_norm_peers(DEVICE)[impl]
        forward_of = lambda t: peer(*t, eps)  # noqa: E731
    _bench(measure, benchmark, "memory_norm", mode, impl, shape, [(B, K, W), (K, W)], forward_of,
           cost.memory_norm(B, K, W, SIZE))
