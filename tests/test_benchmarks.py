"""The benchmark entry points run on a CPU and write what they promise."""
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import claims, report

ROOT = Path(__file__).resolve().parents[1]
CLAIM_KEYS = ("memory_ratio_at_max", "memory_minus_weights_ratio_at_max", "state_ratio_at_max", "speed_ratio",
              "speed_ratio_no_head", "flop_ratio", "flop_ratio_recompute_txl", "mrbp_memory_ratio", "mrbp_speed")


def test_quick_claims_write_json_markdown_and_plots(tmp_path):
    claims.main(["--quick", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "claims.json").read_text())
    assert isinstance(result["device"], str) and result["git_commit"]
    for key in CLAIM_KEYS:
        assert isinstance(result[key], float) and result[key] > 0, key
    # The method: caches full before the peak is taken, state bytes as the formula says.
    setting, largest = result["setting"], result["memory"][-1]
    assert largest["segments"] >= -(-largest["memory_size"] // setting["segment_len"]) + 4
    for row in result["memory"]:
        for model in ("txl", "memformer_reference"):
            assert row[f"{model}_state_bytes"] == row[f"{model}_state_formula_bytes"], (row["memory_size"], model)
            assert row[f"{model}_peak_bytes"] == row[f"{model}_peak_minus_weights_bytes"] + row[f"{model}_weight_bytes"]
    # Even at toy size the ratios point the paper's way.
    assert result["state_ratio_at_max"] >= 1.5 and result["memory_ratio_at_max"] > 1, result["summary"]
    assert result["flop_ratio_recompute_txl"] > result["flop_ratio"], "recomputing the memory must cost more"
    assert result["mrbp_memory_ratio"] < 1, "MRBP must hold less than BPTT"
    mrbp_rows = result["mrbp"]
    bptt_growth = mrbp_rows["reference/bptt/h16"]["peak_bytes"] - mrbp_rows["reference/bptt/h4"]["peak_bytes"]
    assert isinstance(result["mrbp_memory_delta_horizon16_bytes"], int)
    assert result["mrbp_memory_delta_horizon16_bytes"] < 0.1 * bptt_growth, "MRBP's memory must not grow like BPTT's"
    markdown = (tmp_path / "claims.md").read_text()
    for fact in (result["device"], result["git_commit"][:12], result["torch"], "recomputing TXL", "no head"):
        assert fact in markdown, fact
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


def test_overhead_pairs_print_a_ratio_per_op_and_mode():
    run = subprocess.run([sys.executable, "-m", "benchmarks.overhead_pairs", "3"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| memory")
            or line.startswith("| slot")]
    assert {(op.strip(), mode.strip()) for op, mode, *_ in rows} == {
        (op, mode) for op in ("memory_read", "slot_attention", "memory_norm") for mode in ("fwd_grad", "fwd_bwd")}
    assert all(float(row[-1].strip().removesuffix("x")) > 0 for row in rows)
