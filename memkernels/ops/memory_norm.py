"""memory_norm: biased memory normalization, the forgetting step (paper §4.2.4.3).

`out = (m + bias) / max(||m + bias||_2, eps)` over the width, exactly
`F.normalize(m + bias, dim=-1, eps=eps)`. Laid out as `memkernels.ops.memory_read` is:
input checks, the registered ops `memkernels::memory_norm` (output and the unclamped
float32 row norm the backward needs) and `memkernels::memory_norm_backward`, the eager
`autograd.Function`, the public function.

The bias is one vector per slot, (K, W); its gradient is the sum of the row gradients
over the batch, reduced in a fixed order on every backend.
"""
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memkernels import dispatch
from memkernels._validation import FLOATING_DTYPES, check_like, check_positive, check_statistic, check_tensors
from memkernels.ops import _autocast
from memkernels.ops._eager import fast_path_allowed
from memkernels.reference import accumulation_dtype

OP = "memory_norm"


# --------------------------------------------------------------------------- input checks


def _check_inputs(m, bias) -> None:
    ok = (isinstance(m, Tensor) and isinstance(bias, Tensor) and m.dim() == 3 and bias.dim() == 2
          and m.numel() > 0 and m.dtype in FLOATING_DTYPES and m.dtype == bias.dtype and m.device == bias.device)
    if ok:
        _, slots, width = m.shape
        ok = bias.shape == (slots, width)
    if not ok:
        check_tensors(OP, {"m": (m, "BKW"), "bias": (bias, "KW")})


def _backend(requested: str, m: Tensor) -> str:
    return dispatch.select(OP, requested, m.device, m.dtype, kernels_only=True)


def _check_op_inputs(m, bias, eps, backend) -> str:
    _check_inputs(m, bias)
    check_positive(OP, "eps", eps)
    return _backend(backend, m)


def _check_backward_inputs(dout, out, norm, eps, backend) -> str:
    check_tensors(OP, {"out": (out, "BKW")})
    check_positive(OP, "eps", eps)
    check_like(OP, "dout", dout, "out", out)
    check_statistic(OP, "norm", norm, tuple(out.shape[:2]), accumulation_dtype(out.dtype), out.device)
    return _backend(backend, out)


# --------------------------------------------------------------------------- registered ops

torch.library.define("memkernels::memory_norm", "(Tensor m, Tensor bias, float eps, str backend) -> (Tensor, Tensor)")
torch.library.define(
    "memkernels::memory_norm_backward",
    "(Tensor dout, Tensor out, Tensor norm, float eps, str backend) -> (Tensor, Tensor)")


@torch.library.impl("memkernels::memory_norm", "CompositeExplicitAutograd")
def _forward_op(m, bias, eps, backend):
    backend = _check_op_inputs(m, bias, eps, backend)
    return dispatch.kernels(OP, backend).memory_norm_forward(m, bias, eps)


@torch.library.register_fake("memkernels::memory_norm")
def _(m, bias, eps, backend):
    _check_op_inputs(m, bias, eps, backend)
    norm = m.new_empty(m.shape[:-1], dtype=accumulation_dtype(m.dtype))
    return torch.empty_like(m, memory_format=torch.contiguous_format), norm


@torch.library.impl("memkernels::memory_norm_backward", "CompositeExplicitAutograd")
def _backward_op(dout, out, norm, eps, backend):
    backend = _check_backward_inputs(dout, out, norm, eps, backend)
    return dispatch.kernels(OP, backend).memory_norm_backward(dout, out, norm, eps)


@torch.library.register_fake("memkernels::memory_norm_backward")
def _(dout, out, norm, eps, backend):
    _check_backward_inputs(dout, out, norm, eps, backend)
    return torch.empty_like(out, memory_format=torch.contiguous_format), out.new_empty(out.shape[1:])


def _setup_context(ctx, inputs, output):
    _, _, eps, backend = inputs
    out, norm = output
    ctx.mark_non_differentiable(norm)
    ctx.save_for_backward(out, norm)
    ctx.eps, ctx.backend = eps, backend


def _op_backward(ctx, dout, _dnorm):
    dm, dbias = torch.ops.memkernels.memory_norm_backward(dout, *ctx.saved_tensors, ctx.eps, ctx.backend)
    return dm, dbias, None, None


torch.library.register_autograd("memkernels::memory_norm", _op_backward, setup_context=_setup_context)
_autocast.register("memkernels::memory_norm", _autocast.FLOAT32)


# --------------------------------------------------------------------------- eager autograd


class _MemoryNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, bias, eps, kernels):
        out, norm = kernels.memory_norm_forward(m, bias, eps)
        ctx.save_for_backward(out, norm)
        ctx.eps, ctx.kernels = eps, kernels
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        dm, dbias = ctx.kernels.memory_norm_backward(dout, *ctx.saved_tensors, ctx.eps)
        return dm, dbias, None, None


# --------------------------------------------------------------------------- public function


def memory_norm(m: Tensor, bias: Tensor, *, eps: float = 1e-12, backend: str = "auto") -> Tensor:
    """Add the per-slot bias and L2-normalise each slot.

    Args:
        m: memory (B, K, W), any strides (a batch-broadcast view with stride 0 works).
        bias: per-slot bias (K, W), same dtype and device.
        eps: lower bound on the norm; rows with a smaller norm are divided by eps.
        backend: "auto", "torch", "triton" or "cuda" (see `memkernels.dispatch`).

    Returns (B, K, W) in m's dtype, contiguous (float32 under torch.autocast, which runs
    normalisations in float32). Differentiable in m and bias.
    """
    if _autocast.enabled(m):
        m, bias = _autocast.cast(_autocast.FLOAT32, m, bias)
    _check_inputs(m, bias)
    eps = check_positive(OP, "eps", eps)
    if not fast_path_allowed((m, bias)):
        return torch.ops.memkernels.memory_norm(m, bias, eps, _backend(backend, m))[0]
    _, kernels = dispatch.resolve(OP, backend, dispatch.device_type_of(m), m.get_device(), m.dtype, None)
    if torch.is_grad_enabled() and (m.requires_grad or bias.requires_grad):
        return _MemoryNorm.apply(m, bias, eps, kernels)
    return kernels.memory_norm_forward(m, bias, eps)[0]
