"""The benchmark entry points run on a CPU and write what they promise."""
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import claims, report

ROOT = Path(__file__).resolve().parents[1]
CLAIM_KEYS = ("memory_ratio_at_max", "state_ratio_at_max", "speed_ratio", "mrbp_memory_ratio", "mrbp_speed")


def test_quick_claims_write_json_markdown_and_plots(tmp_path):
    claims.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "claims.json").read_text())
    assert isinstance(result["device"], str) and result["git_commit"]
    for key in CLAIM_KEYS:
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["mrbp_memory_ratio"] < 1, "MRBP must hold less than BPTT"
    for name in ("claims.md", "memory_vs_size.png", "speed.png", "mrbp.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def _run_benchmarks(path, selection, json_path):
    """pytest-benchmark on one benchmark file; fails with the subprocess's own output."""
    run = subprocess.run([sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", "-k", selection,
                          f"--benchmark-json={json_path}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return json.loads(json_path.read_text())["benchmarks"]


def test_op_benchmarks_write_pytest_benchmark_json(tmp_path):
    benches = _run_benchmarks("benchmarks/test_ops.py", "memory_norm", tmp_path / "ops.json")
    assert {b["extra_info"]["impl"] for b in benches} >= {"memkernels-torch", "eager", "compiled"}
    for bench in benches:
        info = bench["extra_info"]
        assert info["op"] == "memory_norm" and info["mode"] in ("fwd", "fwd_bwd") and len(info["shape"]) == 3
        assert info["median_ms_per_call"] > 0 and info["kernel_ms"] > 0 and info["GB_per_s"] > 0
    assert "| memory_norm fwd" in report.table({"benchmarks": benches})


def test_overhead_benchmark_compares_with_a_plain_function(tmp_path):
    benches = _run_benchmarks("benchmarks/test_overhead.py", "memory_norm", tmp_path / "overhead.json")
    impls = {(b["extra_info"]["impl"], b["extra_info"]["mode"]) for b in benches}
    for mode in ("fwd", "fwd_grad", "fwd_bwd"):
        assert {("memkernels-torch", mode), ("plain-function", mode), ("normalize", mode)} <= impls
    assert all(b["extra_info"]["median_us_per_call"] > 0 for b in benches)
    assert "vs plain autograd.Function" in report.table({"benchmarks": benches})
