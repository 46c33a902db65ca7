"""The tensor-core kernels' CuTe layouts, checked on the CPU.

Each tests/cute/*.cu is a host program built with nvcc against the kernels' own headers
(csrc/tc_common.cuh: traits, tile shapes, swizzles, copy atoms; no second copy of the
configuration) and the pinned CuTe headers, then run here, so that a changed tile
configuration is checked before any GPU sees it. No GPU is needed; without nvcc or the CuTe
headers the test skips and says which is missing.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from memkernels import _cuda_build

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted(p.stem for p in (ROOT / "tests" / "cute").glob("*.cu"))


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = Path(home) / "bin" / "nvcc"
    return str(nvcc) if nvcc.exists() else shutil.which("nvcc")


@pytest.mark.parametrize("program", PROGRAMS)
def test_layout_program(program, tmp_path):
    nvcc, cutlass = _nvcc(), _cuda_build.cutlass_include()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA_HOME, /usr/local/cuda or PATH)")
    if cutlass is None:
        pytest.skip("CuTe headers not found (pip install --no-deps nvidia-cutlass==4.2.0.0)")
    exe = tmp_path / program
    build = subprocess.run([nvcc, "-std=c++20", "-O1", "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc'}",
                            f"-I{cutlass}", "-o", str(exe), str(ROOT / "tests" / "cute" / f"{program}.cu")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_there_are_layout_programs():
    assert "store_tiles" in PROGRAMS
