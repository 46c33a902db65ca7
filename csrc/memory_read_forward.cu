// memory_read forward: out[b,l,h] = softmax_j(scale * q[b,l,h] . k[b,j,h]) @ v[b,:,h].
//
// One warp per query row (b, l, h); the warps of a block hold consecutive rows
// of the same (b, h), so they share K/V through the L1/L2 caches. Each lane
// holds the head-dim elements d = lane + 32 i in registers. Keys are streamed in
// groups of G = group_size(NPL) with an online softmax (running max m, running sum l, acc),
// so any K >= 1 works. Saves lse = m + log(l) in float32.
#include "common.cuh"

namespace memkernels {
namespace {

using namespace detail;

template <typename T, int NPL>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    memory_read_forward_kernel(View4 q, View4 k, View4 v, View4 out, float* __restrict__ lse,
                               int64_t B, int64_t L, int64_t K, int64_t H, int D, float scale) {
  constexpr int G = group_size(NPL);
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= B * H * L) return;  // whole warp leaves together
  // row = (b * H + h) * L + l
  const auto [b, h, l] = split_head_row(row, H, L);

  const T* qp = static_cast<const T*>(q.ptr);
  const T* kp = static_cast<const T*>(k.ptr);
  const T* vp = static_cast<const T*>(v.ptr);

  float qr[NPL];
  load_row<T, NPL>(qr, qp + row_offset(q, b, l, h), q.s3, D, lane);

  float m = -INFINITY;
  float lsum = 0.0f;
  float acc[NPL];
#pragma unroll
  for (int i = 0; i < NPL; ++i) acc[i] = 0.0f;

  for (int64_t j0 = 0; j0 < K; j0 += G) {
    float s[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t j = j0 + g;
      float kr[NPL];
      if (j < K) {
        load_row<T, NPL>(kr, kp + row_offset(k, b, j, h), k.s3, D, lane);
      } else {
#pragma unroll
        for (int i = 0; i < NPL; ++i) kr[i] = 0.0f;
      }
      s[g] = partial_dot<NPL>(qr, kr);
    }
    warp_allreduce<G>(s);
    float m_new = m;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      s[g] = (j0 + g < K) ? s[g] * scale : -INFINITY;
      m_new = fmaxf(m_new, s[g]);
    }
    // j0 < K, so s[0] is a real score and m_new is finite for finite inputs.
    const float alpha = expf(m - m_new);
    lsum *= alpha;
#pragma unroll
    for (int i = 0; i < NPL; ++i) acc[i] *= alpha;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int64_t j = j0 + g;
      if (j < K) {
        const float p = expf(s[g] - m_new);
        lsum += p;
        float vr[NPL];
        load_row<T, NPL>(vr, vp + row_offset(v, b, j, h), v.s3, D, lane);
#pragma unroll
        for (int i = 0; i < NPL; ++i) acc[i] += p * vr[i];
      }
    }
    m = m_new;
  }

  const float inv = 1.0f / lsum;
#pragma unroll
  for (int i = 0; i < NPL; ++i) acc[i] *= inv;
  T* op = static_cast<T*>(out.ptr);
  store_row<T, NPL>(op + row_offset(out, b, l, h), out.s3, acc, D, lane);
  if (lane == 0) lse[row] = m + logf(lsum);  // lse is contiguous (B, H, L): index == row
}

}  // namespace

void launch_memory_read_forward(DType dtype, View4 q, View4 k, View4 v, View4 out, float* lse,
                                int64_t B, int64_t L, int64_t K, int64_t H, int64_t D, float scale,
                                cudaStream_t stream) {
  const int64_t rows = B * H * L;
  const dim3 grid(blocks_for_rows(rows));
  const dim3 block(kWarpsPerBlock * kWarp);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    MEMKERNELS_DISPATCH_HEADDIM(D, [&] {
      memory_read_forward_kernel<scalar_t, NPL>
          <<<grid, block, 0, stream>>>(q, k, v, out, lse, B, L, K, H, static_cast<int>(D), scale);
    });
  });
}

}  // namespace memkernels
