"""Summarise pytest-benchmark JSON of benchmarks/test_ops.py and test_overhead.py as markdown.

    python -m benchmarks.report ops.json [overhead.json ...]

Kernel entries, per group (op, mode, shape, dtype): eager ms per call, kernel ms per call
(CUDA-graph replay, working set above L2; the eager time on a CPU), GB/s and % of the copy
bandwidth from the kernel time, and speed against the fastest peer on both clocks.
Overhead entries, per (op, mode): microseconds per call and the ratio to the plain
autograd.Function over the same reference math.
"""
import json
import sys

MEMKERNELS = "memkernels-"


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _ratio(best, value):
    return "-" if best is None or value is None else f"{best / value:.2f}x"


def _best_peer(benches, key):
    times = [b["extra_info"].get(key) for b in benches if not b["extra_info"]["impl"].startswith(MEMKERNELS)]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def kernel_table(benches: list) -> list[str]:
    lines = ["| group | impl | eager ms/call | kernel ms/call | GB/s | % copy BW | vs best peer (eager) "
             "| vs best peer (kernel) |", "|---|---|---|---|---|---|---|---|"]
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
                f"| {group} | {info['impl']} | {info['median_ms_per_call']:.4f} | {_fmt(info.get('kernel_ms'), '.4f')} "
                f"| {_fmt(info.get('GB_per_s'), '.1f')} | {_fmt(info.get('pct_of_copy_bandwidth'), '.1f')} "
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
             f"commit {report.get('commit_info', {}).get('id', '?')[:12]}; date {report.get('datetime', '?')}", ""]
    kernel = [b for b in benches if b["extra_info"].get("kind", "kernel") == "kernel"]
    overhead = [b for b in benches if b["extra_info"].get("kind") == "overhead"]
    if kernel:
        lines += kernel_table(kernel)
    if overhead:
        lines += ([""] if kernel else []) + overhead_table(overhead)
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(table(json.load(f)))
        print()
