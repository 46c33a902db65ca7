"""Timing done right for the op benchmarks, and the machine's own copy bandwidth.

Two figures per call, with their peers measured in the same run:

* eager wall time (pytest-benchmark's median; calls well under a millisecond are repeated
  inside a round, one synchronisation per round): what a user's Python loop sees, host
  overhead included;
* kernel time (CUDA only): the same calls captured in one CUDA graph and replayed, timed
  with CUDA events, so the host is out of the way. The captured calls rotate over enough
  input sets that the working set is at least three times the L2 cache, so every call
  reads its inputs from HBM, as the bandwidth columns assume. On a CPU there is no separate
  device clock, and the kernel time is the eager time.

Two ceilings are measured once per run, on the same device: the copy bandwidth (a
device-to-device copy far larger than L2, bytes read plus bytes written) and the matrix-multiply
rate (bfloat16 on CUDA, float32 on a CPU). An entry's roofline time is the larger of its bytes
over the one and its FLOPs over the other (docs/SPEC.md's cost model); % of roofline is that
time over the kernel time.

`extra_info` of every entry: kind, op, mode (fwd | fwd_bwd), impl, shape ([B, L, K, H, D]
or [B, K, W]), dtype, device, eager and kernel ms per call, GB/s and TFLOP/s by the cost model
from the kernel time, % of the copy bandwidth, both ceilings, the roofline time and % of it,
the input sets rotated and the L2 size, and peak device memory.

Environment: MEMKERNELS_BENCH=quick takes the shapes of `gpu_session.sh quick` and fewer
rounds per entry; MEMKERNELS_BENCH_WARM_ONLY=1 runs each entry's calls twice without timing
them (to fill the compile caches ahead of a timed run); MEMKERNELS_BENCH_JSONL=PATH appends
each entry to PATH as it is measured, so a run cut short keeps what it measured
(`python -m benchmarks.report --json PATH` turns it into pytest-benchmark JSON).
"""
import json
import math
import os
import statistics
import time

import pytest
import torch

from memkernels import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_DEFAULT_L2_BYTES = 64 * 2**20
_MAX_INPUT_SETS = 256
PROFILES = ("full", "quick")
PROFILE = os.environ.get("MEMKERNELS_BENCH", "full")
if PROFILE not in PROFILES:
    raise ValueError(f"MEMKERNELS_BENCH must be one of {PROFILES}, got {PROFILE!r}")
MAX_ROUNDS, GRAPH_REPEATS = (15, 10) if PROFILE == "quick" else (50, 20)
WARM_ONLY = os.environ.get("MEMKERNELS_BENCH_WARM_ONLY") == "1"
MATMUL_DTYPE, MATMUL_SIZE = (torch.bfloat16, 8192) if DEVICE.type == "cuda" else (torch.float32, 512)


def pytest_collection_modifyitems(items):
    """The op benchmarks in the order that a run stopped at its bound loses least: memory_norm
    first (few, cheap entries), then shape by shape, every op and implementation at a shape
    before the next shape."""
    first_seen: dict = {}
    for item in items:
        shape = getattr(item, "callspec", None) and item.callspec.params.get("shape")
        first_seen.setdefault(shape, len(first_seen))

    def order(indexed):
        index, item = indexed
        if not item.nodeid.startswith("benchmarks/test_ops.py"):
            return (2, 0, index)
        return (0 if "memory_norm" in item.name else 1, first_seen[item.callspec.params["shape"]], index)

    items[:] = [item for _, item in sorted(enumerate(items), key=order)]


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def backends_here(dtype, op: str = "memory_read") -> list[str]:
    """Backends that run `op` in `dtype` on this machine's device (the Triton interpreter is a
    correctness tool and never timed)."""
    usable = [b for b in dispatch.BACKENDS if dispatch.why_unavailable(b, DEVICE, dtype, op=op) is None]
    return [b for b in usable if DEVICE.type == "cuda" or b != "triton"]


def l2_bytes() -> int:
    if DEVICE.type != "cuda":
        return 0
    return getattr(torch.cuda.get_device_properties(DEVICE), "L2_cache_size", 0) or _DEFAULT_L2_BYTES


def _seconds(fn, reps):
    synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize()
    return (time.perf_counter() - start) / reps


def measure_copy_bandwidth() -> float:
    """Bytes read plus bytes written per second for a device-to-device copy far larger than L2."""
    elements = (256 if DEVICE.type == "cuda" else 32) * 2**20
    src = torch.randn(elements, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = min(_seconds(lambda: dst.copy_(src), 10) for _ in range(3))
    return 2 * src.numel() * src.element_size() / seconds


def measure_matmul_rate() -> float:
    """FLOP/s of a square MATMUL_SIZE matrix product in MATMUL_DTYPE (2 n^3 FLOPs per product)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=DEVICE, dtype=MATMUL_DTYPE)
    b, out = torch.randn_like(a), torch.empty_like(a)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    seconds = min(_seconds(lambda: torch.matmul(a, b, out=out), 10) for _ in range(3))
    return 2 * MATMUL_SIZE**3 / seconds


def roofline_ms(bytes_moved: float, flops: float, bandwidth: float, flop_rate: float) -> float:
    """The least time an op can take: its bytes at the copy bandwidth or its FLOPs at the
    matrix-multiply rate, whichever is longer."""
    return 1e3 * max(bytes_moved / bandwidth, flops / flop_rate)


@pytest.fixture(scope="session")
def copy_bandwidth():
    return measure_copy_bandwidth()


@pytest.fixture(scope="session")
def matmul_rate():
    return measure_matmul_rate()


def input_sets(set_bytes: int) -> int:
    """Input sets to rotate over so that their working set is at least three times L2."""
    return max(1, min(_MAX_INPUT_SETS, math.ceil(3 * l2_bytes() / max(set_bytes, 1))))


def graph_kernel_ms(make_step, set_bytes: int, repeats: int = GRAPH_REPEATS) -> float:
    """Median device time per call of make_step(i)() over rotating input sets, from CUDA-graph
    replays timed with events."""
    n_sets = input_sets(set_bytes)
    steps = [make_step(i) for i in range(n_sets)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for step in steps:
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for step in steps:
            step()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / n_sets)
    return statistics.median(times)


def _append_jsonl(path: str, benchmark, extra: dict):
    entry = {"group": benchmark.group, "name": benchmark.name, "fullname": benchmark.fullname,
             "stats": {"median": benchmark.stats.stats.median}, "extra_info": extra}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


@pytest.fixture
def measure(benchmark, copy_bandwidth, matmul_rate):
    """measure(info, make_step, set_bytes, bytes_moved, flops): benchmark make_step(0) eagerly
    and, on CUDA, make_step(i) for rotating i in a CUDA graph; record the figures."""

    def run(info: dict, make_step, set_bytes: int, bytes_moved: float, flops: float):
        fn = make_step(0)
        if WARM_ONLY:
            fn()
            fn()
            synchronize()
            return
        for _ in range(3):
            fn()
        once = _seconds(fn, 1)
        reps = max(1, min(200, int(2e-3 / max(once, 1e-7))))
        if DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()

        def timed():
            for _ in range(reps):
                fn()
            synchronize()

        benchmark.pedantic(timed, rounds=max(5, min(MAX_ROUNDS, int(0.5 / (once * reps)))), warmup_rounds=1)
        eager_ms = benchmark.stats.stats.median / reps * 1e3
        extra = {**info, "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                 "reps_per_round": reps, "median_ms_per_call": eager_ms, "copy_GB_per_s": copy_bandwidth / 1e9,
                 "matmul_TFLOP_per_s": matmul_rate / 1e12, "matmul_dtype": str(MATMUL_DTYPE).removeprefix("torch."),
                 "roofline_ms": roofline_ms(bytes_moved, flops, copy_bandwidth, matmul_rate),
                 "input_sets": input_sets(set_bytes) if DEVICE.type == "cuda" else 1, "l2_MiB": l2_bytes() / 2**20}
        if DEVICE.type == "cuda":
            extra["peak_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            try:
                kernel_ms = graph_kernel_ms(make_step, set_bytes)
            except RuntimeError as error:  # a peer that cannot be captured keeps its eager figures
                kernel_ms, extra["kernel_ms_error"] = None, str(error).splitlines()[0]
        else:
            kernel_ms = eager_ms
        extra["kernel_ms"] = kernel_ms
        seconds = None if kernel_ms is None else kernel_ms / 1e3
        extra.update({
            "GB_per_s": seconds and bytes_moved / seconds / 1e9,
            "pct_of_copy_bandwidth": seconds and 100 * bytes_moved / seconds / copy_bandwidth,
            "TFLOP_per_s": seconds and flops / seconds / 1e12,
            "pct_of_roofline": seconds and 100 * extra["roofline_ms"] / kernel_ms,
        })
        benchmark.extra_info.update(extra)
        if path := os.environ.get("MEMKERNELS_BENCH_JSONL"):
            _append_jsonl(path, benchmark, extra)

    return run
