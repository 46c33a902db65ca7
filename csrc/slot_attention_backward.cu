// slot_attention backward, P recomputed from the saved lse over [self; tokens]
// and divided by its recomputed row sum, delta = sum_j P dP in float32 from P
// itself (never from the output rounded to the input dtype; docs/SPEC.md),
// c = scale (which already includes 1/tau):
//   p_self = e_self / Z,  p_j = e_j / Z  with e = exp(c q_i.k - lse_i), Z = e_self + sum_j e_j
//       (p_j = 0 where masked)
//   delta_i = p_self dout_i.v_i + sum_j p_j dout_i.v_tok_j
//   ds_self = p_self (dout_i.v_i - delta_i),  ds_j = p_j (dout_i.v_tok_j - delta_i)
//   dq_i = c (ds_self k_i + sum_j ds_j k_tok_j),  dk_i = c ds_self q_i,  dv_i = p_self dout_i
//       (kernel 1: one warp per slot row, two passes over the tokens; writes delta and Z)
//   dk_tok_j = c sum_i ds_ij q_i,  dv_tok_j = sum_i p_ij dout_i
//       (kernel 2: one warp per token row, looping over slots i = 0..K-1 in order;
//        masked tokens get exact zeros)
// A slot whose tokens are all padding has Z = e_self, so p_self = e_self / e_self = 1,
// delta = dout.v exactly: dq = dk = 0 and dv = dout bit for bit, whatever lse's rounding.
// Each output row is owned by one warp: no atomics, bitwise deterministic.
#include "common.cuh"

namespace memkernels {
namespace {

using namespace detail;

// Tokens j0 .. j0 + G - 1 of (b, h) against one slot row: kt gets the token keys (zeros
// where masked or past L), valid bit g whether token j0 + g is real, dots[g] = q . k_tok_j
// and dots[G + g] = dout . v_tok_j, summed over the warp.
template <typename T, int NPL, int G>
__device__ __forceinline__ unsigned token_group_dots(
    float (&kt)[G][NPL], float (&dots)[2 * G], const float (&qr)[NPL], const float (&dor)[NPL],
    const View4& k_tok, const View4& v_tok, const bool* mask, int64_t mask_s0, int64_t mask_s1,
    int64_t b, int64_t h, int64_t j0, int64_t L, int D, int lane) {
  unsigned valid = 0;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int64_t j = j0 + g;
    if (j < L && (mask == nullptr || mask[b * mask_s0 + j * mask_s1])) valid |= 1u << g;
    float vt[NPL];
    if (valid >> g & 1u) {
      load_row<T, NPL>(kt[g], static_cast<const T*>(k_tok.ptr) + row_offset(k_tok, b, j, h),
                       k_tok.s3, D, lane);
      load_row<T, NPL>(vt, static_cast<const T*>(v_tok.ptr) + row_offset(v_tok, b, j, h), v_tok.s3,
                       D, lane);
    } else {
#pragma unroll
      for (int d = 0; d < NPL; ++d) kt[g][d] = vt[d] = 0.0f;
    }
    dots[g] = partial_dot<NPL>(qr, kt[g]);
    dots[G + g] = partial_dot<NPL>(dor, vt);
  }
  warp_allreduce<2 * G>(dots);
  return valid;
}

template <typename T, int NPL>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    slot_backward_slots_kernel(View4 dout, View4 q, View4 k, View4 v, View4 k_tok, View4 v_tok,
                               const bool* __restrict__ mask, int64_t mask_s0, int64_t mask_s1,
                               const float* __restrict__ lse, float* __restrict__ delta,
                               float* __restrict__ p_sum, View4 dq, View4 dk, View4 dv, int64_t B,
                               int64_t K, int64_t L, int64_t H, int D, float scale) {
  constexpr int G = group_size(NPL);
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= B * H * K) return;
  // row = (b * H + h) * K + i, the index into the (B, H, K) lse / delta / p_sum
  const auto [b, h, i_slot] = split_head_row(row, H, K);

  float qr[NPL], dor[NPL], kr[NPL], acc[NPL];
  load_row<T, NPL>(qr, static_cast<const T*>(q.ptr) + row_offset(q, b, i_slot, h), q.s3, D, lane);
  load_row<T, NPL>(dor, static_cast<const T*>(dout.ptr) + row_offset(dout, b, i_slot, h), dout.s3,
                   D, lane);
  load_row<T, NPL>(kr, static_cast<const T*>(k.ptr) + row_offset(k, b, i_slot, h), k.s3, D, lane);
  const float lse_i = lse[row];

  // own key / value: e_self and dP_self
  float self_dots[2];
  {
    float vr[NPL];
    load_row<T, NPL>(vr, static_cast<const T*>(v.ptr) + row_offset(v, b, i_slot, h), v.s3, D, lane);
    self_dots[0] = partial_dot<NPL>(qr, kr);
    self_dots[1] = partial_dot<NPL>(dor, vr);
    warp_allreduce<2>(self_dots);
  }
  const float e_self = expf(self_dots[0] * scale - lse_i);

  // Pass 1 over the tokens: their share of the row sum Z and of sum P dP (unnormalised).
  float tokens_e = 0.0f, tokens_e_dp = 0.0f;
  for (int64_t j0 = 0; j0 < L; j0 += G) {
    float kt[G][NPL], dots[2 * G];
    const unsigned valid = token_group_dots<T, NPL, G>(kt, dots, qr, dor, k_tok, v_tok, mask,
                                                       mask_s0, mask_s1, b, h, j0, L, D, lane);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (valid >> g & 1u) {
        const float e = expf(dots[g] * scale - lse_i);
        tokens_e += e;
        tokens_e_dp += e * dots[G + g];
      }
    }
  }
  const float z = e_self + tokens_e;
  const float p_self = e_self / z;
  const float delta_i = p_self * self_dots[1] + tokens_e_dp / z;
  const float ds_self = p_self * (self_dots[1] - delta_i);
  {
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

  // Pass 2 over the tokens: dq's token terms.
  for (int64_t j0 = 0; j0 < L; j0 += G) {
    float kt[G][NPL], dots[2 * G];
    const unsigned valid = token_group_dots<T, NPL, G>(kt, dots, qr, dor, k_tok, v_tok, mask,
                                                       mask_s0, mask_s1, b, h, j0, L, D, lane);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (valid >> g & 1u) {
        const float p = expf(dots[g] * scale - lse_i) / z;
        const float ds = p * (dots[G + g] - delta_i);
#pragma unroll
        for (int d = 0; d < NPL; ++d) acc[d] += ds * kt[g][d];
      }
    }
  }
#pragma unroll
  for (int d = 0; d < NPL; ++d) acc[d] *= scale;
  store_row<T, NPL>(static_cast<T*>(dq.ptr) + row_offset(dq, b, i_slot, h), dq.s3, acc, D, lane);
  if (lane == 0) {
    delta[row] = delta_i;
    p_sum[row] = z;
  }
}

template <typename T, int NPL>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    slot_backward_tokens_kernel(View4 dout, View4 q, View4 k_tok, View4 v_tok,
                                const bool* __restrict__ mask, int64_t mask_s0, int64_t mask_s1,
                                const float* __restrict__ lse, const float* __restrict__ delta,
                                const float* __restrict__ p_sum, View4 dk_tok, View4 dv_tok,
                                int64_t B, int64_t K, int64_t L, int64_t H, int D, float scale) {
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
    const float* p_sum_bh = p_sum + (b * H + h) * K;
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
          const float p = expf(dots[g] * scale - lse_bh[i]) / p_sum_bh[i];
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
                                          float* delta, float* p_sum, View4 dq, View4 dk, View4 dv,
                                          int64_t B, int64_t K, int64_t L, int64_t H, int64_t D,
                                          float scale, cudaStream_t stream) {
  const dim3 grid(blocks_for_rows(B * H * K));
  const dim3 block(kWarpsPerBlock * kWarp);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    MEMKERNELS_DISPATCH_HEADDIM(D, [&] {
      slot_backward_slots_kernel<scalar_t, NPL><<<grid, block, 0, stream>>>(
          dout, q, k, v, k_tok, v_tok, mask, mask_s0, mask_s1, lse, delta, p_sum, dq, dk, dv, B, K,
          L, H, static_cast<int>(D), scale);
    });
  });
}

void launch_slot_attention_backward_tokens(DType dtype, View4 dout, View4 q, View4 k_tok,
                                           View4 v_tok, const bool* mask, int64_t mask_s0,
                                           int64_t mask_s1, const float* lse, const float* delta,
                                           const float* p_sum, View4 dk_tok, View4 dv_tok,
                                           int64_t B, int64_t K, int64_t L, int64_t H, int64_t D,
                                           float scale, cudaStream_t stream) {
  const dim3 grid(blocks_for_rows(B * H * L));
  const dim3 block(kWarpsPerBlock * kWarp);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    MEMKERNELS_DISPATCH_HEADDIM(D, [&] {
      slot_backward_tokens_kernel<scalar_t, NPL><<<grid, block, 0, stream>>>(
          dout, q, k_tok, v_tok, mask, mask_s0, mask_s1, lse, delta, p_sum, dk_tok, dv_tok, B, K, L,
          H, static_cast<int>(D), scale);
    });
  });
}

}  // namespace memkernels
