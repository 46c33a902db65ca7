"""Fused Triton kernels for Memformer's memory read (every token attends over all K slots).

    out[b, l, h] = sum_j softmax_j(scale * q[b, l, h] . k[b, j, h]) * v[b, j, h]

Forward: one program per (L-block, b, h). The query block stays on chip while K/V
stream through in blocks of BLOCK_K slots; an online softmax (running max m, running
sum l, rescaled accumulator) means any K works. When K fits one block the loop runs
once. The natural-log log-sum-exp `lse = m + log(l)` is saved per row so the backward
pass can rebuild P = exp(scale * q.k - lse) without ever storing a (B, H, L, K) tensor.

Backward (FlashAttention-2 style, no atomics so gradients are bitwise deterministic):
  1. delta[b, h, l] = rowsum(dout * out)                       (small preprocess kernel)
  2. per (K-block, b, h), looping over L in order:  dv = P^T dout,  dk = scale * dS^T q
  3. per (L-block, b, h), looping over K in order:  dq = scale * dS k
with dS = P * (dout . v - delta). Every output element is written by exactly one program.

Tensors are read through their strides (a (B, H, L, D) tensor passed as x.transpose(1, 2)
is read in place). Accumulation is float32, or float64 for float64 inputs; tl.dot runs on
the input dtype (P and dS are cast down before their dot, as in FlashAttention), float32
at IEEE precision. float64 uses broadcast-and-sum products instead of tl.dot. Block sizes
come from _memory_read_config, a pure function of the shape.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from memkernels.triton_kernels._launch import numerics, on_device, split_float


# --------------------------------------------------------------------------- kernels


@triton.jit
def _memory_read_tile_ptrs(base_ptr, rows, stride_row, cols, stride_col):
    # int64 offsets: B*L*H*D may exceed 2**31 elements.
    return base_ptr + rows.to(tl.int64)[:, None] * stride_row + cols.to(tl.int64)[None, :] * stride_col


@triton.jit
def _memory_read_mm(a, b, acc, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # acc [M, N] + a [M, R] @ b [R, N]
    if USE_TL_DOT:
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    else:
        # float64: not every Triton release lowers a float64 tl.dot on NVIDIA GPUs, while a
        # broadcast product summed over R compiles everywhere (float64 only serves gradcheck).
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def _memory_read_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_ob, stride_ol, stride_oh, stride_od,
    H, L, K, D, n_lblocks, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # L-blocks vary fastest so the programs sharing one (b, h)'s K/V run together (L2 reuse);
    # a 1-D grid also avoids the 65535 limit on CUDA's second grid axis.
    pid = tl.program_id(0)
    pid_l = pid % n_lblocks
    pid_bh = (pid // n_lblocks).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    # Scalar float arguments are float32 on the GPU: rebuild a float64 scale from two halves.
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)

    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_l = offs_l < L
    mask_d = offs_d < D

    q = tl.load(_memory_read_tile_ptrs(q_ptr + b * stride_qb + h * stride_qh, offs_l, stride_ql, offs_d, stride_qd),
                mask=mask_l[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_L, BLOCK_D]
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_L], float("-inf"), ACC_DTYPE)  # [BLOCK_L] running max of the scores
    l_i = tl.zeros([BLOCK_L], ACC_DTYPE)  # [BLOCK_L] running sum of exp(score - m_i)
    acc = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    for k0 in range(0, K, BLOCK_K):
        slots = k0 + offs_k  # [BLOCK_K]
        mask_k = slots < K
        mask_kd = mask_k[:, None] & mask_d[None, :]
        kt = tl.load(_memory_read_tile_ptrs(k_base, slots, stride_kk, offs_d, stride_kd),
                     mask=mask_kd, other=0.0)  # [BLOCK_K, BLOCK_D]
        vt = tl.load(_memory_read_tile_ptrs(v_base, slots, stride_vk, offs_d, stride_vd),
                     mask=mask_kd, other=0.0)  # [BLOCK_K, BLOCK_D]
        s = _memory_read_mm(q, tl.trans(kt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE),
                            USE_TL_DOT, DOT_PRECISION) * scale  # [BLOCK_L, BLOCK_K]
        s = tl.where(mask_k[None, :], s, float("-inf"))
        # Slot 0 is in the first block, so m_new is finite from the first iteration on and
        # exp(m_i - m_new) = exp(-inf) = 0 cleanly discards the empty initial state.
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_L]
        alpha = tl.exp(m_i - m_new)  # [BLOCK_L]
        p = tl.exp(s - m_new[:, None])  # [BLOCK_L, BLOCK_K]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = _memory_read_mm(p.to(vt.dtype), vt, acc * alpha[:, None], USE_TL_DOT, DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]  # [BLOCK_L, BLOCK_D]
    tl.store(_memory_read_tile_ptrs(out_ptr + b * stride_ob + h * stride_oh, offs_l, stride_ol, offs_d, stride_od),
             out.to(out_ptr.dtype.element_ty), mask=mask_l[:, None] & mask_d[None, :])
    tl.store(lse_ptr + pid_bh * L + offs_l, m_i + tl.log(l_i), mask=mask_l)  # lse is (B, H, L) contiguous


@triton.jit
def _memory_read_bwd_delta_kernel(
    out_ptr, dout_ptr, delta_ptr,
    stride_ob, stride_ol, stride_oh, stride_od,
    stride_gb, stride_gl, stride_gh, stride_gd,
    H, L, D, n_lblocks,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_l = pid % n_lblocks
    pid_bh = (pid // n_lblocks).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_l = offs_l < L
    mask = mask_l[:, None] & (offs_d < D)[None, :]
    o = tl.load(_memory_read_tile_ptrs(out_ptr + b * stride_ob + h * stride_oh, offs_l, stride_ol, offs_d, stride_od),
                mask=mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    do = tl.load(_memory_read_tile_ptrs(dout_ptr + b * stride_gb + h * stride_gh, offs_l, stride_gl, offs_d, stride_gd),
                 mask=mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    tl.store(delta_ptr + pid_bh * L + offs_l, tl.sum(o * do, axis=1), mask=mask_l)


@triton.jit
def _memory_read_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    stride_dkb, stride_dkk, stride_dkh, stride_dkd,
    stride_dvb, stride_dvk, stride_dvh, stride_dvd,
    stride_lb, stride_lh, stride_ll,
    H, L, K, D, n_kblocks, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Each program owns BLOCK_K slots of one (b, h) and sums over all L itself, in order:
    # no two programs write the same dk/dv rows, so no atomics.
    pid = tl.program_id(0)
    pid_k = pid % n_kblocks
    pid_bh = (pid // n_kblocks).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)

    slots = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)  # [BLOCK_K]
    offs_l = tl.arange(0, BLOCK_L)  # [BLOCK_L]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_k = slots < K
    mask_d = offs_d < D
    mask_kd = mask_k[:, None] & mask_d[None, :]
    kt = tl.load(_memory_read_tile_ptrs(k_ptr + b * stride_kb + h * stride_kh, slots, stride_kk, offs_d, stride_kd),
                 mask=mask_kd, other=0.0)  # [BLOCK_K, BLOCK_D]
    vt = tl.load(_memory_read_tile_ptrs(v_ptr + b * stride_vb + h * stride_vh, slots, stride_vk, offs_d, stride_vd),
                 mask=mask_kd, other=0.0)  # [BLOCK_K, BLOCK_D]
    q_base = q_ptr + b * stride_qb + h * stride_qh
    dout_base = dout_ptr + b * stride_gb + h * stride_gh
    lse_base = lse_ptr + b * stride_lb + h * stride_lh

    dk = tl.zeros([BLOCK_K, BLOCK_D], ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    dv = tl.zeros([BLOCK_K, BLOCK_D], ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    for l0 in range(0, L, BLOCK_L):
        rows = l0 + offs_l  # [BLOCK_L]
        mask_l = rows < L
        mask_ld = mask_l[:, None] & mask_d[None, :]
        q = tl.load(_memory_read_tile_ptrs(q_base, rows, stride_ql, offs_d, stride_qd),
                    mask=mask_ld, other=0.0)  # [BLOCK_L, BLOCK_D]
        do = tl.load(_memory_read_tile_ptrs(dout_base, rows, stride_gl, offs_d, stride_gd),
                     mask=mask_ld, other=0.0)  # [BLOCK_L, BLOCK_D]
        lse = tl.load(lse_base + rows.to(tl.int64) * stride_ll, mask=mask_l, other=0.0)  # [BLOCK_L]
        delta = tl.load(delta_ptr + pid_bh * L + rows, mask=mask_l, other=0.0)  # [BLOCK_L]

        s_t = _memory_read_mm(kt, tl.trans(q), tl.zeros([BLOCK_K, BLOCK_L], ACC_DTYPE),
                              USE_TL_DOT, DOT_PRECISION) * scale  # [BLOCK_K, BLOCK_L]
        # Padding slots and rows score 0, and exp(0 - lse) overflows when every real score is
        # below about -88: a -inf score gives them P = 0 instead.
        s_t = tl.where(mask_k[:, None] & mask_l[None, :], s_t, float("-inf"))
        p_t = tl.exp(s_t - lse[None, :])  # [BLOCK_K, BLOCK_L]
        dv = _memory_read_mm(p_t.to(do.dtype), do, dv, USE_TL_DOT, DOT_PRECISION)
        dp_t = _memory_read_mm(vt, tl.trans(do), tl.zeros([BLOCK_K, BLOCK_L], ACC_DTYPE),
                               USE_TL_DOT, DOT_PRECISION)  # [BLOCK_K, BLOCK_L]
        ds_t = p_t * (dp_t - delta[None, :])  # [BLOCK_K, BLOCK_L]
        dk = _memory_read_mm(ds_t.to(q.dtype), q, dk, USE_TL_DOT, DOT_PRECISION)

    dk = dk * scale
    tl.store(_memory_read_tile_ptrs(dk_ptr + b * stride_dkb + h * stride_dkh, slots, stride_dkk, offs_d, stride_dkd),
             dk.to(dk_ptr.dtype.element_ty), mask=mask_kd)
    tl.store(_memory_read_tile_ptrs(dv_ptr + b * stride_dvb + h * stride_dvh, slots, stride_dvk, offs_d, stride_dvd),
             dv.to(dv_ptr.dtype.element_ty), mask=mask_kd)


@triton.jit
def _memory_read_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_gb, stride_gl, stride_gh, stride_gd,
    stride_dqb, stride_dql, stride_dqh, stride_dqd,
    stride_lb, stride_lh, stride_ll,
    H, L, K, D, n_lblocks, scale_hi, scale_lo,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_l = pid % n_lblocks
    pid_bh = (pid // n_lblocks).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    scale = tl.cast(scale_hi, ACC_DTYPE) + tl.cast(scale_lo, ACC_DTYPE)

    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    offs_d = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_l = offs_l < L
    mask_d = offs_d < D
    mask_ld = mask_l[:, None] & mask_d[None, :]
    q = tl.load(_memory_read_tile_ptrs(q_ptr + b * stride_qb + h * stride_qh, offs_l, stride_ql, offs_d, stride_qd),
                mask=mask_ld, other=0.0)  # [BLOCK_L, BLOCK_D]
    do = tl.load(_memory_read_tile_ptrs(dout_ptr + b * stride_gb + h * stride_gh, offs_l, stride_gl, offs_d, stride_gd),
                 mask=mask_ld, other=0.0)  # [BLOCK_L, BLOCK_D]
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + offs_l.to(tl.int64) * stride_ll,
                  mask=mask_l, other=0.0)  # [BLOCK_L]
    delta = tl.load(delta_ptr + pid_bh * L + offs_l, mask=mask_l, other=0.0)  # [BLOCK_L]
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)  # [BLOCK_L, BLOCK_D]
    for k0 in range(0, K, BLOCK_K):
        slots = k0 + offs_k  # [BLOCK_K]
        mask_k = slots < K
        mask_kd = mask_k[:, None] & mask_d[None, :]
        kt = tl.load(_memory_read_tile_ptrs(k_base, slots, stride_kk, offs_d, stride_kd),
                     mask=mask_kd, other=0.0)  # [BLOCK_K, BLOCK_D]
        vt = tl.load(_memory_read_tile_ptrs(v_base, slots, stride_vk, offs_d, stride_vd),
                     mask=mask_kd, other=0.0)  # [BLOCK_K, BLOCK_D]
        s = _memory_read_mm(q, tl.trans(kt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE),
                            USE_TL_DOT, DOT_PRECISION) * scale  # [BLOCK_L, BLOCK_K]
        # Padding slots score 0 (k = 0), and exp(0 - lse) overflows when every real score is
        # below about -88: a -inf score gives them P = 0 instead.
        s = tl.where(mask_k[None, :], s, float("-inf"))
        p = tl.exp(s - lse[:, None])  # [BLOCK_L, BLOCK_K]
        dp = _memory_read_mm(do, tl.trans(vt), tl.zeros([BLOCK_L, BLOCK_K], ACC_DTYPE),
                             USE_TL_DOT, DOT_PRECISION)  # [BLOCK_L, BLOCK_K]
        ds = p * (dp - delta[:, None])  # [BLOCK_L, BLOCK_K]
        dq = _memory_read_mm(ds.to(kt.dtype), kt, dq, USE_TL_DOT, DOT_PRECISION)

    dq = dq * scale
    tl.store(_memory_read_tile_ptrs(dq_ptr + b * stride_dqb + h * stride_dqh, offs_l, stride_dql, offs_d, stride_dqd),
             dq.to(dq_ptr.dtype.element_ty), mask=mask_ld)


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


def _memory_read_config(n_heads_total: int, L: int, K: int, D: int, dtype: torch.dtype) -> _ReadConfig:
    """Block sizes as a pure function of the shape.

    Deliberately not triton.autotune: autotuning picks configs by timing, so two processes
    could pick different blocks, hence different summation orders, and the results would
    stop being bitwise reproducible.
    """
    block_d = max(16, triton.next_power_of_2(D))  # tl.dot needs every dimension >= 16
    if dtype == torch.float64:
        # _memory_read_mm's broadcast product is [tile, BLOCK_D, tile]: at most 4096 elements,
        # 16 float64 per thread over 8 warps.
        tile = 16
        while tile > 1 and tile * tile * block_d > 4096:
            tile //= 2
        return _ReadConfig(min(tile, triton.next_power_of_2(L)), min(tile, triton.next_power_of_2(K)),
                           block_d, num_warps=8, num_stages=1)
    # Rows wider than 128 bytes (half D > 64, float32 D > 32) get 8 warps for the registers
    # their tiles need; float32 "ieee" dots run on the FMA units with operands in registers.
    num_warps = 4 if block_d * dtype.itemsize <= 128 else 8
    row_bytes = block_d * dtype.itemsize
    # A [tile, BLOCK_D] operand of at most 16 KiB: 64 rows at D <= 128 in half precision,
    # at most 32 rows in float32.
    tile = min(64 if dtype.itemsize == 2 else 32, max(16, 16384 // row_bytes))
    block_l = min(tile, max(16, triton.next_power_of_2(L)))
    block_k = min(tile, max(16, triton.next_power_of_2(K)))
    # Short segments (L = 64) with few heads: split L finer so every SM gets work; the
    # extra K/V reads of the sibling L-blocks run together and hit in L2.
    while block_l > 16 and n_heads_total * triton.cdiv(L, block_l) < _READ_MIN_PROGRAMS:
        block_l //= 2
    # A pipeline stage holds two operands of <= 16 KiB (k and v, or q and dout): three stages
    # stay under ~100 KiB of shared memory.
    return _ReadConfig(block_l, block_k, block_d, num_warps, num_stages=3)


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocates every output; tests replace it to hand out NaN-filled memory."""
    return torch.empty(shape, dtype=dtype, device=device)


def memory_read_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """out (B, L, H, D) contiguous in the input dtype, lse (B, H, L) contiguous float32
    (float64 for float64 inputs): natural log-sum-exp of scale * q.k over the K slots."""
    B, L, H, D = q.shape
    K = k.shape[1]
    cfg = _memory_read_config(B * H, L, K, D, q.dtype)
    dt = numerics(q.dtype)
    use_tl_dot = q.dtype != torch.float64  # see _memory_read_mm
    out = _empty((B, L, H, D), q.dtype, q.device)
    lse = _empty((B, H, L), dt.acc_torch, q.device)
    n_lblocks = triton.cdiv(L, cfg.block_l)
    scale_hi, scale_lo = split_float(scale)
    with on_device(q):
        _memory_read_fwd_kernel[(n_lblocks * B * H,)](
            q, k, v, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            H, L, K, D, n_lblocks, scale_hi, scale_lo,
            BLOCK_L=cfg.block_l, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
            ACC_DTYPE=dt.acc_tl, USE_TL_DOT=use_tl_dot, DOT_PRECISION=dt.dot_precision,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out, lse


def memory_read_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, scale: float):
    """dq (B, L, H, D), dk, dv (B, K, H, D): contiguous, in the input dtype."""
    B, L, H, D = q.shape
    K = k.shape[1]
    cfg = _memory_read_config(B * H, L, K, D, q.dtype)
    dt = numerics(q.dtype)
    use_tl_dot = q.dtype != torch.float64  # see _memory_read_mm
    delta = _empty((B, H, L), dt.acc_torch, q.device)
    dq = _empty((B, L, H, D), q.dtype, q.device)
    dk = _empty((B, K, H, D), q.dtype, q.device)
    dv = _empty((B, K, H, D), q.dtype, q.device)
    n_lblocks = triton.cdiv(L, cfg.block_l)
    n_kblocks = triton.cdiv(K, cfg.block_k)
    scale_hi, scale_lo = split_float(scale)
    with on_device(q):
        _memory_read_bwd_delta_kernel[(n_lblocks * B * H,)](
            out, dout, delta,
            *out.stride(), *dout.stride(),
            H, L, D, n_lblocks,
            BLOCK_L=cfg.block_l, BLOCK_D=cfg.block_d, ACC_DTYPE=dt.acc_tl,
            num_warps=cfg.num_warps,
        )
        _memory_read_bwd_dkdv_kernel[(n_kblocks * B * H,)](
            q, k, v, dout, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
            *lse.stride(),
            H, L, K, D, n_kblocks, scale_hi, scale_lo,
            BLOCK_L=cfg.block_l, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
            ACC_DTYPE=dt.acc_tl, USE_TL_DOT=use_tl_dot, DOT_PRECISION=dt.dot_precision,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        _memory_read_bwd_dq_kernel[(n_lblocks * B * H,)](
            q, k, v, dout, lse, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
            *lse.stride(),
            H, L, K, D, n_lblocks, scale_hi, scale_lo,
            BLOCK_L=cfg.block_l, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
            ACC_DTYPE=dt.acc_tl, USE_TL_DOT=use_tl_dot, DOT_PRECISION=dt.dot_precision,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return dq, dk, dv
