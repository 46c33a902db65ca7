"""The one-call GPU script is ready to run: it parses, and its sanitizer selections select tests."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("selection", re.findall(r'-k "([^"$]+)"', SCRIPT.read_text()))
def test_sanitizer_selections_select_gpu_kernel_tests(selection):
    kernels = [f"tests/test_kernels_{op}.py" for op in ("memory_read", "slot_attention", "memory_norm")]
    run = subprocess.run([sys.executable, "-m", "pytest", *kernels, "--collect-only", "-q", "-k", selection],
                         cwd=ROOT, capture_output=True, text=True)
    selected = [line for line in run.stdout.splitlines() if "::" in line]
    assert run.returncode == 0, run.stdout[-2000:]
    assert selected and all("cuda" in line for line in selected), selected
    for op in ("memory_read", "slot_attention", "memory_norm"):
        assert any(op in line for line in selected), (op, selection)


def test_fast_path_sanitizer_selection_covers_every_op():
    selection = re.search(r'local select="([^"]+)"', SCRIPT.read_text()).group(1)
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cuda_fast_paths.py", "--collect-only",
                          "-q", "-k", selection], cwd=ROOT, capture_output=True, text=True)
    selected = [line for line in run.stdout.splitlines() if "::" in line]
    assert run.returncode == 0, run.stdout[-2000:]
    for op in ("memory_read", "slot_attention", "memory_norm"):
        assert any(op in line for line in selected), (op, selected)
