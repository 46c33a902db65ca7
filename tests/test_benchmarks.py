"""The benchmark entry points run on a CPU and write what they promise."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks import claims, conftest, peers, report
from benchmarks.test_ops import attention_shapes

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


def test_fewer_claim_points_keep_the_models_and_need_the_compared_points():
    reduced = claims.fewer_points(claims.FULL, memory_sizes=[1024, 2048], speed_memories=[1024], horizons=[4])
    assert (reduced.memory_sizes, reduced.txl_speed_memories, reduced.mrbp_horizons) == ((1024, 2048), (1024,), (4,))
    assert reduced.mrbp_model == claims.FULL.mrbp_model and reduced.vocab_size == claims.FULL.vocab_size
    with pytest.raises(ValueError, match="must include Memformer's 1024 slots"):
        claims.fewer_points(claims.FULL, speed_memories=[512])
    with pytest.raises(ValueError, match="must include 4"):
        claims.fewer_points(claims.FULL, horizons=[16])


def _run_benchmarks(path, selection, json_path, **env):
    """pytest-benchmark on one benchmark file; fails with the subprocess's own output."""
    run = subprocess.run([sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", "-k", selection,
                          f"--benchmark-json={json_path}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **env})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return json.loads(json_path.read_text())["benchmarks"]


def test_op_benchmarks_write_pytest_benchmark_json_and_each_entry_as_it_is_measured(tmp_path):
    jsonl = tmp_path / "ops.jsonl"
    benches = _run_benchmarks("benchmarks/test_ops.py", "memory_norm", tmp_path / "ops.json",
                              MEMKERNELS_BENCH_JSONL=str(jsonl))
    assert {b["extra_info"]["impl"] for b in benches} >= {"memkernels-torch", "eager", "compiled"}
    for bench in benches:
        info = bench["extra_info"]
        assert info["op"] == "memory_norm" and info["mode"] in ("fwd", "fwd_bwd") and len(info["shape"]) == 3
        assert info["median_ms_per_call"] > 0 and info["kernel_ms"] > 0 and info["GB_per_s"] > 0
        assert info["copy_GB_per_s"] > 0 and info["matmul_TFLOP_per_s"] > 0 and info["matmul_dtype"] == "float32"
        assert info["pct_of_roofline"] == pytest.approx(100 * info["roofline_ms"] / info["kernel_ms"])
    partial = report.load(str(jsonl))
    assert partial["partial"] and [b["extra_info"] for b in partial["benchmarks"]] == [b["extra_info"] for b in benches]
    table = report.table(partial)
    assert "| memory_norm fwd" in table and "PARTIAL" in table and "ceilings measured in this run: copy" in table


def test_quick_shapes_are_the_target_shapes():
    quick = attention_shapes(on_gpu=True, profile="quick")
    assert sorted(quick) == sorted((16, L, K, 8, D) for D in (64, 128) for L in (64, 512) for K in (64, 1024))
    full = attention_shapes(on_gpu=True, profile="full")
    assert set(quick) < set(full) and {shape[2] for shape in full} == {64, 256, 1024}
    assert attention_shapes(on_gpu=False, profile="quick") == attention_shapes(on_gpu=False, profile="full")


def test_ceilings_count_bytes_read_and_written_and_two_flops_per_multiply_add(monkeypatch):
    monkeypatch.setattr(conftest, "_seconds", lambda fn, reps: 0.25)
    elements = 32 * 2**20  # the CPU's copy: float32
    assert conftest.measure_copy_bandwidth() == 2 * elements * 4 / 0.25
    assert conftest.measure_matmul_rate() == 2 * conftest.MATMUL_SIZE**3 / 0.25
    # Bytes-bound and FLOP-bound: the roofline time is the longer of the two.
    assert conftest.roofline_ms(3e9, 1e12, bandwidth=3e12, flop_rate=1e15) == pytest.approx(1.0)
    assert conftest.roofline_ms(3e6, 2e12, bandwidth=3e12, flop_rate=1e15) == pytest.approx(2.0)


def test_sdpa_entries_name_the_kernel_that_ran():
    q = torch.randn(2, 3, 5, 8)
    assert peers.sdpa_kernels_used(lambda: F.scaled_dot_product_attention(q, q, q)) == "flash (cpu)"
    with sdpa_kernel(SDPBackend.MATH):
        assert peers.sdpa_kernels_used(lambda: F.scaled_dot_product_attention(q, q, q)) == "math"
    assert peers.sdpa_kernels_used(lambda: q + 1) == "none"


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


def test_op_benchmarks_run_memory_norm_first_then_every_op_shape_by_shape():
    """A run stopped at its bound keeps every op at the shapes it reached."""
    class Item:
        def __init__(self, op, shape):
            self.name, self.callspec = f"test_{op}[{shape}]", SimpleNamespace(params={"shape": shape})
            self.nodeid = f"benchmarks/test_ops.py::{self.name}"

    small, large, norm = (16, 64, 64, 8, 64), (16, 512, 1024, 8, 128), (16, 1024, 512)
    items = [Item("memory_read", small), Item("memory_read", large), Item("slot_attention", small),
             Item("slot_attention", large), Item("memory_norm", norm)]
    conftest.pytest_collection_modifyitems(items)
    assert [(item.name.split("[")[0], item.callspec.params["shape"]) for item in items] == [
        ("test_memory_norm", norm), ("test_memory_read", small), ("test_slot_attention", small),
        ("test_memory_read", large), ("test_slot_attention", large)]
