// Host-side interface of the memkernels CUDA kernels.
//
// Everything here is plain C++ (no torch types): tensors are raw pointers plus
// int64 strides counted in elements, sizes are int64, the element type is a
// DType tag. Each launcher enqueues exactly ONE kernel on `stream` and returns;
// the caller checks the launch (C10_CUDA_KERNEL_LAUNCH_CHECK in bindings.cpp).
// Launchers never launch an empty grid: callers skip them when there is no work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace memkernels {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// A 4-d tensor view (dims 0..3 = batch, row, head, head-dim), strides in elements.
struct View4 {
  void* ptr;
  int64_t s0, s1, s2, s3;
};

// A 3-d tensor view (batch, row, width), strides in elements.
struct View3 {
  void* ptr;
  int64_t s0, s1, s2;
};

// Largest head dim the attention kernels take.
constexpr int64_t kMaxHeadDim = 256;

// ---------------------------------------------------------------------------
// memory_read: q (B, L, H, D), k/v (B, K, H, D); out (B, L, H, D); lse (B, H, L) float32.
void launch_memory_read_forward(DType dtype, View4 q, View4 k, View4 v, View4 out, float* lse,
                                int64_t B, int64_t L, int64_t K, int64_t H, int64_t D, float scale,
                                cudaStream_t stream);

// dq (B, L, H, D): one warp per query row, two passes over the K slots. Also writes the
// per-row statistics the dk/dv kernel reads, float32 contiguous (B, H, L): delta = sum_j P dP
// and p_sum, the row sum of exp(scale q.k - lse) that P is divided by.
void launch_memory_read_backward_dq(DType dtype, View4 dout, View4 q, View4 k, View4 v,
                                    const float* lse, float* delta, float* p_sum, View4 dq,
                                    int64_t B, int64_t L, int64_t K, int64_t H, int64_t D,
                                    float scale, cudaStream_t stream);

// dk, dv (B, K, H, D): one warp per memory slot row, loops over the L tokens in order; delta
// and p_sum from launch_memory_read_backward_dq.
void launch_memory_read_backward_dkdv(DType dtype, View4 dout, View4 q, View4 k, View4 v,
                                      const float* lse, const float* delta, const float* p_sum,
                                      View4 dk, View4 dv, int64_t B, int64_t L, int64_t K,
                                      int64_t H, int64_t D, float scale, cudaStream_t stream);

// ---------------------------------------------------------------------------
// slot_attention: q/k/v (B, K, H, D), k_tok/v_tok (B, L, H, D), mask: bool (B, L) or
// nullptr (mask_s0/mask_s1 element strides); out (B, K, H, D); lse (B, H, K) float32.
void launch_slot_attention_forward(DType dtype, View4 q, View4 k, View4 v, View4 k_tok, View4 v_tok,
                                   const bool* mask, int64_t mask_s0, int64_t mask_s1, View4 out,
                                   float* lse, int64_t B, int64_t K, int64_t L, int64_t H,
                                   int64_t D, float scale, cudaStream_t stream);

// dq, dk, dv (B, K, H, D): one warp per slot row, two passes over the tokens. Also writes
// delta and p_sum (B, H, K) float32 contiguous over [self; tokens], for the token kernel.
void launch_slot_attention_backward_slots(DType dtype, View4 dout, View4 q, View4 k, View4 v,
                                          View4 k_tok, View4 v_tok, const bool* mask,
                                          int64_t mask_s0, int64_t mask_s1, const float* lse,
                                          float* delta, float* p_sum, View4 dq, View4 dk, View4 dv,
                                          int64_t B, int64_t K, int64_t L, int64_t H, int64_t D,
                                          float scale, cudaStream_t stream);

// dk_tok, dv_tok (B, L, H, D): one warp per token row, loops over the K slots in order;
// delta and p_sum from launch_slot_attention_backward_slots.
void launch_slot_attention_backward_tokens(DType dtype, View4 dout, View4 q, View4 k_tok,
                                           View4 v_tok, const bool* mask, int64_t mask_s0,
                                           int64_t mask_s1, const float* lse, const float* delta,
                                           const float* p_sum, View4 dk_tok, View4 dv_tok,
                                           int64_t B, int64_t K, int64_t L, int64_t H, int64_t D,
                                           float scale, cudaStream_t stream);

// ---------------------------------------------------------------------------
// memory_norm: m (B, K, W), bias (K, W) with strides (bias_s0, bias_s1);
// out (B, K, W); norm (B, K) float32 contiguous, the unclamped row L2 norm.
void launch_memory_norm_forward(DType dtype, View3 m, const void* bias, int64_t bias_s0,
                                int64_t bias_s1, View3 out, float* norm, int64_t B, int64_t K,
                                int64_t W, float eps, cudaStream_t stream);

// dm (B, K, W) and rowdot (B, K) float32 scratch = sum_w y * dy (used by the dbias kernel).
void launch_memory_norm_backward_rows(DType dtype, View3 dout, View3 out, const float* norm,
                                      View3 dm, float* rowdot, int64_t B, int64_t K, int64_t W,
                                      float eps, cudaStream_t stream);

// dbias (K, W) contiguous = sum over b = 0, 1, ..., B-1 (in that order) of dx[b].
void launch_memory_norm_backward_bias(DType dtype, View3 dout, View3 out, const float* norm,
                                      const float* rowdot, void* dbias, int64_t B, int64_t K,
                                      int64_t W, float eps, cudaStream_t stream);

}  // namespace memkernels
