"""Input checks shared by the public ops.

Every public op and every registered op (`torch.ops.memkernels.*`) validates here,
before any backend runs, so no bad input can reach a kernel. Each error names the op,
the argument, and the expected and actual value: TypeError for a wrong type or dtype,
ValueError for a wrong shape, device or scalar.

The ops test the common case with one cheap expression of their own and call these
checkers, which build the messages, only when that expression is False.
"""
import math
from numbers import Real

import torch
from torch import Tensor

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_DIM_NAMES = {
    "B": "batch size",
    "L": "token count",
    "K": "slot count",
    "H": "head count",
    "H_kv": "key/value head count",
    "D": "head dim",
    "W": "memory width",
}


def check_tensors(op: str, layouts: dict[str, tuple[object, str | tuple[str, ...]]]) -> None:
    """Check floating tensors against named layouts such as `"BLHD"` (or a tuple of dim names,
    for names longer than a letter: `("B", "K", "H_kv", "D")`).

    The first tensor fixes the dtype, device and the size of every dim letter;
    every later tensor must agree with it.
    """
    sizes: dict[str, tuple[int, str]] = {}
    first_name, (first, _) = next(iter(layouts.items()))
    for name, (tensor, layout) in layouts.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in FLOATING_DTYPES:
            raise TypeError(
                f"{op}: {name} must have a floating dtype (float16, bfloat16, float32 or "
                f"float64), got {tensor.dtype}"
            )
        if name != first_name:
            _check_same_dtype_and_device(op, name, tensor, first_name, first)
        _check_layout(op, name, tensor, layout, sizes)


def check_grouped_heads(op: str, name: str, kv_heads: int, heads: int) -> None:
    """Grouped-query heads: the key/value head count must divide the query head count."""
    if heads % kv_heads != 0:
        raise ValueError(
            f"{op}: {name} has {kv_heads} heads, which must divide q's {heads} heads (query head h reads "
            f"key/value head h // (H / H_kv)); got H = {heads}, H_kv = {kv_heads}"
        )


def check_key_padding_mask(op: str, mask, batch_size: int, token_count: int, device) -> None:
    """The mask is optional; when given it must be a (B, L) bool tensor on the inputs' device."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{op}: key_padding_mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{op}: key_padding_mask must have dtype torch.bool (True = real token), got {mask.dtype}")
    expected = (batch_size, token_count)
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"{op}: key_padding_mask must have shape (B, L) = {expected}, got {tuple(mask.shape)}"
        )
    if mask.device != device:
        raise ValueError(f"{op}: key_padding_mask is on {mask.device} but the inputs are on {device}")


def resolve_scale(op: str, scale, head_dim: int) -> float:
    """`scale` defaults to head_dim ** -0.5; any given value must be a finite real number."""
    if scale is None:
        return head_dim ** -0.5
    if type(scale) is float and -math.inf < scale < math.inf:  # the common case, cheaply
        return scale
    if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be a finite real number or None, got {scale!r}")
    return float(scale)


def check_positive(op: str, name: str, value) -> float:
    if type(value) is float and 0.0 < value < math.inf:  # the common case, cheaply
        return value
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_like(op: str, name: str, tensor, ref_name: str, ref: Tensor) -> None:
    """A gradient or saved output: a tensor of `ref`'s shape, dtype and device."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(ref.shape):
        raise ValueError(f"{op}: {name} must have the shape of {ref_name} {tuple(ref.shape)}, "
                         f"got {tuple(tensor.shape)}")
    _check_same_dtype_and_device(op, name, tensor, ref_name, ref)


def check_statistic(op: str, name: str, tensor, shape: tuple, dtype: torch.dtype, device) -> None:
    """A saved float statistic (lse, norm) of the given shape and accumulation dtype."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {dtype}, got {tensor.dtype}")
    if tensor.device != device:
        raise ValueError(f"{op}: {name} is on {tensor.device} but the inputs are on {device}")


def _check_same_dtype_and_device(op, name, tensor, first_name, first):
    if tensor.dtype != first.dtype:
        raise TypeError(f"{op}: {name} must have the dtype of {first_name} ({first.dtype}), got {tensor.dtype}")
    if tensor.device != first.device:
        raise ValueError(
            f"{op}: {name} is on {tensor.device} but {first_name} is on {first.device}; "
            "all inputs must be on one device"
        )


def _check_layout(op, name, tensor, layout, sizes):
    shape = tuple(tensor.shape)
    wanted = "(" + ", ".join(layout) + ")"
    if tensor.dim() != len(layout):
        raise ValueError(f"{op}: {name} must be a {len(layout)}-D tensor {wanted}, got shape {shape}")
    for dim, (letter, size) in enumerate(zip(layout, shape)):
        if size == 0:
            raise ValueError(
                f"{op}: {name} has an empty {_DIM_NAMES[letter]} ({letter} = 0 in shape {shape}); "
                "every dimension must be at least 1"
            )
        if letter not in sizes:
            sizes[letter] = (size, name)
            continue
        expected, source = sizes[letter]
        if size != expected:
            raise ValueError(
                f"{op}: {name} has {_DIM_NAMES[letter]} {letter} = {size} (dim {dim} of shape {shape}), "
                f"expected {expected} to match {source}"
            )
