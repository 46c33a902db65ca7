"""Launcher helpers shared by the Triton kernel modules."""
import contextlib
import functools
import math
import struct
from typing import NamedTuple

import torch
import triton.language as tl


class Numerics(NamedTuple):
    acc_torch: torch.dtype  # accumulators and saved statistics (lse, norm, delta)
    acc_tl: tl.dtype
    dot_precision: str      # tl.dot input_precision


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=64)
def kernel_scale(scale: float, dtype: torch.dtype) -> tuple[float, float]:
    """The score scale as the kernels take it: in base-2 units (log2(e) folded in, so the
    softmax is one exp2 per score) except for float64, whose kernels stay in base e; split
    into float32 halves (see split_float)."""
    return split_float(scale if dtype == torch.float64 else scale * math.log2(math.e))


# CUDA's largest first grid dimension.
MAX_GRID = 2**31 - 1


def check_grid(programs: int) -> int:
    if programs > MAX_GRID:
        raise ValueError(f"{programs} programs exceed CUDA's grid limit of {MAX_GRID}: the inputs are too large "
                         "for one launch of these kernels")
    return programs


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Plain integer arithmetic: triton.next_power_of_2 is a ConstexprFunction that costs
    microseconds per call in host code."""
    return 1 << max(0, n - 1).bit_length()


_SAME_DEVICE = contextlib.nullcontext()


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device, which need not be the tensor's."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _SAME_DEVICE
