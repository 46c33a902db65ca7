// Host interface of the vectorized memory_norm kernels (memory_norm_vectorized.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "memkernels.h"

namespace memkernels {

// 16-byte vectors a thread holds per row: rows up to 256 threads x 8 vectors
// (16384 16-bit or 8192 float32 elements) take the vectorized kernels.
constexpr int kMaxNormVectors = 8;

// A (B, K, W) or (K, W) operand: pointer, strides of its leading dims, last-dim stride.
struct NormOperand {
  const void* ptr;
  int64_t s0, s1, last_stride;
};

// Whether every operand has unit last-dim stride and 16-byte aligned rows, and a
// row of W elements fits the vectorized kernels. Otherwise the scalar kernels run.
bool norm_vectorizable(const NormOperand* operands, int n_operands, int64_t W, int elem_bytes);

// out (B, K, W) and norm (B, K) contiguous; bias rows at bias_s0 (unit last stride).
void launch_memory_norm_forward_vec(DType dtype, View3 m, const void* bias, int64_t bias_s0,
                                    void* out, float* norm, int64_t B, int64_t K, int64_t W,
                                    float eps, cudaStream_t stream);

// dm (B, K, W) and dbias (K, W) contiguous, one pass over dout and out.
void launch_memory_norm_backward_vec(DType dtype, View3 dout, View3 out, const float* norm,
                                     void* dm, void* dbias, int64_t B, int64_t K, int64_t W,
                                     float eps, cudaStream_t stream);

}  // namespace memkernels
