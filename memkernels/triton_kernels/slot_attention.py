"""Fused Triton kernels for slot attention (Memformer's memory write).

Slot ``i`` attends over its own key and the segment's token keys:
``p = softmax([s_self, s_tok])`` with ``s_self = c * q_i.k_i`` and
``s_tok_j = c * q_i.k_tok_j`` (-inf at padding), ``out_i = p_self * v_i + sum_j p_j * v_tok_j``.
The launchers take ``c`` already folded (``scale / tau``).

Forward: one program per (block of slots, batch * head). It is flash attention whose
online-softmax state starts at the slot's own term (max = s_self, sum = 1, acc = v_i)
before the token blocks stream through, so a slot whose tokens are all padding never
leaves that state (and is stored as v_i itself, bitwise). Whole token blocks without a
padding mask take one fused multiply-add and one exp2 per score; the last, partial block is
peeled off. It saves ``lse`` for the backward.

Backward, with ``P`` recomputed from ``lse`` and ``dS = P * (dP - delta)`` over [self; tokens]:
  * a slot kernel (programs over slot blocks, looping over tokens) renormalises the rebuilt
    P over [self; tokens] and finds ``delta = p_self dP_self + sum_j P_j dP_j`` (a first
    pass over the tokens unless they fit one block; delta not from rowsum(dout * out), whose
    rounded output costs bfloat16 its accuracy on peaked rows: see `memory_read`), then
    writes ``dq = c * (dS_self k_i + dS_tok @ k_tok)``, ``dk = c * dS_self q``,
    ``dv = P_self dout``, and ``delta`` and the normalisation for the second kernel;
  * a token kernel (programs over token blocks, looping over all slots) writes
    ``dk_tok = c * dS_tok^T @ q`` and ``dv_tok = P_tok^T @ dout``; it masks no score (padding
    slots read zeros, padding tokens' rows are zeroed once at the end).
Tiles, warps and stages come from the architecture's table (`_launch.attention_tiles`).
Every output row belongs to exactly one program and every loop runs in a fixed order:
no atomics, so results are bitwise reproducible run to run.

All tensors are read through their strides (any layout, e.g. a (B, H, K, D) tensor passed
as ``x.transpose(1, 2)``), or, when every input is contiguous, by a kernel variant that
takes sizes instead of strides (fewer launch arguments). Offsets are int64; every load is
masked; float64 uses broadcast products instead of tl.dot (see `_common.mm`).
"""

import torch
import triton
import triton.language as tl

from memkernels.triton_kernels._common import (
    exp,
    full_block_softmax_step,
    grad_scale,
    key_block_grads,
    load_rows,
    load_tile,
    mm,
    natural_lse,
    online_softmax_step,
    store_tile,
    to_score_units,
)
from memkernels.triton_kernels._launch import (
    Tiles,
    attention_tiles,
    cdiv,
    check_grid,
    kernel_scale,
    numerics,
    on_device,
    target_arch,
)

# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------


@triton.jit
def _head(H, n_blocks):
    # (block index, b, h): blocks of one (b, h) are neighbours in launch order, so they share
    # its tokens (or slots) in L2.
    pid = tl.program_id(0)
    bh = (pid // n_blocks).to(tl.int64)
    return pid % n_blocks, bh, bh // H, bh % H


@triton.jit
def _token_ok(mask_ptr, tokens, L, HAS_MASK: tl.constexpr):
    # [len(tokens)] True for real tokens inside the segment; the mask is (B, L) contiguous.
    ok = tokens < L
    if HAS_MASK:
        ok &= tl.load(mask_ptr + tokens, mask=ok, other=0) != 0
    return ok


@triton.jit
def _stream_block(q, k_tok_base, v_tok_base, mask_row, tokens, cols, scale, m_i, l_i, acc, n_live,
                  stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D,
                  MASK_TOKENS: tl.constexpr, HAS_MASK: tl.constexpr, NEGATIVE_SCALE: tl.constexpr,
                  EVEN_D: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    # One token block of the forward's online softmax. A whole block without a padding mask
    # takes one FMA and one exp2 per score; otherwise scores of padding tokens are -inf.
    k_tok = load_tile(k_tok_base, tokens, L, stride_ktl, cols, D, stride_ktd, MASK_TOKENS, not EVEN_D)
    v_tok = load_tile(v_tok_base, tokens, L, stride_vtl, cols, D, stride_vtd, MASK_TOKENS, not EVEN_D)
    qk = mm(q, tl.trans(k_tok), tl.zeros([BLOCK_K, BLOCK_L], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
    if MASK_TOKENS or HAS_MASK:
        tok_ok = _token_ok(mask_row, tokens, L, HAS_MASK)  # [BLOCK_L]
        if HAS_MASK:
            n_live += tl.sum(tok_ok.to(tl.int32), axis=0)
        m_i, alpha, p = online_softmax_step(tl.where(tok_ok[None, :], qk * scale, float("-inf")), m_i, BASE2)
    else:
        m_i, alpha, p = full_block_softmax_step(qk, m_i, scale, NEGATIVE_SCALE, BASE2)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = mm(p.to(v_tok.dtype), v_tok, acc * alpha[:, None], USE_TL_DOT, DOT_PRECISION)
    return m_i, l_i, acc, n_live


@triton.jit
def _fwd(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, NEGATIVE_SCALE: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_k, bh, b, h = _head(H, tl.cdiv(K, BLOCK_K))
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    slots = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)  # [BLOCK_K]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    q = load_tile(q_ptr + b * stride_qb + h * stride_qh, slots, K, stride_qk, cols, D, stride_qd,
                  True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    k = load_tile(k_ptr + b * stride_kb + h * stride_kh, slots, K, stride_kk, cols, D, stride_kd,
                  True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    v_base = v_ptr + b * stride_vb + h * stride_vh
    v = load_tile(v_base, slots, K, stride_vk, cols, D, stride_vd, True, not EVEN_D)  # [BLOCK_K, BLOCK_D]

    # The softmax state starts at the slot's own term: running max = its score, running
    # sum = exp(0) = 1, accumulator = its value (the upcast is exact). The max is finite from
    # the start, so a block of padding leaves the state as it was.
    m_i = tl.sum(q.to(ACC_DTYPE) * k.to(ACC_DTYPE), axis=1) * scale  # [BLOCK_K]
    l_i = tl.full([BLOCK_K], 1.0, ACC_DTYPE)  # [BLOCK_K]
    acc = v.to(ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    n_live = tl.zeros((), tl.int32)

    k_tok_base = k_tok_ptr + b * stride_ktb + h * stride_kth
    v_tok_base = v_tok_ptr + b * stride_vtb + h * stride_vth
    mask_row = mask_ptr + b * L
    l_full = L - L % BLOCK_L  # tokens in whole blocks
    if WHOLE_BLOCKS:  # whole blocks without bounds masks; the partial last block peeled off
        for start in range(0, l_full, BLOCK_L):
            m_i, l_i, acc, n_live = _stream_block(
                q, k_tok_base, v_tok_base, mask_row, start + tl.arange(0, BLOCK_L), cols, scale, m_i, l_i, acc,
                n_live, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, False, HAS_MASK, NEGATIVE_SCALE, EVEN_D,
                ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
        if l_full < L:
            m_i, l_i, acc, n_live = _stream_block(
                q, k_tok_base, v_tok_base, mask_row, l_full + tl.arange(0, BLOCK_L), cols, scale, m_i, l_i, acc,
                n_live, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, True, HAS_MASK, NEGATIVE_SCALE, EVEN_D,
                ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
    else:  # one masked loop: two copies of an FMA-unit product (float32, float64) spill registers
        for start in range(0, L, BLOCK_L):
            m_i, l_i, acc, n_live = _stream_block(
                q, k_tok_base, v_tok_base, mask_row, start + tl.arange(0, BLOCK_L), cols, scale, m_i, l_i, acc,
                n_live, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, True, HAS_MASK, NEGATIVE_SCALE, EVEN_D,
                ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)

    out = acc / l_i[:, None]  # [BLOCK_K, BLOCK_D]
    if HAS_MASK:
        # The mask is per batch: every slot here saw a real token or none did. With none, store
        # v itself rather than trust exp(0) == 1, x / 1 == x (approximate division on the GPU)
        # and the sign of the zeros the dot added, so that the output is v bit for bit.
        if n_live == 0:
            out = load_tile(v_base, slots, K, stride_vk, cols, D, stride_vd).to(ACC_DTYPE)
    # out (B, K, H, D) and lse (B, H, K) are allocated contiguous.
    store_tile(out_ptr + (b * K * H + h) * D, slots, K, H * D, cols, D, out)
    tl.store(lse_ptr + bh * K + slots, natural_lse(m_i, l_i, BASE2), mask=slots < K)


@triton.jit
def _token_block_probs(q, dout, k_tok_base, v_tok_base, mask_row, tokens, cols, lse, scale,
                       stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D,
                       MASK_TOKENS: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
                       ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       BASE2: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    # One token block of the slot kernel: k_tok [BLOCK_L, BLOCK_D], P and dP [BLOCK_K, BLOCK_L].
    k_tok = load_tile(k_tok_base, tokens, L, stride_ktl, cols, D, stride_ktd, MASK_TOKENS, not EVEN_D)
    v_tok = load_tile(v_tok_base, tokens, L, stride_vtl, cols, D, stride_vtd, MASK_TOKENS, not EVEN_D)
    qk = mm(q, tl.trans(k_tok), tl.zeros([BLOCK_K, BLOCK_L], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
    if MASK_TOKENS or HAS_MASK:
        tok_ok = _token_ok(mask_row, tokens, L, HAS_MASK)
        p = exp(tl.where(tok_ok[None, :], qk * scale, float("-inf")) - lse[:, None], BASE2)
    else:
        p = exp(qk * scale - lse[:, None], BASE2)
    dp = mm(dout, tl.trans(v_tok), tl.zeros([BLOCK_K, BLOCK_L], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
    return k_tok, p, dp


@triton.jit
def _slots_sums(q, dout, k_tok_base, v_tok_base, mask_row, tokens, cols, lse, scale, delta, p_sum,
                stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D,
                MASK_TOKENS: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
                USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK_L: tl.constexpr):
    # The slot kernel's first pass over one token block: adds rowsum(P * dP) and rowsum(P).
    _, p, dp = _token_block_probs(q, dout, k_tok_base, v_tok_base, mask_row, tokens, cols, lse, scale,
                                  stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, MASK_TOKENS, HAS_MASK, EVEN_D,
                                  ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
    return delta + tl.sum(p * dp, axis=1), p_sum + tl.sum(p, axis=1)


@triton.jit
def _slots_step(q, dout, k_tok_base, v_tok_base, mask_row, tokens, cols, lse, scale, p_self, dp_self, dq, p_scale,
                delta, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D,
                MASK_TOKENS: tl.constexpr, TWO_PASS: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
                ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr):
    # dq += dS_tok k_tok over one token block; with a single block (not TWO_PASS) P's
    # normalisation and delta, self term included, come from the scores at hand.
    k_tok, p, dp = _token_block_probs(q, dout, k_tok_base, v_tok_base, mask_row, tokens, cols, lse, scale,
                                      stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, MASK_TOKENS, HAS_MASK,
                                      EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
    if not TWO_PASS:
        p_scale = 1.0 / (p_self + tl.sum(p, axis=1))
        delta = (p_self * dp_self + tl.sum(p * dp, axis=1)) * p_scale
    ds = p * p_scale[:, None] * (dp - delta[:, None])  # [BLOCK_K, BLOCK_L]
    return mm(ds.to(k_tok.dtype), k_tok, dq, USE_TL_DOT, DOT_PRECISION), p_scale, delta


@triton.jit
def _bwd_slots(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr,
    dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    stride_gb, stride_gk, stride_gh, stride_gd,
    H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, TWO_PASS: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_k, bh, b, h = _head(H, tl.cdiv(K, BLOCK_K))
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    slots = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)  # [BLOCK_K]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    q = load_tile(q_ptr + b * stride_qb + h * stride_qh, slots, K, stride_qk, cols, D, stride_qd,
                  True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    k_base = k_ptr + b * stride_kb + h * stride_kh
    k = load_tile(k_base, slots, K, stride_kk, cols, D, stride_kd, True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    v = load_tile(v_ptr + b * stride_vb + h * stride_vh, slots, K, stride_vk, cols, D, stride_vd,
                  True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    dout_base = dout_ptr + b * stride_gb + h * stride_gh
    dout = load_tile(dout_base, slots, K, stride_gk, cols, D, stride_gd, True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    # lse (B, H, K) contiguous; rows past K read 0, their scores are 0 too, and nothing overflows.
    lse = to_score_units(load_rows(lse_ptr + bh * K, slots, K, True), BASE2)  # [BLOCK_K]

    # The self term's score and dP. The tiles the epilogue needs again are reread there (from
    # L2) rather than held in registers through the token loops (spills at D128).
    p_self = exp(tl.sum(q.to(ACC_DTYPE) * k.to(ACC_DTYPE), axis=1) * scale - lse, BASE2)  # [BLOCK_K]
    dp_self = tl.sum(dout.to(ACC_DTYPE) * v.to(ACC_DTYPE), axis=1)  # [BLOCK_K]

    k_tok_base = k_tok_ptr + b * stride_ktb + h * stride_kth
    v_tok_base = v_tok_ptr + b * stride_vtb + h * stride_vth
    mask_row = mask_ptr + b * L
    l_full = L - L % BLOCK_L  # tokens in whole blocks
    delta = p_self * dp_self  # [BLOCK_K]
    p_scale = tl.full([BLOCK_K], 1.0, ACC_DTYPE)  # [BLOCK_K] 1 / rowsum of the rebuilt P
    if TWO_PASS:  # L spans several blocks: the second pass needs both over every token first
        p_sum = p_self  # [BLOCK_K]
        if WHOLE_BLOCKS:  # as in _fwd
            for start in range(0, l_full, BLOCK_L):
                delta, p_sum = _slots_sums(
                    q, dout, k_tok_base, v_tok_base, mask_row, start + tl.arange(0, BLOCK_L), cols, lse, scale,
                    delta, p_sum, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, False, HAS_MASK, EVEN_D,
                    ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
            if l_full < L:
                delta, p_sum = _slots_sums(
                    q, dout, k_tok_base, v_tok_base, mask_row, l_full + tl.arange(0, BLOCK_L), cols, lse, scale,
                    delta, p_sum, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, True, HAS_MASK, EVEN_D,
                    ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
        else:
            for start in range(0, L, BLOCK_L):
                delta, p_sum = _slots_sums(
                    q, dout, k_tok_base, v_tok_base, mask_row, start + tl.arange(0, BLOCK_L), cols, lse, scale,
                    delta, p_sum, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, True, HAS_MASK, EVEN_D,
                    ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
        p_scale = 1.0 / p_sum
        delta = delta * p_scale

    dq = tl.zeros([BLOCK_K, BLOCK_D], ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    if WHOLE_BLOCKS:
        for start in range(0, l_full, BLOCK_L):
            dq, p_scale, delta = _slots_step(
                q, dout, k_tok_base, v_tok_base, mask_row, start + tl.arange(0, BLOCK_L), cols, lse, scale, p_self,
                dp_self, dq, p_scale, delta, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, False, TWO_PASS,
                HAS_MASK, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
        if l_full < L:
            dq, p_scale, delta = _slots_step(
                q, dout, k_tok_base, v_tok_base, mask_row, l_full + tl.arange(0, BLOCK_L), cols, lse, scale, p_self,
                dp_self, dq, p_scale, delta, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, True, TWO_PASS,
                HAS_MASK, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)
    else:
        for start in range(0, L, BLOCK_L):
            dq, p_scale, delta = _slots_step(
                q, dout, k_tok_base, v_tok_base, mask_row, start + tl.arange(0, BLOCK_L), cols, lse, scale, p_self,
                dp_self, dq, p_scale, delta, stride_ktl, stride_ktd, stride_vtl, stride_vtd, L, D, True, TWO_PASS,
                HAS_MASK, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L)

    c = grad_scale(scale, BASE2)
    p_self = p_self * p_scale  # [BLOCK_K]
    ds_self = p_self * (dp_self - delta)  # [BLOCK_K]
    k = load_tile(k_base, slots, K, stride_kk, cols, D, stride_kd, True, not EVEN_D, ".cg")  # [BLOCK_K, BLOCK_D]
    q = load_tile(q_ptr + b * stride_qb + h * stride_qh, slots, K, stride_qk, cols, D, stride_qd, True, not EVEN_D,
                  ".cg")  # [BLOCK_K, BLOCK_D]
    dout = load_tile(dout_base, slots, K, stride_gk, cols, D, stride_gd, True, not EVEN_D, ".cg")
    dq = (dq + ds_self[:, None] * k.to(ACC_DTYPE)) * c
    # dq, dk, dv (B, K, H, D) and delta (B, H, K) are allocated contiguous.
    slot_rows = (b * K * H + h) * D
    store_tile(dq_ptr + slot_rows, slots, K, H * D, cols, D, dq)
    store_tile(dk_ptr + slot_rows, slots, K, H * D, cols, D, (c * ds_self)[:, None] * q.to(ACC_DTYPE))
    store_tile(dv_ptr + slot_rows, slots, K, H * D, cols, D, p_self[:, None] * dout.to(ACC_DTYPE))
    tl.store(delta_ptr + bh * K + slots, delta, mask=slots < K)
    tl.store(p_scale_ptr + bh * K + slots, p_scale, mask=slots < K)


@triton.jit
def _token_grads(k_tok, v_tok, q_base, dout_base, lse_ptr, delta_ptr, p_scale_ptr, stride_qk, stride_qd, stride_gk,
                 stride_gd, cols, K, D, scale, dk_tok, dv_tok, EVEN_D: tl.constexpr, WHOLE_BLOCKS: tl.constexpr,
                 ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
                 BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr):
    # The token kernel's loop over every slot block, in order.
    k_full = K - K % BLOCK_K  # slots in whole blocks
    if WHOLE_BLOCKS:  # as in _fwd
        for start in range(0, k_full, BLOCK_K):
            dk_tok, dv_tok = key_block_grads(k_tok, v_tok, q_base, dout_base, lse_ptr, delta_ptr, p_scale_ptr,
                                             start + tl.arange(0, BLOCK_K), K, stride_qk, stride_qd, stride_gk,
                                             stride_gd, cols, D, scale, dk_tok, dv_tok, False, EVEN_D, BLOCK_L,
                                             BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
        if k_full < K:
            dk_tok, dv_tok = key_block_grads(k_tok, v_tok, q_base, dout_base, lse_ptr, delta_ptr, p_scale_ptr,
                                             k_full + tl.arange(0, BLOCK_K), K, stride_qk, stride_qd, stride_gk,
                                             stride_gd, cols, D, scale, dk_tok, dv_tok, True, EVEN_D, BLOCK_L,
                                             BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
    else:
        for start in range(0, K, BLOCK_K):
            dk_tok, dv_tok = key_block_grads(k_tok, v_tok, q_base, dout_base, lse_ptr, delta_ptr, p_scale_ptr,
                                             start + tl.arange(0, BLOCK_K), K, stride_qk, stride_qd, stride_gk,
                                             stride_gd, cols, D, scale, dk_tok, dv_tok, True, EVEN_D, BLOCK_L,
                                             BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
    return dk_tok, dv_tok


@triton.jit
def _bwd_tokens(
    q_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_tok_ptr, dv_tok_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    stride_gb, stride_gk, stride_gh, stride_gd,
    H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_l, bh, b, h = _head(H, tl.cdiv(L, BLOCK_L))
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    tokens = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    k_tok = load_tile(k_tok_ptr + b * stride_ktb + h * stride_kth, tokens, L, stride_ktl, cols, D, stride_ktd,
                      True, not EVEN_D)  # [BLOCK_L, BLOCK_D]
    v_tok = load_tile(v_tok_ptr + b * stride_vtb + h * stride_vth, tokens, L, stride_vtl, cols, D, stride_vtd,
                      True, not EVEN_D)  # [BLOCK_L, BLOCK_D]
    tok_ok = _token_ok(mask_ptr + b * L, tokens, L, HAS_MASK)  # [BLOCK_L]

    dk_tok = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    dv_tok = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    q_base = q_ptr + b * stride_qb + h * stride_qh
    dout_base = dout_ptr + b * stride_gb + h * stride_gh
    stats = bh * K  # lse, delta, p_scale (B, H, K) contiguous
    if HAS_MASK:
        # Padding tokens get zero gradients: a block of nothing but padding skips the slot loop.
        # A branch around the loop, not a loop bound of K or 0, which cost the loop K's known
        # divisibility and spilled registers (sm_90, D128).
        if tl.max(tok_ok.to(tl.int32), axis=0) > 0:
            dk_tok, dv_tok = _token_grads(k_tok, v_tok, q_base, dout_base, lse_ptr + stats, delta_ptr + stats,
                                          p_scale_ptr + stats, stride_qk, stride_qd, stride_gk, stride_gd, cols, K, D,
                                          scale, dk_tok, dv_tok, EVEN_D, WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT,
                                          DOT_PRECISION, BASE2, BLOCK_L, BLOCK_K)
    else:
        dk_tok, dv_tok = _token_grads(k_tok, v_tok, q_base, dout_base, lse_ptr + stats, delta_ptr + stats,
                                      p_scale_ptr + stats, stride_qk, stride_qd, stride_gk, stride_gd, cols, K, D,
                                      scale, dk_tok, dv_tok, EVEN_D, WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT,
                                      DOT_PRECISION, BASE2, BLOCK_L, BLOCK_K)
    if HAS_MASK:  # padding tokens' rows hold scores outside every lse: zero, as their gradient is
        dk_tok = tl.where(tok_ok[:, None], dk_tok, 0.0)
        dv_tok = tl.where(tok_ok[:, None], dv_tok, 0.0)

    # dk_tok, dv_tok (B, L, H, D) are allocated contiguous.
    tok_rows = (b * L * H + h) * D
    store_tile(dk_tok_ptr + tok_rows, tokens, L, H * D, cols, D, dk_tok * grad_scale(scale, BASE2))
    store_tile(dv_tok_ptr + tok_rows, tokens, L, H * D, cols, D, dv_tok)


# The entry points: a strided variant and a contiguous one (sizes instead of strides) per kernel.


@triton.jit
def _slot_attention_fwd_strided_kernel(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, NEGATIVE_SCALE: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _fwd(q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, out_ptr, lse_ptr,
         stride_qb, stride_qk, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
         stride_vb, stride_vk, stride_vh, stride_vd, stride_ktb, stride_ktl, stride_kth, stride_ktd,
         stride_vtb, stride_vtl, stride_vth, stride_vtd, H, K, L, D, scale_hi, scale_lo,
         HAS_MASK, NEGATIVE_SCALE, EVEN_D,
         WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L, BLOCK_D)


@triton.jit
def _slot_attention_fwd_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, out_ptr, lse_ptr, H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, NEGATIVE_SCALE: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = H * D
    slots = tl.cast(K, tl.int64) * row  # int64: one batch entry may exceed 2**31 elements
    tokens = tl.cast(L, tl.int64) * row
    _fwd(q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, out_ptr, lse_ptr,
         slots, row, D, 1, slots, row, D, 1, slots, row, D, 1, tokens, row, D, 1, tokens, row, D, 1,
         H, K, L, D, scale_hi, scale_lo,
         HAS_MASK, NEGATIVE_SCALE, EVEN_D,
         WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L, BLOCK_D)


@triton.jit
def _slot_attention_bwd_slots_strided_kernel(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr,
    dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    stride_gb, stride_gk, stride_gh, stride_gd,
    H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, TWO_PASS: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _bwd_slots(q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr,
               dq_ptr, dk_ptr, dv_ptr,
               stride_qb, stride_qk, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
               stride_vb, stride_vk, stride_vh, stride_vd, stride_ktb, stride_ktl, stride_kth, stride_ktd,
               stride_vtb, stride_vtl, stride_vth, stride_vtd, stride_gb, stride_gk, stride_gh, stride_gd,
               H, K, L, D, scale_hi, scale_lo,
               HAS_MASK, TWO_PASS, EVEN_D,
               WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L, BLOCK_D)


@triton.jit
def _slot_attention_bwd_slots_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr,
    dq_ptr, dk_ptr, dv_ptr, H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, TWO_PASS: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = H * D
    slots = tl.cast(K, tl.int64) * row
    tokens = tl.cast(L, tl.int64) * row
    _bwd_slots(q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr,
               dq_ptr, dk_ptr, dv_ptr,
               slots, row, D, 1, slots, row, D, 1, slots, row, D, 1, tokens, row, D, 1, tokens, row, D, 1,
               slots, row, D, 1, H, K, L, D, scale_hi, scale_lo,
               HAS_MASK, TWO_PASS, EVEN_D,
               WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_K, BLOCK_L, BLOCK_D)


@triton.jit
def _slot_attention_bwd_tokens_strided_kernel(
    q_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_tok_ptr, dv_tok_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    stride_gb, stride_gk, stride_gh, stride_gd,
    H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    _bwd_tokens(q_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_tok_ptr,
                dv_tok_ptr,
                stride_qb, stride_qk, stride_qh, stride_qd, stride_ktb, stride_ktl, stride_kth, stride_ktd,
                stride_vtb, stride_vtl, stride_vth, stride_vtd, stride_gb, stride_gk, stride_gh, stride_gd,
                H, K, L, D, scale_hi, scale_lo,
                HAS_MASK, EVEN_D, WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_L, BLOCK_K, BLOCK_D)


@triton.jit
def _slot_attention_bwd_tokens_contiguous_kernel(
    q_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_tok_ptr, dv_tok_ptr,
    H, K, L, D, scale_hi, scale_lo,
    HAS_MASK: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = H * D
    slots = tl.cast(K, tl.int64) * row
    tokens = tl.cast(L, tl.int64) * row
    _bwd_tokens(q_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_tok_ptr,
                dv_tok_ptr,
                slots, row, D, 1, tokens, row, D, 1, tokens, row, D, 1, slots, row, D, 1,
                H, K, L, D, scale_hi, scale_lo,
                HAS_MASK, EVEN_D, WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2, BLOCK_L, BLOCK_K, BLOCK_D)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------


def _empty(shape, dtype, device):
    # Every allocation goes through here so that tests can hand out NaN-filled memory.
    return torch.empty(shape, dtype=dtype, device=device)


def _slot_tiles(q, L: int, kernel: str) -> Tiles:
    """Tiles of the forward or the slot kernel: rows = slots, streamed = tokens."""
    B, K, H, D = q.shape
    return attention_tiles(target_arch(q.device), K, L, B * H, D, q.element_size(), kernel)


def _mask_arg(key_padding_mask, like):
    """The (B, L) mask as contiguous bytes (bool and uint8 share a layout; the kernels compare
    with 0), or any pointer when there is no mask."""
    if key_padding_mask is None:
        return like
    return key_padding_mask.contiguous().view(torch.uint8)


def _launch(variants, contiguous: bool, grid: int, pointers, strided_inputs, shape_and_scale, has_mask: bool,
            blocks: dict, tiles: Tiles, dtype: torch.dtype, **flags):
    dt = numerics(dtype)
    strides = () if contiguous else tuple(s for t in strided_inputs for s in t.stride())
    variants[contiguous][(check_grid(grid),)](
        *pointers, *strides, *shape_and_scale,
        HAS_MASK=has_mask, EVEN_D=shape_and_scale[3] == tiles.block_d, WHOLE_BLOCKS=dtype.itemsize == 2,
        ACC_DTYPE=dt.acc_tl,
        USE_TL_DOT=dtype != torch.float64, DOT_PRECISION=dt.dot_precision, BASE2=dtype != torch.float64,
        BLOCK_D=tiles.block_d, **blocks, num_warps=tiles.num_warps, num_stages=tiles.num_stages, **flags,
    )


_FORWARD = (_slot_attention_fwd_strided_kernel, _slot_attention_fwd_contiguous_kernel)
_BACKWARD_SLOTS = (_slot_attention_bwd_slots_strided_kernel, _slot_attention_bwd_slots_contiguous_kernel)
_BACKWARD_TOKENS = (_slot_attention_bwd_tokens_strided_kernel, _slot_attention_bwd_tokens_contiguous_kernel)


def slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale: float):
    """Fused slot attention forward. Returns ``out`` (B, K, H, D) and ``lse`` (B, H, K).

    ``scale`` is the full score scale (``scale / tau``). ``lse`` is float32 (float64 for
    float64 inputs), natural log.
    """
    B, K, H, D = q.shape
    L = k_tok.shape[1]
    out = _empty((B, K, H, D), q.dtype, q.device)
    lse = _empty((B, H, K), numerics(q.dtype).acc_torch, q.device)
    tiles = _slot_tiles(q, L, "forward" if key_padding_mask is None else "masked_forward")
    inputs = (q, k, v, k_tok, v_tok)
    with on_device(q):
        _launch(_FORWARD, all(t.is_contiguous() for t in inputs), cdiv(K, tiles.block_rows) * B * H,
                (*inputs, _mask_arg(key_padding_mask, q), out, lse), inputs,
                (H, K, L, D, *kernel_scale(scale, q.dtype)), key_padding_mask is not None,
                dict(BLOCK_K=tiles.block_rows, BLOCK_L=tiles.block_stream), tiles, q.dtype,
                NEGATIVE_SCALE=scale < 0)
    return out, lse


def slot_attention_backward(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale: float):
    """Gradients of :func:`slot_attention_forward`: ``dq, dk, dv, dk_tok, dv_tok``.

    ``lse`` is the forward's; ``out`` is unused (delta comes from the recomputed
    probabilities, see the module docstring). Padding tokens get zero gradients.
    """
    B, K, H, D = q.shape
    L = k_tok.shape[1]
    dq, dk, dv = (_empty((B, K, H, D), q.dtype, q.device) for _ in range(3))
    dk_tok, dv_tok = (_empty((B, L, H, D), q.dtype, q.device) for _ in range(2))
    delta, p_scale = _empty((2, B, H, K), numerics(q.dtype).acc_torch, q.device)
    lse = lse.contiguous()
    mask = _mask_arg(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    slot_tiles = _slot_tiles(q, L, "rows")
    # The token kernel carries two accumulators per row (dk_tok, dv_tok).
    token_tiles = attention_tiles(target_arch(q.device), L, K, B * H, D, q.element_size(), "stream")
    shape_and_scale = (H, K, L, D, *kernel_scale(scale, q.dtype))
    slot_inputs = (q, k, v, k_tok, v_tok, dout)
    contiguous = all(t.is_contiguous() for t in slot_inputs)
    with on_device(q):
        # Writes delta and p_scale, which the token kernel reads: the launches are stream-ordered.
        _launch(_BACKWARD_SLOTS, contiguous, cdiv(K, slot_tiles.block_rows) * B * H,
                (q, k, v, k_tok, v_tok, mask, dout, lse, delta, p_scale, dq, dk, dv), slot_inputs, shape_and_scale,
                has_mask, dict(BLOCK_K=slot_tiles.block_rows, BLOCK_L=slot_tiles.block_stream), slot_tiles, q.dtype,
                TWO_PASS=L > slot_tiles.block_stream)
        token_inputs = (q, k_tok, v_tok, dout)
        _launch(_BACKWARD_TOKENS, contiguous, cdiv(L, token_tiles.block_rows) * B * H,
                (q, k_tok, v_tok, mask, dout, lse, delta, p_scale, dk_tok, dv_tok), token_inputs, shape_and_scale,
                has_mask, dict(BLOCK_L=token_tiles.block_rows, BLOCK_K=token_tiles.block_stream), token_tiles,
                q.dtype)
    return dq, dk, dv, dk_tok, dv_tok
