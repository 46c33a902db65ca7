"""memory_norm: biased memory normalization, the forgetting step (paper §4.2.4.3).

`out = (m + bias) / max(||m + bias||_2, eps)` over the width, exactly
`F.normalize(m + bias, dim=-1, eps=eps)`. Registered as the custom ops
`memkernels::memory_norm` (returns the output and the unclamped float32 row
norm the backward needs) and `memkernels::memory_norm_backward`.

The bias is one vector per slot, (K, W); its gradient is the sum of the row
gradients over the batch, reduced in a fixed order on every backend.
"""
import torch
from torch import Tensor

from memkernels import dispatch
from memkernels._validation import check_positive, check_tensors
from memkernels.reference import accumulation_dtype

OP = "memory_norm"


@torch.library.custom_op("memkernels::memory_norm", mutates_args=())
def _forward(m: Tensor, bias: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    return dispatch.kernels(OP, backend).memory_norm_forward(m, bias, eps)


@_forward.register_fake
def _(m, bias, eps, backend):
    norm = m.new_empty(m.shape[:-1], dtype=accumulation_dtype(m.dtype))
    return torch.empty_like(m, memory_format=torch.contiguous_format), norm


@torch.library.custom_op("memkernels::memory_norm_backward", mutates_args=())
def _backward(dout: Tensor, out: Tensor, norm: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    return dispatch.kernels(OP, backend).memory_norm_backward(dout, out, norm, eps)


@_backward.register_fake
def _(dout, out, norm, eps, backend):
    return torch.empty_like(out, memory_format=torch.contiguous_format), out.new_empty(out.shape[1:])


def _setup_context(ctx, inputs, output):
    _, _, eps, backend = inputs
    out, norm = output
    ctx.mark_non_differentiable(norm)
    ctx.save_for_backward(out, norm)
    ctx.eps, ctx.backend = eps, backend


def _autograd_backward(ctx, dout, _dnorm):
    dm, dbias = _backward(dout, *ctx.saved_tensors, ctx.eps, ctx.backend)
    return dm, dbias, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def memory_norm(m: Tensor, bias: Tensor, *, eps: float = 1e-12, backend: str = "auto") -> Tensor:
    """Add the per-slot bias and L2-normalise each slot.

    Args:
        m: memory (B, K, W), any strides (a batch-broadcast view with stride 0 works).
        bias: per-slot bias (K, W), same dtype and device.
        eps: lower bound on the norm; rows with a smaller norm are divided by eps.
        backend: "auto", "torch", "triton" or "cuda" (see `memkernels.dispatch`).

    Returns (B, K, W) in m's dtype, contiguous. Differentiable in m and bias.
    """
    check_tensors(OP, {"m": (m, "BKW"), "bias": (bias, "KW")})
    eps = check_positive(OP, "eps", eps)
    backend = dispatch.select(OP, backend, m.device, m.dtype)
    return _forward(m, bias, eps, backend)[0]
