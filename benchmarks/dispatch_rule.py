"""The measured rule `backend="auto"` follows (`memkernels.rules`), from a benchmark.

    python -m benchmarks.dispatch_rule OPS_JSON [OPS_JSON ...] --out memkernels/rules/<kind>.json
        From pytest-benchmark reports of benchmarks/test_ops.py (a GPU run): every
        (op, dtype, mode, shape) with its memkernels-<backend> entries ranked by eager time
        per call, the time a training loop sees (peers are not backends and stay out; so does
        memkernels-cuda-fast, the CUDA backend with its opt-in fast paths). The device kind
        is the local GPU's when one is present, else --device-kind.

    python -m benchmarks.dispatch_rule --measure [--quick] --out memkernels/rules/cpu.json \
            --measurements benchmarks/results/cpu/dispatch.json
        Measures here, over GRID: every backend `auto` may pick for the dtype on this device,
        timed in interleaved rounds (each round runs every backend once, so a shared machine's
        drift moves them together), the median per backend. `make dispatch-rule` runs it.

The rule keeps each measured shape's ranking; `auto` takes the nearest measured shape's.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import memkernels
from memkernels import capabilities, dispatch, rules
from memkernels.capabilities import dtype_name

ATTENTION_OPS = ("memory_read", "slot_attention")
# (B, L, K, H, D) measured on a CPU: short and long segments, few to many slots, one and many
# sequences. A GPU's grid is benchmarks/test_ops.py's.
GRID = [(b, l, k, 8, 64) for b in (1, 8) for l in (64, 256) for k in (16, 128, 1024)]
QUICK_GRID = [(1, 8, 4, 2, 8), (2, 16, 64, 2, 8)]
DTYPES = (torch.float32, torch.bfloat16)
ROUNDS, QUICK_ROUNDS = 7, 2
# Calls per timed block: enough for ~20 ms, so timer resolution and call jitter stay small.
BLOCK_SECONDS = 0.02


def _commit() -> str:
    if os.environ.get("MEMKERNELS_COMMIT"):
        return os.environ["MEMKERNELS_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _source(device: str, how: str) -> dict:
    return {"device": device, "date": datetime.date.today().isoformat(), "commit": _commit(),
            "torch": torch.__version__, "how": how}


def rank(entries: list[dict]) -> list[rules.Point]:
    """One Point per (op, dtype, mode, shape), its backends fastest first; entries are
    {"op", "dtype", "mode", "shape", "backend", "ms"}."""
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for e in entries:
        key = (e["op"], e["dtype"], e["mode"], tuple(e["shape"]))
        groups.setdefault(key, []).append((e["ms"], e["backend"]))
    points = []
    for (op, dtype, mode, shape), timings in groups.items():
        timings.sort()
        points.append(rules.Point(op, dtype, mode, shape, tuple(b for _, b in timings),
                                  tuple(round(ms, 6) for ms, _ in timings)))
    return points


def entries_from_ops_json(paths) -> tuple[list[dict], str]:
    """The memkernels-<backend> entries of pytest-benchmark reports, and the device they name."""
    entries, devices = [], set()
    for path in paths:
        for bench in json.loads(Path(path).read_text())["benchmarks"]:
            info = bench.get("extra_info", {})
            impl = info.get("impl", "")
            backend = impl.removeprefix("memkernels-")
            if info.get("kind") != "kernel" or info.get("op") not in ATTENTION_OPS or backend not in dispatch.BACKENDS:
                continue
            devices.add(info.get("device", "?"))
            entries.append({"op": info["op"], "dtype": info["dtype"], "mode": info["mode"],
                            "shape": info["shape"], "backend": backend, "ms": info["median_ms_per_call"]})
    return entries, ", ".join(sorted(devices))


def _inputs(op: str, shape, dtype, device, grad: bool):
    batch, tokens, slots, heads, head_dim = shape
    gen = torch.Generator().manual_seed(0)
    if op == "memory_read":
        shapes = [(batch, tokens, heads, head_dim), (batch, slots, heads, head_dim), (batch, slots, heads, head_dim)]
    else:
        shapes = [(batch, slots, heads, head_dim)] * 3 + [(batch, tokens, heads, head_dim)] * 2
    return [torch.randn(s, generator=gen).to(device, dtype).requires_grad_(grad) for s in shapes]


def _step(op: str, backend: str, tensors, mode: str):
    call = getattr(memkernels, op)
    kwargs = {"tau": 0.25} if op == "slot_attention" else {}
    if mode == "fwd":
        def forward():
            with torch.no_grad():
                call(*tensors, backend=backend, **kwargs)
        return forward
    grad_out = torch.randn_like(call(*tensors, backend=backend, **kwargs))

    def training():
        torch.autograd.grad(call(*tensors, backend=backend, **kwargs), tensors, grad_out)
    return training


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _block_ms(step, calls: int, device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    _sync(device)
    return (time.perf_counter() - start) / calls * 1e3


def candidates(op: str, dtype, device) -> list[str]:
    """The backends `auto` may pick for `op` and `dtype` on this device."""
    return [b for b in capabilities.TABLE[op]
            if (entry := capabilities.support(op, b, device.type)) is not None and dtype in entry.auto_dtypes
            and dispatch.why_unavailable(b, device, dtype, op=op) is None]


def measure(grid, dtypes, rounds: int, device) -> list[dict]:
    entries = []
    for op in ATTENTION_OPS:
        for dtype in dtypes:
            backends = candidates(op, dtype, device)
            if len(backends) < 2:
                continue
            for shape in grid:
                for mode in rules.MODES:
                    tensors = _inputs(op, shape, dtype, device, grad=mode == "fwd_bwd")
                    steps = {b: _step(op, b, tensors, mode) for b in backends}
                    calls = {}
                    for backend, step in steps.items():
                        step()
                        calls[backend] = max(1, int(BLOCK_SECONDS / max(_block_ms(step, 1, device) / 1e3, 1e-6)))
                    times = {b: [] for b in backends}
                    for _ in range(rounds):
                        for backend, step in steps.items():
                            times[backend].append(_block_ms(step, calls[backend], device))
                    for backend, ms in times.items():
                        entries.append({"op": op, "dtype": dtype_name(dtype), "mode": mode, "shape": list(shape),
                                        "backend": backend, "ms": statistics.median(ms)})
                    print(f"{op} {dtype_name(dtype)} {mode} {shape}: " + ", ".join(
                        f"{b} {statistics.median(t):.3f} ms" for b, t in times.items()), flush=True)
    return entries


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()}, " \
           f"{torch.get_num_threads()} torch threads)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ops_json", nargs="*", help="pytest-benchmark reports of benchmarks/test_ops.py")
    parser.add_argument("--out", required=True, help="the rule file to write")
    parser.add_argument("--device-kind", help="the rule's device kind, where no GPU is here to ask")
    parser.add_argument("--measure", action="store_true", help="measure on this machine instead")
    parser.add_argument("--quick", action="store_true", help="with --measure: a tiny grid, for tests")
    parser.add_argument("--measurements", help="with --measure: where to write the raw timings")
    args = parser.parse_args(argv)

    if args.measure == bool(args.ops_json):
        parser.error("give either OPS_JSON files or --measure")
    if args.measure:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        grid, rounds = (QUICK_GRID, QUICK_ROUNDS) if args.quick else (GRID, ROUNDS)
        entries = measure(grid, DTYPES, rounds, device)
        kind = rules.device_kind(device.type)
        how = (f"python -m benchmarks.dispatch_rule --measure{' --quick' if args.quick else ''}: "
               f"median of {rounds} interleaved rounds of ~{BLOCK_SECONDS * 1e3:.0f} ms per backend")
        source = _source(_device_name(device), how)
        if args.measurements:
            Path(args.measurements).parent.mkdir(parents=True, exist_ok=True)
            Path(args.measurements).write_text(json.dumps({"source": source, "entries": entries}, indent=1) + "\n")
    else:
        entries, device = entries_from_ops_json(args.ops_json)
        if torch.cuda.is_available():
            kind = rules.device_kind("cuda")
        elif args.device_kind:
            kind = args.device_kind
        else:
            parser.error("no GPU here to name the device kind: pass --device-kind (e.g. cuda-sm90)")
        source = _source(device, "python -m benchmarks.dispatch_rule " + " ".join(map(str, args.ops_json))
                         + ": eager median per call")
    if not entries:
        sys.exit("no measurements of two or more backends: no rule written")
    rule = rules.Rule(kind, source, tuple(rank(entries)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rules.rule_to_json(rule), indent=1) + "\n")
    print(rules.describe_rule(rule, args.out))


if __name__ == "__main__":
    main()
