"""Fused Triton kernels for slot attention (Memformer's memory write).

Slot ``i`` attends over its own key and the segment's token keys:
``p = softmax([s_self, s_tok])`` with ``s_self = c * q_i.k_i`` and
``s_tok_j = c * q_i.k_tok_j`` (-inf at padding), ``out_i = p_self * v_i + sum_j p_j * v_tok_j``.
The launchers take ``c`` already folded (``scale / tau``).

Forward: one program per (block of slots, batch * head). It is flash attention whose
online-softmax state starts at the slot's own term (max = s_self, sum = 1, acc = v_i)
before the token blocks stream through, so a slot whose tokens are all padding never
leaves that state (and is stored as v_i itself, bitwise). It saves ``lse`` for the backward.

Backward, with ``P`` recomputed from ``lse`` and ``delta = rowsum(dout * out)``,
``dS = P * (dout.V - delta)`` over [self; tokens]:
  * a slot kernel (programs over slot blocks, looping over tokens) writes
    ``dq = c * (dS_self k_i + dS_tok @ k_tok)``, ``dk = c * dS_self q``, ``dv = P_self dout``
    and ``delta`` for the second kernel;
  * a token kernel (programs over token blocks, looping over all slots) writes
    ``dk_tok = c * dS_tok^T @ q`` and ``dv_tok = P_tok^T @ dout``.
Every output row belongs to exactly one program and every loop runs in a fixed order:
no atomics, so results are bitwise reproducible run to run.

All tensors are read through their strides (any layout, e.g. a (B, H, K, D) tensor
passed as ``x.transpose(1, 2)``); offsets are int64; every load is masked.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from memkernels.triton_kernels._launch import numerics, on_device


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------


@triton.jit
def _slot_attention_load_tile(base_ptr, rows, cols, stride_row, stride_col, n_rows, n_cols):
    # [len(rows), len(cols)]; out-of-range elements read as 0 so they add nothing to dot products.
    ptrs = base_ptr + rows[:, None] * stride_row + cols[None, :] * stride_col
    return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _slot_attention_store_tile(base_ptr, rows, cols, stride_row, n_rows, n_cols, value):
    # Outputs are allocated contiguous along the head dim.
    ptrs = base_ptr + rows[:, None] * stride_row + cols[None, :]
    tl.store(ptrs, value.to(base_ptr.dtype.element_ty), mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols))


@triton.jit
def _slot_attention_token_ok(mask_ptr, stride_ml, offs_l, L, HAS_MASK: tl.constexpr):
    # [BLOCK_L] True for real tokens inside the segment.
    ok = offs_l < L
    if HAS_MASK:
        ok &= tl.load(mask_ptr + offs_l * stride_ml, mask=ok, other=0) != 0
    return ok


@triton.jit
def _slot_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    stride_mb, stride_ml,
    H, K, L, D,
    # float64 so that float64 inputs get the caller's scale unrounded; the kernel narrows it
    # with tl.full, which takes the compiled scalar and the interpreter's Python float alike.
    scale: tl.float64,
    HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Slot blocks of one (b, h) are neighbours in launch order, so they share its tokens in L2.
    pid = tl.program_id(0)
    n_slot_blocks = tl.cdiv(K, BLOCK_K)
    bh = (pid // n_slot_blocks).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_k = ((pid % n_slot_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    scale = tl.full((), scale, ACC_DTYPE)

    q = _slot_attention_load_tile(q_ptr + b * stride_qb + h * stride_qh, offs_k, offs_d,
                                  stride_qk, stride_qd, K, D)  # [BLOCK_K, BLOCK_D]
    k = _slot_attention_load_tile(k_ptr + b * stride_kb + h * stride_kh, offs_k, offs_d,
                                  stride_kk, stride_kd, K, D)  # [BLOCK_K, BLOCK_D]
    v_ptr += b * stride_vb + h * stride_vh
    v = _slot_attention_load_tile(v_ptr, offs_k, offs_d, stride_vk, stride_vd, K, D)  # [BLOCK_K, BLOCK_D]

    # The softmax state starts at the slot's own term: running max = its score, running
    # sum = exp(0) = 1, accumulator = its value (the upcast is exact).
    m_i = tl.sum(q.to(ACC_DTYPE) * k.to(ACC_DTYPE), axis=1) * scale  # [BLOCK_K]
    l_i = tl.full([BLOCK_K], 1.0, ACC_DTYPE)  # [BLOCK_K]
    acc = v.to(ACC_DTYPE)  # [BLOCK_K, BLOCK_D]
    n_live = tl.zeros((), tl.int32)

    k_tok_ptr += b * stride_ktb + h * stride_kth
    v_tok_ptr += b * stride_vtb + h * stride_vth
    mask_ptr += b * stride_mb
    for start in range(0, L, BLOCK_L):
        offs_l = (start + tl.arange(0, BLOCK_L)).to(tl.int64)
        k_tok = _slot_attention_load_tile(k_tok_ptr, offs_l, offs_d, stride_ktl, stride_ktd, L, D)  # [BLOCK_L, BLOCK_D]
        v_tok = _slot_attention_load_tile(v_tok_ptr, offs_l, offs_d, stride_vtl, stride_vtd, L, D)  # [BLOCK_L, BLOCK_D]
        tok_ok = _slot_attention_token_ok(mask_ptr, stride_ml, offs_l, L, HAS_MASK)  # [BLOCK_L]
        if HAS_MASK:
            n_live += tl.sum(tok_ok.to(tl.int32), axis=0)

        s = tl.dot(q, tl.trans(k_tok), input_precision=DOT_PRECISION) * scale  # [BLOCK_K, BLOCK_L]
        s = tl.where(tok_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_K]
        # m_i starts at the finite self score, so m_new is -inf only if that score overflowed;
        # measuring from 0 then keeps exp(-inf - -inf) from turning the row into NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_ref)  # [BLOCK_K]
        p = tl.exp(s - m_ref[:, None])  # [BLOCK_K, BLOCK_L]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v_tok.dtype), v_tok, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]  # [BLOCK_K, BLOCK_D]
    if HAS_MASK:
        # The mask is per batch: every slot here saw a real token or none did. With none, store
        # v itself rather than trust exp(0) == 1, x / 1 == x (approximate division on the GPU)
        # and the sign of the zeros the dot added, so that the output is v bit for bit.
        if n_live == 0:
            out = _slot_attention_load_tile(v_ptr, offs_k, offs_d, stride_vk, stride_vd, K, D).to(ACC_DTYPE)
    _slot_attention_store_tile(out_ptr + (b * K * H + h) * D, offs_k, offs_d, H * D, K, D, out)
    tl.store(lse_ptr + bh * K + offs_k, m_i + tl.log(l_i), mask=offs_k < K)


@triton.jit
def _slot_attention_bwd_slots_kernel(
    q_ptr, k_ptr, v_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, out_ptr, dout_ptr, lse_ptr,
    delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_kb, stride_kk, stride_kh, stride_kd,
    stride_vb, stride_vk, stride_vh, stride_vd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    stride_mb, stride_ml,
    stride_ob, stride_ok, stride_oh, stride_od,
    stride_dob, stride_dok, stride_doh, stride_dod,
    stride_lb, stride_lh, stride_lk,
    H, K, L, D,
    scale: tl.float64,
    HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_slot_blocks = tl.cdiv(K, BLOCK_K)
    bh = (pid // n_slot_blocks).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_k = ((pid % n_slot_blocks) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    slot_in = offs_k < K
    scale = tl.full((), scale, ACC_DTYPE)

    q = _slot_attention_load_tile(q_ptr + b * stride_qb + h * stride_qh, offs_k, offs_d,
                                  stride_qk, stride_qd, K, D)  # [BLOCK_K, BLOCK_D]
    k = _slot_attention_load_tile(k_ptr + b * stride_kb + h * stride_kh, offs_k, offs_d,
                                  stride_kk, stride_kd, K, D)  # [BLOCK_K, BLOCK_D]
    v = _slot_attention_load_tile(v_ptr + b * stride_vb + h * stride_vh, offs_k, offs_d,
                                  stride_vk, stride_vd, K, D)  # [BLOCK_K, BLOCK_D]
    out = _slot_attention_load_tile(out_ptr + b * stride_ob + h * stride_oh, offs_k, offs_d,
                                    stride_ok, stride_od, K, D)  # [BLOCK_K, BLOCK_D]
    dout = _slot_attention_load_tile(dout_ptr + b * stride_dob + h * stride_doh, offs_k, offs_d,
                                     stride_dok, stride_dod, K, D)  # [BLOCK_K, BLOCK_D]
    # Rows past K read lse = 0: their scores are 0 too, so nothing overflows, and they are never stored.
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + offs_k * stride_lk,
                  mask=slot_in, other=0.0).to(ACC_DTYPE)  # [BLOCK_K]

    dout_acc = dout.to(ACC_DTYPE)
    delta = tl.sum(dout_acc * out.to(ACC_DTYPE), axis=1)  # [BLOCK_K]
    tl.store(delta_ptr + bh * K + offs_k, delta, mask=slot_in)

    p_self = tl.exp(tl.sum(q.to(ACC_DTYPE) * k.to(ACC_DTYPE), axis=1) * scale - lse)  # [BLOCK_K]
    ds_self = p_self * (tl.sum(dout_acc * v.to(ACC_DTYPE), axis=1) - delta)  # [BLOCK_K]
    dq = ds_self[:, None] * k.to(ACC_DTYPE)  # [BLOCK_K, BLOCK_D]

    k_tok_ptr += b * stride_ktb + h * stride_kth
    v_tok_ptr += b * stride_vtb + h * stride_vth
    mask_ptr += b * stride_mb
    for start in range(0, L, BLOCK_L):
        offs_l = (start + tl.arange(0, BLOCK_L)).to(tl.int64)
        k_tok = _slot_attention_load_tile(k_tok_ptr, offs_l, offs_d, stride_ktl, stride_ktd, L, D)  # [BLOCK_L, BLOCK_D]
        v_tok = _slot_attention_load_tile(v_tok_ptr, offs_l, offs_d, stride_vtl, stride_vtd, L, D)  # [BLOCK_L, BLOCK_D]
        tok_ok = _slot_attention_token_ok(mask_ptr, stride_ml, offs_l, L, HAS_MASK)  # [BLOCK_L]

        s = tl.dot(q, tl.trans(k_tok), input_precision=DOT_PRECISION) * scale  # [BLOCK_K, BLOCK_L]
        p = tl.exp(tl.where(tok_ok[None, :], s, float("-inf")) - lse[:, None])  # [BLOCK_K, BLOCK_L]
        dp = tl.dot(dout, tl.trans(v_tok), input_precision=DOT_PRECISION)  # [BLOCK_K, BLOCK_L]
        ds = p * (dp - delta[:, None])  # [BLOCK_K, BLOCK_L]
        dq = tl.dot(ds.to(k_tok.dtype), k_tok, dq, input_precision=DOT_PRECISION)

    slot_rows = (b * K * H + h) * D
    _slot_attention_store_tile(dq_ptr + slot_rows, offs_k, offs_d, H * D, K, D, dq * scale)
    _slot_attention_store_tile(dk_ptr + slot_rows, offs_k, offs_d, H * D, K, D,
                               (scale * ds_self)[:, None] * q.to(ACC_DTYPE))
    _slot_attention_store_tile(dv_ptr + slot_rows, offs_k, offs_d, H * D, K, D, p_self[:, None] * dout_acc)


@triton.jit
def _slot_attention_bwd_tokens_kernel(
    q_ptr, k_tok_ptr, v_tok_ptr, mask_ptr, dout_ptr, lse_ptr, delta_ptr,
    dk_tok_ptr, dv_tok_ptr,
    stride_qb, stride_qk, stride_qh, stride_qd,
    stride_ktb, stride_ktl, stride_kth, stride_ktd,
    stride_vtb, stride_vtl, stride_vth, stride_vtd,
    stride_mb, stride_ml,
    stride_dob, stride_dok, stride_doh, stride_dod,
    stride_lb, stride_lh, stride_lk,
    H, K, L, D,
    scale: tl.float64,
    HAS_MASK: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    n_tok_blocks = tl.cdiv(L, BLOCK_L)
    bh = (pid // n_tok_blocks).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_l = ((pid % n_tok_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    scale = tl.full((), scale, ACC_DTYPE)

    k_tok = _slot_attention_load_tile(k_tok_ptr + b * stride_ktb + h * stride_kth, offs_l, offs_d,
                                      stride_ktl, stride_ktd, L, D)  # [BLOCK_L, BLOCK_D]
    v_tok = _slot_attention_load_tile(v_tok_ptr + b * stride_vtb + h * stride_vth, offs_l, offs_d,
                                      stride_vtl, stride_vtd, L, D)  # [BLOCK_L, BLOCK_D]
    tok_ok = _slot_attention_token_ok(mask_ptr + b * stride_mb, stride_ml, offs_l, L, HAS_MASK)  # [BLOCK_L]

    dk_tok = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)
    dv_tok = tl.zeros([BLOCK_L, BLOCK_D], ACC_DTYPE)
    q_ptr += b * stride_qb + h * stride_qh
    dout_ptr += b * stride_dob + h * stride_doh
    lse_ptr += b * stride_lb + h * stride_lh
    delta_ptr += bh * K
    # Padding tokens get zero gradients: a block of nothing but padding skips the slot loop.
    slot_end = tl.where(tl.max(tok_ok.to(tl.int32), axis=0) > 0, K, 0)
    for start in range(0, slot_end, BLOCK_K):
        offs_k = (start + tl.arange(0, BLOCK_K)).to(tl.int64)
        slot_in = offs_k < K
        q = _slot_attention_load_tile(q_ptr, offs_k, offs_d, stride_qk, stride_qd, K, D)  # [BLOCK_K, BLOCK_D]
        dout = _slot_attention_load_tile(dout_ptr, offs_k, offs_d, stride_dok, stride_dod, K, D)  # [BLOCK_K, BLOCK_D]
        lse = tl.load(lse_ptr + offs_k * stride_lk, mask=slot_in, other=0.0).to(ACC_DTYPE)  # [BLOCK_K]
        delta = tl.load(delta_ptr + offs_k, mask=slot_in, other=0.0)  # [BLOCK_K]

        # Scores transposed (tokens x slots) so that both products below need no transpose of P.
        s = tl.dot(k_tok, tl.trans(q), input_precision=DOT_PRECISION) * scale  # [BLOCK_L, BLOCK_K]
        s = tl.where(tok_ok[:, None] & slot_in[None, :], s, float("-inf"))
        p = tl.exp(s - lse[None, :])  # [BLOCK_L, BLOCK_K]
        dp = tl.dot(v_tok, tl.trans(dout), input_precision=DOT_PRECISION)  # [BLOCK_L, BLOCK_K]
        ds = p * (dp - delta[None, :])  # [BLOCK_L, BLOCK_K]
        dv_tok = tl.dot(p.to(dout.dtype), dout, dv_tok, input_precision=DOT_PRECISION)
        dk_tok = tl.dot(ds.to(q.dtype), q, dk_tok, input_precision=DOT_PRECISION)

    tok_rows = (b * L * H + h) * D
    _slot_attention_store_tile(dk_tok_ptr + tok_rows, offs_l, offs_d, H * D, L, D, dk_tok * scale)
    _slot_attention_store_tile(dv_tok_ptr + tok_rows, offs_l, offs_d, H * D, L, D, dv_tok)


# ----------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------

# Programs per launch below which row tiles keep shrinking: about two waves on the 132 SMs of
# an H100/H200. A constant rather than a device query keeps the module importable without a GPU.
_TARGET_PROGRAMS = 264


class _Tiles(NamedTuple):
    block_rows: int  # rows a program owns (slots, or tokens in the token kernel)
    block_stream: int  # rows streamed per loop step
    block_d: int
    num_warps: int
    num_stages: int


def _tile_caps(block_d: int, elem_size: int) -> tuple[int, int, int, int]:
    """(max rows, max streamed rows, warps, stages) for rows of `block_d` elements.

    Sized from sm_90 builds (ptxas register and spill counts, D from 1 to 256) so that the
    kernels do not spill, except for float64 at D > 128 and head dims above 128 that are
    not multiples of 16 (their loads go element by element). 16-bit inputs run tensor-core
    MMAs with float32 accumulators; float32 (IEEE: FMA, not TF32 tensor cores) and float64
    keep dot operands in registers and need smaller tiles.
    """
    if elem_size == 2:
        if block_d <= 64:
            return 64, 64, 4, 3
        if block_d <= 128:
            return 64, 32, 8, 3
        return 32, 32, 8, 2
    if block_d * elem_size <= 256:
        return 32, 32, 8, 3
    if block_d * elem_size <= 512:
        return 32, 32, 8, 2
    return 16, 16, 8, 2


def _tiles(n_rows: int, n_stream: int, batch_heads: int, head_dim: int, elem_size: int,
           share: int = 1) -> _Tiles:
    """Block sizes as a pure function of the shape.

    Deliberately not triton.autotune: a timing-based choice can differ between processes,
    and the streamed block size fixes the summation order, so it would break bitwise
    reproducibility. `share` divides both tiles for kernels that carry more per row.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    max_rows, max_stream, num_warps, num_stages = _tile_caps(block_d, elem_size)
    block_rows = min(max(16, max_rows // share), max(16, triton.next_power_of_2(n_rows)))
    while block_rows > 16 and batch_heads * triton.cdiv(n_rows, block_rows) < _TARGET_PROGRAMS:
        block_rows //= 2
    block_stream = min(max(16, max_stream // share), max(16, triton.next_power_of_2(n_stream)))
    return _Tiles(block_rows, block_stream, block_d, num_warps, num_stages)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------


def _empty(shape, dtype, device):
    # Every allocation goes through here so that tests can hand out NaN-filled memory.
    return torch.empty(shape, dtype=dtype, device=device)


def _mask_args(key_padding_mask, like):
    """(pointer tensor, stride over batch, stride over tokens) for the kernels' key padding mask."""
    if key_padding_mask is None:
        return like, 0, 0
    if like.dtype == torch.float64:
        # Triton sizes a dot's register operand by the narrowest load feeding it (the mask
        # reaches P through the -inf select) and cannot lower float64 MMA operands sized
        # from 8-bit loads: give it a 64-bit copy of the small (B, L) mask instead.
        mask = key_padding_mask.to(torch.int64)
    else:
        # bool and uint8 share a byte layout; Triton loads the bytes and compares with 0.
        mask = key_padding_mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1)


def slot_attention_forward(q, k, v, k_tok, v_tok, key_padding_mask, scale: float):
    """Fused slot attention forward. Returns ``out`` (B, K, H, D) and ``lse`` (B, H, K).

    ``scale`` is the full score scale (``scale / tau``). ``lse`` is float32 (float64 for
    float64 inputs), natural log.
    """
    B, K, H, D = q.shape
    L = k_tok.shape[1]
    acc_dtype, tl_acc, precision = numerics(q.dtype)
    out = _empty((B, K, H, D), q.dtype, q.device)
    lse = _empty((B, H, K), acc_dtype, q.device)
    mask, stride_mb, stride_ml = _mask_args(key_padding_mask, q)
    tiles = _tiles(K, L, B * H, D, q.element_size())
    grid = (triton.cdiv(K, tiles.block_rows) * B * H,)
    with on_device(q):
        _slot_attention_fwd_kernel[grid](
            q, k, v, k_tok, v_tok, mask, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *k_tok.stride(), *v_tok.stride(),
            stride_mb, stride_ml,
            H, K, L, D, float(scale),
            HAS_MASK=key_padding_mask is not None, ACC_DTYPE=tl_acc, DOT_PRECISION=precision,
            BLOCK_K=tiles.block_rows, BLOCK_L=tiles.block_stream, BLOCK_D=tiles.block_d,
            num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        )
    return out, lse


def slot_attention_backward(dout, q, k, v, k_tok, v_tok, key_padding_mask, out, lse, scale: float):
    """Gradients of :func:`slot_attention_forward`: ``dq, dk, dv, dk_tok, dv_tok``.

    ``out`` and ``lse`` are the forward's results. Padding tokens get zero gradients.
    """
    B, K, H, D = q.shape
    L = k_tok.shape[1]
    acc_dtype, tl_acc, precision = numerics(q.dtype)
    dq = _empty((B, K, H, D), q.dtype, q.device)
    dk = _empty((B, K, H, D), q.dtype, q.device)
    dv = _empty((B, K, H, D), q.dtype, q.device)
    dk_tok = _empty((B, L, H, D), q.dtype, q.device)
    dv_tok = _empty((B, L, H, D), q.dtype, q.device)
    delta = _empty((B, H, K), acc_dtype, q.device)
    mask, stride_mb, stride_ml = _mask_args(key_padding_mask, q)
    has_mask = key_padding_mask is not None
    slot_tiles = _tiles(K, L, B * H, D, q.element_size())
    # The token kernel carries two accumulators per row (dk_tok, dv_tok): halve its tiles.
    token_tiles = _tiles(L, K, B * H, D, q.element_size(), share=2)
    with on_device(q):
        # Writes delta, which the token kernel reads: the two launches are stream-ordered.
        _slot_attention_bwd_slots_kernel[(triton.cdiv(K, slot_tiles.block_rows) * B * H,)](
            q, k, v, k_tok, v_tok, mask, out, dout, lse,
            delta, dq, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *k_tok.stride(), *v_tok.stride(),
            stride_mb, stride_ml, *out.stride(), *dout.stride(), *lse.stride(),
            H, K, L, D, float(scale),
            HAS_MASK=has_mask, ACC_DTYPE=tl_acc, DOT_PRECISION=precision,
            BLOCK_K=slot_tiles.block_rows, BLOCK_L=slot_tiles.block_stream, BLOCK_D=slot_tiles.block_d,
            num_warps=slot_tiles.num_warps, num_stages=slot_tiles.num_stages,
        )
        _slot_attention_bwd_tokens_kernel[(triton.cdiv(L, token_tiles.block_rows) * B * H,)](
            q, k_tok, v_tok, mask, dout, lse, delta,
            dk_tok, dv_tok,
            *q.stride(), *k_tok.stride(), *v_tok.stride(),
            stride_mb, stride_ml, *dout.stride(), *lse.stride(),
            H, K, L, D, float(scale),
            HAS_MASK=has_mask, ACC_DTYPE=tl_acc, DOT_PRECISION=precision,
            BLOCK_L=token_tiles.block_rows, BLOCK_K=token_tiles.block_stream, BLOCK_D=token_tiles.block_d,
            num_warps=token_tiles.num_warps, num_stages=token_tiles.num_stages,
        )
    return dq, dk, dv, dk_tok, dv_tok
