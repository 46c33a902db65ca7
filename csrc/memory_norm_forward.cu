// memory_norm forward: x = m[b, k] + bias[k];  norm = ||x||_2 (unclamped, saved);
// out = x / max(norm, eps)  (NaN norms propagate, as clamp_min does).
// One block of kNormThreads threads per row (b, k); the sum of squares is a
// fixed-order block reduction, and x is read twice (the second read hits cache).
#include "common.cuh"

namespace memkernels {
namespace {

using namespace detail;

constexpr int kNormThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    memory_norm_forward_kernel(View3 m, const T* __restrict__ bias, int64_t bias_s0,
                               int64_t bias_s1, View3 out, float* __restrict__ norm, int64_t K,
                               int64_t W, float eps) {
  __shared__ float scratch[kNormThreads / kWarp];
  const int64_t row = blockIdx.x;  // row = b * K + k
  const int64_t k = row % K;
  const int64_t b = row / K;
  const T* mrow = static_cast<const T*>(m.ptr) + b * m.s0 + k * m.s1;
  const T* brow = bias + k * bias_s0;

  float sq = 0.0f;
  for (int64_t w = threadIdx.x; w < W; w += blockDim.x) {
    const float x = to_float(mrow[w * m.s2]) + to_float(brow[w * bias_s1]);
    sq += x * x;
  }
  const float n = sqrtf(block_allreduce(sq, scratch));
  const float denom = n < eps ? eps : n;
  T* orow = static_cast<T*>(out.ptr) + b * out.s0 + k * out.s1;
  for (int64_t w = threadIdx.x; w < W; w += blockDim.x) {
    const float x = to_float(mrow[w * m.s2]) + to_float(brow[w * bias_s1]);
    orow[w * out.s2] = from_float<T>(x / denom);
  }
  if (threadIdx.x == 0) norm[row] = n;
}

}  // namespace

void launch_memory_norm_forward(DType dtype, View3 m, const void* bias, int64_t bias_s0,
                                int64_t bias_s1, View3 out, float* norm, int64_t B, int64_t K,
                                int64_t W, float eps, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(B * K));
  const dim3 block(kNormThreads);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    memory_norm_forward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        m, static_cast<const scalar_t*>(bias), bias_s0, bias_s1, out, norm, K, W, eps);
  });
}

}  // namespace memkernels
