// Device helpers shared by the memkernels kernels: element conversion, strided
// row loads into per-lane registers, deterministic warp reductions, and the
// dtype / head-dim dispatch used by every launcher.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "memkernels.h"

namespace memkernels {
namespace detail {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// A warp's row in the (B, H, N) order of lse and delta: row = (b * H + h) * N + n.
struct HeadRow {
  int64_t b, h, n;
};
__device__ __forceinline__ HeadRow split_head_row(int64_t row, int64_t H, int64_t N) {
  const int64_t bh = row / N;
  return {bh / H, bh % H, row % N};
}

// Element offset of [i0, i1, i2, 0] in a View4.
__device__ __forceinline__ int64_t row_offset(const View4& t, int64_t i0, int64_t i1, int64_t i2) {
  return i0 * t.s0 + i1 * t.s1 + i2 * t.s2;
}

// Lane `lane` holds elements d = lane + 32 * i (i < NPL) of a length-D row; the
// elements past D are zero. Reads only d < D.
template <typename T, int NPL>
__device__ __forceinline__ void load_row(float (&r)[NPL], const T* base, int64_t sd, int D,
                                         int lane) {
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    const int d = lane + kWarp * i;
    r[i] = d < D ? to_float(base[d * sd]) : 0.0f;
  }
}

template <typename T, int NPL>
__device__ __forceinline__ void store_row(T* base, int64_t sd, const float (&r)[NPL], int D,
                                          int lane) {
#pragma unroll
  for (int i = 0; i < NPL; ++i) {
    const int d = lane + kWarp * i;
    if (d < D) base[d * sd] = from_float<T>(r[i]);
  }
}

template <int NPL>
__device__ __forceinline__ float partial_dot(const float (&a)[NPL], const float (&b)[NPL]) {
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < NPL; ++i) s += a[i] * b[i];
  return s;
}

// Butterfly all-reduce of N independent values over the warp. Every lane ends
// with the bitwise same sums (each step adds the same two partials, in either
// order), so the result is warp-uniform and deterministic.
template <int N>
__device__ __forceinline__ void warp_allreduce(float (&x)[N]) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
#pragma unroll
    for (int n = 0; n < N; ++n) x[n] += __shfl_xor_sync(kFullMask, x[n], offset);
  }
}

__device__ __forceinline__ float warp_allreduce1(float x) {
  float t[1] = {x};
  warp_allreduce<1>(t);
  return t[0];
}

// Block-wide sum of one value per thread, same result on every thread, fixed
// order (warp butterflies, then the warp sums added in warp order).
// `scratch` must hold blockDim.x / 32 floats; blockDim.x a multiple of 32.
__device__ __forceinline__ float block_allreduce(float x, float* scratch) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  x = warp_allreduce1(x);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < nwarps; ++w) total += scratch[w];
  return total;
}

// Warps per block in the attention kernels.
constexpr int kWarpsPerBlock = 4;
// Keys per step: 4, or 2 for the largest head-dim bucket (keeps registers < 255).
__host__ __device__ constexpr int group_size(int npl) { return npl >= 8 ? 2 : 4; }

inline unsigned int blocks_for_rows(int64_t rows) {
  return static_cast<unsigned int>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace detail
}  // namespace memkernels

// Calls body with `scalar_t` bound to the element type of `dtype`.
#define MEMKERNELS_DISPATCH_DTYPE(dtype, ...) \
  do {                                        \
    switch (dtype) {                          \
      case ::memkernels::DType::Float32: {    \
        using scalar_t = float;               \
        __VA_ARGS__();                        \
        break;                                \
      }                                       \
      case ::memkernels::DType::Float16: {    \
        using scalar_t = __half;              \
        __VA_ARGS__();                        \
        break;                                \
      }                                       \
      case ::memkernels::DType::BFloat16: {   \
        using scalar_t = __nv_bfloat16;       \
        __VA_ARGS__();                        \
        break;                                \
      }                                       \
    }                                         \
  } while (0)

// Calls body with constexpr int `NPL` = elements per lane for head dim D
// (buckets 32, 64, 128, 256: NPL = 1, 2, 4, 8). D <= 256 is checked by the caller.
#define MEMKERNELS_DISPATCH_HEADDIM(D, ...) \
  do {                                      \
    if ((D) <= 32) {                        \
      constexpr int NPL = 1;                \
      __VA_ARGS__();                        \
    } else if ((D) <= 64) {                 \
      constexpr int NPL = 2;                \
      __VA_ARGS__();                        \
    } else if ((D) <= 128) {                \
      constexpr int NPL = 4;                \
      __VA_ARGS__();                        \
    } else {                                \
      constexpr int NPL = 8;                \
      __VA_ARGS__();                        \
    }                                       \
  } while (0)
