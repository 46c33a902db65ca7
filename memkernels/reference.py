"""Reference implementations of the three memory ops in plain PyTorch.

These are the semantics every kernel is tested against, and the `"torch"`
backend of the public ops. Each op comes in three pieces sharing one code path:

* `<op>_forward(...)` returns the output and the float32 statistic the fused
  kernels save for backward (`lse` for the attentions, the row `norm` for
  memory_norm). It is differentiable by autograd, so `<op>(...)` is simply its
  first output: that composite is what "eager reference" and "torch.compile of
  the reference" mean in the benchmarks.
* `<op>_backward(...)` is the explicit gradient the kernels implement, written
  with the same saved statistics (probabilities recomputed from `lse`).

Arithmetic runs in float32 for float16/bfloat16/float32 inputs and in float64
for float64 inputs, under torch.autocast too (which would otherwise run the einsums
in its lower precision); outputs come back in the input dtype. These functions
materialise the full score matrix: they are for correctness, not speed.
Inputs are not validated here; the public functions in `memkernels` do that.
"""
import functools

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exact(fn):
    """Run `fn` with autocast off (the backward of an op may run inside an autocast region)."""
    @functools.wraps(fn)
    def run(*args):
        if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
            with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
                return fn(*args)
        return fn(*args)
    return run


def _upcast(*tensors: Tensor) -> list[Tensor]:
    acc = accumulation_dtype(tensors[0].dtype)
    return [t.to(acc) for t in tensors]


# memory_read ----------------------------------------------------------------
# k and v may have H_kv heads with H_kv dividing H: the query heads are viewed as
# (H_kv, group) so query head h = n * group + g reads key/value head n = h // group.

def _grouped(q: Tensor, k: Tensor) -> Tensor:
    """q (B, L, H, D) viewed as (B, L, H_kv, H / H_kv, D)."""
    batch, tokens, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    return q.reshape(batch, tokens, kv_heads, heads // kv_heads, head_dim)


def _read_scores(qf: Tensor, kf: Tensor, scale: float) -> Tensor:
    """(B, H_kv, group, L, K) scaled scores."""
    return torch.einsum("blngd,bknd->bnglk", _grouped(qf, kf), kf) * scale


@_exact
def memory_read_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """out (B, L, H, D) in q's dtype and lse (B, H, L) in the accumulation dtype."""
    qf, kf, vf = _upcast(q, k, v)
    scores = _read_scores(qf, kf, scale)  # [B, H_kv, group, L, K]
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("bnglk,bknd->blngd", probs, vf).flatten(2, 3)
    return out.to(q.dtype).contiguous(), lse.flatten(1, 2).contiguous()


def _rebuilt_probs(scores: Tensor, lse: Tensor) -> Tensor:
    """P from the saved lse, renormalised: exp(scores - lse) from a float32 lse of magnitude
    ~500 sums to 1 only within ~3e-5, and dq = scale * dS @ k would gain that residue times
    rowsum(P * dP) times the mean key (1e-3 of error in float32 at scores of -300; 3e-6
    renormalised)."""
    probs = torch.exp(scores - lse.unsqueeze(-1))
    return probs / probs.sum(-1, keepdim=True)


def _softmax_backward(probs: Tensor, dprobs: Tensor) -> Tensor:
    """dS = P * (dP - rowsum(P * dP)), the row sum from P and dP, not from rowsum(dO * O):
    O is rounded to the input dtype, and on a sharply peaked row that rounding alone swamps
    a 16-bit gradient."""
    return probs * (dprobs - (probs * dprobs).sum(-1, keepdim=True))


@_exact
def memory_read_backward(dout, q, k, v, out, lse, scale):
    """(dq, dk, dv) from the saved lse (`out` is not needed: see _softmax_backward); dk and
    dv have k's heads, each the sum over its group of query heads."""
    dof, qf, kf, vf = _upcast(dout, q, k, v)
    scores = _read_scores(qf, kf, scale)
    probs = _rebuilt_probs(scores, lse.unflatten(1, scores.shape[1:3]))
    dprobs = torch.einsum("blngd,bknd->bnglk", _grouped(dof, kf), vf)
    dscores = _softmax_backward(probs, dprobs)
    dq = torch.einsum("bnglk,bknd->blngd", dscores, kf).flatten(2, 3) * scale
    dk = torch.einsum("bnglk,blngd->bknd", dscores, _grouped(qf, kf)) * scale
    dv = torch.einsum("bnglk,blngd->bknd", probs, _grouped(dof, kf))
    return tuple(g.to(q.dtype).contiguous() for g in (dq, dk, dv))


def memory_read(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Cross-attention of tokens (B, L, H, D) over memory slots (B, K, H_kv, D)."""
    return memory_read_forward(q, k, v, scale)[0]


# slot_attention -------------------------------------------------------------

def _slot_scores(qf, kf, k_tokf, key_padding_mask, scale):
    """Scores over [own key; token keys]: (B, H, K, 1 + L)."""
    s_self = torch.einsum("bkhd,bkhd->bhk", qf, kf).unsqueeze(-1)
    s_tok = torch.einsum("bkhd,blhd->bhkl", qf, k_tokf)
    if key_padding_mask is not None:
        s_tok = s_tok.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    return torch.cat([s_self, s_tok], dim=-1) * scale


def _mix_values(probs, vf, v_tokf):
    """p_self * v + P_tok @ v_tok, back in (B, K, H, D)."""
    own = probs[..., 0].permute(0, 2, 1).unsqueeze(-1) * vf
    return own + torch.einsum("bhkl,blhd->bkhd", probs[..., 1:], v_tokf)


@_exact
def slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale):
    """out (B, K, H, D) and lse (B, H, K). `scale` already includes 1/tau.

    A slot whose tokens are all masked has p_self = exp(0) = 1 and p_tok = 0; its output is
    its own value bit for bit (selected, since -0.0 + 0 * v_tok would come out +0.0).
    """
    qf, kf, vf, k_tokf, v_tokf = _upcast(q, k, v, k_tok, v_tok)
    scores = _slot_scores(qf, kf, k_tokf, key_padding_mask, scale)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = _mix_values(probs, vf, v_tokf).to(q.dtype)
    if key_padding_mask is not None:
        out = torch.where(key_padding_mask.any(dim=1)[:, None, None, None], out, v)
    return out.contiguous(), lse.contiguous()


@_exact
def slot_attention_backward(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale):
    """(dq, dk, dv, dk_tok, dv_tok) from the saved lse (`out` is not needed)."""
    dof, qf, kf, vf, k_tokf, v_tokf = _upcast(dout, q, k, v, k_tok, v_tok)
    probs = _rebuilt_probs(_slot_scores(qf, kf, k_tokf, key_padding_mask, scale), lse)
    dp_self = torch.einsum("bkhd,bkhd->bhk", dof, vf).unsqueeze(-1)
    dp_tok = torch.einsum("bkhd,blhd->bhkl", dof, v_tokf)
    dscores = _softmax_backward(probs, torch.cat([dp_self, dp_tok], dim=-1))
    ds_self = dscores[..., 0].permute(0, 2, 1).unsqueeze(-1)  # [B, K, H, 1]
    ds_tok = dscores[..., 1:]
    dq = (ds_self * kf + torch.einsum("bhkl,blhd->bkhd", ds_tok, k_tokf)) * scale
    dk = ds_self * qf * scale
    dv = probs[..., 0].permute(0, 2, 1).unsqueeze(-1) * dof
    dk_tok = torch.einsum("bhkl,bkhd->blhd", ds_tok, qf) * scale
    dv_tok = torch.einsum("bhkl,bkhd->blhd", probs[..., 1:], dof)
    return tuple(g.to(q.dtype).contiguous() for g in (dq, dk, dv, dk_tok, dv_tok))


def slot_attention(q, k, v, k_tok, v_tok, key_padding_mask, scale):
    """Each slot attends over its own key and the token keys (scale includes 1/tau)."""
    return slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale)[0]


# memory_norm ----------------------------------------------------------------

@_exact
def memory_norm_forward(m: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """out (B, K, W) in m's dtype and the unclamped row norm (B, K)."""
    mf, biasf = _upcast(m, bias)
    x = mf + biasf
    norm = torch.linalg.vector_norm(x, dim=-1)
    out = x / norm.clamp_min(eps).unsqueeze(-1)
    return out.to(m.dtype).contiguous(), norm.contiguous()


@_exact
def memory_norm_backward(dout, out, norm, eps):
    """(dm, dbias). Rows whose norm was clamped to eps are a plain division by eps."""
    dyf, yf = _upcast(dout, out)
    clamped = (norm < eps).unsqueeze(-1)
    projected = dyf - yf * (yf * dyf).sum(-1, keepdim=True)
    dx = torch.where(clamped, dyf / eps, projected / norm.clamp_min(eps).unsqueeze(-1))
    return dx.to(out.dtype).contiguous(), dx.sum(0).to(out.dtype).contiguous()


def memory_norm(m: Tensor, bias: Tensor, eps: float) -> Tensor:
    """normalize(m + bias) over the last dim: the biased memory normalization."""
    return memory_norm_forward(m, bias, eps)[0]
