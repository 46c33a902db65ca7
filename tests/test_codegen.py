"""What the compiler makes of the attention kernels at the paper's L64 K64 D64, bf16, on sm_90.

benchmarks/codegen.py compiles the launchers' own configurations without a GPU (as
tests/triton_aot.py does) and reads PTX, ptxas -v and SASS. These properties are the ones that
would regress quietly: every attention kernel on wgmma, no MMA issued twice (a forward executes
exactly the two products it needs; a backward at most 1.4x its five), and no spills as ptxas
counts them. One subprocess (TRITON_INTERPRET must be off before triton loads), six kernels:
about 25 s on 2 cores.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def rows():
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    run = subprocess.run([sys.executable, "-m", "benchmarks.codegen", "--arch", "90", "--small", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_every_attention_kernel_runs_on_wgmma(rows):
    kernels = [r for r in rows if "kernel" in r]
    names = {r["kernel"] for r in kernels}
    for op in ("memory_read", "slot_attention"):
        for direction in ("fwd", "bwd"):
            assert any(n.startswith(f"_{op}_{direction}") for n in names), (op, direction)
    assert not [r for r in kernels if not r["wgmma"] or r["mma_sync"]], kernels


def test_no_duplicated_mma(rows):
    passes = [r for r in rows if "pass" in r]
    assert len(passes) == 4
    for r in passes:
        limit = 1.0 if r["pass"] == "fwd" else 1.4
        assert r["mma_ratio"] <= limit + 1e-9, r


def test_no_spills(rows):
    kernels = [r for r in rows if "kernel" in r]
    assert not [r for r in kernels if r["spill_stores"] or r["spill_loads"]], kernels
