"""A CPU-side measure of training memory: bytes held for backward.

`SavedTensorBytes` counts, while it is active, the bytes of every tensor
autograd saves for the backward pass, each storage once, from when it is
saved until the graph lets go of it; `peak` is the largest total alive at
once. On a GPU, `torch.cuda.max_memory_allocated` is the measure of record;
this one works on any device and isolates what the training scheme controls
(activations kept for backward): storages of the tensors passed as `exclude`
(the model's parameters) are never counted, since they exist anyway.
"""
import weakref

import torch


class SavedTensorBytes:
    def __init__(self, exclude=()):
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.live = 0
        self.peak = 0
        self._holders: dict[int, list] = {}  # storage pointer -> [references, bytes]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded:
            return _Holder(tensor)
        entry = self._holders.get(key)
        if entry is None:
            entry = self._holders[key] = [0, storage.nbytes()]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        holder = _Holder(tensor)
        weakref.finalize(holder, self._release, key)
        return holder

    @staticmethod
    def _unpack(holder):
        return holder.tensor

    def _release(self, key):
        entry = self._holders[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._holders[key]

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


class _Holder:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor
