"""Triton pieces shared by the attention kernels: tile loads and stores, the matrix product
that also serves float64, and the online-softmax step.

Scores are kept in base 2 for 16- and 32-bit inputs (the launcher folds log2(e) into the
scale, so every exponential is one ex2 instruction) and in base e for float64, whose exp2
NVIDIA's LLVM backend does not lower; `BASE2` selects, and the saved log-sum-exp is always
natural.
"""
import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def tile_ptrs(base_ptr, rows, stride_row, cols, stride_col):
    # [len(rows), len(cols)] pointers; int64 offsets, as B*L*H*D may exceed 2**31 elements.
    return base_ptr + rows.to(tl.int64)[:, None] * stride_row + cols.to(tl.int64)[None, :] * stride_col


@triton.jit
def load_tile(base_ptr, rows, n_rows, stride_row, cols, n_cols, stride_col,
              MASK_ROWS: tl.constexpr = True, MASK_COLS: tl.constexpr = True, CACHE: tl.constexpr = ""):
    # [len(rows), len(cols)]; elements outside [n_rows, n_cols] read as 0 so they add nothing to
    # products. A full block (MASK_ROWS False) or a head dim equal to the block's (MASK_COLS
    # False) is read without the mask and its address arithmetic. A cache modifier (CACHE) also
    # keeps the compiler from merging a reread with an earlier read of the same tile, which
    # would hold that tile in registers in between.
    ptrs = tile_ptrs(base_ptr, rows, stride_row, cols, stride_col)
    if MASK_ROWS and MASK_COLS:
        return tl.load(ptrs, mask=(rows < n_rows)[:, None] & (cols < n_cols)[None, :], other=0.0,
                       cache_modifier=CACHE)
    elif MASK_ROWS:
        return tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0, cache_modifier=CACHE)
    elif MASK_COLS:
        return tl.load(ptrs, mask=(cols < n_cols)[None, :], other=0.0, cache_modifier=CACHE)
    else:
        return tl.load(ptrs, cache_modifier=CACHE)


@triton.jit
def load_rows(ptr, rows, n_rows, MASK_ROWS: tl.constexpr):
    # [len(rows)] of a contiguous per-row statistic; 0 past n_rows.
    if MASK_ROWS:
        return tl.load(ptr + rows, mask=rows < n_rows, other=0.0)
    else:
        return tl.load(ptr + rows)


@triton.jit
def store_tile(base_ptr, rows, n_rows, stride_row, cols, n_cols, value):
    # Outputs are allocated contiguous along their last dim.
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    tl.store(tile_ptrs(base_ptr, rows, stride_row, cols, 1), value.to(base_ptr.dtype.element_ty), mask=mask)


@triton.jit
def mm(a, b, acc, USE_TL_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # acc [M, N] + a [M, R] @ b [R, N]
    if USE_TL_DOT:
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    else:
        # float64: NVIDIA targets do not lower every float64 tl.dot, while a broadcast product
        # summed over R compiles everywhere (float64 serves gradcheck, not speed).
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def exp(x, BASE2: tl.constexpr):
    if BASE2:
        return tl.exp2(x)
    else:
        return tl.exp(x)


@triton.jit
def natural_lse(m, l, BASE2: tl.constexpr):
    # log-sum-exp in base e of scores kept in base 2 (or e) with running max m and sum l.
    if BASE2:
        return (m + tl.log2(l)) * LN2
    else:
        return m + tl.log(l)


@triton.jit
def to_score_units(lse, BASE2: tl.constexpr):
    # A saved natural log-sum-exp in the units of the scores.
    if BASE2:
        return lse * LOG2E
    else:
        return lse


@triton.jit
def grad_scale(scale, BASE2: tl.constexpr):
    # The score scale in natural units, by which dS turns into dq and dk.
    if BASE2:
        return scale * LN2
    else:
        return scale


@triton.jit
def online_softmax_step(s, m_i, BASE2: tl.constexpr):
    """One block of scaled scores s [ROWS, COLS] (-inf where masked) against the running max
    m_i [ROWS]: returns (m_new, alpha, p) with p = exp(s - m_new) and alpha the factor that
    rescales the running sum and accumulator. Every row must have a finite score by now (the
    callers start from a real slot or the slot's own term), so m_new is finite."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    return m_new, exp(m_i - m_new, BASE2), exp(s - m_new[:, None], BASE2)


@triton.jit
def full_block_softmax_step(qk, m_i, scale, NEGATIVE_SCALE: tl.constexpr, BASE2: tl.constexpr):
    """online_softmax_step for a block without masks, from the unscaled products qk: the block's
    max is taken before scaling (its min for a negative scale), so each score costs one
    fused multiply-add, qk * scale - m_new, before its exponential."""
    if NEGATIVE_SCALE:
        m_block = tl.min(qk, axis=1) * scale
    else:
        m_block = tl.max(qk, axis=1) * scale
    m_new = tl.maximum(m_i, m_block)
    return m_new, exp(m_i - m_new, BASE2), exp(qk * scale - m_new[:, None], BASE2)


@triton.jit
def key_block_grads(kt, vt, q_base, dout_base, lse_ptr, delta_ptr, p_scale_ptr, rows, n_rows, stride_q_row,
                    stride_q_col, stride_g_row, stride_g_col, cols, D, scale, dk, dv,
                    MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_KEYS: tl.constexpr,
                    BLOCK_ROWS: tl.constexpr, ACC_DTYPE: tl.constexpr, USE_TL_DOT: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BASE2: tl.constexpr):
    """One block of query rows for a kernel that owns keys kt and values vt [BLOCK_KEYS,
    BLOCK_D]: dv += P^T dout and dk += dS^T q (dk unscaled), with P^T [BLOCK_KEYS, BLOCK_ROWS]
    transposed (keys x query rows) so that neither product needs a transposed P, and
    lse, delta and p_scale the query rows' saved statistics. No score is masked: query rows
    past n_rows read q = dout = 0 and p_scale = 0, so their P and dS are 0; keys the caller
    does not own reach only dk/dv rows it never stores (or zeroes)."""
    q = load_tile(q_base, rows, n_rows, stride_q_row, cols, D, stride_q_col, MASK_ROWS, not EVEN_D)
    do = load_tile(dout_base, rows, n_rows, stride_g_row, cols, D, stride_g_col, MASK_ROWS, not EVEN_D)
    lse = to_score_units(load_rows(lse_ptr, rows, n_rows, MASK_ROWS), BASE2)  # [BLOCK_ROWS]
    delta = load_rows(delta_ptr, rows, n_rows, MASK_ROWS)  # [BLOCK_ROWS]
    p_scale = load_rows(p_scale_ptr, rows, n_rows, MASK_ROWS)  # [BLOCK_ROWS]
    qk_t = mm(kt, tl.trans(q), tl.zeros([BLOCK_KEYS, BLOCK_ROWS], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
    p_t = exp(qk_t * scale - lse[None, :], BASE2) * p_scale[None, :]  # [BLOCK_KEYS, BLOCK_ROWS]
    dv = mm(p_t.to(do.dtype), do, dv, USE_TL_DOT, DOT_PRECISION)
    dp_t = mm(vt, tl.trans(do), tl.zeros([BLOCK_KEYS, BLOCK_ROWS], ACC_DTYPE), USE_TL_DOT, DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])  # [BLOCK_KEYS, BLOCK_ROWS]
    dk = mm(ds_t.to(q.dtype), q, dk, USE_TL_DOT, DOT_PRECISION)
    return dk, dv
