// memory_norm with 16-byte loads and stores, each row held in registers:
//   forward  x = m + bias, n = ||x|| (saved), out = x / max(n, eps)
//   backward dx = dy / eps where n < eps, else (dy - y (y . dy)) / n;
//            dm = dx, dbias[k] = sum over b of dx[b, k]
// A row of W elements is split over `tpr` threads (a multiple of 32, at most
// 256), each holding NV 16-byte vectors, interleaved so that a warp's loads are
// contiguous. The forward runs 256 / tpr rows per block; the backward runs one
// slot k per block with 256 / tpr groups taking the batch rows b = g, g + G, ...
// in turn, which sums dbias with no atomics and in a fixed order: each group's
// rows in order, then the groups in order. Row sums are a thread's elements in
// order, a warp butterfly, then the row's warps in order: bitwise reproducible.
// Streaming cache hints: m, dout, out are read once and the results written
// once (evict-first); the bias is read by every batch row (default caching).
#include "common.cuh"
#include "memory_norm_vectorized.h"

namespace memkernels {
namespace {

using namespace detail;

constexpr int kThreads = 256;

template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <typename T>
__device__ __forceinline__ void unpack(float (&dst)[kVec<T>], uint4 raw) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) dst[i] = to_float(e[i]);
}

template <typename T>
__device__ __forceinline__ uint4 pack(const float (&src)[kVec<T>]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) e[i] = from_float<T>(src[i]);
  return raw;
}

// Sum over the `tpr` threads of each row group, identical on all of them.
// `scratch` holds one float per warp of the block; every thread must call.
__device__ __forceinline__ float group_sum(float x, int tpr, float* scratch) {
  x = warp_allreduce1(x);
  const int warp = threadIdx.x / kWarp;
  __syncthreads();  // scratch may still be read by the previous call
  if (threadIdx.x % kWarp == 0) scratch[warp] = x;
  __syncthreads();
  const int warps_per_row = tpr / kWarp;
  const int first = warp / warps_per_row * warps_per_row;
  float total = 0.0f;
  for (int w = first; w < first + warps_per_row; ++w) total += scratch[w];
  return total;
}

template <typename T, int NV>
__global__ void __launch_bounds__(kThreads)
    norm_forward_vec_kernel(const T* __restrict__ m, int64_t m_s0, int64_t m_s1,
                            const T* __restrict__ bias, int64_t bias_s0, T* __restrict__ out,
                            float* __restrict__ norm, int64_t rows, int64_t K, int W, int tpr,
                            float eps) {
  constexpr int V = kVec<T>;
  __shared__ float scratch[kThreads / kWarp];
  const int lane = threadIdx.x % tpr;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / tpr) + threadIdx.x / tpr;
  const bool active = row < rows;  // inactive threads still join the block reduction
  const int64_t b = row / K, k = row % K;
  const T* mrow = m + b * m_s0 + k * m_s1;
  const T* brow = bias + k * bias_s0;

  float x[NV][V];
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int col = (i * tpr + lane) * V;
    if (active && col < W) {
      float mv[V], bv[V];
      unpack<T>(mv, __ldcs(reinterpret_cast<const uint4*>(mrow + col)));
      unpack<T>(bv, __ldg(reinterpret_cast<const uint4*>(brow + col)));
#pragma unroll
      for (int j = 0; j < V; ++j) {
        x[i][j] = mv[j] + bv[j];
        sq += x[i][j] * x[i][j];
      }
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) x[i][j] = 0.0f;
    }
  }
  const float n = sqrtf(group_sum(sq, tpr, scratch));
  if (!active) return;
  const float denom = n < eps ? eps : n;  // NaN norms propagate, as clamp_min does
  T* orow = out + row * W;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int col = (i * tpr + lane) * V;
    if (col >= W) continue;
#pragma unroll
    for (int j = 0; j < V; ++j) x[i][j] = x[i][j] / denom;
    __stcs(reinterpret_cast<uint4*>(orow + col), pack<T>(x[i]));
  }
  if (lane == 0) norm[row] = n;
}

template <typename T, int NV>
__global__ void __launch_bounds__(kThreads)
    norm_backward_vec_kernel(const T* __restrict__ dout, int64_t dout_s0, int64_t dout_s1,
                             const T* __restrict__ out, int64_t out_s0, int64_t out_s1,
                             const float* __restrict__ norm, T* __restrict__ dm,
                             T* __restrict__ dbias, int64_t B, int64_t K, int W, int tpr,
                             float eps) {
  constexpr int V = kVec<T>;
  __shared__ float scratch[kThreads / kWarp];
  extern __shared__ float partial[];  // W floats when the block has more than one group
  const int lane = threadIdx.x % tpr;
  const int group = threadIdx.x / tpr;
  const int groups = kThreads / tpr;
  const int64_t k = blockIdx.x;

  float acc[NV][V];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
#pragma unroll
    for (int j = 0; j < V; ++j) acc[i][j] = 0.0f;
  }
  for (int64_t b0 = 0; b0 < B; b0 += groups) {
    const int64_t b = b0 + group;
    const bool active = b < B;
    const T* dyrow = dout + b * dout_s0 + k * dout_s1;
    const T* yrow = out + b * out_s0 + k * out_s1;
    float y[NV][V], dy[NV][V];
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int col = (i * tpr + lane) * V;
      if (active && col < W) {
        unpack<T>(y[i], __ldcs(reinterpret_cast<const uint4*>(yrow + col)));
        unpack<T>(dy[i], __ldcs(reinterpret_cast<const uint4*>(dyrow + col)));
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) y[i][j] = dy[i][j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < V; ++j) dot += y[i][j] * dy[i][j];
    }
    dot = group_sum(dot, tpr, scratch);
    if (!active) continue;
    const float n = norm[b * K + k];
    T* dmrow = dm + (b * K + k) * W;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int col = (i * tpr + lane) * V;
      if (col >= W) continue;
      float dx[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        dx[j] = n < eps ? dy[i][j] / eps : (dy[i][j] - y[i][j] * dot) / n;
        acc[i][j] += dx[j];
      }
      __stcs(reinterpret_cast<uint4*>(dmrow + col), pack<T>(dx));
    }
  }
  // dbias: the groups' partial sums added in group order through shared memory.
  for (int g = 1; g < groups; ++g) {
    __syncthreads();
    if (group == g - 1) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int col = (i * tpr + lane) * V;
        if (col >= W) continue;
#pragma unroll
        for (int j = 0; j < V; ++j) partial[col + j] = acc[i][j];
      }
    }
    __syncthreads();
    if (group == g) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int col = (i * tpr + lane) * V;
        if (col >= W) continue;
#pragma unroll
        for (int j = 0; j < V; ++j) acc[i][j] = partial[col + j] + acc[i][j];
      }
    }
  }
  if (group != groups - 1) return;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    const int col = (i * tpr + lane) * V;
    if (col < W) __stcs(reinterpret_cast<uint4*>(dbias + k * W + col), pack<T>(acc[i]));
  }
}

// Threads per row and vectors per thread for W elements of `elem_bytes` bytes.
struct RowSplit {
  int tpr, nv;
};
RowSplit row_split(int64_t W, int elem_bytes) {
  const int64_t vectors = W * elem_bytes / 16;
  int tpr = kWarp;
  while (tpr < kThreads && tpr * kMaxNormVectors < vectors) tpr *= 2;
  int nv = 1;
  while (nv * tpr < vectors) nv *= 2;
  return {tpr, nv};
}

#define MEMKERNELS_DISPATCH_NV(nv, ...) \
  do {                                  \
    if ((nv) == 1) {                    \
      constexpr int NV = 1;             \
      __VA_ARGS__();                    \
    } else if ((nv) == 2) {             \
      constexpr int NV = 2;             \
      __VA_ARGS__();                    \
    } else if ((nv) == 4) {             \
      constexpr int NV = 4;             \
      __VA_ARGS__();                    \
    } else {                            \
      constexpr int NV = 8;             \
      __VA_ARGS__();                    \
    }                                   \
  } while (0)

}  // namespace

bool norm_vectorizable(const NormOperand* operands, int n_operands, int64_t W, int elem_bytes) {
  if (W * elem_bytes % 16 != 0 || W * elem_bytes > int64_t{16} * kMaxNormVectors * kThreads) {
    return false;
  }
  for (int i = 0; i < n_operands; ++i) {
    const NormOperand& o = operands[i];
    const auto address = reinterpret_cast<uintptr_t>(o.ptr);
    const bool rows_aligned = (o.s0 * elem_bytes) % 16 == 0 && (o.s1 * elem_bytes) % 16 == 0;
    if (o.last_stride != 1 || address % 16 != 0 || !rows_aligned) return false;
  }
  return true;
}

void launch_memory_norm_forward_vec(DType dtype, View3 m, const void* bias, int64_t bias_s0,
                                    void* out, float* norm, int64_t B, int64_t K, int64_t W,
                                    float eps, cudaStream_t stream) {
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    const RowSplit split = row_split(W, sizeof(scalar_t));
    const int64_t rows = B * K;
    const int rows_per_block = kThreads / split.tpr;
    const dim3 grid(static_cast<unsigned int>((rows + rows_per_block - 1) / rows_per_block));
    MEMKERNELS_DISPATCH_NV(split.nv, [&] {
      norm_forward_vec_kernel<scalar_t, NV><<<grid, kThreads, 0, stream>>>(
          static_cast<const scalar_t*>(m.ptr), m.s0, m.s1, static_cast<const scalar_t*>(bias),
          bias_s0, static_cast<scalar_t*>(out), norm, rows, K, static_cast<int>(W), split.tpr, eps);
    });
  });
}

void launch_memory_norm_backward_vec(DType dtype, View3 dout, View3 out, const float* norm,
                                     void* dm, void* dbias, int64_t B, int64_t K, int64_t W,
                                     float eps, cudaStream_t stream) {
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    const RowSplit split = row_split(W, sizeof(scalar_t));
    const size_t smem = split.tpr < kThreads ? static_cast<size_t>(W) * sizeof(float) : 0;
    MEMKERNELS_DISPATCH_NV(split.nv, [&] {
      norm_backward_vec_kernel<scalar_t, NV>
          <<<static_cast<unsigned int>(K), kThreads, smem, stream>>>(
              static_cast<const scalar_t*>(dout.ptr), dout.s0, dout.s1,
              static_cast<const scalar_t*>(out.ptr), out.s0, out.s1, norm,
              static_cast<scalar_t*>(dm), static_cast<scalar_t*>(dbias), B, K, static_cast<int>(W),
              split.tpr, eps);
    });
  });
}

}  // namespace memkernels
