"""`python -m memkernels.info` runs and explains every unavailable backend."""
import subprocess
import sys

import torch


def test_info_names_versions_and_reasons():
    result = subprocess.run([sys.executable, "-m", "memkernels.info"], capture_output=True, text=True, check=True)
    text = result.stdout
    assert f"torch      {torch.__version__}" in text
    for op in ("memory_read", "slot_attention", "memory_norm"):
        assert f"  {op}\n" in text
    if not torch.cuda.is_available():
        assert "cuda    unavailable - " in text
        assert "device     cpu" in text
    assert "CUDA extension " in text
