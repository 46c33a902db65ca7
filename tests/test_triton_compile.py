"""Every Triton kernel variant compiles for sm_80 and sm_90, without spills (as ptxas counts
them), on any machine.

tests/triton_aot.py runs the launchers with a driver that compiles for an NVIDIA target
instead of launching; here it runs once per architecture (both at once, in subprocesses, as
it needs TRITON_INTERPRET unset). A GPU-only compiler failure (an H100 found a float64 dot
in slot attention that the interpreter ran happily) fails this test on a CPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARCHS = (80, 90)
HARNESS = Path(__file__).with_name("triton_aot.py")


@pytest.fixture(scope="module")
def compiled():
    """{arch: (return code, records, failures, stderr)}"""
    # The repository first on the path: the harness imports benchmarks.codegen and this checkout's memkernels.
    root = str(HARNESS.parent.parent)
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    procs = {arch: subprocess.Popen([sys.executable, str(HARNESS), "--arch", str(arch)], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for arch in ARCHS}
    results = {}
    for arch, proc in procs.items():
        out, err = proc.communicate(timeout=1800)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        results[arch] = (proc.returncode, [r for r in lines if not r.get("failed")],
                         [r for r in lines if r.get("failed")], err)
    return results


@pytest.mark.parametrize("arch", ARCHS)
def test_every_variant_compiles(compiled, arch):
    code, records, failures, err = compiled[arch]
    assert not failures, "\n".join(f"{f['kernel']} {f['dtype']}: {f['error']}" for f in failures)
    assert code == 0, err[-3000:]
    for op in ("memory_read", "slot_attention", "memory_norm"):
        for dtype in ("float32", "float16", "bfloat16", "float64"):
            assert any(r["kernel"].startswith(f"_{op}_") and r["dtype"] == dtype for r in records), (op, dtype)
    for variant in ("strided", "contiguous"):
        assert any(variant in r["kernel"] for r in records), variant


# Spills ptxas still reports outside the tuned configurations (benchmarks/results/codegen/sm90.md:
# the tuned bf16 shapes, all without spills; tests/test_codegen.py holds them to it): (arch,
# kernel, dtype, BLOCK_D) -> the most bytes one variant stores or loads. Each is a defect to
# remove, not a budget: a spill not listed, or one that grows, fails the test. Issue 20 removed
# the rest (sm_80's 16-bit backward and masked forward at D128, slot bwd_tokens with a mask).
_SLOTS, _TOKENS = "_slot_attention_bwd_slots_contiguous_kernel", "_slot_attention_bwd_tokens_contiguous_kernel"
KNOWN_SPILLS = {
    # sm_90 slot dq/dk/dv at D128 when K is not a multiple of 16 (Triton then knows less of the
    # slot masks): values kept from before the token loops to the epilogue, stored once before
    # the loops and loaded once after, none inside. Rereading them in the epilogue, or reordering
    # its tiles, spilled more (600 B) or moved the spill to float32 and float64.
    (90, _SLOTS, "bfloat16", "128"): 24, (90, _SLOTS, "float16", "128"): 36,
    # float32 and float64 (FMA-unit products): ptxas settles on 64-80 registers of its 255 and
    # spills a few words. For the slot kernel one stage or 4 warps spilled more; the others are
    # untried. The float32 slot entries grew by 4 B each with issue 20's changes (16-row slot
    # tiles now stream 16 rows; bwd_tokens branches around its loop), which removed 16-24 B elsewhere.
    (80, _SLOTS, "float32", "128"): 16, (80, _TOKENS, "float32", "128"): 8, (90, _SLOTS, "float32", "128"): 20,
    (90, "_memory_read_fwd_contiguous_kernel", "float32", "256"): 4,
    (90, "_slot_attention_fwd_contiguous_kernel", "float64", "32"): 4,
}


@pytest.mark.parametrize("arch", ARCHS)
def test_no_register_spills(compiled, arch):
    # ptxas's own spill counts: on sm_90 a spill can show as stack with no local memory in the
    # cubin's resource usage, which a LOCAL-based check would pass.
    records = compiled[arch][1]
    assert records and all("spill_stores" in r for r in records)
    spilled = [r for r in records
               if max(r["spill_stores"], r["spill_loads"])
               > KNOWN_SPILLS.get((arch, r["kernel"], r["dtype"], r.get("BLOCK_D")), 0)]
    assert not spilled, "\n".join(json.dumps(r) for r in spilled)


@pytest.mark.parametrize("arch", ARCHS)
def test_half_precision_products_run_on_tensor_cores(compiled, arch):
    attention = [r for r in compiled[arch][1]
                 if r["dtype"] in ("float16", "bfloat16") and not r["kernel"].startswith("_memory_norm")]
    assert attention
    on_fma = [r for r in attention if not r["tensor_cores"]]
    assert not on_fma, "\n".join(json.dumps(r) for r in on_fma)
