"""Fused Triton kernels for Memformer's memory read (every token attends over all K slots).

    out[b, l, h] = sum_j softmax_j(scale * q[b, l, h] . k[b, j, hk]) * v[b, j, hk]

k and v may have fewer heads than q (grouped heads): H_kv dividing H, query head h reads
key/value head hk = h // (H // H_kv) in place, with no expanded copy.

Forward: one program per (L-block, b, h). The query block stays on chip while K/V stream
through in blocks of BLOCK_K slots with an online softmax, so any K works. Whole blocks run
without masks, the scale folded into one fused multiply-add per score (the block's max is
taken before scaling); the last, partial block is peeled off and masked. The natural
log-sum-exp is saved per row so the backward can rebuild P = exp(scale * q.k - lse) without
storing a (B, H, L, K) tensor.

Backward (no atomics, so gradients are bitwise reproducible):
  1. per (L-block, b, h): P = exp(scale * q.k - lse) / rowsum(exp(...)) and
     delta = rowsum(P * dP) over all K, then dq = scale * dS k with dS = P * (dP - delta),
     dP = dout . v; delta and the row's normalisation are written for step 2. delta comes
     from P and dP in float32, not from rowsum(dout * out): the output is rounded to the
     input dtype, and for a sharply peaked row that rounding alone was the whole bfloat16
     dq error (0.09 against a gradient of 0.1 on an H100). The normalisation makes each row
     of P sum to 1, and of dS to 0, although P rebuilt from a float32 lse sums to 1 only
     within ~3e-5 at scores of magnitude 500 (see reference._softmax_backward). When K fits
     one block the scores are computed once; otherwise (TWO_PASS, fixed by the shape) a
     first pass over K finds both.
  2. per (K-block, b, key/value head), looping over its query heads and over L in order:
     dv = P^T dout, dk = scale * dS^T q, summed over the group.
Every output element is written by exactly one program.

Inputs are read through their strides (a (B, H, L, D) tensor passed as x.transpose(1, 2) is
read in place); when every input is contiguous a kernel variant that takes sizes instead of
strides runs, since Triton's launch cost grows with the argument count. The two variants
may order a reduction differently: the same inputs in the same layout give the same bits,
other layouts agree to rounding. Accumulation is float32 (float64 for float64 inputs);
tl.dot runs on the input dtype (P and dS are cast down before their dot, as in
FlashAttention), float32 at IEEE precision; float64 uses broadcast products. Block sizes,
warps and stages come from the architecture's table (`_launch.attention_tiles`), a pure
function of the shape; `python -m benchmarks.codegen` shows what the compiler makes of them.
"""
import functools
from typing import NamedTuple

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

# --------------------------------------------------------------------------- kernels


@triton.jit
def _head(H, n_blocks):
    # (block index, b*H + h, b, h) of this program; blocks of one (b, h) are neighbours in
    # launch order, so they share its K/V (or Q/dout) in L2. A 1-D grid avoids the 65535
    # limit of CUDA's second grid axis.
    pid = tl.program_id(0)
    bh = (pid // n_blocks).to(tl.int64)
    return pid % n_blocks, bh, bh // H, bh % H


@triton.jit
def _scores(q, kt, slots, K, scale, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, ACC_DTYPE: tl.constexpr,
            USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # [BLOCK_L, BLOCK_K] scaled scores, -inf at padding slots (their k reads as 0, and a 0
    # score would outweigh real scores below it).
    s = mm(q, tl.trans(kt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION) * scale
    return tl.where((slots < K)[None, :], s, float("-inf"))


@triton.jit
def _fwd_block(q, k_base, v_base, slots, K, stride_kk, stride_kd, stride_vk, stride_vd, cols, D, scale, m_i, l_i, acc,
               MASK_SLOTS: tl.constexpr, NEGATIVE_SCALE: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_L: tl.constexpr,
               BLOCK_K: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
               BASE2: tl.constexpr):
    # One block of slots of the online softmax. A whole block is read without a mask and takes
    # one fused multiply-add and one exp2 per score; a masked one gives padding slots -inf.
    kt = load_tile(k_base, slots, K, stride_kk, cols, D, stride_kd, MASK_SLOTS, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    vt = load_tile(v_base, slots, K, stride_vk, cols, D, stride_vd, MASK_SLOTS, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    if MASK_SLOTS:
        s = _scores(q, kt, slots, K, scale, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION)
        m_i, alpha, p = online_softmax_step(s, m_i, BASE2)  # p: [BLOCK_L, BLOCK_K]
    else:
        qk = mm(q, tl.trans(kt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
        m_i, alpha, p = full_block_softmax_step(qk, m_i, scale, NEGATIVE_SCALE, BASE2)  # p: [BLOCK_L, BLOCK_K]
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = mm(p.to(vt.dtype), vt, acc * alpha[:, None], USE_TL_DOT, DOT_PRECISION)
    return m_i, l_i, acc


@triton.jit
def _fwd(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    NEGATIVE_SCALE: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BASE2: tl.constexpr,
):
    pid_l, bh, b, h = _head(H, tl.cdiv(L, BLOCK_L))
    # Scalar float arguments are float32 on the GPU: a float64 scale comes in two halves.
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    q = load_tile(q_ptr + b * stride_qb + h * stride_qh, rows, L, stride_ql, cols, D, stride_qd,
                  True, not EVEN_D)  # [BLOCK_L, BLOCK_D]
    kv_h = h // GROUP  # the key/value head this query head shares with its group
    k_base = k_ptr + b * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b * stride_vb + kv_h * stride_vh

    m_i = tl.full([BLOCK_L], float("-inf"), ACC_DTYPE)  # [BLOCK_L] running max of the scores
    l_i = tl.zeros([BLOCK_L], ACC_DTYPE)  # [BLOCK_L] running sum of exp(score - m_i)
    acc = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    if WHOLE_BLOCKS:  # whole blocks of slots without a mask; the last, partial block peeled off
        k_full = K - K % BLOCK_K
        for k0 in range(0, k_full, BLOCK_K):
            m_i, l_i, acc = _fwd_block(q, k_base, v_base, k0 + tl.arange(0, BLOCK_K), K, stride_kk, stride_kd,
                                       stride_vk, stride_vd, cols, D, scale, m_i, l_i, acc, False, NEGATIVE_SCALE,
                                       EVEN_D, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
        if k_full < K:
            m_i, l_i, acc = _fwd_block(q, k_base, v_base, k_full + tl.arange(0, BLOCK_K), K, stride_kk, stride_kd,
                                       stride_vk, stride_vd, cols, D, scale, m_i, l_i, acc, True, NEGATIVE_SCALE,
                                       EVEN_D, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
    else:  # one masked loop: two copies of an FMA-unit product (float32, float64) spill registers
        for k0 in range(0, K, BLOCK_K):
            m_i, l_i, acc = _fwd_block(q, k_base, v_base, k0 + tl.arange(0, BLOCK_K), K, stride_kk, stride_kd,
                                       stride_vk, stride_vd, cols, D, scale, m_i, l_i, acc, True, NEGATIVE_SCALE,
                                       EVEN_D, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)

    # out (B, L, H, D) and lse (B, H, L) are allocated contiguous.
    store_tile(out_ptr + (b * L * H + h) * D, rows, L, H * D, cols, D, acc / l_i[:, None])
    tl.store(lse_ptr + bh * L + rows, natural_lse(m_i, l_i, BASE2), mask=rows < L)


@triton.jit
def _memory_read_fwd_strided_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    NEGATIVE_SCALE: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BASE2: tl.constexpr,
):
    _fwd(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
         stride_qb, stride_ql, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
         stride_vb, stride_vk, stride_vh, stride_vd, H, GROUP, L, K, D, scale_hi, scale_lo,
         BLOCK_L, BLOCK_K, BLOCK_D, EVEN_D, WHOLE_BLOCKS, NEGATIVE_SCALE, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_fwd_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    NEGATIVE_SCALE: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BASE2: tl.constexpr,
):
    row = H * D
    kv_row = (H // GROUP) * D
    tokens = tl.cast(L, tl.int64) * row  # int64: one batch entry may exceed 2**31 elements
    slots = tl.cast(K, tl.int64) * kv_row
    _fwd(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, tokens, row, D, 1, slots, kv_row, D, 1, slots, kv_row, D, 1,
         H, GROUP, L, K, D, scale_hi, scale_lo,
         BLOCK_L, BLOCK_K, BLOCK_D, EVEN_D, WHOLE_BLOCKS, NEGATIVE_SCALE, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _dq_probs(q, do, k_base, v_base, slots, K, stride_kk, stride_kd, stride_vk, stride_vd, cols, D, lse, scale,
              MASK_SLOTS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_D: tl.constexpr,
              ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr):
    # One block of slots for the dq kernel: k [BLOCK_K, BLOCK_D], P = exp(scale * q.k - lse) and
    # dP = dout . v, both [BLOCK_L, BLOCK_K]. A whole block takes one FMA and one exp2 per score.
    kt = load_tile(k_base, slots, K, stride_kk, cols, D, stride_kd, MASK_SLOTS, not EVEN_D)
    vt = load_tile(v_base, slots, K, stride_vk, cols, D, stride_vd, MASK_SLOTS, not EVEN_D)
    if MASK_SLOTS:
        p = exp(_scores(q, kt, slots, K, scale, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION)
                - lse[:, None], BASE2)
    else:
        qk = mm(q, tl.trans(kt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
        p = exp(qk * scale - lse[:, None], BASE2)
    dp = mm(do, tl.trans(vt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
    return kt, p, dp


@triton.jit
def _dq_sums(q, do, k_base, v_base, slots, K, stride_kk, stride_kd, stride_vk, stride_vd, cols, D, lse, scale,
             delta, p_sum, MASK_SLOTS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
             EVEN_D: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
             BASE2: tl.constexpr):
    # The first pass over one block of slots: adds rowsum(P * dP) and rowsum(P).
    _, p, dp = _dq_probs(q, do, k_base, v_base, slots, K, stride_kk, stride_kd, stride_vk, stride_vd, cols, D, lse,
                         scale, MASK_SLOTS, BLOCK_L, BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
    return delta + tl.sum(p * dp, axis=1), p_sum + tl.sum(p, axis=1)


@triton.jit
def _dq_step(q, do, k_base, v_base, slots, K, stride_kk, stride_kd, stride_vk, stride_vd, cols, D, lse, scale,
             dq, p_scale, delta, MASK_SLOTS: tl.constexpr, TWO_PASS: tl.constexpr, BLOCK_L: tl.constexpr,
             BLOCK_K: tl.constexpr, EVEN_D: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr,
             DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr):
    # dq += dS k over one block of slots; with a single block (not TWO_PASS) P's normalisation
    # and delta come from the scores at hand.
    kt, p, dp = _dq_probs(q, do, k_base, v_base, slots, K, stride_kk, stride_kd, stride_vk, stride_vd, cols, D, lse,
                          scale, MASK_SLOTS, BLOCK_L, BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
    if not TWO_PASS:
        p_scale = 1.0 / tl.sum(p, axis=1)
        delta = tl.sum(p * dp, axis=1) * p_scale
    ds = p * p_scale[:, None] * (dp - delta[:, None])  # [BLOCK_L, BLOCK_K]
    return mm(ds.to(kt.dtype), kt, dq, USE_TL_DOT, DOT_PRECISION), p_scale, delta


@triton.jit
def _bwd_dq(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    TWO_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BASE2: tl.constexpr,
):
    pid_l, bh, b, h = _head(H, tl.cdiv(L, BLOCK_L))
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    q = load_tile(q_ptr + b * stride_qb + h * stride_qh, rows, L, stride_ql, cols, D, stride_qd,
                  True, not EVEN_D)  # [BLOCK_L, BLOCK_D]
    do = load_tile(dout_ptr + b * stride_gb + h * stride_gh, rows, L, stride_gl, cols, D, stride_gd,
                   True, not EVEN_D)  # [BLOCK_L, BLOCK_D]
    # lse, delta and p_scale are (B, H, L) contiguous.
    lse = to_score_units(load_rows(lse_ptr + bh * L, rows, L, True), BASE2)  # [BLOCK_L]
    kv_h = h // GROUP
    k_base = k_ptr + b * stride_kb + kv_h * stride_kh
    v_base = v_ptr + b * stride_vb + kv_h * stride_vh
    k_full = K - K % BLOCK_K  # slots in whole blocks

    delta = tl.zeros([BLOCK_L], ACC_DTYPE)  # [BLOCK_L] rowsum(P * dP) over all slots
    p_scale = tl.full([BLOCK_L], 1.0, ACC_DTYPE)  # [BLOCK_L] 1 / rowsum of the rebuilt P
    if TWO_PASS:  # K spans several blocks: the second pass needs both over every slot first
        p_sum = tl.zeros([BLOCK_L], ACC_DTYPE)  # [BLOCK_L]
        if WHOLE_BLOCKS:  # as in _fwd
            for k0 in range(0, k_full, BLOCK_K):
                delta, p_sum = _dq_sums(q, do, k_base, v_base, k0 + tl.arange(0, BLOCK_K), K, stride_kk, stride_kd,
                                        stride_vk, stride_vd, cols, D, lse, scale, delta, p_sum, False, BLOCK_L,
                                        BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
            if k_full < K:
                delta, p_sum = _dq_sums(q, do, k_base, v_base, k_full + tl.arange(0, BLOCK_K), K, stride_kk,
                                        stride_kd, stride_vk, stride_vd, cols, D, lse, scale, delta, p_sum, True,
                                        BLOCK_L, BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
        else:
            for k0 in range(0, K, BLOCK_K):
                delta, p_sum = _dq_sums(q, do, k_base, v_base, k0 + tl.arange(0, BLOCK_K), K, stride_kk, stride_kd,
                                        stride_vk, stride_vd, cols, D, lse, scale, delta, p_sum, True, BLOCK_L,
                                        BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
        p_scale = 1.0 / p_sum
        delta = delta * p_scale

    dq = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    if WHOLE_BLOCKS:
        for k0 in range(0, k_full, BLOCK_K):
            dq, p_scale, delta = _dq_step(q, do, k_base, v_base, k0 + tl.arange(0, BLOCK_K), K, stride_kk, stride_kd,
                                          stride_vk, stride_vd, cols, D, lse, scale, dq, p_scale, delta, False,
                                          TWO_PASS, BLOCK_L, BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION,
                                          BASE2)
        if k_full < K:
            dq, p_scale, delta = _dq_step(q, do, k_base, v_base, k_full + tl.arange(0, BLOCK_K), K, stride_kk,
                                          stride_kd, stride_vk, stride_vd, cols, D, lse, scale, dq, p_scale, delta,
                                          True, TWO_PASS, BLOCK_L, BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT,
                                          DOT_PRECISION, BASE2)
    else:
        for k0 in range(0, K, BLOCK_K):
            dq, p_scale, delta = _dq_step(q, do, k_base, v_base, k0 + tl.arange(0, BLOCK_K), K, stride_kk, stride_kd,
                                          stride_vk, stride_vd, cols, D, lse, scale, dq, p_scale, delta, True,
                                          TWO_PASS, BLOCK_L, BLOCK_K, EVEN_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION,
                                          BASE2)

    # dq (B, L, H, D) is allocated contiguous.
    store_tile(dq_ptr + (b * L * H + h) * D, rows, L, H * D, cols, D, dq * grad_scale(scale, BASE2))
    tl.store(delta_ptr + bh * L + rows, delta, mask=rows < L)
    tl.store(p_scale_ptr + bh * L + rows, p_scale, mask=rows < L)


@triton.jit
def _bwd_dkdv(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    # Each program owns BLOCK_K slots of one (b, key/value head) and sums over the GROUP query
    # heads that share it and over all L itself, in order: no two programs write the same
    # dk/dv rows, so no atomics.
    H_KV = H // GROUP
    pid_k, b_kv, b, kv_h = _head(H_KV, tl.cdiv(K, BLOCK_K))
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    slots = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)  # [BLOCK_K]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    kt = load_tile(k_ptr + b * stride_kb + kv_h * stride_kh, slots, K, stride_kk, cols, D, stride_kd,
                   True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    vt = load_tile(v_ptr + b * stride_vb + kv_h * stride_vh, slots, K, stride_vk, cols, D, stride_vd,
                   True, not EVEN_D)  # [BLOCK_K, BLOCK_D]
    l_full = L - L % BLOCK_L  # tokens in whole blocks

    dk = tl.zeros([BLOCK_K, BLOCK_D], ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    dv = tl.zeros([BLOCK_K, BLOCK_D], ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    for h in range(kv_h * GROUP, kv_h * GROUP + GROUP):
        q_base = q_ptr + b * stride_qb + h * stride_qh
        dout_base = dout_ptr + b * stride_gb + h * stride_gh
        stats = (b * H + h) * L  # lse, delta, p_scale (B, H, L) contiguous
        if WHOLE_BLOCKS:  # as in _fwd
            for l0 in range(0, l_full, BLOCK_L):
                dk, dv = key_block_grads(kt, vt, q_base, dout_base, lse_ptr + stats, delta_ptr + stats,
                                         p_scale_ptr + stats, l0 + tl.arange(0, BLOCK_L), L, stride_ql, stride_qd,
                                         stride_gl, stride_gd, cols, D, scale, dk, dv, False, EVEN_D, BLOCK_K, BLOCK_L,
                                         ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
            if l_full < L:
                dk, dv = key_block_grads(kt, vt, q_base, dout_base, lse_ptr + stats, delta_ptr + stats,
                                         p_scale_ptr + stats, l_full + tl.arange(0, BLOCK_L), L, stride_ql, stride_qd,
                                         stride_gl, stride_gd, cols, D, scale, dk, dv, True, EVEN_D, BLOCK_K, BLOCK_L,
                                         ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)
        else:
            for l0 in range(0, L, BLOCK_L):
                dk, dv = key_block_grads(kt, vt, q_base, dout_base, lse_ptr + stats, delta_ptr + stats,
                                         p_scale_ptr + stats, l0 + tl.arange(0, BLOCK_L), L, stride_ql, stride_qd,
                                         stride_gl, stride_gd, cols, D, scale, dk, dv, True, EVEN_D, BLOCK_K, BLOCK_L,
                                         ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)

    # dk, dv (B, K, H_KV, D) are allocated contiguous.
    slot_rows = (b * K * H_KV + kv_h) * D
    store_tile(dk_ptr + slot_rows, slots, K, H_KV * D, cols, D, dk * grad_scale(scale, BASE2))
    store_tile(dv_ptr + slot_rows, slots, K, H_KV * D, cols, D, dv)


@triton.jit
def _memory_read_bwd_dq_strided_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    TWO_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BASE2: tl.constexpr,
):
    _bwd_dq(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
            stride_qb, stride_ql, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
            stride_vb, stride_vk, stride_vh, stride_vd, stride_gb, stride_gl, stride_gh, stride_gd,
            H, GROUP, L, K, D, scale_hi, scale_lo,
            BLOCK_L, BLOCK_K, BLOCK_D, EVEN_D, WHOLE_BLOCKS, TWO_PASS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_bwd_dq_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr, H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    TWO_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BASE2: tl.constexpr,
):
    row = H * D
    kv_row = (H // GROUP) * D
    tokens = tl.cast(L, tl.int64) * row
    slots = tl.cast(K, tl.int64) * kv_row
    _bwd_dq(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
            tokens, row, D, 1, slots, kv_row, D, 1, slots, kv_row, D, 1, tokens, row, D, 1,
            H, GROUP, L, K, D, scale_hi, scale_lo,
            BLOCK_L, BLOCK_K, BLOCK_D, EVEN_D, WHOLE_BLOCKS, TWO_PASS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_bwd_dkdv_strided_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    _bwd_dkdv(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
              stride_qb, stride_ql, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
              stride_vb, stride_vk, stride_vh, stride_vd, stride_gb, stride_gl, stride_gh, stride_gd,
              H, GROUP, L, K, D, scale_hi, scale_lo,
              BLOCK_L, BLOCK_K, BLOCK_D, EVEN_D, WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_bwd_dkdv_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
    H, GROUP, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    WHOLE_BLOCKS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    row = H * D
    kv_row = (H // GROUP) * D
    tokens = tl.cast(L, tl.int64) * row
    slots = tl.cast(K, tl.int64) * kv_row
    _bwd_dkdv(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
              tokens, row, D, 1, slots, kv_row, D, 1, slots, kv_row, D, 1, tokens, row, D, 1,
              H, GROUP, L, K, D, scale_hi, scale_lo,
              BLOCK_L, BLOCK_K, BLOCK_D, EVEN_D, WHOLE_BLOCKS, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


# --------------------------------------------------------------------------- launchers


class _ReadConfig(NamedTuple):
    forward: Tiles  # rows = BLOCK_L tokens, stream = BLOCK_K slots
    dq: Tiles  # the same roles
    dkdv: Tiles  # rows = BLOCK_K slots, stream = BLOCK_L tokens


@functools.lru_cache(maxsize=1024)
def _memory_read_config(arch: int, batch_heads: int, batch_kv_heads: int, L: int, K: int, D: int,
                        dtype: torch.dtype) -> _ReadConfig:
    """Block sizes from the architecture's table (`_launch.attention_tiles`) as a pure function
    of the shape, computed once per shape."""
    size = dtype.itemsize
    return _ReadConfig(attention_tiles(arch, L, K, batch_heads, D, size, "forward"),
                       attention_tiles(arch, L, K, batch_heads, D, size, "rows"),
                       attention_tiles(arch, K, L, batch_kv_heads, D, size, "stream"))


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocates every output; tests replace it to hand out NaN-filled memory."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(variants, contiguous: bool, grid: int, pointers, strided_inputs, sizes, tiles: Tiles, blocks: dict,
            dtype, **flags):
    """Launches the contiguous or the strided variant of a kernel with the shared arguments."""
    dt = numerics(dtype)
    strides = () if contiguous else tuple(s for t in strided_inputs for s in t.stride())
    variants[contiguous][(check_grid(grid),)](
        *pointers, *strides, *sizes, **blocks, BLOCK_D=tiles.block_d, EVEN_D=sizes[4] == tiles.block_d,
        WHOLE_BLOCKS=dtype.itemsize == 2,
        ACC_DTYPE=dt.acc_tl, USE_TL_DOT=dtype != torch.float64, DOT_PRECISION=dt.dot_precision,
        BASE2=dtype != torch.float64, num_warps=tiles.num_warps, num_stages=tiles.num_stages, **flags,
    )


_FORWARD = (_memory_read_fwd_strided_kernel, _memory_read_fwd_contiguous_kernel)
_BACKWARD_DQ = (_memory_read_bwd_dq_strided_kernel, _memory_read_bwd_dq_contiguous_kernel)
_BACKWARD_DKDV = (_memory_read_bwd_dkdv_strided_kernel, _memory_read_bwd_dkdv_contiguous_kernel)


def _shape(q, k):
    B, L, H, D = q.shape
    K, H_kv = k.shape[1], k.shape[2]
    return B, L, H, D, K, H_kv


def memory_read_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """out (B, L, H, D) contiguous in the input dtype, lse (B, H, L) contiguous float32
    (float64 for float64 inputs): natural log-sum-exp of scale * q.k over the K slots.
    k and v may have fewer heads, H_kv dividing H: query head h reads head h // (H // H_kv)."""
    B, L, H, D, K, H_kv = _shape(q, k)
    cfg = _memory_read_config(target_arch(q.device), B * H, B * H_kv, L, K, D, q.dtype).forward
    out = _empty((B, L, H, D), q.dtype, q.device)
    lse = _empty((B, H, L), numerics(q.dtype).acc_torch, q.device)
    contiguous = q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    with on_device(q):
        _launch(_FORWARD, contiguous, cdiv(L, cfg.block_rows) * B * H, (q, k, v, out, lse), (q, k, v),
                (H, H // H_kv, L, K, D, *kernel_scale(scale, q.dtype)), cfg,
                dict(BLOCK_L=cfg.block_rows, BLOCK_K=cfg.block_stream), q.dtype, NEGATIVE_SCALE=scale < 0)
    return out, lse


def memory_read_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, scale: float):
    """dq (B, L, H, D), dk, dv (B, K, H_kv, D): contiguous, in the input dtype; dk and dv sum
    over the query heads sharing a key/value head, in head order. `out` is unused: delta comes
    from the recomputed probabilities (see the module docstring)."""
    B, L, H, D, K, H_kv = _shape(q, k)
    cfg = _memory_read_config(target_arch(q.device), B * H, B * H_kv, L, K, D, q.dtype)
    lse = lse.contiguous()
    delta, p_scale = _empty((2, B, H, L), numerics(q.dtype).acc_torch, q.device)
    dq = _empty((B, L, H, D), q.dtype, q.device)
    dk = _empty((B, K, H_kv, D), q.dtype, q.device)
    dv = _empty((B, K, H_kv, D), q.dtype, q.device)
    inputs = (q, k, v, dout)
    contiguous = all(t.is_contiguous() for t in inputs)
    sizes = (H, H // H_kv, L, K, D, *kernel_scale(scale, q.dtype))
    with on_device(q):
        # Writes delta and p_scale, which the dk/dv kernel reads: the launches are stream-ordered.
        tiles = cfg.dq
        _launch(_BACKWARD_DQ, contiguous, cdiv(L, tiles.block_rows) * B * H, (*inputs, lse, delta, p_scale, dq),
                inputs, sizes, tiles, dict(BLOCK_L=tiles.block_rows, BLOCK_K=tiles.block_stream), q.dtype,
                TWO_PASS=K > tiles.block_stream)
        tiles = cfg.dkdv
        _launch(_BACKWARD_DKDV, contiguous, cdiv(K, tiles.block_rows) * B * H_kv,
                (*inputs, lse, delta, p_scale, dk, dv), inputs, sizes, tiles,
                dict(BLOCK_K=tiles.block_rows, BLOCK_L=tiles.block_stream), q.dtype)
    return dq, dk, dv
