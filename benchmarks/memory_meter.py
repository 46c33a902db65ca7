"""Peak memory of a region of code, on any device.

On CUDA the measure of record is the caching allocator's
`max_memory_allocated` over the region, minus what was allocated before it.
On other devices, `LiveTensorBytes` counts every storage created by an
operator inside the region (each once, through a TorchDispatchMode) from its
creation until the last tensor using it dies, and keeps the peak: the same
quantity for tensors, without the allocator's caching and fragmentation.
Storages that existed before the region (parameters, inputs) are not counted.
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


def peak_bytes(fn, device: torch.device) -> tuple[int, str]:
    """(peak bytes allocated while fn() runs, name of the method)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, "torch.cuda.max_memory_allocated"
    with LiveTensorBytes() as meter:
        fn()
    return meter.peak, "live tensor bytes (TorchDispatchMode)"
