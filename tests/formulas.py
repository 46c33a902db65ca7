"""The three ops' formulas, written independently of memkernels.

Every test compares the package against these: plain einsum/softmax differentiated by
autograd, sharing no code with `memkernels.reference`. `dtype` is the arithmetic: float64
by default (the exact answer), or the inputs' own dtype for the naive same-precision
computation the tolerance policy in tests/tolerance.py measures kernels against.
"""
import torch


def _cast(tensors, dtype):
    return [t.to(dtype) for t in tensors]


def memory_read(q, k, v, scale, dtype=torch.float64):
    q, k, v = _cast((q, k, v), dtype)
    # Grouped heads: k and v with H_kv heads serve H // H_kv query heads each, in order.
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    s = torch.einsum("blhd,bkhd->bhlk", q, k) * scale
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhlk,bkhd->blhd", p, v)


def slot_attention(q, k, v, k_tok, v_tok, tau, scale, key_padding_mask=None, dtype=torch.float64):
    q, k, v, k_tok, v_tok = _cast((q, k, v, k_tok, v_tok), dtype)
    c = scale / tau
    s_self = torch.einsum("bkhd,bkhd->bhk", q, k).unsqueeze(-1) * c
    s_tok = torch.einsum("bkhd,blhd->bhkl", q, k_tok) * c
    if key_padding_mask is not None:
        s_tok = s_tok.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(torch.cat([s_self, s_tok], dim=-1), dim=-1)
    out = p[..., :1].permute(0, 2, 1, 3) * v
    return out + torch.einsum("bhkl,blhd->bkhd", p[..., 1:], v_tok)


def memory_norm(m, bias, eps, dtype=torch.float64):
    # max(||x||, eps) as sqrt(max(||x||^2, eps^2)): the same value, and a row that is exactly
    # zero (bfloat16 rounds m = -bias + 1e-4 to that) gets the clamp's zero gradient instead
    # of autograd's 0 * inf = NaN through sqrt at 0.
    m, bias = _cast((m, bias), dtype)
    x = m + bias
    return x / torch.sqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps * eps))
