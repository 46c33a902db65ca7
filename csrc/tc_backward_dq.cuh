// Tensor-core backward, part 1: delta, dq, and slot_attention's self-term gradients.
//
// One CTA of 4 warps owns kBlockM query rows of one (b, h); K and V blocks stream
// through shared memory. P is recomputed from the saved lse, dP = dO V^T, and
//   delta_i = sum_j P_ij dP_ij  (+ p_self dP_self for slot_attention)
// is accumulated in float32 from these unrounded products in a first pass over
// the key blocks: not rowsum(dO * O), whose 16-bit rounding of O swamps the
// gradient of a sharply peaked row. A second pass forms dS = P (dP - delta) and
// dq = scale * dS K. With a single key block the first pass's P and dP stay in
// registers and the second pass reuses them.
//
// delta is written out for the dk/dv kernel, which runs after this one. Each
// output row is owned by one CTA and reduced in a fixed order: deterministic.
#pragma once

#include "tc_common.cuh"

namespace memkernels {
namespace tc {

template <typename Traits, typename Tiles>
__global__ void __launch_bounds__(kTcThreads)
    attention_backward_dq_kernel(const AttentionParams p) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kBlockM = Tiles::kBlockM;
  constexpr int kBlockN = Tiles::kBlockN;

  extern __shared__ __align__(128) char smem[];
  const int n_mblocks = (p.rows + kBlockM - 1) / kBlockM;
  const BlockCoord at = block_coord(p.H, n_mblocks, 1);
  const int b = at.b, h = at.h, row0 = at.block * kBlockM;
  const int rows_valid = min(kBlockM, p.rows - row0);
  const int tid = threadIdx.x;

  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)),
                          typename Traits::template SmemLayout<kBlockM>{});
  Tensor sdO = make_tensor(sQ.data() + size(sQ), typename Traits::template SmemLayout<kBlockM>{});
  Tensor sK = make_tensor(sdO.data() + size(sdO), typename Traits::template SmemLayout<kBlockN>{});
  Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::template SmemLayout<kBlockN>{});
  Tensor sKt = make_tensor(sK.data(), typename Traits::template SmemLayoutT<kBlockN>{});
  Tensor sKtNoSwizzle =
      make_tensor(sK.data().get(), typename Traits::template SmemLayoutTNoSwizzle<kBlockN>{});

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor rQ = thr_mma.partition_fragment_A(sQ);
  Tensor rdO = thr_mma.partition_fragment_A(sdO);
  Tensor rK = thr_mma.partition_fragment_B(sK);
  Tensor rV = thr_mma.partition_fragment_B(sV);
  Tensor rKt = thr_mma.partition_fragment_B(sKtNoSwizzle);
  auto copy_a = make_tiled_copy_A(typename Traits::LdsmAtom{}, tiled_mma);
  auto copy_b = make_tiled_copy_B(typename Traits::LdsmAtom{}, tiled_mma);
  auto copy_bt = make_tiled_copy_B(typename Traits::LdsmAtomT{}, tiled_mma);
  Tensor lsQ = copy_a.get_thread_slice(tid).partition_S(sQ);
  Tensor lsdO = copy_a.get_thread_slice(tid).partition_S(sdO);
  Tensor lsK = copy_b.get_thread_slice(tid).partition_S(sK);
  Tensor lsV = copy_b.get_thread_slice(tid).partition_S(sV);
  Tensor lsKt = copy_bt.get_thread_slice(tid).partition_S(sKt);

  const int n_nblocks = (p.keys + kBlockN - 1) / kBlockN;
  auto load_kv = [&](int nb) {
    const int key0 = nb * kBlockN;
    load_tile<Traits>(gmem_tile<Element, kBlockN, kHeadDim>(p.k, b, h, key0), sK, p.keys - key0,
                      p.D);
    load_tile<Traits>(gmem_tile<Element, kBlockN, kHeadDim>(p.v, b, h, key0), sV, p.keys - key0,
                      p.D);
    cute::cp_async_fence();
  };
  load_tile<Traits>(gmem_tile<Element, kBlockM, kHeadDim>(p.q, b, h, row0), sQ, rows_valid, p.D);
  load_tile<Traits>(gmem_tile<Element, kBlockM, kHeadDim>(p.dout, b, h, row0), sdO, rows_valid,
                    p.D);
  cute::cp_async_fence();
  load_kv(0);

  Tensor acc_dq = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
  clear(acc_dq);
  Tensor acc_dq_rc = rowcol_view(acc_dq);
  Tensor c_o =
      rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{})));
  Tensor c_s =
      rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
  constexpr int kRows = decltype(size<0>(acc_dq_rc))::value;

  // lse in base 2 per row; rows past the end get 0 (finite, never stored).
  const int64_t stat0 = (static_cast<int64_t>(b) * p.H + h) * p.rows + row0;
  float lse2[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = get<0>(c_o(r, 0));
    lse2[r] = row < rows_valid ? p.lse[stat0 + row] * kLog2e : 0.0f;
  }

  Tensor acc_s = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor acc_dp = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor s = rowcol_view(acc_s);
  Tensor dp = rowcol_view(acc_dp);
  bool saw_live_key = false;  // among this thread's columns, over every key block
  // P (in place of S) and dP for key block nb; K[nb], V[nb] must be in flight or landed.
  auto probs_and_dp = [&](int nb) {
    clear(acc_s);
    clear(acc_dp);
    cp_async_wait<0>();
    __syncthreads();
    gemm_ss(acc_s, rQ, rK, lsQ, lsK, tiled_mma, copy_a, copy_b);
    gemm_ss(acc_dp, rdO, rV, lsdO, lsV, tiled_mma, copy_a, copy_b);
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
      for (int r = 0; r < kRows; ++r)
        s(r, c) = live ? exp2f(s(r, c) * p.scale_log2 - lse2[r]) : 0.0f;
    }
  };

  // Pass 1: delta over every key block.
  float delta_part[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) delta_part[r] = 0.0f;
  for (int nb = 0; nb < n_nblocks; ++nb) {
    probs_and_dp(nb);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int c = 0; c < size<1>(s); ++c) delta_part[r] += s(r, c) * dp(r, c);
    }
    if (n_nblocks > 1) {
      __syncthreads();                           // every thread is done with K[nb], V[nb]
      load_kv(nb + 1 < n_nblocks ? nb + 1 : 0);  // after the last block, block 0 for pass 2
    }
  }

  // slot_attention's own term: p_self = exp2(s_self - lse), dP_self = dO . v_self.
  Tensor sQ_rc = rowcol_view(thr_mma.partition_C(sQ));
  Tensor sdO_rc = rowcol_view(thr_mma.partition_C(sdO));
  const bool slot = p.k_self.ptr != nullptr;
  // A slot whose tokens are all padding has P = 1 on its own term, exactly: exp2(s_self - lse)
  // would carry lse's rounding into dq and dk_self (instead of 0) and dv_self (instead of dO).
  // The mask is per batch, so the quad's columns (every key) decide for all of its rows.
  const bool self_only = slot && quad_sum(saw_live_key ? 1.0f : 0.0f) == 0.0f;
  float delta[kRows], p_self[kRows], ds_self[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float tokens = quad_sum(delta_part[r]);
    p_self[r] = 0.0f;
    ds_self[r] = 0.0f;
    delta[r] = tokens;
    if (slot) {
      const int row = get<0>(c_o(r, 0));
      float qk = 0.0f, dov = 0.0f;
      if (row < rows_valid) {
#pragma unroll
        for (int c = 0; c < size<1>(acc_dq_rc); ++c) {
          const int col = get<1>(c_o(r, c));
          if (col < p.D) {
            qk += static_cast<float>(sQ_rc(r, c)) *
                  static_cast<float>(*element_ptr<Element>(p.k_self, b, row0 + row, h, col));
            dov += static_cast<float>(sdO_rc(r, c)) *
                   static_cast<float>(*element_ptr<Element>(p.v_self, b, row0 + row, h, col));
          }
        }
      }
      qk = quad_sum(qk);
      dov = quad_sum(dov);
      p_self[r] = self_only ? 1.0f : exp2f(qk * p.scale_log2 - lse2[r]);
      delta[r] = tokens + p_self[r] * dov;
      ds_self[r] = p_self[r] * (dov - delta[r]);
    }
    const int row = get<0>(c_o(r, 0));
    if (tid % 4 == 0 && row < rows_valid) p.delta[stat0 + row] = delta[r];
  }

  // Pass 2: dS = P (dP - delta), dq += dS K.
  for (int nb = 0; nb < n_nblocks; ++nb) {
    if (n_nblocks > 1) probs_and_dp(nb);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int c = 0; c < size<1>(s); ++c) s(r, c) = s(r, c) * (dp(r, c) - delta[r]);
    }
    Tensor rdS_16 = convert<Element>(acc_s);
    Tensor rdS = make_tensor(rdS_16.data(), acc_as_a(acc_s.layout()));
    gemm_rs(acc_dq, rdS, rKt, lsKt, tiled_mma, copy_bt);
    if (n_nblocks > 1 && nb + 1 < n_nblocks) {
      __syncthreads();  // every thread is done with K[nb], V[nb]
      load_kv(nb + 1);
    }
  }

  // The outputs leave through shared memory in 16-byte stores: slot_attention's
  // dk_self = scale ds_self q and dv_self = p_self dO in place of the Q and dO they are made
  // of (each element by the thread that reads it), then dq = scale (dS K + ds_self k_self)
  // in place of Q. Rows and columns past the end are never stored.
  __syncthreads();  // every warp is past its last read of Q and dO
  if (slot) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int c = 0; c < size<1>(acc_dq_rc); ++c) {
        sQ_rc(r, c) = Element(p.scale * ds_self[r] * static_cast<float>(sQ_rc(r, c)));
        sdO_rc(r, c) = Element(p_self[r] * static_cast<float>(sdO_rc(r, c)));
      }
    }
    __syncthreads();
    store_tile<Traits>(sQ, gmem_tile<Element, kBlockM, kHeadDim>(p.dk_self, b, h, row0), rows_valid,
                       p.D, tid);
    store_tile<Traits>(sdO, gmem_tile<Element, kBlockM, kHeadDim>(p.dv_self, b, h, row0),
                       rows_valid, p.D, tid);
    __syncthreads();  // dk_self has left sQ
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = get<0>(c_o(r, 0));
#pragma unroll
    for (int c = 0; c < size<1>(acc_dq_rc); ++c) {
      const int col = get<1>(c_o(r, c));
      float dq = acc_dq_rc(r, c);
      if (slot && row < rows_valid && col < p.D) {
        dq +=
            ds_self[r] * static_cast<float>(*element_ptr<Element>(p.k_self, b, row0 + row, h, col));
      }
      sQ_rc(r, c) = Element(p.scale * dq);
    }
  }
  __syncthreads();
  store_tile<Traits>(sQ, gmem_tile<Element, kBlockM, kHeadDim>(p.dq, b, h, row0), rows_valid, p.D,
                     tid);
}

template <int kHeadDim, DType kDType>
void run_backward_dq(const AttentionParams& p, cudaStream_t stream) {
  using Tiles = BackwardDqTiles<kHeadDim>;
  using T = Traits<kHeadDim, element_t<kDType>>;
  auto kernel = attention_backward_dq_kernel<T, Tiles>;
  static std::once_flag smem_allowed[kMaxDevices];  // per instantiation: its own kernel
  allow_dynamic_smem(smem_allowed, kernel, Tiles::kSmem);
  const int n_mblocks = (p.rows + Tiles::kBlockM - 1) / Tiles::kBlockM;
  kernel<<<p.B * p.H * n_mblocks, kTcThreads, Tiles::kSmem, stream>>>(p);
}

}  // namespace tc
}  // namespace memkernels
