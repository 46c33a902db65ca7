"""`python -m benchmarks.overhead_pairs [PAIRS]`: each public op's host cost beside a plain autograd.Function.

The same calls as `benchmarks/test_overhead.py` (torch backend, tiny shapes), timed in
interleaved pairs (20 calls of the plain Function, then 20 of the public op, 300 times) and
reported as the median ratio and the median difference per call. Pairing cancels the drift
of a shared machine, which moves absolute timings by tens of percent between runs; the
ratios are what the op-layer target (at most 1.15x) is about. One CPU thread; the tensors
are on this machine's device, as in test_overhead.py.
"""
import statistics
import sys
import time

import torch

from benchmarks.test_overhead import TINY, _step

CALLS = 20


def _per_call_us(step) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        step()
    return (time.perf_counter() - start) / CALLS * 1e6


def main(pairs: int) -> None:
    torch.set_num_threads(1)
    print("| op | mode | plain Function us/call | public op extra us/call | ratio (median of pairs) |")
    print("|---|---|---|---|---|")
    for op in TINY:
        for mode in ("fwd_grad", "fwd_bwd"):
            plain, ours = _step(op, "plain-function", mode), _step(op, "memkernels-torch", mode)
            for _ in range(50):
                plain(), ours()
            timings = [(_per_call_us(plain), _per_call_us(ours)) for _ in range(pairs)]
            base = statistics.median(a for a, _ in timings)
            extra = statistics.median(b - a for a, b in timings)
            ratio = statistics.median(b / a for a, b in timings)
            print(f"| {op} | {mode} | {base:.1f} | {extra:+.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
