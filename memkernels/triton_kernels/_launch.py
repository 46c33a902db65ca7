"""Launcher helpers shared by the Triton kernel modules."""
import contextlib
import functools
import math
import os
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


# --------------------------------------------------------------------------- tiles per architecture

# The architecture whose table sizes CPU tensors under the interpreter (block sizes there only
# set the tests' coverage; the interpreter has no tensor cores).
INTERPRETER_ARCH = 90


@functools.lru_cache(maxsize=16)
def _cuda_arch(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def target_arch(device: torch.device) -> int:
    """Compute capability x10 that the launch compiles for: the tensor's GPU; for CPU tensors the
    interpreter's stand-in, or, with the interpreter off (compiling ahead of time with a
    driver that names a target, benchmarks/codegen.py), that target's."""
    if device.type == "cuda":
        return _cuda_arch(device.index if device.index is not None else torch.cuda.current_device())
    if os.environ.get("TRITON_INTERPRET") == "1":
        return INTERPRETER_ARCH
    from triton.runtime.driver import driver
    return driver.active.get_current_target().arch


class Tiles(NamedTuple):
    block_rows: int  # rows a program owns (its accumulators' rows)
    block_stream: int  # rows streamed per loop step
    block_d: int
    num_warps: int
    num_stages: int


# Programs per launch below which row tiles keep shrinking for 32-bit inputs: about two
# waves on the 132 SMs of an H100/H200. A constant, not a device query, so that the tiles
# (hence the summation order) depend on the shape only.
_TARGET_PROGRAMS = 264


@functools.lru_cache(maxsize=1024)
def attention_tiles(arch: int, n_rows: int, n_stream: int, batch_heads: int, head_dim: int, elem_size: int,
                    kernel: str = "forward") -> Tiles:
    """Block sizes for an attention kernel as a pure function of the architecture and shape.

    `kernel` is "forward" (one [rows, D] accumulator and one tile of scores), "masked_forward"
    (the same with a padding mask: slot attention's forward with one), "rows" (a
    backward kernel owning query rows: one accumulator, scores and their gradient) or
    "stream" (a backward kernel owning key rows: two accumulators, dk and dv).

    Deliberately not triton.autotune: a choice by timing can differ between processes, and the
    streamed block fixes the summation order, so it would break bitwise reproducibility.

    16-bit inputs run on tensor cores with float32 accumulators. On Hopper (sm_90) an MMA
    belongs to a warpgroup of 4 warps covering 64 rows: a program owns 64 rows per warpgroup,
    never two warpgroups on the same 64 rows (which would both issue the whole product), and
    128 rows (two warpgroups) where the rows allow; the forward streams 128 keys at D <= 64,
    which halves the per-block overhead. On sm_80 (mma.sync, per warp) 8 warps share 64 rows,
    32 in the backward at D128 and in the masked forward at D128, where 64 spilled.
    The sizes were chosen from benchmarks/codegen.py's output (registers and ptxas spills).
    float32 ("ieee" dots, on the FMA units) keeps operands in registers and
    takes 32-row tiles (16 for dk/dv); head dim 256 takes 16-row tiles over 8 warps in every
    dtype; float64's broadcast product [rows, D, stream] is held to 4096 elements.
    """
    block_d = max(16, next_power_of_2(head_dim))
    rows_cap = max(16, next_power_of_2(n_rows))  # no bigger than the problem
    stream_cap = max(16, next_power_of_2(n_stream))
    if elem_size == 8:
        tile = 16
        while tile > 1 and tile * tile * block_d > 4096:
            tile //= 2
        return Tiles(min(tile, max(1, next_power_of_2(n_rows))), min(tile, max(1, next_power_of_2(n_stream))),
                     block_d, 8, 1)
    if block_d > 128 or (elem_size == 4 and kernel == "stream"):
        # D = 256 in any dtype, and float32's dk/dv kernels: 16-row tiles over 8 warps.
        return Tiles(min(16, rows_cap), min(16, stream_cap), block_d, 8, 2)
    if elem_size == 4:
        rows, stream, warps, stages = (32, 32, 8, 3) if block_d <= 64 else (32, 32, 8, 2)
        rows = min(rows, rows_cap)
        while rows > 16 and batch_heads * cdiv(n_rows, rows) < _TARGET_PROGRAMS:
            rows //= 2
        if kernel == "rows":  # 16 rows streaming 32 spilled (slot dq/dk/dv, 16-24 bytes); 16 do not
            stream = rows
        return Tiles(rows, min(stream, stream_cap), block_d, warps, stages)
    hopper = arch >= 90
    if kernel in ("forward", "masked_forward"):
        rows = 128 if hopper and n_rows >= 128 else 64
        if kernel == "masked_forward" and not hopper and block_d > 64:
            rows = 32  # sm_80 D128: 64 rows spilled 64 bytes; 32 spill nothing
        stream, stages = (128, 2) if hopper and block_d <= 64 else (64, 3)
    elif kernel == "rows":
        rows = 128 if hopper and n_rows >= 128 and block_d <= 64 else 64
        if not hopper and block_d > 64:
            rows = 32  # sm_80 D128: 64 rows spilled 0.8-1.5 KB (dq, slot dq/dk/dv); 32 spill nothing
        stream, stages = 64, 2
    elif hopper:
        rows, stream, stages = 64, (64 if block_d <= 64 else 32), 2
    else:
        # sm_80: a 64x64 step spilled slot bwd_tokens at D64, 64 rows at D128 (0.8 KB); these spill nothing.
        rows, stream, stages = (64 if block_d <= 64 else 32), 32, 2
    rows = min(rows, rows_cap)
    # sm_90: 64 rows per warpgroup. sm_80: 8 warps share the row tile (mma.sync has no warpgroup
    # to duplicate; 4 warps holding 16 rows of a D-wide accumulator each spilled at D128).
    warps = 4 * max(1, rows // 64) if hopper else 8
    return Tiles(rows, min(stream, stream_cap), block_d, warps, stages)
