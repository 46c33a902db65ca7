"""The summary of a GPU test run: `python -m benchmarks.gpu_summary LOG_DIR` prints tests.txt.

Device, driver, torch / triton / CUDA versions, date and commit, the pytest summary line of
LOG_DIR/tests.log, and the compute-sanitizer results of LOG_DIR/memcheck.log and
racecheck.log; then the same for the pass with the CUDA fast paths on (*-fast-paths.log).
Committed as benchmarks/results/<device>/tests.txt after each GPU run.
"""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import memkernels
from benchmarks.claims import git_commit


def _last_line_matching(path: Path, pattern: str) -> str:
    if not path.exists():
        return f"({path.name} not written)"
    lines = [line for line in path.read_text(errors="replace").splitlines() if re.search(pattern, line)]
    return lines[-1].strip() if lines else f"(no line matching {pattern!r} in {path.name})"


def _driver() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(logs: Path) -> str:
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return "\n".join([
        f"device      {device}",
        f"driver      {_driver()}",
        f"torch       {torch.__version__} (CUDA {torch.version.cuda})",
        f"triton      {triton.__version__}",
        f"memkernels  {memkernels.__version__}",
        f"date        {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        f"commit      {os.environ.get('MEMKERNELS_COMMIT') or git_commit()}",
        f"pytest      {_last_line_matching(logs / 'tests.log', r'(passed|failed|error)')}",
        f"memcheck    {_last_line_matching(logs / 'memcheck.log', r'ERROR SUMMARY|not on this machine')}",
        f"racecheck   {_last_line_matching(logs / 'racecheck.log', r'RACECHECK SUMMARY|ERROR SUMMARY')}",
        "with MEMKERNELS_CUDA_FAST_PATHS=1 (tensor-core attention, vectorized memory_norm):",
        f"pytest      {_last_line_matching(logs / 'tests-fast-paths.log', r'(passed|failed|error)')}",
        f"memcheck    {_last_line_matching(logs / 'memcheck-fast-paths.log', r'ERROR SUMMARY')}",
        f"racecheck   {_last_line_matching(logs / 'racecheck-fast-paths.log', r'RACECHECK SUMMARY|ERROR SUMMARY')}",
    ])


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
