"""Summarise pytest-benchmark JSON of benchmarks/test_ops.py and test_overhead.py as markdown.

    python -m benchmarks.report ops.json [overhead.json ...]
    python -m benchmarks.report --json ops.jsonl > ops.json

Kernel entries, per group (op, mode, shape, dtype): eager ms per call, kernel ms per call
(CUDA-graph replay, working set above L2; the eager time on a CPU), GB/s and % of the copy
bandwidth from the kernel time, % of the roofline (the copy bandwidth and matrix-multiply
rate measured in the same run), and speed against the fastest peer on both clocks; an SDPA
entry names the SDPA kernel that ran. Overhead entries, per (op, mode): microseconds per call
and the ratio to the plain autograd.Function over the same reference math.

A `.jsonl` file (MEMKERNELS_BENCH_JSONL, one entry per line as measured) reads like the JSON
of a run; `--json` prints it as pytest-benchmark JSON marked `"partial": true`, for the tools
that take ops.json when a run was cut short.
"""
import json
import sys

MEMKERNELS = "memkernels-"


def load(path: str) -> dict:
    """A pytest-benchmark JSON report, or the entries of a .jsonl file as one (partial)."""
    with open(path) as f:
        if not path.endswith(".jsonl"):
            return json.load(f)
        return {"partial": True, "benchmarks": [json.loads(line) for line in f if line.strip()]}


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _ratio(best, value):
    return "-" if best is None or value is None else f"{best / value:.2f}x"


def _best_peer(benches, key):
    times = [b["extra_info"].get(key) for b in benches if not b["extra_info"]["impl"].startswith(MEMKERNELS)]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def _label(info) -> str:
    return f"{info['impl']} ({info['sdpa_kernel']})" if "sdpa_kernel" in info else info["impl"]


def ceilings(benches: list) -> str:
    """The run's copy bandwidth and matrix-multiply rate, from its first kernel entry."""
    info = next((b["extra_info"] for b in benches if "copy_GB_per_s" in b["extra_info"]), None)
    if info is None:
        return "ceilings: not recorded"
    matmul = f"{info['matmul_TFLOP_per_s']:.3g} TFLOP/s ({info['matmul_dtype']} matmul)" \
        if "matmul_TFLOP_per_s" in info else "matmul rate not recorded"
    return f"ceilings measured in this run: copy {info['copy_GB_per_s']:.0f} GB/s (read + write), {matmul}"


def kernel_table(benches: list) -> list[str]:
    lines = [ceilings(benches), "",
             "| group | impl | eager ms/call | kernel ms/call | GB/s | % copy BW | % roofline | vs best peer (eager) "
             "| vs best peer (kernel) |", "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[str, list] = {}
    for bench in benches:
        groups.setdefault(bench["group"], []).append(bench)
    for group, members in groups.items():
        best_eager, best_kernel = _best_peer(members, "median_ms_per_call"), _best_peer(members, "kernel_ms")
        def fastest_first(bench):
            info = bench["extra_info"]
            return info.get("kernel_ms") is None, info.get("kernel_ms") or info["median_ms_per_call"]

        order = sorted(members, key=fastest_first)
        for bench in order:
            info = bench["extra_info"]
            lines.append(
                f"| {group} | {_label(info)} | {info['median_ms_per_call']:.4f} | {_fmt(info.get('kernel_ms'), '.4f')} "
                f"| {_fmt(info.get('GB_per_s'), '.1f')} | {_fmt(info.get('pct_of_copy_bandwidth'), '.1f')} "
                f"| {_fmt(info.get('pct_of_roofline'), '.1f')} "
                f"| {_ratio(best_eager, info['median_ms_per_call'])} | {_ratio(best_kernel, info.get('kernel_ms'))} |")
    return lines


def overhead_table(benches: list) -> list[str]:
    lines = ["| op | mode | impl | us/call (median) | us/call (min) | vs plain autograd.Function |",
             "|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for bench in benches:
        info = bench["extra_info"]
        groups.setdefault((info["op"], info["mode"]), []).append(info)
    for (op, mode), members in groups.items():
        plain = next((m["median_us_per_call"] for m in members if m["impl"] == "plain-function"), None)
        for info in sorted(members, key=lambda m: m["median_us_per_call"]):
            ratio = "-" if plain is None else f"{info['median_us_per_call'] / plain:.2f}"
            lines.append(f"| {op} | {mode} | {info['impl']} | {info['median_us_per_call']:.1f} "
                         f"| {info['min_us_per_call']:.1f} | {ratio} |")
    return lines


def table(report: dict) -> str:
    benches = report["benchmarks"]
    machine = report.get("machine_info", {})
    device = benches[0]["extra_info"].get("device", "?") if benches else "?"
    lines = [f"device: {device}; python {machine.get('python_version', '?')}; "
             f"commit {report.get('commit_info', {}).get('id', '?')[:12]}; date {report.get('datetime', '?')}"
             + ("; PARTIAL: the run was cut short, these are the entries it finished" if report.get("partial") else ""),
             ""]
    kernel = [b for b in benches if b["extra_info"].get("kind", "kernel") == "kernel"]
    overhead = [b for b in benches if b["extra_info"].get("kind") == "overhead"]
    if kernel:
        lines += kernel_table(kernel)
    if overhead:
        lines += ([""] if kernel else []) + overhead_table(overhead)
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--json"]:
        print(json.dumps(load(sys.argv[2]), indent=1))
    else:
        for path in sys.argv[1:]:
            print(table(load(path)))
            print()
