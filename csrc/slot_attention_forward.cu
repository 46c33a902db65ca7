// slot_attention forward: slot i attends over [its own key; the L token keys]:
//   s_self = scale * q_i . k_i,  s_j = scale * q_i . k_tok_j  (-inf where mask[b, j] is False)
//   out_i  = softmax([s_self, s_0..s_{L-1}]) @ [v_i; v_tok]
// One warp per slot row (b, i, h), lanes hold the head dim in registers. The
// online-softmax state starts at the slot's own term (m = s_self, l = 1,
// acc = v_i) and token keys stream in groups of G. A masked token contributes
// nothing at all (no load, p = 0), so an all-masked slot keeps m = s_self,
// l = 1, acc = v_i and writes out == v exactly (lse == s_self).
#include "common.cuh"

namespace memkernels {
namespace {

using namespace detail;

template <typename T, int NPL>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    slot_attention_forward_kernel(View4 q, View4 k, View4 v, View4 k_tok, View4 v_tok,
                                  const bool* __restrict__ mask, int64_t mask_s0, int64_t mask_s1,
                                  View4 out, float* __restrict__ lse, int64_t B, int64_t K,
                                  int64_t L, int64_t H, int D, float scale) {
  constexpr int G = group_size(NPL);
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= B * H * K) return;
  // row = (b * H + h) * K + i, the index into the (B, H, K) lse
  const auto [b, h, i_slot] = split_head_row(row, H, K);

  const T* ktp = static_cast<const T*>(k_tok.ptr);
  const T* vtp = static_cast<const T*>(v_tok.ptr);
  float qr[NPL], acc[NPL];
  load_row<T, NPL>(qr, static_cast<const T*>(q.ptr) + row_offset(q, b, i_slot, h), q.s3, D, lane);
  {
    float kr[NPL];
    load_row<T, NPL>(kr, static_cast<const T*>(k.ptr) + row_offset(k, b, i_slot, h), k.s3, D, lane);
    load_row<T, NPL>(acc, static_cast<const T*>(v.ptr) + row_offset(v, b, i_slot, h), v.s3, D,
                     lane);
    float dot[1] = {partial_dot<NPL>(qr, kr)};
    warp_allreduce<1>(dot);
    float m0 = dot[0] * scale;
    // state: m = s_self, l = 1, acc = v_i
    float m = m0;
    float lsum = 1.0f;

    for (int64_t j0 = 0; j0 < L; j0 += G) {
      float s[G];
      unsigned valid = 0;  // bit g: token j0 + g is real (a bool array here went to the stack)
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int64_t j = j0 + g;
        if (j < L && (mask == nullptr || mask[b * mask_s0 + j * mask_s1])) valid |= 1u << g;
        float kt[NPL];
        if (valid >> g & 1u) {
          load_row<T, NPL>(kt, ktp + row_offset(k_tok, b, j, h), k_tok.s3, D, lane);
        } else {
#pragma unroll
          for (int d = 0; d < NPL; ++d) kt[d] = 0.0f;
        }
        s[g] = partial_dot<NPL>(qr, kt);
      }
      warp_allreduce<G>(s);
      float m_new = m;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (valid >> g & 1u) {
          s[g] *= scale;
          m_new = fmaxf(m_new, s[g]);
        }
      }
      if (valid == 0) continue;  // warp-uniform: an all-masked group leaves the state untouched
      const float alpha = expf(m - m_new);
      lsum *= alpha;
#pragma unroll
      for (int d = 0; d < NPL; ++d) acc[d] *= alpha;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (valid >> g & 1u) {
          const float p = expf(s[g] - m_new);
          lsum += p;
          float vt[NPL];
          load_row<T, NPL>(vt, vtp + row_offset(v_tok, b, j0 + g, h), v_tok.s3, D, lane);
#pragma unroll
          for (int d = 0; d < NPL; ++d) acc[d] += p * vt[d];
        }
      }
      m = m_new;
    }

    // With no token seen, lsum == 1 and the scaling by 1 / 1 == 1 keeps acc == v bitwise.
    const float inv = 1.0f / lsum;
#pragma unroll
    for (int d = 0; d < NPL; ++d) acc[d] *= inv;
    store_row<T, NPL>(static_cast<T*>(out.ptr) + row_offset(out, b, i_slot, h), out.s3, acc, D,
                      lane);
    if (lane == 0) lse[row] = m + logf(lsum);
  }
}

}  // namespace

void launch_slot_attention_forward(DType dtype, View4 q, View4 k, View4 v, View4 k_tok, View4 v_tok,
                                   const bool* mask, int64_t mask_s0, int64_t mask_s1, View4 out,
                                   float* lse, int64_t B, int64_t K, int64_t L, int64_t H,
                                   int64_t D, float scale, cudaStream_t stream) {
  const dim3 grid(blocks_for_rows(B * H * K));
  const dim3 block(kWarpsPerBlock * kWarp);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    MEMKERNELS_DISPATCH_HEADDIM(D, [&] {
      slot_attention_forward_kernel<scalar_t, NPL>
          <<<grid, block, 0, stream>>>(q, k, v, k_tok, v_tok, mask, mask_s0, mask_s1, out, lse, B,
                                       K, L, H, static_cast<int>(D), scale);
    });
  });
}

}  // namespace memkernels
