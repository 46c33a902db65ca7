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

`extra_info` of every entry: kind, op, mode (fwd | fwd_bwd), impl, shape ([B, L, K, H, D]
or [B, K, W]), dtype, device, eager and kernel ms per call, GB/s and TFLOP/s by docs/SPEC.md's
cost model from the kernel time, % of the copy bandwidth measured in this run (also with
L2 out of the picture), and peak device memory.
"""
import math
import statistics
import time

import pytest
import torch

from memkernels import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_DEFAULT_L2_BYTES = 64 * 2**20
_MAX_INPUT_SETS = 256


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


@pytest.fixture(scope="session")
def copy_bandwidth():
    """Bytes read plus bytes written per second for a device-to-device copy far larger than L2."""
    elements = (256 if DEVICE.type == "cuda" else 32) * 2**20
    src = torch.randn(elements, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = min(_seconds(lambda: dst.copy_(src), 10) for _ in range(3))
    return 2 * src.numel() * src.element_size() / seconds


def graph_kernel_ms(make_step, set_bytes: int, repeats: int = 20) -> float:
    """Median device time per call of make_step(i)() over rotating input sets, from CUDA-graph
    replays timed with events."""
    n_sets = max(1, min(_MAX_INPUT_SETS, math.ceil(3 * l2_bytes() / max(set_bytes, 1))))
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


@pytest.fixture
def measure(benchmark, copy_bandwidth):
    """measure(info, make_step, set_bytes, bytes_moved, flops): benchmark make_step(0) eagerly
    and, on CUDA, make_step(i) for rotating i in a CUDA graph; record the figures."""

    def run(info: dict, make_step, set_bytes: int, bytes_moved: float, flops: float):
        fn = make_step(0)
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

        benchmark.pedantic(timed, rounds=max(5, min(50, int(0.5 / (once * reps)))), warmup_rounds=1)
        eager_ms = benchmark.stats.stats.median / reps * 1e3
        extra = {**info, "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                 "reps_per_round": reps, "median_ms_per_call": eager_ms, "copy_GB_per_s": copy_bandwidth / 1e9}
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
        })
        benchmark.extra_info.update(extra)

    return run
