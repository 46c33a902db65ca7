"""The benchmark entry points run on a CPU and write what they promise."""
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import claims

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


def test_op_benchmarks_write_pytest_benchmark_json(tmp_path):
    report = tmp_path / "ops.json"
    subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_ops.py", "-q", "-p", "no:cacheprovider",
                    "-k", "memory_norm", f"--benchmark-json={report}"], cwd=ROOT, check=True, capture_output=True)
    benches = json.loads(report.read_text())["benchmarks"]
    assert {b["extra_info"]["impl"] for b in benches} >= {"memkernels-torch", "eager", "compiled"}
    for bench in benches:
        assert bench["extra_info"]["GB_per_s"] > 0 and bench["extra_info"]["median_ms_per_call"] > 0
