"""The ops under `torch.autocast`, following the rules of the torch ops they stand in for.

* memory_read and slot_attention are attention, which autocast runs in its lower precision
  (as `F.scaled_dot_product_attention`): floating inputs are cast to the autocast dtype.
* memory_norm is a normalisation, which autocast runs in float32 (as `F.layer_norm` and
  `torch.norm`): float16 and bfloat16 inputs are cast to float32.

float64 tensors are never cast, as autocast leaves them alone. The public ops cast before
they choose a backend, so the choice sees the dtype that runs; the registered ops
(`torch.ops.memkernels.*`, called directly or traced by torch.compile) get the same casts
from kernels on the Autocast dispatch keys. Backward ops get none: autograd hands them the
dtypes their forward saw.
"""
import torch
from torch import Tensor

LOWER_PRECISION = "lower precision"
FLOAT32 = "float32"
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def _target_dtype(policy: str, device_type: str) -> torch.dtype:
    return torch.get_autocast_dtype(device_type) if policy == LOWER_PRECISION else torch.float32


def _cast(t, dtype: torch.dtype):
    if isinstance(t, Tensor) and t.is_floating_point() and t.dtype not in (dtype, torch.float64):
        return t.to(dtype)
    return t


def _any_autocast_enabled() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


# One C call answers "is any autocast on?", the common "no" of every eager op call.
_any_enabled = getattr(torch._C, "_is_any_autocast_enabled", _any_autocast_enabled)


def enabled(first) -> bool:
    """Is autocast on for the device of `first` (the op's first tensor)?

    Only CPU and CUDA have autocast here; asking torch about another device type (meta,
    used to count FLOPs without running) raises."""
    if not _any_enabled() or not isinstance(first, Tensor):
        return False
    device_type = "cuda" if first.is_cuda else "cpu" if first.is_cpu else None
    return device_type is not None and torch.is_autocast_enabled(device_type)


def cast(policy: str, *tensors):
    """The tensors as autocast would hand them to the op (call only when `enabled`)."""
    dtype = _target_dtype(policy, tensors[0].device.type)
    return tuple(_cast(t, dtype) for t in tensors)


def register(qualname: str, policy: str) -> None:
    """Autocast kernels (CPU and CUDA) for a registered op: cast, then run it with autocast off."""
    op = getattr(torch.ops.memkernels, qualname.split("::")[1]).default

    for device_type, key in _AUTOCAST_KEYS.items():
        def kernel(*args, _device_type=device_type):
            dtype = _target_dtype(policy, _device_type)
            with torch.autocast(_device_type, enabled=False):
                return op(*(_cast(a, dtype) for a in args))

        torch.library.impl(qualname, key)(kernel)
