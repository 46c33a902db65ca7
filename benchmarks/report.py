"""Summarise a pytest-benchmark JSON of benchmarks/test_ops.py as a markdown table.

`python -m benchmarks.report ops.json` prints, per group (op, mode, shape,
dtype), every implementation's per-call median, GB/s, % of the copy bandwidth
measured in the same run, and its speed relative to the fastest peer.
"""
import json
import sys

MEMKERNELS = "memkernels-"


def _impl(bench):
    return bench["extra_info"]["impl"]


def table(report: dict) -> str:
    machine = report.get("machine_info", {})
    groups: dict[str, list] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    lines = [f"device: {report['benchmarks'][0]['extra_info']['device'] if report['benchmarks'] else '?'}; "
             f"python {machine.get('python_version', '?')}; date {report.get('datetime', '?')}", ""]
    lines += ["| group | impl | ms/call | GB/s | % copy BW | vs best peer |", "|---|---|---|---|---|---|"]
    for group, benches in groups.items():
        times = {_impl(b): b["extra_info"]["median_ms_per_call"] for b in benches}
        peer_times = [t for name, t in times.items() if not name.startswith(MEMKERNELS)]
        best_peer = min(peer_times) if peer_times else None
        for bench in sorted(benches, key=lambda b: b["extra_info"]["median_ms_per_call"]):
            info, name = bench["extra_info"], _impl(bench)
            ratio = f"{best_peer / info['median_ms_per_call']:.2f}x" if best_peer else "-"
            lines.append(f"| {group} | {name} | {info['median_ms_per_call']:.4f} | {info['GB_per_s']:.1f} | "
                         f"{info['pct_of_copy_bandwidth']:.1f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(table(json.load(f)))
