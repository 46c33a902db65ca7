"""docs/SPEC.md's cost model: the fewest bytes each op must move and the FLOPs it does.

Forward numbers are docs/SPEC.md's. Forward+backward adds the backward's own
minimum traffic (it reads the inputs, the output and its gradient, and writes
one gradient per input) and counts backward FLOPs as 2.5x forward, the usual
figure for attention (five matrix products against two).
"""


def memory_read(B, L, K, H, D, s):
    tok, mem = B * L * H * D, B * K * H * D
    flops = 4 * B * H * L * K * D
    fwd_bytes = s * (2 * tok + 2 * mem)
    bwd_bytes = s * (3 * tok + 2 * mem) + s * (tok + 2 * mem)
    return {"fwd": (fwd_bytes, flops), "fwd_bwd": (fwd_bytes + bwd_bytes, 3.5 * flops)}


def slot_attention(B, L, K, H, D, s):
    tok, mem = B * L * H * D, B * K * H * D
    flops = 4 * B * H * K * (L + 1) * D
    fwd_bytes = s * (4 * mem + 2 * tok)
    bwd_bytes = s * (5 * mem + 2 * tok) + s * (3 * mem + 2 * tok)
    return {"fwd": (fwd_bytes, flops), "fwd_bwd": (fwd_bytes + bwd_bytes, 3.5 * flops)}


def memory_norm(B, K, W, s):
    rows = B * K * W
    flops = 4 * rows
    fwd_bytes = s * (2 * rows + K * W)
    bwd_bytes = s * (2 * rows) + s * (rows + K * W)
    return {"fwd": (fwd_bytes, flops), "fwd_bwd": (fwd_bytes + bwd_bytes, 3 * flops)}
