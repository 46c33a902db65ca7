// Tensor-core forward of memory_read and slot_attention (FlashAttention-2 style).
//
// One CTA of 4 warps owns kBlockM query rows of one (b, h). Q is loaded once
// (into registers up to head dim 128, re-read from shared memory above that);
// K and V blocks stream through swizzled shared memory with cp.async, the V
// load overlapping S = Q K^T and the next K load overlapping P V. The online
// softmax runs in registers in base 2: s2 = s * scale * log2(e), p = exp2(s2 - m2).
//
// slot_attention starts every row's state at its own term (m = s_self, l = 1,
// acc = v_self) and masks padded tokens to -inf. A row whose tokens are all
// masked returns v_self copied bit for bit (the P V products, all zero, would
// still turn a -0.0 into +0.0).
#pragma once

#include "tc_common.cuh"

namespace memkernels {
namespace tc {

template <typename Traits, typename Tiles>
__global__ void __launch_bounds__(kTcThreads) attention_forward_kernel(const AttentionParams p) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kBlockM = Tiles::kBlockM;
  constexpr int kBlockN = Tiles::kBlockN;
  // Holding Q in registers costs kHeadDim / 4 registers per thread: worth it up to 128.
  constexpr bool kQInRegs = kHeadDim <= 128;

  extern __shared__ __align__(128) char smem[];
  const int n_mblocks = (p.rows + kBlockM - 1) / kBlockM;
  const BlockCoord at = block_coord(p.H, n_mblocks, 1);
  const int b = at.b, h = at.h, row0 = at.block * kBlockM;
  const int rows_valid = min(kBlockM, p.rows - row0);
  const int tid = threadIdx.x;

  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)),
                          typename Traits::template SmemLayout<kBlockM>{});
  Tensor sK = make_tensor(sQ.data() + size(sQ), typename Traits::template SmemLayout<kBlockN>{});
  Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::template SmemLayout<kBlockN>{});
  Tensor sVt = make_tensor(sV.data(), typename Traits::template SmemLayoutT<kBlockN>{});
  Tensor sVtNoSwizzle =
      make_tensor(sV.data().get(), typename Traits::template SmemLayoutTNoSwizzle<kBlockN>{});

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor rQ = thr_mma.partition_fragment_A(sQ);
  Tensor rK = thr_mma.partition_fragment_B(sK);
  Tensor rVt = thr_mma.partition_fragment_B(sVtNoSwizzle);
  auto copy_q = make_tiled_copy_A(typename Traits::LdsmAtom{}, tiled_mma);
  auto copy_k = make_tiled_copy_B(typename Traits::LdsmAtom{}, tiled_mma);
  auto copy_v = make_tiled_copy_B(typename Traits::LdsmAtomT{}, tiled_mma);
  Tensor lsQ = copy_q.get_thread_slice(tid).partition_S(sQ);
  Tensor lsK = copy_k.get_thread_slice(tid).partition_S(sK);
  Tensor lsVt = copy_v.get_thread_slice(tid).partition_S(sVt);

  const int n_nblocks = (p.keys + kBlockN - 1) / kBlockN;
  auto load_k = [&](int nb) {
    const int key0 = nb * kBlockN;
    load_tile<Traits>(gmem_tile<Element, kBlockN, kHeadDim>(p.k, b, h, key0), sK, p.keys - key0,
                      p.D);
  };
  auto load_v = [&](int nb) {
    const int key0 = nb * kBlockN;
    load_tile<Traits>(gmem_tile<Element, kBlockN, kHeadDim>(p.v, b, h, key0), sV, p.keys - key0,
                      p.D);
  };

  load_tile<Traits>(gmem_tile<Element, kBlockM, kHeadDim>(p.q, b, h, row0), sQ, rows_valid, p.D);
  cute::cp_async_fence();
  load_k(0);
  cute::cp_async_fence();

  Tensor acc_o = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  Tensor acc_o_rc = rowcol_view(acc_o);
  Tensor c_o =
      rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{})));
  constexpr int kRows = decltype(size<0>(acc_o_rc))::value;  // rows per thread (2)
  float row_max[kRows], row_sum[kRows];

  cp_async_wait<1>();  // Q has landed (K may still be in flight)
  __syncthreads();
  if constexpr (kQInRegs) {
    cute::copy(copy_q, lsQ, copy_q.get_thread_slice(tid).retile_D(rQ));
  }

  if (p.k_self.ptr != nullptr) {
    // slot_attention: s_self = q . k_self per row (a thread's columns, then its quad),
    // acc = v_self, m = s_self, l = 1 (counted once per quad, by its first lane).
    Tensor sQ_rc = rowcol_view(thr_mma.partition_C(sQ));
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int row = get<0>(c_o(r, 0));
      const bool valid = row < rows_valid;
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < size<1>(acc_o_rc); ++c) {
        const int col = get<1>(c_o(r, c));
        float v_self = 0.0f;
        if (valid && col < p.D) {
          const float k_self =
              static_cast<float>(*element_ptr<Element>(p.k_self, b, row0 + row, h, col));
          v_self = static_cast<float>(*element_ptr<Element>(p.v_self, b, row0 + row, h, col));
          dot += static_cast<float>(sQ_rc(r, c)) * k_self;
        }
        acc_o_rc(r, c) = v_self;
      }
      row_max[r] = quad_sum(dot) * p.scale_log2;
      row_sum[r] = (tid % 4 == 0) ? 1.0f : 0.0f;
    }
  } else {
    clear(acc_o);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.0f;
    }
  }

  Tensor c_s =
      rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
  bool saw_live_key = false;  // over this thread's columns; a quad's lanes cover every column
  for (int nb = 0; nb < n_nblocks; ++nb) {
    Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cp_async_wait<0>();  // K[nb] has landed
    __syncthreads();     // ... for every thread, and everyone is done with V[nb-1]
    load_v(nb);
    cute::cp_async_fence();

    if constexpr (kQInRegs) {
      gemm_rs(acc_s, rQ, rK, lsK, tiled_mma, copy_k);
    } else {
      gemm_ss(acc_s, rQ, rK, lsQ, lsK, tiled_mma, copy_q, copy_k);
    }

    // Scores in base 2; keys past the end and padded tokens to -inf.
    Tensor s = rowcol_view(acc_s);
    const int key0 = nb * kBlockN;
#pragma unroll
    for (int c = 0; c < size<1>(s); ++c) {
      const int key = key0 + get<1>(c_s(0, c));
      const bool live =
          key < p.keys &&
          (p.mask == nullptr ||
           p.mask[b * p.mask_batch_stride + static_cast<int64_t>(key) * p.mask_key_stride]);
      saw_live_key |= live;
#pragma unroll
      for (int r = 0; r < kRows; ++r) s(r, c) = live ? s(r, c) * p.scale_log2 : -INFINITY;
    }

    cp_async_wait<0>();  // V[nb] has landed
    __syncthreads();     // ... and every thread has finished reading K[nb]
    if (nb + 1 < n_nblocks) {
      load_k(nb + 1);
      cute::cp_async_fence();
    }

    // Online softmax: rescale the running state to the new row max.
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float block_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < size<1>(s); ++c) block_max = fmaxf(block_max, s(r, c));
      const float new_max = fmaxf(row_max[r], quad_max(block_max));
      // A row with nothing live yet keeps max -inf: subtract 0 instead of -inf.
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float rescale = exp2f(row_max[r] - base);
      row_max[r] = new_max;
      row_sum[r] *= rescale;
#pragma unroll
      for (int c = 0; c < size<1>(acc_o_rc); ++c) acc_o_rc(r, c) *= rescale;
#pragma unroll
      for (int c = 0; c < size<1>(s); ++c) {
        s(r, c) = exp2f(s(r, c) - base);
        row_sum[r] += s(r, c);
      }
    }

    Tensor rP_16 = convert<Element>(acc_s);
    Tensor rP = make_tensor(rP_16.data(), acc_as_a(acc_s.layout()));
    gemm_rs(acc_o, rP, rVt, lsVt, tiled_mma, copy_v);
  }

  // out = acc / l, staged in Q's shared memory (no longer read once every warp is past its
  // last GEMM) and written in 16-byte stores; lse = (m2 + log2 l) * ln 2.
  float* lse = p.lse + (static_cast<int64_t>(b) * p.H + h) * p.rows + row0;
  const bool self_only = p.k_self.ptr != nullptr && quad_sum(saw_live_key ? 1.0f : 0.0f) == 0.0f;
  Tensor sO_rc = rowcol_view(thr_mma.partition_C(sQ));
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float sum = quad_sum(row_sum[r]);
    const float inv = 1.0f / sum;
    const int row = get<0>(c_o(r, 0));
    if (row >= rows_valid) continue;
#pragma unroll
    for (int c = 0; c < size<1>(acc_o_rc); ++c) {
      const int col = get<1>(c_o(r, c));
      if (col >= p.D) continue;
      sO_rc(r, c) = self_only ? *element_ptr<Element>(p.v_self, b, row0 + row, h, col)
                              : Element(acc_o_rc(r, c) * inv);
    }
    if (tid % 4 == 0) lse[row] = (row_max[r] + log2f(sum)) * kLn2;
  }
  __syncthreads();
  store_tile<Traits>(sQ, gmem_tile<Element, kBlockM, kHeadDim>(p.out, b, h, row0), rows_valid, p.D,
                     tid);
}

template <int kHeadDim, DType kDType>
void run_forward(const AttentionParams& p, cudaStream_t stream) {
  using Tiles = ForwardTiles<kHeadDim>;
  using T = Traits<kHeadDim, element_t<kDType>>;
  auto kernel = attention_forward_kernel<T, Tiles>;
  static std::once_flag smem_allowed[kMaxDevices];  // per instantiation: its own kernel
  allow_dynamic_smem(smem_allowed, kernel, Tiles::kSmem);
  const int n_mblocks = (p.rows + Tiles::kBlockM - 1) / Tiles::kBlockM;
  kernel<<<p.B * p.H * n_mblocks, kTcThreads, Tiles::kSmem, stream>>>(p);
}

}  // namespace tc
}  // namespace memkernels
