// Tensor-core backward, part 2: dk and dv of the streamed keys (memory_read's
// slots, slot_attention's tokens), after the dq kernel has written delta.
//
// One CTA of 4 warps owns kBlockN key rows of one (b, h) (and, above head dim
// 128, one half of the output columns) and streams the query blocks in order.
// It computes the transposed products directly, so that P^T and dS^T come out
// of the MMAs already in the layout of the next MMA's A operand:
//   S^T = K Q^T,  P^T = exp2(S^T * scale * log2 e - lse * log2 e),  dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta),  dV += P^T dO,  dK += scale * dS^T Q.
// Padded keys get P^T = dS^T = 0: exact zero gradients. Each output row is
// owned by one CTA and summed over query blocks in order: deterministic.
#pragma once

#include "tc_common.cuh"

namespace memkernels {
namespace tc {

template <typename Traits, typename Tiles>
__global__ void __launch_bounds__(kTcThreads)
    attention_backward_dkdv_kernel(const AttentionParams p) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  constexpr int kBlockN = Tiles::kBlockN;  // key rows
  constexpr int kBlockM = Tiles::kBlockM;  // queries per block
  constexpr int kOutDim = Tiles::kOutDim;

  extern __shared__ __align__(128) char smem[];
  const int n_nblocks = (p.keys + kBlockN - 1) / kBlockN;
  const BlockCoord at = block_coord(p.H, n_nblocks, Tiles::kSplits);
  const int b = at.b, h = at.h, key0 = at.block * kBlockN, col0 = at.split * kOutDim;
  const int keys_valid = min(kBlockN, p.keys - key0);
  const int tid = threadIdx.x;

  Tensor sK = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)),
                          typename Traits::template SmemLayout<kBlockN>{});
  Tensor sV = make_tensor(sK.data() + size(sK), typename Traits::template SmemLayout<kBlockN>{});
  Tensor sQ = make_tensor(sV.data() + size(sV), typename Traits::template SmemLayout<kBlockM>{});
  Tensor sdO = make_tensor(sQ.data() + size(sQ), typename Traits::template SmemLayout<kBlockM>{});
  float* s_lse2 =
      reinterpret_cast<float*>(smem + (2 * kBlockN + 2 * kBlockM) * kHeadDim * sizeof(Element));
  float* s_delta = s_lse2 + kBlockM;
  // Q and dO read transposed, (kHeadDim x kBlockM), restricted to this CTA's output columns.
  // The column offset is a whole number of 64-wide swizzle atoms, so the swizzle is unchanged.
  Tensor sQt = local_tile(make_tensor(sQ.data(), typename Traits::template SmemLayoutT<kBlockM>{}),
                          Shape<Int<kOutDim>, Int<kBlockM>>{}, make_coord(at.split, 0));
  Tensor sdOt =
      local_tile(make_tensor(sdO.data(), typename Traits::template SmemLayoutT<kBlockM>{}),
                 Shape<Int<kOutDim>, Int<kBlockM>>{}, make_coord(at.split, 0));
  Tensor sTNoSwizzle =
      make_tensor(sQ.data().get(), make_layout(Shape<Int<kOutDim>, Int<kBlockM>>{}, GenRowMajor{}));

  typename Traits::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor rK = thr_mma.partition_fragment_A(sK);
  Tensor rV = thr_mma.partition_fragment_A(sV);
  Tensor rQ = thr_mma.partition_fragment_B(sQ);
  Tensor rdO = thr_mma.partition_fragment_B(sdO);
  Tensor rT = thr_mma.partition_fragment_B(sTNoSwizzle);
  auto copy_a = make_tiled_copy_A(typename Traits::LdsmAtom{}, tiled_mma);
  auto copy_b = make_tiled_copy_B(typename Traits::LdsmAtom{}, tiled_mma);
  auto copy_bt = make_tiled_copy_B(typename Traits::LdsmAtomT{}, tiled_mma);
  Tensor lsK = copy_a.get_thread_slice(tid).partition_S(sK);
  Tensor lsV = copy_a.get_thread_slice(tid).partition_S(sV);
  Tensor lsQ = copy_b.get_thread_slice(tid).partition_S(sQ);
  Tensor lsdO = copy_b.get_thread_slice(tid).partition_S(sdO);
  Tensor lsQt = copy_bt.get_thread_slice(tid).partition_S(sQt);
  Tensor lsdOt = copy_bt.get_thread_slice(tid).partition_S(sdOt);

  load_tile<Traits>(gmem_tile<Element, kBlockN, kHeadDim>(p.k, b, h, key0), sK, keys_valid, p.D);
  load_tile<Traits>(gmem_tile<Element, kBlockN, kHeadDim>(p.v, b, h, key0), sV, keys_valid, p.D);
  cute::cp_async_fence();

  Tensor acc_dk = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kOutDim>>{});
  Tensor acc_dv = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kOutDim>>{});
  clear(acc_dk);
  clear(acc_dv);
  Tensor c_st =
      rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{})));
  constexpr int kRows = decltype(size<0>(c_st))::value;

  // Keys past the end and padded tokens contribute nothing.
  bool key_live[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int key = key0 + get<0>(c_st(r, 0));
    key_live[r] = key < p.keys &&
                  (p.mask == nullptr ||
                   p.mask[b * p.mask_batch_stride + static_cast<int64_t>(key) * p.mask_key_stride]);
  }

  const int64_t stat0 = (static_cast<int64_t>(b) * p.H + h) * p.rows;
  const int n_mblocks = (p.rows + kBlockM - 1) / kBlockM;
  for (int mb = 0; mb < n_mblocks; ++mb) {
    const int q0 = mb * kBlockM;
    const int q_valid = min(kBlockM, p.rows - q0);
    __syncthreads();  // every thread is done with the previous Q, dO, lse, delta
    load_tile<Traits>(gmem_tile<Element, kBlockM, kHeadDim>(p.q, b, h, q0), sQ, q_valid, p.D);
    load_tile<Traits>(gmem_tile<Element, kBlockM, kHeadDim>(p.dout, b, h, q0), sdO, q_valid, p.D);
    cute::cp_async_fence();
    // Queries past the end: lse = +inf makes P^T exactly 0.
    for (int i = tid; i < kBlockM; i += kTcThreads) {
      s_lse2[i] = i < q_valid ? p.lse[stat0 + q0 + i] * kLog2e : INFINITY;
      s_delta[i] = i < q_valid ? p.delta[stat0 + q0 + i] : 0.0f;
    }
    cp_async_wait<0>();
    __syncthreads();

    Tensor acc_st = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kBlockM>>{});
    Tensor acc_dpt = partition_fragment_C(tiled_mma, Shape<Int<kBlockN>, Int<kBlockM>>{});
    clear(acc_st);
    clear(acc_dpt);
    gemm_ss(acc_st, rK, rQ, lsK, lsQ, tiled_mma, copy_a, copy_b);
    gemm_ss(acc_dpt, rV, rdO, lsV, lsdO, tiled_mma, copy_a, copy_b);

    Tensor pt = rowcol_view(acc_st);
    Tensor dpt = rowcol_view(acc_dpt);
#pragma unroll
    for (int c = 0; c < size<1>(pt); ++c) {
      const int i = get<1>(c_st(0, c));
      const float lse2 = s_lse2[i];
      const float delta = s_delta[i];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float prob = key_live[r] ? exp2f(pt(r, c) * p.scale_log2 - lse2) : 0.0f;
        pt(r, c) = prob;
        dpt(r, c) = key_live[r] ? prob * (dpt(r, c) - delta) : 0.0f;
      }
    }
    Tensor rPt_16 = convert<Element>(acc_st);
    Tensor rPt = make_tensor(rPt_16.data(), acc_as_a(acc_st.layout()));
    gemm_rs(acc_dv, rPt, rT, lsdOt, tiled_mma, copy_bt);
    Tensor rdSt_16 = convert<Element>(acc_dpt);
    Tensor rdSt = make_tensor(rdSt_16.data(), acc_as_a(acc_dpt.layout()));
    gemm_rs(acc_dk, rdSt, rT, lsQt, tiled_mma, copy_bt);
  }

  // dk and dv leave through shared memory (K's and V's, this CTA's columns of them) in
  // 16-byte stores. Rows and columns past the end are never stored.
  Tensor sdK = local_tile(sK, Shape<Int<kBlockN>, Int<kOutDim>>{}, make_coord(0, at.split));
  Tensor sdV = local_tile(sV, Shape<Int<kBlockN>, Int<kOutDim>>{}, make_coord(0, at.split));
  Tensor sdK_rc = rowcol_view(thr_mma.partition_C(sdK));
  Tensor sdV_rc = rowcol_view(thr_mma.partition_C(sdV));
  Tensor dk_rc = rowcol_view(acc_dk);
  Tensor dv_rc = rowcol_view(acc_dv);
  __syncthreads();  // every warp is past its last read of K and V
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int c = 0; c < size<1>(dk_rc); ++c) {
      sdK_rc(r, c) = Element(p.scale * dk_rc(r, c));
      sdV_rc(r, c) = Element(dv_rc(r, c));
    }
  }
  __syncthreads();
  store_tile<Traits>(sdK, gmem_tile<Element, kBlockN, kOutDim>(p.dk, b, h, key0, col0), keys_valid,
                     p.D - col0, tid);
  store_tile<Traits>(sdV, gmem_tile<Element, kBlockN, kOutDim>(p.dv, b, h, key0, col0), keys_valid,
                     p.D - col0, tid);
}

template <int kHeadDim, DType kDType>
void run_backward_dkdv(const AttentionParams& p, cudaStream_t stream) {
  using Tiles = BackwardDkdvTiles<kHeadDim>;
  using T = Traits<kHeadDim, element_t<kDType>>;
  auto kernel = attention_backward_dkdv_kernel<T, Tiles>;
  static std::once_flag smem_allowed[kMaxDevices];  // per instantiation: its own kernel
  allow_dynamic_smem(smem_allowed, kernel, Tiles::kSmem);
  const int n_nblocks = (p.keys + Tiles::kBlockN - 1) / Tiles::kBlockN;
  kernel<<<p.B * p.H * n_nblocks * Tiles::kSplits, kTcThreads, Tiles::kSmem, stream>>>(p);
}

}  // namespace tc
}  // namespace memkernels
