"""One tolerance policy for every kernel and op test, on every backend.

A result passes when its largest error against the float64 formula is at most twice that of
the same formula computed naively in the inputs' own dtype, plus a floor:

    max|actual - exact| <= 2 * max|same_dtype - exact| + FLOOR[dtype] * max(1, max|exact|)

(flash-attention's tests hold their kernels to the same kind of bound). A kernel may be more
accurate than the naive computation, never much less; the floor covers float32 and float64,
where the naive error is close to zero. Saved float32 statistics (lse, norm) are held to
STATISTIC_FLOOR alone. NaN or inf never passes.
"""
import torch

FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
STATISTIC_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def _max_error(a, b) -> float:
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


def assert_matches(name, actual, exact, same_dtype, dtype):
    """`actual` against the float64 `exact` within the policy's bound set by `same_dtype`."""
    assert actual.shape == exact.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(actual).all(), f"{name} has NaN or inf (an output element never written?)"
    scale = max(1.0, exact.detach().abs().max().item())
    bound = 2 * _max_error(same_dtype, exact) + FLOOR[dtype] * scale
    error = _max_error(actual, exact)
    assert error <= bound, f"{name}: max error {error:.3e} > bound {bound:.3e} (max |exact| {scale:.3e})"


def assert_statistic(name, actual, exact, dtype):
    """A saved float32 (float64 for float64 inputs) statistic such as lse or the row norm."""
    assert torch.isfinite(actual).all(), f"{name} has NaN or inf"
    scale = max(1.0, exact.abs().max().item())
    error = _max_error(actual, exact)
    assert error <= STATISTIC_FLOOR[dtype] * scale, f"{name}: max error {error:.3e} (max |exact| {scale:.3e})"


def reference_pair(formula, inputs, grad_out, **kwargs):
    """((out, grads) in float64, (out, grads) in the inputs' dtype) of formula(*inputs, **kwargs),
    both on the same rounded inputs; grads are the input gradients for grad_out."""
    results = []
    for dtype in (torch.float64, inputs[0].dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
        out = formula(*leaves, dtype=dtype, **kwargs)
        grads = torch.autograd.grad(out, leaves, grad_out.to(dtype), allow_unused=True)
        results.append((out.detach(), tuple(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))))
    return results[0], results[1]
