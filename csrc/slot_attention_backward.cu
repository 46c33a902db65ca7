// slot_attention backward, P recomputed from the saved lse over [self; tokens],
// delta = rowsum(dout * out) precomputed per slot row by launch_row_delta,
// c = scale (which already includes 1/tau):
//   p_self = exp(c q_i.k_i - lse_i),  p_j = exp(c q_i.k_tok_j - lse_i) (0 where masked)
//   ds_self = p_self (dout_i.v_i - delta_i),  ds_j = p_j (dout_i.v_tok_j - delta_i)
//   dq_i = c (ds_self k_i + sum_j ds_j k_tok_j),  dk_i = c ds_self q_i,  dv_i = p_self dout_i
//       (kernel 1: one warp per slot row)
//   dk_tok_j = c sum_i ds_ij q_i,  dv_tok_j = sum_i p_ij dout_i
//       (kernel 2: one warp per token row, looping over slots i = 0..K-1 in order;
//        masked tokens get exact zeros)
// Each output row is owned by one warp: no atomics, bitwise deterministic.
#include "common.cuh"

namespace memkernels {
namespace {

using namespace detail;

template <typename T, int NPL>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    slot_backward_slots_kernel(View4 dout, View4 q, View4 k, View4 v, View4 k_tok, View4 v_tok,
                               const bool* __restrict__ mask, int64_t mask_s0, int64_t mask_s1,
                               const float* __restrict__ lse, const float* __restrict__ delta,
                               View4 dq, View4 dk, View4 dv, int64_t B, int64_t K, int64_t L,
                               int64_t H, int D, float scale) {
  constexpr int G = group_size(NPL);
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= B * H * K) return;
  // row = (b * H + h) * K + i, the index into the (B, H, K) lse / delta
  const auto [b, h, i_slot] = split_head_row(row, H, K);

  const T* ktp = static_cast<const T*>(k_tok.ptr);
  const T* vtp = static_cast<const T*>(v_tok.ptr);
  float qr[NPL], dor[NPL], kr[NPL], acc[NPL];
  load_row<T, NPL>(qr, static_cast<const T*>(q.ptr) + row_offset(q, b, i_slot, h), q.s3, D, lane);
  load_row<T, NPL>(dor, static_cast<const T*>(dout.ptr) + row_offset(dout, b, i_slot, h), dout.s3,
                   D, lane);
  load_row<T, NPL>(kr, static_cast<const T*>(k.ptr) + row_offset(k, b, i_slot, h), k.s3, D, lane);
  const float lse_i = lse[row];
  const float delta_i = delta[row];

  // own key / value
  {
    float vr[NPL];
    load_row<T, NPL>(vr, static_cast<const T*>(v.ptr) + row_offset(v, b, i_slot, h), v.s3, D, lane);
    float dots[2] = {partial_dot<NPL>(qr, kr), partial_dot<NPL>(dor, vr)};
    warp_allreduce<2>(dots);
    const float p_self = expf(dots[0] * scale - lse_i);
    const float ds_self = p_self * (dots[1] - delta_i);
    float dk_row[NPL], dv_row[NPL];
#pragma unroll
    for (int d = 0; d < NPL; ++d) {
      dk_row[d] = scale * ds_self * qr[d];
      dv_row[d] = p_self * dor[d];
      acc[d] = ds_self * kr[d];
    }
    store_row<T, NPL>(static_cast<T*>(dk.ptr) + row_offset(dk, b, i_slot, h), dk.s3, dk_row, D,
                      lane);
    store_row<T, NPL>(static_cast<T*>(dv.ptr) + row_offset(dv, b, i_slot, h), dv.s3, dv_row, D,
                      lane);
  }

  // token keys / values
  for (int64_t j0 = 0; j0 < L; j0 += G) {
    float kt[G][NPL];
    bool valid[G];
    float dots[2 * G];  // [0, G): q_i . k_tok_j   [G, 2G): dout_i . v_tok_j
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t j = j0 + g;
      valid[g] = j < L && (mask == nullptr || mask[b * mask_s0 + j * mask_s1]);
      float vt[NPL];
      if (valid[g]) {
        load_row<T, NPL>(kt[g], ktp + row_offset(k_tok, b, j, h), k_tok.s3, D, lane);
        load_row<T, NPL>(vt, vtp + row_offset(v_tok, b, j, h), v_tok.s3, D, lane);
      } else {
#pragma unroll
        for (int d = 0; d < NPL; ++d) kt[g][d] = vt[d] = 0.0f;
      }
      dots[g] = partial_dot<NPL>(qr, kt[g]);
      dots[G + g] = partial_dot<NPL>(dor, vt);
    }
    warp_allreduce<2 * G>(dots);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (valid[g]) {
        const float p = expf(dots[g] * scale - lse_i);
        const float ds = p * (dots[G + g] - delta_i);
#pragma unroll
        for (int d = 0; d < NPL; ++d) acc[d] += ds * kt[g][d];
      }
    }
  }
#pragma unroll
  for (int d = 0; d < NPL; ++d) acc[d] *= scale;
  store_row<T, NPL>(static_cast<T*>(dq.ptr) + row_offset(dq, b, i_slot, h), dq.s3, acc, D, lane);
}

template <typename T, int NPL>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    slot_backward_tokens_kernel(View4 dout, View4 q, View4 k_tok, View4 v_tok,
                                const bool* __restrict__ mask, int64_t mask_s0, int64_t mask_s1,
                                const float* __restrict__ lse, const float* __restrict__ delta,
                                View4 dk_tok, View4 dv_tok, int64_t B, int64_t K, int64_t L,
                                int64_t H, int D, float scale) {
  constexpr int G = group_size(NPL);
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= B * H * L) return;
  // row = (b * H + h) * L + j
  const auto [b, h, j] = split_head_row(row, H, L);

  float dk_acc[NPL], dv_acc[NPL];
#pragma unroll
  for (int d = 0; d < NPL; ++d) dk_acc[d] = dv_acc[d] = 0.0f;

  const bool valid = mask == nullptr || mask[b * mask_s0 + j * mask_s1];
  if (valid) {  // warp-uniform; a masked token has p = 0 for every slot: zero gradients
    const T* qp = static_cast<const T*>(q.ptr);
    const T* dop = static_cast<const T*>(dout.ptr);
    const float* lse_bh = lse + (b * H + h) * K;
    const float* delta_bh = delta + (b * H + h) * K;
    float kt[NPL], vt[NPL];
    load_row<T, NPL>(kt, static_cast<const T*>(k_tok.ptr) + row_offset(k_tok, b, j, h), k_tok.s3, D,
                     lane);
    load_row<T, NPL>(vt, static_cast<const T*>(v_tok.ptr) + row_offset(v_tok, b, j, h), v_tok.s3, D,
                     lane);
    for (int64_t i0 = 0; i0 < K; i0 += G) {
      float qr[G][NPL], dor[G][NPL];
      float dots[2 * G];  // [0, G): q_i . k_tok_j   [G, 2G): dout_i . v_tok_j
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int64_t i = i0 + g;
        if (i < K) {
          load_row<T, NPL>(qr[g], qp + row_offset(q, b, i, h), q.s3, D, lane);
          load_row<T, NPL>(dor[g], dop + row_offset(dout, b, i, h), dout.s3, D, lane);
        } else {
#pragma unroll
          for (int d = 0; d < NPL; ++d) qr[g][d] = dor[g][d] = 0.0f;
        }
        dots[g] = partial_dot<NPL>(qr[g], kt);
        dots[G + g] = partial_dot<NPL>(dor[g], vt);
      }
      warp_allreduce<2 * G>(dots);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int64_t i = i0 + g;
        if (i < K) {
          const float p = expf(dots[g] * scale - lse_bh[i]);
          const float ds = p * (dots[G + g] - delta_bh[i]);
#pragma unroll
          for (int d = 0; d < NPL; ++d) {
            dk_acc[d] += ds * qr[g][d];
            dv_acc[d] += p * dor[g][d];
          }
        }
      }
    }
#pragma unroll
    for (int d = 0; d < NPL; ++d) dk_acc[d] *= scale;
  }
  store_row<T, NPL>(static_cast<T*>(dk_tok.ptr) + row_offset(dk_tok, b, j, h), dk_tok.s3, dk_acc, D,
                    lane);
  store_row<T, NPL>(static_cast<T*>(dv_tok.ptr) + row_offset(dv_tok, b, j, h), dv_tok.s3, dv_acc, D,
                    lane);
}

}  // namespace

void launch_slot_attention_backward_slots(DType dtype, View4 dout, View4 q, View4 k, View4 v,
                                          View4 k_tok, View4 v_tok, const bool* mask,
                                          int64_t mask_s0, int64_t mask_s1, const float* lse,
                                          const float* delta, View4 dq, View4 dk, View4 dv,
                                          int64_t B, int64_t K, int64_t L, int64_t H, int64_t D,
                                          float scale, cudaStream_t stream) {
  const dim3 grid(blocks_for_rows(B * H * K));
  const dim3 block(kWarpsPerBlock * kWarp);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    MEMKERNELS_DISPATCH_HEADDIM(D, [&] {
      slot_backward_slots_kernel<scalar_t, NPL>
          <<<grid, block, 0, stream>>>(dout, q, k, v, k_tok, v_tok, mask, mask_s0, mask_s1, lse,
                                       delta, dq, dk, dv, B, K, L, H, static_cast<int>(D), scale);
    });
  });
}

void launch_slot_attention_backward_tokens(DType dtype, View4 dout, View4 q, View4 k_tok,
                                           View4 v_tok, const bool* mask, int64_t mask_s0,
                                           int64_t mask_s1, const float* lse, const float* delta,
                                           View4 dk_tok, View4 dv_tok, int64_t B, int64_t K,
                                           int64_t L, int64_t H, int64_t D, float scale,
                                           cudaStream_t stream) {
  const dim3 grid(blocks_for_rows(B * H * L));
  const dim3 block(kWarpsPerBlock * kWarp);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    MEMKERNELS_DISPATCH_HEADDIM(D, [&] {
      slot_backward_tokens_kernel<scalar_t, NPL>
          <<<grid, block, 0, stream>>>(dout, q, k_tok, v_tok, mask, mask_s0, mask_s1, lse, delta,
                                       dk_tok, dv_tok, B, K, L, H, static_cast<int>(D), scale);
    });
  });
}

}  // namespace memkernels
