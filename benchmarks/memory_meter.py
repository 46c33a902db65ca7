"""Peak memory of a region of code, on any device, with a reset of the peak inside it.

    with PeakMeter(device) as meter:
        fill()               # e.g. stream until the caches are full
        meter.reset_peak()   # the steady state starts: peak := what is alive now
        measure()
    meter.peak               # most bytes alive at once since the reset, beyond the start

Bytes are counted beyond what was allocated when the meter started (weights,
inputs), so what the region keeps alive (carried state, buffers) counts once
it exists. On CUDA the measure of record is the caching allocator's
`max_memory_allocated`. Elsewhere `LiveTensorBytes` counts every storage
created by an operator inside the region (each once, through a
TorchDispatchMode) from its creation until the last tensor using it dies, and
keeps the peak: the same quantity for tensors, without the allocator's caching
and fragmentation. A CUDA graph's replay allocates nothing the allocator sees:
measure memory on eager steps (which allocate what the capture reserves).
"""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list] = {}  # data pointer -> [tensors alive, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor, inputs)
        return out

    def reset_peak(self):
        self.peak = self.live

    def _track(self, tensor, inputs):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self._storages.get(key)
        if entry is None:
            if key == 0 or key in inputs:  # empty, or a view of something made outside the region
                return
            entry = self._storages[key] = [0, storage.nbytes()]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key):
        entry = self._storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._storages[key]


class PeakMeter:
    def __init__(self, device: torch.device):
        self.device = device
        self.method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else \
            "live tensor bytes (TorchDispatchMode)"
        self._live = None if device.type == "cuda" else LiveTensorBytes()
        self._base = 0

    def __enter__(self):
        if self._live is not None:
            self._live.__enter__()
        else:
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
        else:
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        if self._live is not None:
            self._live.reset_peak()
        else:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def peak(self) -> int:
        if self._live is not None:
            return self._live.peak
        return torch.cuda.max_memory_allocated(self.device) - self._base


def peak_bytes(fn, device: torch.device) -> tuple[int, str]:
    """(peak bytes allocated while fn() runs, beyond what existed before; name of the method)."""
    with PeakMeter(device) as meter:
        fn()
    return meter.peak, meter.method
