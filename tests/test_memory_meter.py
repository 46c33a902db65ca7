"""The benchmark's peak meter: bytes beyond the start, and a peak that restarts on reset."""
import torch

from benchmarks.memory_meter import PeakMeter

from utils import DEVICE

MIB = 2**20


def test_peak_after_reset_counts_only_what_is_alive_or_allocated_since():
    _before = torch.empty(4 * MIB, dtype=torch.uint8, device=DEVICE)  # exists before: never counted
    with PeakMeter(DEVICE) as meter:
        _kept = torch.ones(MIB, dtype=torch.uint8, device=DEVICE)          # carried into the steady state
        filling = torch.ones(8 * MIB, dtype=torch.uint8, device=DEVICE)   # the fill phase's transient peak
        del filling
        meter.reset_peak()
        steady = torch.ones(2 * MIB, dtype=torch.uint8, device=DEVICE)
        del steady
    assert meter.peak == 3 * MIB, meter.peak
