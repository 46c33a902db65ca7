"""Fused Triton kernels for Memformer's biased memory normalisation (the forgetting step).

    x = m + bias[k]        out = x / max(||x||_2, eps)        (== F.normalize(m + bias, dim=-1))

Forward: each program takes BLOCK_R rows of the (B*K, W) problem, adds the slot's bias,
reduces the sum of squares and scales, all on chip. When next_pow2(W) is above
_NORM_MAX_ONCHIP_W a row does not fit in registers, and the program makes two passes over
W in chunks: one for the norm, one to scale and store. The unclamped norm is saved.

Backward: with y = out and n = ||x||,
    dx = (dy - y * (y . dy)) / n     where n >= eps
    dx = dy / eps                    where n <  eps (the clamp is active, y = x / eps)
dm = dx, and dbias[k] = sum_b dx[b, k]. A program owns a block of slots and a chunk of the
batch and walks the batch chunk in [BLOCK_KS, B_TILE, BLOCK_W] tiles, storing dm and
summing dx over b in float32. With a single chunk it writes dbias itself; otherwise each
chunk writes a float32 partial and a second kernel adds the partials in chunk order. No
atomics: every reduction has a fixed order, so dbias is bitwise deterministic.
"""
import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from memkernels.triton_kernels._launch import cdiv, check_grid, next_power_of_2, numerics, on_device, split_float

# --------------------------------------------------------------------------- kernels


@triton.jit
def _fwd(
    m_ptr, bias_ptr, out_ptr, norm_ptr,
    stride_mb, stride_mk, stride_mw,
    stride_bk, stride_bw,
    R, K, W, eps_hi, eps_lo,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, SINGLE_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    # int64 row index: B*K*W may exceed 2**31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    mask_r = rows < R
    b = rows // K
    k = rows % K
    m_rows = m_ptr + b * stride_mb + k * stride_mk  # [BLOCK_R]
    bias_rows = bias_ptr + k * stride_bk  # [BLOCK_R]
    out_rows = out_ptr + rows * W  # [BLOCK_R]; out (B, K, W) is allocated contiguous
    # Scalar float arguments are float32 on the GPU: rebuild a float64 eps from two halves.
    eps = tl.cast(eps_hi, ACC_DTYPE) + tl.cast(eps_lo, ACC_DTYPE)
    cols = tl.arange(0, BLOCK_W).to(tl.int64)  # [BLOCK_W]

    if SINGLE_PASS:
        mask = mask_r[:, None] & (cols < W)[None, :]  # [BLOCK_R, BLOCK_W]
        x = (tl.load(m_rows[:, None] + cols[None, :] * stride_mw, mask=mask, other=0.0).to(ACC_DTYPE)
             + tl.load(bias_rows[:, None] + cols[None, :] * stride_bw, mask=mask, other=0.0).to(ACC_DTYPE))
        norm = tl.sqrt(tl.sum(x * x, axis=1))  # [BLOCK_R]
        inv = 1.0 / tl.maximum(norm, eps)  # [BLOCK_R]
        tl.store(out_rows[:, None] + cols[None, :], (x * inv[:, None]).to(out_ptr.dtype.element_ty),
                 mask=mask)
    else:
        sumsq = tl.zeros([BLOCK_R], ACC_DTYPE)  # [BLOCK_R]
        for w0 in range(0, W, BLOCK_W):
            c = w0 + cols  # [BLOCK_W]
            mask = mask_r[:, None] & (c < W)[None, :]  # [BLOCK_R, BLOCK_W]
            x = (tl.load(m_rows[:, None] + c[None, :] * stride_mw, mask=mask, other=0.0).to(ACC_DTYPE)
                 + tl.load(bias_rows[:, None] + c[None, :] * stride_bw, mask=mask, other=0.0).to(ACC_DTYPE))
            sumsq += tl.sum(x * x, axis=1)
        norm = tl.sqrt(sumsq)
        inv = 1.0 / tl.maximum(norm, eps)
        for w0 in range(0, W, BLOCK_W):
            c = w0 + cols
            mask = mask_r[:, None] & (c < W)[None, :]
            x = (tl.load(m_rows[:, None] + c[None, :] * stride_mw, mask=mask, other=0.0).to(ACC_DTYPE)
                 + tl.load(bias_rows[:, None] + c[None, :] * stride_bw, mask=mask, other=0.0).to(ACC_DTYPE))
            tl.store(out_rows[:, None] + c[None, :], (x * inv[:, None]).to(out_ptr.dtype.element_ty),
                     mask=mask)
    tl.store(norm_ptr + rows, norm, mask=mask_r)  # norm is (B, K) contiguous: row b*K + k


@triton.jit
def _memory_norm_fwd_strided_kernel(
    m_ptr, bias_ptr, out_ptr, norm_ptr, stride_mb, stride_mk, stride_mw, stride_bk, stride_bw,
    R, K, W, eps_hi, eps_lo,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, SINGLE_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    _fwd(m_ptr, bias_ptr, out_ptr, norm_ptr, stride_mb, stride_mk, stride_mw, stride_bk, stride_bw,
         R, K, W, eps_hi, eps_lo, BLOCK_R, BLOCK_W, SINGLE_PASS, ACC_DTYPE)


@triton.jit
def _memory_norm_fwd_contiguous_kernel(
    m_ptr, bias_ptr, out_ptr, norm_ptr, R, K, W, eps_hi, eps_lo,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, SINGLE_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    _fwd(m_ptr, bias_ptr, out_ptr, norm_ptr, tl.cast(K, tl.int64) * W, W, 1, W, 1,
         R, K, W, eps_hi, eps_lo, BLOCK_R, BLOCK_W, SINGLE_PASS, ACC_DTYPE)


@triton.jit
def _bwd(
    dout_ptr, out_ptr, norm_ptr, dm_ptr, dbias_ptr,
    stride_gb, stride_gk, stride_gw,
    stride_yb, stride_yk, stride_yw,
    B, K, W, n_kblocks, tiles_per_prog, eps_hi, eps_lo,
    BLOCK_KS: tl.constexpr, B_TILE: tl.constexpr, BLOCK_W: tl.constexpr,
    SINGLE_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    # Program = (slot block, batch chunk of tiles_per_prog * B_TILE entries). dbias_ptr is a
    # contiguous (n_chunks, K, W) buffer: dbias itself when there is one chunk. dm (B, K, W)
    # and norm (B, K) are contiguous.
    stride_db = tl.cast(K, tl.int64) * W
    stride_dk = W
    stride_nb = K
    pid = tl.program_id(0)
    pid_k = pid % n_kblocks
    pid_c = (pid // n_kblocks).to(tl.int64)
    ks = pid_k.to(tl.int64) * BLOCK_KS + tl.arange(0, BLOCK_KS)  # [BLOCK_KS]
    mask_k = ks < K
    offs_b = tl.arange(0, B_TILE)  # [B_TILE]
    cols = tl.arange(0, BLOCK_W).to(tl.int64)  # [BLOCK_W]
    eps = tl.cast(eps_hi, ACC_DTYPE) + tl.cast(eps_lo, ACC_DTYPE)
    part_rows = dbias_ptr + (pid_c * K + ks) * W  # [BLOCK_KS]
    b_first = pid_c * tiles_per_prog * B_TILE

    if SINGLE_PASS:
        mask_w = cols < W
        acc = tl.zeros([BLOCK_KS, BLOCK_W], ACC_DTYPE)  # [BLOCK_KS, BLOCK_W] partial dbias
        for i in range(tiles_per_prog):
            bs = b_first + i * B_TILE + offs_b  # [B_TILE]
            mask_kb = mask_k[:, None] & (bs < B)[None, :]  # [BLOCK_KS, B_TILE]
            mask = mask_kb[:, :, None] & mask_w[None, None, :]  # [BLOCK_KS, B_TILE, BLOCK_W]
            g_rows = dout_ptr + bs[None, :] * stride_gb + ks[:, None] * stride_gk  # [BLOCK_KS, B_TILE]
            y_rows = out_ptr + bs[None, :] * stride_yb + ks[:, None] * stride_yk
            dm_rows = dm_ptr + bs[None, :] * stride_db + ks[:, None] * stride_dk
            dy = tl.load(g_rows[:, :, None] + cols[None, None, :] * stride_gw,
                         mask=mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_KS, B_TILE, BLOCK_W]
            y = tl.load(y_rows[:, :, None] + cols[None, None, :] * stride_yw,
                        mask=mask, other=0.0).to(ACC_DTYPE)  # [BLOCK_KS, B_TILE, BLOCK_W]
            # other=1: padding rows must not divide by zero.
            n = tl.load(norm_ptr + bs[None, :] * stride_nb + ks[:, None],
                        mask=mask_kb, other=1.0)  # [BLOCK_KS, B_TILE]
            clamped = n < eps
            inv = 1.0 / tl.where(clamped, eps, n)  # [BLOCK_KS, B_TILE]
            coef = tl.where(clamped, 0.0, tl.sum(y * dy, axis=2))  # [BLOCK_KS, B_TILE]
            dx = (dy - y * coef[:, :, None]) * inv[:, :, None]  # [BLOCK_KS, B_TILE, BLOCK_W]
            tl.store(dm_rows[:, :, None] + cols[None, None, :], dx.to(dm_ptr.dtype.element_ty), mask=mask)
            acc += tl.sum(dx, axis=1)
        tl.store(part_rows[:, None] + cols[None, :], acc.to(dbias_ptr.dtype.element_ty),
                 mask=mask_k[:, None] & mask_w[None, :])
    else:
        # Rows too wide for registers: the launcher gives each program one batch tile, so the
        # per-row y . dy of the first pass stays in registers for the second.
        bs = b_first + offs_b  # [B_TILE]
        mask_kb = mask_k[:, None] & (bs < B)[None, :]  # [BLOCK_KS, B_TILE]
        g_rows = dout_ptr + bs[None, :] * stride_gb + ks[:, None] * stride_gk  # [BLOCK_KS, B_TILE]
        y_rows = out_ptr + bs[None, :] * stride_yb + ks[:, None] * stride_yk
        dm_rows = dm_ptr + bs[None, :] * stride_db + ks[:, None] * stride_dk
        dot = tl.zeros([BLOCK_KS, B_TILE], ACC_DTYPE)  # [BLOCK_KS, B_TILE]
        for w0 in range(0, W, BLOCK_W):
            c = w0 + cols  # [BLOCK_W]
            mask = mask_kb[:, :, None] & (c < W)[None, None, :]  # [BLOCK_KS, B_TILE, BLOCK_W]
            dy = tl.load(g_rows[:, :, None] + c[None, None, :] * stride_gw, mask=mask, other=0.0).to(ACC_DTYPE)
            y = tl.load(y_rows[:, :, None] + c[None, None, :] * stride_yw, mask=mask, other=0.0).to(ACC_DTYPE)
            dot += tl.sum(y * dy, axis=2)
        # other=1: padding rows must not divide by zero.
        n = tl.load(norm_ptr + bs[None, :] * stride_nb + ks[:, None],
                    mask=mask_kb, other=1.0)  # [BLOCK_KS, B_TILE]
        clamped = n < eps
        inv = 1.0 / tl.where(clamped, eps, n)
        coef = tl.where(clamped, 0.0, dot)
        for w0 in range(0, W, BLOCK_W):
            c = w0 + cols
            mask = mask_kb[:, :, None] & (c < W)[None, None, :]
            dy = tl.load(g_rows[:, :, None] + c[None, None, :] * stride_gw, mask=mask, other=0.0).to(ACC_DTYPE)
            y = tl.load(y_rows[:, :, None] + c[None, None, :] * stride_yw, mask=mask, other=0.0).to(ACC_DTYPE)
            dx = (dy - y * coef[:, :, None]) * inv[:, :, None]  # [BLOCK_KS, B_TILE, BLOCK_W]
            tl.store(dm_rows[:, :, None] + c[None, None, :], dx.to(dm_ptr.dtype.element_ty), mask=mask)
            tl.store(part_rows[:, None] + c[None, :], tl.sum(dx, axis=1).to(dbias_ptr.dtype.element_ty),
                     mask=mask_k[:, None] & (c < W)[None, :])


@triton.jit
def _memory_norm_bwd_strided_kernel(
    dout_ptr, out_ptr, norm_ptr, dm_ptr, dbias_ptr, stride_gb, stride_gk, stride_gw, stride_yb, stride_yk, stride_yw,
    B, K, W, n_kblocks, tiles_per_prog, eps_hi, eps_lo,
    BLOCK_KS: tl.constexpr, B_TILE: tl.constexpr, BLOCK_W: tl.constexpr,
    SINGLE_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    _bwd(dout_ptr, out_ptr, norm_ptr, dm_ptr, dbias_ptr, stride_gb, stride_gk, stride_gw, stride_yb, stride_yk,
         stride_yw, B, K, W, n_kblocks, tiles_per_prog, eps_hi, eps_lo,
         BLOCK_KS, B_TILE, BLOCK_W, SINGLE_PASS, ACC_DTYPE)


@triton.jit
def _memory_norm_bwd_contiguous_kernel(
    dout_ptr, out_ptr, norm_ptr, dm_ptr, dbias_ptr, B, K, W, n_kblocks, tiles_per_prog, eps_hi, eps_lo,
    BLOCK_KS: tl.constexpr, B_TILE: tl.constexpr, BLOCK_W: tl.constexpr,
    SINGLE_PASS: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    batch = tl.cast(K, tl.int64) * W
    _bwd(dout_ptr, out_ptr, norm_ptr, dm_ptr, dbias_ptr, batch, W, 1, batch, W, 1,
         B, K, W, n_kblocks, tiles_per_prog, eps_hi, eps_lo, BLOCK_KS, B_TILE, BLOCK_W, SINGLE_PASS, ACC_DTYPE)


@triton.jit
def _memory_norm_bwd_reduce_kernel(part_ptr, dbias_ptr, n_chunks, KW, BLOCK: tl.constexpr):
    # Sums the (n_chunks, K*W) partials in chunk order: a fixed order, hence deterministic.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = offs < KW
    acc = tl.zeros([BLOCK], part_ptr.dtype.element_ty)  # [BLOCK]
    part_ptrs = part_ptr + offs  # [BLOCK]; advanced as pointers so chunk * KW never overflows int32
    for _ in range(n_chunks):
        acc += tl.load(part_ptrs, mask=mask, other=0.0)
        part_ptrs += KW
    tl.store(dbias_ptr + offs, acc.to(dbias_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launchers

# Widest row (as next_pow2(W)) held on chip; wider rows take the two-pass chunked path
# with chunks of _NORM_MAX_ONCHIP_W // 8.
_NORM_MAX_ONCHIP_W = 16384
# Elements per program tile (a few rows of a W=512 memory): large enough for wide vector
# loads in every thread, small enough to keep register pressure low.
_NORM_TILE = 4096
# Backward: aim for at least this many programs (about four per SM of an H100/H200) before
# giving one program more of the batch. Fewer, longer programs mean fewer dbias partials to
# write and re-read; more programs mean more loads in flight. A constant, not a device query,
# so blocks (and summation order) depend on the shape only.
_NORM_TARGET_PROGRAMS = 512
_NORM_REDUCE_BLOCK = 1024


class _NormConfig(NamedTuple):
    block_w: int
    single_pass: bool
    fwd_block_r: int
    fwd_num_warps: int
    bwd_block_ks: int
    bwd_b_tile: int
    bwd_tiles_per_prog: int
    bwd_n_chunks: int
    bwd_num_warps: int


def _num_warps(tile: int) -> int:
    # ~16 float32 elements per thread and tensor at the 4096-element tile.
    return min(16, max(4, tile // 512))


@functools.lru_cache(maxsize=1024)
def _memory_norm_config(B: int, K: int, W: int) -> _NormConfig:
    """Block sizes as a pure function of the shape, computed once per shape.

    Deliberately not triton.autotune: autotuning picks configs by timing, so two processes
    could pick different tiles, hence different summation orders for dbias, and the
    gradients would stop being bitwise reproducible.
    """
    width = next_power_of_2(W)
    single_pass = width <= _NORM_MAX_ONCHIP_W
    block_w = width if single_pass else _NORM_MAX_ONCHIP_W // 8
    rows_per_tile = max(1, _NORM_TILE // block_w)
    fwd_block_r = min(next_power_of_2(B * K), rows_per_tile)
    # Backward tiles take batch entries first: those are the rows summed into dbias in-tile.
    b_tile = min(next_power_of_2(B), rows_per_tile)
    block_ks = min(next_power_of_2(K), max(1, rows_per_tile // b_tile))
    n_kblocks = cdiv(K, block_ks)
    n_btiles = cdiv(B, b_tile)
    if single_pass:
        tiles_per_prog = min(n_btiles, max(1, n_kblocks * n_btiles // _NORM_TARGET_PROGRAMS))
    else:
        tiles_per_prog = 1
    n_chunks = cdiv(n_btiles, tiles_per_prog)
    return _NormConfig(
        block_w=block_w,
        single_pass=single_pass,
        fwd_block_r=fwd_block_r,
        fwd_num_warps=_num_warps(fwd_block_r * block_w),
        bwd_block_ks=block_ks,
        bwd_b_tile=b_tile,
        bwd_tiles_per_prog=tiles_per_prog,
        bwd_n_chunks=n_chunks,
        bwd_num_warps=_num_warps(block_ks * b_tile * block_w),
    )


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocates every output; tests replace it to hand out NaN-filled memory."""
    return torch.empty(shape, dtype=dtype, device=device)


_FORWARD = (_memory_norm_fwd_strided_kernel, _memory_norm_fwd_contiguous_kernel)
_BACKWARD = (_memory_norm_bwd_strided_kernel, _memory_norm_bwd_contiguous_kernel)


def memory_norm_forward(m: torch.Tensor, bias: torch.Tensor, eps: float):
    """out (B, K, W) contiguous in the input dtype, norm (B, K) contiguous float32 (float64
    for float64 inputs) holding the unclamped ||m + bias||."""
    B, K, W = m.shape
    cfg = _memory_norm_config(B, K, W)
    dt = numerics(m.dtype)
    out = _empty((B, K, W), m.dtype, m.device)
    norm = _empty((B, K), dt.acc_torch, m.device)
    contiguous = m.is_contiguous() and bias.is_contiguous()
    strides = () if contiguous else (*m.stride(), *bias.stride())
    with on_device(m):
        _FORWARD[contiguous][(check_grid(cdiv(B * K, cfg.fwd_block_r)),)](
            m, bias, out, norm, *strides, B * K, K, W, *split_float(eps),
            BLOCK_R=cfg.fwd_block_r, BLOCK_W=cfg.block_w, SINGLE_PASS=cfg.single_pass, ACC_DTYPE=dt.acc_tl,
            num_warps=cfg.fwd_num_warps,
        )
    return out, norm


def memory_norm_backward(dout: torch.Tensor, out: torch.Tensor, norm: torch.Tensor, eps: float):
    """dm (B, K, W) and dbias (K, W), contiguous, in the input dtype. `norm` is the (B, K)
    tensor saved by memory_norm_forward."""
    B, K, W = out.shape
    cfg = _memory_norm_config(B, K, W)
    dt = numerics(out.dtype)
    norm = norm.contiguous()
    dm = _empty((B, K, W), out.dtype, out.device)
    dbias = _empty((K, W), out.dtype, out.device)
    partial = dbias if cfg.bwd_n_chunks == 1 else _empty((cfg.bwd_n_chunks, K, W), dt.acc_torch, out.device)
    n_kblocks = cdiv(K, cfg.bwd_block_ks)
    contiguous = dout.is_contiguous() and out.is_contiguous()
    strides = () if contiguous else (*dout.stride(), *out.stride())
    with on_device(out):
        _BACKWARD[contiguous][(check_grid(n_kblocks * cfg.bwd_n_chunks),)](
            dout, out, norm, dm, partial, *strides,
            B, K, W, n_kblocks, cfg.bwd_tiles_per_prog, *split_float(eps),
            BLOCK_KS=cfg.bwd_block_ks, B_TILE=cfg.bwd_b_tile, BLOCK_W=cfg.block_w,
            SINGLE_PASS=cfg.single_pass, ACC_DTYPE=dt.acc_tl,
            num_warps=cfg.bwd_num_warps,
        )
        if cfg.bwd_n_chunks > 1:
            _memory_norm_bwd_reduce_kernel[(cdiv(K * W, _NORM_REDUCE_BLOCK),)](
                partial, dbias, cfg.bwd_n_chunks, K * W, BLOCK=_NORM_REDUCE_BLOCK,
            )
    return dm, dbias
