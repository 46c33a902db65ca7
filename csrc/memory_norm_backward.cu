// memory_norm backward, y = out, dy = dout, n = the saved unclamped norm:
//   dx = dy / eps                   where n < eps (the clamped rows)
//   dx = (dy - y (y . dy)) / n      otherwise
//   dm = dx,   dbias[k] = sum_{b = 0..B-1} dx[b, k]  (in that order)
// Kernel 1: one block per row (b, k): rowdot = y . dy (fixed-order block
// reduction, saved to a float32 scratch) and dm. Kernel 2: one thread per bias
// element (k, w), recomputing dx from rowdot and looping over the batch in order.
// No atomics: bitwise deterministic.
#include "common.cuh"

namespace memkernels {
namespace {

using namespace detail;

constexpr int kNormThreads = 256;

__device__ __forceinline__ float norm_grad(float dy, float y, float dot, float n, float eps) {
  return n < eps ? dy / eps : (dy - y * dot) / n;
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    memory_norm_backward_rows_kernel(View3 dout, View3 out, const float* __restrict__ norm,
                                     View3 dm, float* __restrict__ rowdot, int64_t K, int64_t W,
                                     float eps) {
  __shared__ float scratch[kNormThreads / kWarp];
  const int64_t row = blockIdx.x;  // row = b * K + k
  const int64_t k = row % K;
  const int64_t b = row / K;
  const T* dyrow = static_cast<const T*>(dout.ptr) + b * dout.s0 + k * dout.s1;
  const T* yrow = static_cast<const T*>(out.ptr) + b * out.s0 + k * out.s1;

  float part = 0.0f;
  for (int64_t w = threadIdx.x; w < W; w += blockDim.x) {
    part += to_float(yrow[w * out.s2]) * to_float(dyrow[w * dout.s2]);
  }
  const float dot = block_allreduce(part, scratch);
  const float n = norm[row];
  T* dmrow = static_cast<T*>(dm.ptr) + b * dm.s0 + k * dm.s1;
  for (int64_t w = threadIdx.x; w < W; w += blockDim.x) {
    const float dx =
        norm_grad(to_float(dyrow[w * dout.s2]), to_float(yrow[w * out.s2]), dot, n, eps);
    dmrow[w * dm.s2] = from_float<T>(dx);
  }
  if (threadIdx.x == 0) rowdot[row] = dot;
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    memory_norm_backward_bias_kernel(View3 dout, View3 out, const float* __restrict__ norm,
                                     const float* __restrict__ rowdot, T* __restrict__ dbias,
                                     int64_t B, int64_t K, int64_t W, float eps) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= K * W) return;
  const int64_t k = idx / W;
  const int64_t w = idx % W;
  const T* dyp = static_cast<const T*>(dout.ptr);
  const T* yp = static_cast<const T*>(out.ptr);
  float acc = 0.0f;
  for (int64_t b = 0; b < B; ++b) {
    const float dy = to_float(dyp[b * dout.s0 + k * dout.s1 + w * dout.s2]);
    const float y = to_float(yp[b * out.s0 + k * out.s1 + w * out.s2]);
    acc += norm_grad(dy, y, rowdot[b * K + k], norm[b * K + k], eps);
  }
  dbias[idx] = from_float<T>(acc);  // dbias is contiguous (K, W)
}

}  // namespace

void launch_memory_norm_backward_rows(DType dtype, View3 dout, View3 out, const float* norm,
                                      View3 dm, float* rowdot, int64_t B, int64_t K, int64_t W,
                                      float eps, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(B * K));
  const dim3 block(kNormThreads);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    memory_norm_backward_rows_kernel<scalar_t>
        <<<grid, block, 0, stream>>>(dout, out, norm, dm, rowdot, K, W, eps);
  });
}

void launch_memory_norm_backward_bias(DType dtype, View3 dout, View3 out, const float* norm,
                                      const float* rowdot, void* dbias, int64_t B, int64_t K,
                                      int64_t W, float eps, cudaStream_t stream) {
  const int64_t n = K * W;
  const dim3 grid(static_cast<unsigned int>((n + kNormThreads - 1) / kNormThreads));
  const dim3 block(kNormThreads);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    memory_norm_backward_bias_kernel<scalar_t><<<grid, block, 0, stream>>>(
        dout, out, norm, rowdot, static_cast<scalar_t*>(dbias), B, K, W, eps);
  });
}

}  // namespace memkernels
