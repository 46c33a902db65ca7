"""Timing done right for the op benchmarks, and the machine's own copy bandwidth.

Each benchmarked call synchronises the device, warm-up runs happen before the
rounds, and the figure that matters is pytest-benchmark's median. Calls that
take well under a millisecond are repeated `reps` times inside one round so
launch and synchronisation overhead do not dominate; `extra_info` holds the
per-call numbers: time, GB/s by SPEC.md's cost model, % of the copy bandwidth
measured in this same run, TFLOP/s and peak device memory.
"""
import time

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn, reps):
    synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize()
    return (time.perf_counter() - start) / reps


@pytest.fixture(scope="session")
def copy_bandwidth():
    """Bytes read plus bytes written per second for a large device-to-device copy."""
    elements = (256 if DEVICE.type == "cuda" else 32) * 2**20
    src = torch.randn(elements, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = min(_seconds(lambda: dst.copy_(src), 10) for _ in range(3))
    return 2 * src.numel() * src.element_size() / seconds


@pytest.fixture
def measure(benchmark, copy_bandwidth):
    """measure(impl, fn, bytes_moved, flops): benchmark fn and record the roofline figures."""

    def run(impl, fn, bytes_moved, flops):
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
        per_call = benchmark.stats.stats.median / reps
        benchmark.extra_info.update({
            "impl": impl,
            "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
            "reps_per_round": reps,
            "median_ms_per_call": per_call * 1e3,
            "GB_per_s": bytes_moved / per_call / 1e9,
            "pct_of_copy_bandwidth": 100 * bytes_moved / per_call / copy_bandwidth,
            "copy_GB_per_s": copy_bandwidth / 1e9,
            "TFLOP_per_s": flops / per_call / 1e12,
        })
        if DEVICE.type == "cuda":
            benchmark.extra_info["peak_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20

    return run
