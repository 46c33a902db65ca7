"""What each backend can do, per op: the one table dispatch, `memkernels.info` and the README read.

A backend runs an op on a device type for some dtypes and head dims. `TABLE[op][backend]`
maps a device type to a `Support`; a device type that is missing is one the backend
cannot run the op on. What a backend needs from the machine (triton installed, the CUDA
extension built, the interpreter for CPU tensors) is checked by `memkernels.dispatch`.

`auto_dtypes` lists the dtypes `backend="auto"` may send to the backend on that device:
a kernel that has not passed the test suite on a GPU stays out of `auto` even where it
compiles, and float64 on CUDA goes to the reference, which computes it natively (float64
exists for gradcheck, not for speed).

`sdpa` is not a kernel of ours: it composes `F.scaled_dot_product_attention` with its own
autograd (`memkernels.sdpa`), so the public ops run it directly and the registered ops
(`torch.ops.memkernels.*`), which hold one kernel backend's forward and backward, refuse it.

Which of the backends that can run `auto` picks is a measured, per-shape rule
(`memkernels.rules`); where no measurement covers the inputs, `AUTO_ORDER` decides.
"""
from dataclasses import dataclass

import torch

OPS = ("memory_read", "slot_attention", "memory_norm")
BACKENDS = ("torch", "sdpa", "triton", "cuda")
# Backends that are compositions of torch ops with their own autograd, not kernels behind the
# registered ops.
COMPOSITE_BACKENDS = ("sdpa",)
# The fused attention kernels' largest head dim (Triton and CUDA); the reference takes any.
MAX_KERNEL_HEAD_DIM = 256

FLOAT16, BFLOAT16, FLOAT32, FLOAT64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
ALL_DTYPES = (FLOAT32, FLOAT16, BFLOAT16, FLOAT64)
ANY_DEVICE = "*"


@dataclass(frozen=True)
class Support:
    dtypes: tuple[torch.dtype, ...]
    auto_dtypes: tuple[torch.dtype, ...] = ()
    max_head_dim: int | None = None  # None: any head dim (or the op has none)
    grouped_heads: bool = False      # memory_read: k and v may have fewer heads than q
    refused_dtype_reason: str = ""   # why the dtypes not listed are refused
    not_auto_reason: str = ""        # why "auto" leaves the other listed dtypes alone


_REFERENCE = {ANY_DEVICE: Support(ALL_DTYPES, auto_dtypes=ALL_DTYPES, grouped_heads=True)}
_NO_FLOAT64 = "float64 serves gradcheck, and the reference computes it natively"
# torch's own fused attention: exact for every dtype, and `auto` may pick it wherever it is faster.
_SDPA = {ANY_DEVICE: Support(ALL_DTYPES, auto_dtypes=(FLOAT32, FLOAT16, BFLOAT16), grouped_heads=True,
                             not_auto_reason=_NO_FLOAT64)}


_AUTO_16_32 = (FLOAT32, FLOAT16, BFLOAT16)
# The attention kernels were rewritten after their one GPU run (H100, 2026-11-22): Triton's
# tiles and loops for Hopper, the CUDA backward's delta from P and dP. Until they pass the
# suite on a GPU again, `auto` leaves them alone (and SDPA serves those ops on CUDA).
_REWRITTEN = "rewritten since its one GPU run (2026-11-22) and not yet run on a GPU; name it to run it"


def _kernels(head_dim: int | None, *, sdpa: bool, gpu_verified: bool, triton_grouped: bool = False,
             cuda_grouped: bool = False) -> dict[str, dict[str, Support]]:
    auto = _AUTO_16_32 if gpu_verified else ()
    return {
        "torch": _REFERENCE,
        **({"sdpa": _SDPA} if sdpa else {}),
        "triton": {
            "cuda": Support(ALL_DTYPES, auto_dtypes=auto, max_head_dim=head_dim, grouped_heads=triton_grouped,
                            not_auto_reason=_NO_FLOAT64 if gpu_verified else _REWRITTEN),
            "cpu": Support((FLOAT32, FLOAT16, FLOAT64), max_head_dim=head_dim, grouped_heads=triton_grouped,
                           refused_dtype_reason="the Triton CPU interpreter has no bfloat16 arithmetic",
                           not_auto_reason="the Triton interpreter is a correctness tool, not a fast path"),
        },
        "cuda": {
            "cuda": Support(_AUTO_16_32, auto_dtypes=auto, max_head_dim=head_dim, grouped_heads=cuda_grouped,
                            refused_dtype_reason="its kernels take float16, bfloat16 and float32, not {dtype}",
                            not_auto_reason="" if gpu_verified else _REWRITTEN),
        },
    }


TABLE: dict[str, dict[str, dict[str, Support]]] = {
    "memory_read": _kernels(MAX_KERNEL_HEAD_DIM, sdpa=True, gpu_verified=False, triton_grouped=True),
    "slot_attention": _kernels(MAX_KERNEL_HEAD_DIM, sdpa=True, gpu_verified=False),
    # Verified on an H100 (2026-11-22) in float32, float16 and bfloat16, and unchanged since.
    "memory_norm": _kernels(None, sdpa=False, gpu_verified=True),
}

# Backends "auto" tries, in order, per device type and op, where no measured rule
# (`memkernels.rules`) covers the inputs. On CUDA the attention ops go to torch's own fused
# attention until a committed GPU measurement shows one of ours faster at a shape: the one GPU
# run so far (H100, 2026-11-22, an older version) had SDPA ahead of every memkernels kernel
# for memory_read, and the SDPA composition of slot_attention ahead in training at all three
# measured shapes. Elsewhere the reference, which the CPU rule measures against SDPA.
AUTO_ORDER = {
    "cuda": {"memory_read": ("sdpa", "triton", "cuda", "torch"),
             "slot_attention": ("sdpa", "triton", "cuda", "torch"),
             "memory_norm": ("triton", "cuda", "torch")},
}
DEFAULT_AUTO_ORDER = ("torch",)


@dataclass(frozen=True)
class FastPath:
    """A faster CUDA-backend kernel an op takes when its inputs allow; the scalar kernels otherwise."""
    kernel: str
    dtypes: tuple[torch.dtype, ...]
    requires: str
    run_on_gpu: bool  # False: built and compiled only, so it is off unless opted in


_TENSOR_CORE_REQUIRES = ("an sm_80 or newer GPU, head dim a multiple of 8, up to 128 (256 with "
                         "MEMKERNELS_HEAD_DIMS=64,128,256 at build time), unit last-dim stride, 16-byte aligned rows")
CUDA_FAST_PATHS = {
    "memory_read": FastPath("tensor-core (mma.sync via CuTe)", (FLOAT16, BFLOAT16), _TENSOR_CORE_REQUIRES, False),
    "slot_attention": FastPath("tensor-core (mma.sync via CuTe)", (FLOAT16, BFLOAT16), _TENSOR_CORE_REQUIRES,
                               False),
    "memory_norm": FastPath("vectorized (16-byte loads, one-pass backward)", (FLOAT32, FLOAT16, BFLOAT16),
                            "rows of whole 16-byte vectors, at most 32 KiB, unit last-dim stride, 16-byte aligned",
                            False),
}
FAST_PATHS_OFF_REASON = ("not yet run on a GPU; MEMKERNELS_CUDA_FAST_PATHS=1 "
                         "(or memkernels.cuda_kernels.set_fast_paths(True)) turns them on")


def support(op: str, backend: str, device_type: str) -> Support | None:
    """The backend's support for `op` on this device type, or None if it cannot run there."""
    devices = TABLE[op].get(backend, {})
    return devices.get(device_type, devices.get(ANY_DEVICE))


def auto_order(op: str, device_type: str) -> tuple[str, ...]:
    return AUTO_ORDER.get(device_type, {}).get(op, DEFAULT_AUTO_ORDER)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _device_label(backend: str, device: str) -> str:
    if device == ANY_DEVICE:
        return "any"
    return "cpu (TRITON_INTERPRET=1)" if (backend, device) == ("triton", "cpu") else device


def markdown_table() -> str:
    """The README's backend table, one row per (op, backend, device type)."""
    rows = ["| op | backend | device | dtypes | `auto` may pick it for | head dims | grouped k/v heads |",
            "|---|---|---|---|---|---|---|"]
    for op, backends in TABLE.items():
        for backend, devices in backends.items():
            for device, entry in devices.items():
                auto = ", ".join(map(dtype_name, entry.auto_dtypes)) or "never"
                heads = "-" if op == "memory_norm" else \
                    "any" if entry.max_head_dim is None else f"up to {entry.max_head_dim}"
                grouped = "-" if op != "memory_read" else "yes" if entry.grouped_heads else "no"
                rows.append(f"| `{op}` | `{backend}` | {_device_label(backend, device)} "
                            f"| {', '.join(map(dtype_name, entry.dtypes))} | {auto} | {heads} | {grouped} |")
    rows += ["", "The `cuda` backend's fast paths (the scalar kernels run wherever one does not):", "",
             "| op | kernel | dtypes | when | status |", "|---|---|---|---|---|"]
    for op, path in CUDA_FAST_PATHS.items():
        status = "on" if path.run_on_gpu else f"off: {FAST_PATHS_OFF_REASON}"
        rows.append(f"| `{op}` | {path.kernel} | {', '.join(map(dtype_name, path.dtypes))} "
                    f"| {path.requires} | {status} |")
    return "\n".join(rows)
