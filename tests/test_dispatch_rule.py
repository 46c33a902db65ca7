"""The measured dispatch rule: made from a benchmark report, looked up by `auto` per shape."""
import json

import pytest
import torch

import memkernels
from benchmarks import dispatch_rule
from memkernels import dispatch, rules


def _bench(op, dtype, mode, shape, impl, ms):
    return {"extra_info": {"kind": "kernel", "op": op, "dtype": dtype, "mode": mode, "shape": shape, "impl": impl,
                           "device": "NVIDIA H100 80GB HBM3", "median_ms_per_call": ms}}


def _ops_json(tmp_path):
    """A synthetic GPU report: sdpa wins small K, triton large K; peers and the fast-path
    variant of the CUDA backend are in it too, as in a real report."""
    benches = []
    for k, (sdpa_ms, triton_ms) in {64: (0.1, 0.2), 1024: (0.5, 0.3)}.items():
        shape = [16, 64, k, 8, 64]
        for mode in ("fwd", "fwd_bwd"):
            benches += [_bench("memory_read", "bfloat16", mode, shape, "memkernels-sdpa", sdpa_ms),
                        _bench("memory_read", "bfloat16", mode, shape, "memkernels-triton", triton_ms),
                        _bench("memory_read", "bfloat16", mode, shape, "memkernels-cuda-fast", 0.01),
                        _bench("memory_read", "bfloat16", mode, shape, "flex", 0.01)]
    benches.append(_bench("memory_norm", "bfloat16", "fwd", [16, 1024, 512], "memkernels-triton", 0.1))
    path = tmp_path / "ops.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    return path


@pytest.fixture
def rule_from_report(tmp_path):
    out = tmp_path / "cuda-sm90.json"
    dispatch_rule.main([str(_ops_json(tmp_path)), "--out", str(out), "--device-kind", "cuda-sm90"])
    return rules.rule_from_json(json.loads(out.read_text()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device kind comes from the local GPU there")
def test_rule_from_a_report_ranks_only_backends(rule_from_report):
    assert rule_from_report.device_kind == "cuda-sm90"
    assert rule_from_report.source["device"] == "NVIDIA H100 80GB HBM3"
    points = {(p.mode, p.shape[2]): p.ranking for p in rule_from_report.points}
    # Peers and memkernels-cuda-fast are not backends auto can pick; memory_norm has no rival.
    assert points == {("fwd", 64): ("sdpa", "triton"), ("fwd_bwd", 64): ("sdpa", "triton"),
                      ("fwd", 1024): ("triton", "sdpa"), ("fwd_bwd", 1024): ("triton", "sdpa")}


@pytest.fixture
def installed_rule(monkeypatch, tmp_path):
    """A synthetic CPU rule in a rules folder of its own, where `auto` will find it."""
    points = []
    for k, ranking in ((16, ("sdpa", "torch")), (1024, ("torch", "sdpa"))):
        points.append(rules.Point("memory_read", "float32", "fwd_bwd", (4, 64, k, 8, 64), ranking, (1.0, 2.0)))
    rule = rules.Rule("cpu", {"device": "test"}, tuple(points))
    (tmp_path / "cpu.json").write_text(json.dumps(rules.rule_to_json(rule)))
    monkeypatch.setattr(rules, "RULES_DIR", tmp_path)
    dispatch.clear_cache()
    yield rule
    monkeypatch.undo()
    dispatch.clear_cache()


def _auto(shape, dtype=torch.float32, mode="fwd_bwd", grouped=False, kernels_only=False):
    return dispatch.select("memory_read", "auto", torch.device("cpu"), dtype, shape[-1], grouped, shape, mode,
                           kernels_only)


def test_auto_takes_the_nearest_measured_shape(installed_rule):
    assert _auto((4, 64, 16, 8, 64)) == "sdpa"
    assert _auto((4, 64, 1024, 8, 64)) == "torch"
    # Nearest in log2 space: the boundary is K = 128, halfway between 16 and 1024.
    assert _auto((4, 64, 96, 8, 64)) == "sdpa"
    assert _auto((4, 64, 200, 8, 64)) == "torch"
    # The same shape always takes the same path.
    assert {_auto((2, 50, 90, 4, 32)) for _ in range(3)} == {_auto((2, 50, 90, 4, 32))}


def test_auto_falls_back_where_the_rule_measured_nothing(installed_rule):
    assert _auto((4, 64, 16, 8, 64), dtype=torch.bfloat16) == "torch"  # no bfloat16 points
    assert _auto((4, 64, 16, 8, 64), mode="fwd") == "torch"           # no inference points
    assert _auto((4, 64, 16, 8, 64), kernels_only=True) == "torch"    # the registered op cannot hold sdpa


def test_public_op_follows_the_rule(installed_rule, monkeypatch):
    calls = []
    monkeypatch.setattr(memkernels.sdpa, "memory_read", lambda *a: calls.append("sdpa") or a[0] * 0)
    q = torch.randn(4, 64, 8, 64, requires_grad=True)
    k, v = torch.randn(2, 4, 16, 8, 64).unbind(0)
    memkernels.memory_read(q, k, v)
    assert calls == ["sdpa"]
    memkernels.memory_read(q, *torch.randn(2, 4, 1024, 8, 64).unbind(0))  # the reference, not sdpa
    assert calls == ["sdpa"]


def test_info_names_the_rule_and_its_source(installed_rule):
    text = rules.describe_rule(installed_rule, "somewhere.json")
    assert "measured rule somewhere.json: test" in text
    assert "memory_read float32 fwd_bwd: fastest sdpa at 1, torch at 1 of 2 measured shapes" in text


def test_measure_writes_a_rule_and_its_timings(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatch_rule, "QUICK_GRID", [(1, 3, 2, 1, 8)])
    monkeypatch.setattr(dispatch_rule, "QUICK_ROUNDS", 1)
    monkeypatch.setattr(dispatch_rule, "BLOCK_SECONDS", 0.0)
    out, raw = tmp_path / "rule.json", tmp_path / "timings.json"
    dispatch_rule.main(["--measure", "--quick", "--out", str(out), "--measurements", str(raw)])
    rule = rules.rule_from_json(json.loads(out.read_text()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert rule.device_kind == rules.device_kind(device.type)
    assert {(p.op, p.dtype, p.mode) for p in rule.points} == {
        (op, dtype, mode) for op in ("memory_read", "slot_attention") for dtype in ("float32", "bfloat16")
        for mode in ("fwd", "fwd_bwd")}
    for point in rule.points:
        candidates = dispatch_rule.candidates(point.op, getattr(torch, point.dtype), device)
        assert len(candidates) >= 2 and set(point.ranking) == set(candidates)
        assert list(point.ms) == sorted(point.ms)
    assert len(json.loads(raw.read_text())["entries"]) == 2 * len(rule.points)
