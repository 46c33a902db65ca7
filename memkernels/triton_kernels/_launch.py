"""Launcher helpers shared by the Triton kernel modules."""
import contextlib
import struct
from typing import NamedTuple

import torch
import triton.language as tl


class Numerics(NamedTuple):
    acc_torch: torch.dtype  # accumulators and saved statistics (lse, norm, delta)
    acc_tl: tl.dtype
    dot_precision: str      # tl.dot input_precision


def numerics(dtype: torch.dtype) -> Numerics:
    """float64 inputs accumulate in float64, every other dtype in float32.

    float32 products use "ieee" so they match torch's float32 matmul rather than
    TF32; 16-bit operands use their native MMA whatever the setting says.
    """
    if dtype == torch.float64:
        return Numerics(torch.float64, tl.float64, "ieee")
    return Numerics(torch.float32, tl.float32, "ieee" if dtype == torch.float32 else "tf32")


def split_float(x: float) -> tuple[float, float]:
    """x as float32 hi + float32 lo: scalar kernel arguments are float32, and a float64
    kernel rebuilds x from both to ~48 bits instead of 24."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    lo = struct.unpack("f", struct.pack("f", x - hi))[0]
    return hi, lo


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device, which need not be the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
