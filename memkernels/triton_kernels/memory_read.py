"""Fused Triton kernels for Memformer's memory read (every token attends over all K slots).

    out[b, l, h] = sum_j softmax_j(scale * q[b, l, h] . k[b, j, h]) * v[b, j, h]

Forward: one program per (L-block, b, h). The query block stays on chip while K/V stream
through in blocks of BLOCK_K slots with an online softmax, so any K works; when K fits one
block the loop runs once. The natural log-sum-exp is saved per row so the backward can
rebuild P = exp(scale * q.k - lse) without storing a (B, H, L, K) tensor.

Backward (no atomics, so gradients are bitwise reproducible):
  1. per (L-block, b, h): P = exp(scale * q.k - lse) / rowsum(exp(...)) and
     delta = rowsum(P * dP) over all K, then dq = scale * dS k with dS = P * (dP - delta),
     dP = dout . v; delta and the row's normalisation are written for step 2. delta comes
     from P and dP in float32, not from rowsum(dout * out): the output is rounded to the
     input dtype, and for a sharply peaked row that rounding alone was the whole bfloat16
     dq error (0.09 against a gradient of 0.1 on an H100). The normalisation makes each row
     of P sum to 1, and of dS to 0, although P rebuilt from a float32 lse sums to 1 only
     within ~3e-5 at scores of magnitude 500 (see reference._softmax_backward). When K fits
     one block the scores are computed once; otherwise a first pass over K finds both.
  2. per (K-block, b, h), looping over L in order: dv = P^T dout, dk = scale * dS^T q.
Every output element is written by exactly one program.

Inputs are read through their strides (a (B, H, L, D) tensor passed as x.transpose(1, 2) is
read in place); when every input is contiguous a kernel variant that takes sizes instead of
strides runs, since Triton's launch cost grows with the argument count. The two variants
may order a reduction differently: the same inputs in the same layout give the same bits,
other layouts agree to rounding. Accumulation is float32 (float64 for float64 inputs);
tl.dot runs on the input dtype (P and dS are cast down before their dot, as in
FlashAttention), float32 at IEEE precision; float64 uses broadcast products. Block sizes
come from _memory_read_config, a pure function of the shape.
"""
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from memkernels.triton_kernels._common import (
    exp,
    grad_scale,
    load_tile,
    mm,
    natural_lse,
    online_softmax_step,
    store_tile,
    to_score_units,
)
from memkernels.triton_kernels._launch import cdiv, check_grid, kernel_scale, next_power_of_2, numerics, on_device

# --------------------------------------------------------------------------- kernels


@triton.jit
def _head(H, n_blocks):
    # (block index, b, h) of this program; blocks of one (b, h) are neighbours in launch
    # order, so they share its K/V (or Q/dout) in L2. A 1-D grid avoids the 65535 limit of
    # CUDA's second grid axis.
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
def _fwd(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    pid_l, bh, b, h = _head(H, tl.cdiv(L, BLOCK_L))
    # Scalar float arguments are float32 on the GPU: a float64 scale comes in two halves.
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    q = load_tile(q_ptr + b * stride_qb + h * stride_qh, rows, L, stride_ql, cols, D, stride_qd)  # [BLOCK_L, BLOCK_D]
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_L], float("-inf"), ACC_DTYPE)  # [BLOCK_L] running max of the scores
    l_i = tl.zeros([BLOCK_L], ACC_DTYPE)  # [BLOCK_L] running sum of exp(score - m_i)
    acc = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    for k0 in range(0, K, BLOCK_K):
        slots = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        kt = load_tile(k_base, slots, K, stride_kk, cols, D, stride_kd)  # [BLOCK_K, BLOCK_D]
        vt = load_tile(v_base, slots, K, stride_vk, cols, D, stride_vd)  # [BLOCK_K, BLOCK_D]
        s = _scores(q, kt, slots, K, scale, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION)
        m_i, alpha, p = online_softmax_step(s, m_i, BASE2)  # p: [BLOCK_L, BLOCK_K]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = mm(p.to(vt.dtype), vt, acc * alpha[:, None], USE_TL_DOT, DOT_PRECISION)

    # out (B, L, H, D) and lse (B, H, L) are allocated contiguous.
    store_tile(out_ptr + (b * L * H + h) * D, rows, L, H * D, cols, D, acc / l_i[:, None])
    tl.store(lse_ptr + bh * L + rows, natural_lse(m_i, l_i, BASE2), mask=rows < L)


@triton.jit
def _memory_read_fwd_strided_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    _fwd(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
         stride_qb, stride_ql, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
         stride_vb, stride_vk, stride_vh, stride_vd, H, L, K, D, scale_hi, scale_lo,
         BLOCK_L, BLOCK_K, BLOCK_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_fwd_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    row = H * D
    tokens = tl.cast(L, tl.int64) * row  # int64: one batch entry may exceed 2**31 elements
    slots = tl.cast(K, tl.int64) * row
    _fwd(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, tokens, row, D, 1, slots, row, D, 1, slots, row, D, 1,
         H, L, K, D, scale_hi, scale_lo, BLOCK_L, BLOCK_K, BLOCK_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _bwd_dq(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    pid_l, bh, b, h = _head(H, tl.cdiv(L, BLOCK_L))
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    q = load_tile(q_ptr + b * stride_qb + h * stride_qh, rows, L, stride_ql, cols, D, stride_qd)  # [BLOCK_L, BLOCK_D]
    do = load_tile(dout_ptr + b * stride_gb + h * stride_gh, rows, L, stride_gl, cols, D,
                   stride_gd)  # [BLOCK_L, BLOCK_D]
    # lse, delta and p_scale are (B, H, L) contiguous.
    lse = to_score_units(tl.load(lse_ptr + bh * L + rows, mask=rows < L, other=0.0), BASE2)  # [BLOCK_L]
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    delta = tl.zeros([BLOCK_L], ACC_DTYPE)  # [BLOCK_L]
    p_scale = tl.full([BLOCK_L], 1.0, ACC_DTYPE)  # [BLOCK_L] 1 / rowsum of the rebuilt P
    if K > BLOCK_K:  # the second pass needs both over every slot before its first block
        p_sum = tl.zeros([BLOCK_L], ACC_DTYPE)  # [BLOCK_L]
        for k0 in range(0, K, BLOCK_K):
            slots = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
            kt = load_tile(k_base, slots, K, stride_kk, cols, D, stride_kd)  # [BLOCK_K, BLOCK_D]
            vt = load_tile(v_base, slots, K, stride_vk, cols, D, stride_vd)  # [BLOCK_K, BLOCK_D]
            p = exp(_scores(q, kt, slots, K, scale, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION)
                    - lse[:, None], BASE2)  # [BLOCK_L, BLOCK_K]
            dp = mm(do, tl.trans(vt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
            delta += tl.sum(p * dp, axis=1)
            p_sum += tl.sum(p, axis=1)
        p_scale = 1.0 / p_sum
        delta = delta * p_scale

    dq = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    for k0 in range(0, K, BLOCK_K):
        slots = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        kt = load_tile(k_base, slots, K, stride_kk, cols, D, stride_kd)  # [BLOCK_K, BLOCK_D]
        vt = load_tile(v_base, slots, K, stride_vk, cols, D, stride_vd)  # [BLOCK_K, BLOCK_D]
        p = exp(_scores(q, kt, slots, K, scale, BLOCK_L, BLOCK_K, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION)
                - lse[:, None], BASE2)  # [BLOCK_L, BLOCK_K]
        dp = mm(do, tl.trans(vt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
        if K <= BLOCK_K:  # one block: both from the scores already at hand
            p_scale = 1.0 / tl.sum(p, axis=1)
            delta = tl.sum(p * dp, axis=1) * p_scale
        ds = p * p_scale[:, None] * (dp - delta[:, None])  # [BLOCK_L, BLOCK_K]
        dq = mm(ds.to(kt.dtype), kt, dq, USE_TL_DOT, DOT_PRECISION)

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
    H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    # Each program owns BLOCK_K slots of one (b, h) and sums over all L itself, in order:
    # no two programs write the same dk/dv rows, so no atomics.
    pid_k, bh, b, h = _head(H, tl.cdiv(K, BLOCK_K))
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)
    slots = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)  # [BLOCK_K]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    kt = load_tile(k_ptr + b * stride_kb + h * stride_kh, slots, K, stride_kk, cols, D, stride_kd)  # [BLOCK_K, BLOCK_D]
    vt = load_tile(v_ptr + b * stride_vb + h * stride_vh, slots, K, stride_vk, cols, D, stride_vd)  # [BLOCK_K, BLOCK_D]
    q_base = q_ptr + b * stride_qb + h * stride_qh
    dout_base = dout_ptr + b * stride_gb + h * stride_gh

    dk = tl.zeros([BLOCK_K, BLOCK_D], ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    dv = tl.zeros([BLOCK_K, BLOCK_D], ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    for l0 in range(0, L, BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)  # [BLOCK_L]
        q = load_tile(q_base, rows, L, stride_ql, cols, D, stride_qd)  # [BLOCK_L, BLOCK_D]
        do = load_tile(dout_base, rows, L, stride_gl, cols, D, stride_gd)  # [BLOCK_L, BLOCK_D]
        lse = to_score_units(tl.load(lse_ptr + bh * L + rows, mask=rows < L, other=0.0), BASE2)  # [BLOCK_L]
        delta = tl.load(delta_ptr + bh * L + rows, mask=rows < L, other=0.0)  # [BLOCK_L]
        p_scale = tl.load(p_scale_ptr + bh * L + rows, mask=rows < L, other=0.0)  # [BLOCK_L]

        # Transposed scores (slots x tokens) so neither product below needs a transposed P.
        s_t = mm(kt, tl.trans(q), tl.zeros([BLOCK_K, BLOCK_L], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION) * scale
        # Padding slots and rows score 0, and exp(0 - lse) overflows when every real score is
        # below about -88: a -inf score gives them P = 0 instead.
        s_t = tl.where((slots < K)[:, None] & (rows < L)[None, :], s_t, float("-inf"))
        p_t = exp(s_t - lse[None, :], BASE2) * p_scale[None, :]  # [BLOCK_K, BLOCK_L]
        dv = mm(p_t.to(do.dtype), do, dv, USE_TL_DOT, DOT_PRECISION)
        dp_t = mm(vt, tl.trans(do), tl.zeros([BLOCK_K, BLOCK_L], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])  # [BLOCK_K, BLOCK_L]
        dk = mm(ds_t.to(q.dtype), q, dk, USE_TL_DOT, DOT_PRECISION)

    # dk, dv (B, K, H, D) are allocated contiguous.
    slot_rows = (b * K * H + h) * D
    store_tile(dk_ptr + slot_rows, slots, K, H * D, cols, D, dk * grad_scale(scale, BASE2))
    store_tile(dv_ptr + slot_rows, slots, K, H * D, cols, D, dv)


@triton.jit
def _memory_read_bwd_dq_strided_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    _bwd_dq(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
            stride_qb, stride_ql, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
            stride_vb, stride_vk, stride_vh, stride_vd, stride_gb, stride_gl, stride_gh, stride_gd,
            H, L, K, D, scale_hi, scale_lo, BLOCK_L, BLOCK_K, BLOCK_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_bwd_dq_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr, H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    row = H * D
    tokens = tl.cast(L, tl.int64) * row
    slots = tl.cast(K, tl.int64) * row
    _bwd_dq(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dq_ptr,
            tokens, row, D, 1, slots, row, D, 1, slots, row, D, 1, tokens, row, D, 1,
            H, L, K, D, scale_hi, scale_lo, BLOCK_L, BLOCK_K, BLOCK_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_bwd_dkdv_strided_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    _bwd_dkdv(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
              stride_qb, stride_ql, stride_qh, stride_qd, stride_kb, stride_kk, stride_kh, stride_kd,
              stride_vb, stride_vk, stride_vh, stride_vd, stride_gb, stride_gl, stride_gh, stride_gd,
              H, L, K, D, scale_hi, scale_lo, BLOCK_L, BLOCK_K, BLOCK_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


@triton.jit
def _memory_read_bwd_dkdv_contiguous_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr, H, L, K, D, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
    USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr,
):
    row = H * D
    tokens = tl.cast(L, tl.int64) * row
    slots = tl.cast(K, tl.int64) * row
    _bwd_dkdv(q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, p_scale_ptr, dk_ptr, dv_ptr,
              tokens, row, D, 1, slots, row, D, 1, slots, row, D, 1, tokens, row, D, 1,
              H, L, K, D, scale_hi, scale_lo, BLOCK_L, BLOCK_K, BLOCK_D, ACC_DTYPE, USE_TL_DOT, DOT_PRECISION, BASE2)


# --------------------------------------------------------------------------- launchers


class _ReadConfig(NamedTuple):
    block_l: int
    block_k: int
    block_d: int
    num_warps: int
    num_stages: int


# Fewer programs than this leaves SMs idle (about two per SM of an H100/H200). A fixed
# constant, not a device query: the module must import without a GPU, and the blocks (hence
# the summation order) must depend on the shape only.
_READ_MIN_PROGRAMS = 256


@functools.lru_cache(maxsize=1024)
def _memory_read_config(n_heads_total: int, L: int, K: int, D: int, dtype: torch.dtype) -> _ReadConfig:
    """Block sizes as a pure function of the shape, computed once per shape.

    Deliberately not triton.autotune: autotuning picks configs by timing, so two processes
    could pick different blocks, hence different summation orders, and the results would
    stop being bitwise reproducible.
    """
    block_d = max(16, next_power_of_2(D))  # tl.dot needs every dimension >= 16
    if dtype == torch.float64:
        # mm's broadcast product is [tile, BLOCK_D, tile]: at most 4096 elements,
        # 16 float64 per thread over 8 warps.
        tile = 16
        while tile > 1 and tile * tile * block_d > 4096:
            tile //= 2
        return _ReadConfig(min(tile, next_power_of_2(L)), min(tile, next_power_of_2(K)),
                           block_d, num_warps=8, num_stages=1)
    # Rows wider than 128 bytes (half D > 64, float32 D > 32) get 8 warps for the registers
    # their tiles need; float32 "ieee" dots run on the FMA units with operands in registers.
    row_bytes = block_d * dtype.itemsize
    num_warps = 4 if row_bytes <= 128 else 8
    # A [tile, BLOCK_D] operand of at most 16 KiB: 64 rows at D <= 128 in half precision,
    # at most 32 rows in float32.
    tile = min(64 if dtype.itemsize == 2 else 32, max(16, 16384 // row_bytes))
    block_l = min(tile, max(16, next_power_of_2(L)))
    block_k = min(tile, max(16, next_power_of_2(K)))
    # Short segments (L = 64) with few heads: split L finer so every SM gets work; the
    # extra K/V reads of the sibling L-blocks run together and hit in L2.
    while block_l > 16 and n_heads_total * cdiv(L, block_l) < _READ_MIN_PROGRAMS:
        block_l //= 2
    # A pipeline stage holds two operands of <= 16 KiB (k and v, or q and dout): three stages
    # stay under ~100 KiB of shared memory.
    return _ReadConfig(block_l, block_k, block_d, num_warps, num_stages=3)


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocates every output; tests replace it to hand out NaN-filled memory."""
    return torch.empty(shape, dtype=dtype, device=device)


def _launch(variants, contiguous: bool, grid: int, pointers, strided_inputs, sizes, cfg, dtype):
    """Launches the contiguous or the strided variant of a kernel with the shared arguments."""
    dt = numerics(dtype)
    strides = () if contiguous else tuple(s for t in strided_inputs for s in t.stride())
    variants[contiguous][(check_grid(grid),)](
        *pointers, *strides, *sizes,
        BLOCK_L=cfg.block_l, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d, ACC_DTYPE=dt.acc_tl,
        USE_TL_DOT=dtype != torch.float64, DOT_PRECISION=dt.dot_precision, BASE2=dtype != torch.float64,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


_FORWARD = (_memory_read_fwd_strided_kernel, _memory_read_fwd_contiguous_kernel)
_BACKWARD_DQ = (_memory_read_bwd_dq_strided_kernel, _memory_read_bwd_dq_contiguous_kernel)
_BACKWARD_DKDV = (_memory_read_bwd_dkdv_strided_kernel, _memory_read_bwd_dkdv_contiguous_kernel)


def memory_read_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """out (B, L, H, D) contiguous in the input dtype, lse (B, H, L) contiguous float32
    (float64 for float64 inputs): natural log-sum-exp of scale * q.k over the K slots."""
    B, L, H, D = q.shape
    K = k.shape[1]
    cfg = _memory_read_config(B * H, L, K, D, q.dtype)
    out = _empty((B, L, H, D), q.dtype, q.device)
    lse = _empty((B, H, L), numerics(q.dtype).acc_torch, q.device)
    contiguous = q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    with on_device(q):
        _launch(_FORWARD, contiguous, cdiv(L, cfg.block_l) * B * H, (q, k, v, out, lse), (q, k, v),
                (H, L, K, D, *kernel_scale(scale, q.dtype)), cfg, q.dtype)
    return out, lse


def memory_read_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, scale: float):
    """dq (B, L, H, D), dk, dv (B, K, H, D): contiguous, in the input dtype. `out` is unused:
    delta comes from the recomputed probabilities (see the module docstring)."""
    B, L, H, D = q.shape
    K = k.shape[1]
    cfg = _memory_read_config(B * H, L, K, D, q.dtype)
    lse = lse.contiguous()
    delta, p_scale = _empty((2, B, H, L), numerics(q.dtype).acc_torch, q.device)
    dq = _empty((B, L, H, D), q.dtype, q.device)
    dk = _empty((B, K, H, D), q.dtype, q.device)
    dv = _empty((B, K, H, D), q.dtype, q.device)
    inputs = (q, k, v, dout)
    contiguous = all(t.is_contiguous() for t in inputs)
    sizes = (H, L, K, D, *kernel_scale(scale, q.dtype))
    with on_device(q):
        # Writes delta and p_scale, which the dk/dv kernel reads: the launches are stream-ordered.
        _launch(_BACKWARD_DQ, contiguous, cdiv(L, cfg.block_l) * B * H, (*inputs, lse, delta, p_scale, dq), inputs,
                sizes, cfg, q.dtype)
        _launch(_BACKWARD_DKDV, contiguous, cdiv(K, cfg.block_k) * B * H, (*inputs, lse, delta, p_scale, dk, dv),
                inputs, sizes, cfg, q.dtype)
    return dq, dk, dv
