// Host interface of the tensor-core attention kernels (no CuTe, no torch).
//
// One set of kernels serves memory_read and slot_attention. Rows are the
// queries (memory_read: tokens; slot_attention: slots); keys are what every row
// streams over (memory_read: slots; slot_attention: tokens). slot_attention
// adds each row's own key/value (k_self, v_self: the same layout as q) and an
// optional key padding mask; memory_read leaves them null.
//
// Every tensor is (B, rows-or-keys, H, D) with element strides for the first
// three dims and a unit last-dim stride; the path selection (attention_path)
// guarantees 16-byte aligned rows before any of these kernels is chosen.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "memkernels.h"

namespace memkernels {

struct TensorRef {
  void* ptr = nullptr;
  int64_t batch_stride = 0, row_stride = 0, head_stride = 0;
  int64_t dim_stride = 1;  // the kernels assume 1: only tensor_core_refusal reads it
};

struct AttentionParams {
  int B = 0, H = 0, rows = 0, keys = 0, D = 0;
  float scale = 0.0f;       // already includes 1/tau for slot_attention
  float scale_log2 = 0.0f;  // scale * log2(e): the kernels work in base 2

  TensorRef q, k, v;           // q: rows; k, v: keys
  TensorRef k_self, v_self;    // slot_attention's own key/value per row; ptr null otherwise
  const bool* mask = nullptr;  // (B, keys), True = real key; null = no padding
  int64_t mask_batch_stride = 0, mask_key_stride = 0;

  // forward outputs; lse is read back by the backward. (B, H, rows) float32, natural log.
  TensorRef out;
  float* lse = nullptr;

  // backward: dout (rows); delta (B, H, rows) = sum_j P_ij dP_ij including the self term,
  // written by the dq kernel and read by the dk/dv kernel.
  TensorRef dout;
  float* delta = nullptr;
  TensorRef dq, dk, dv;        // dq: rows; dk, dv: keys
  TensorRef dk_self, dv_self;  // slot_attention only
};

// What the tensor-core decision needs to know of a device.
struct DeviceTraits {
  int cc_major = 0, cc_minor = 0;  // compute capability
  int smem_optin = 0;              // cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes
};

// The traits of CUDA device `device`, queried once per device (all zero if the query fails,
// which refuses the tensor-core kernels).
DeviceTraits device_traits(int device);

// Why a device of this compute capability cannot run the tensor-core kernels (they use
// cp.async and the m16n8k16 MMA of sm_80); nullptr from sm_80 on.
const char* tensor_core_arch_refusal(int cc_major, int cc_minor);

// Why a call takes the scalar kernels instead of the tensor-core ones; nullptr
// when the tensor-core kernels run. `tensors` are every strided operand of the
// op (inputs, dout), `device` the GPU they are on. A pure function of its
// arguments (and of the buckets compiled in), so that it is testable for any GPU.
const char* tensor_core_refusal(DType dtype, int64_t B, int64_t H, int64_t rows, int64_t keys,
                                int64_t D, const TensorRef* tensors, int n_tensors,
                                const DeviceTraits& device);

// The head-dim buckets compiled into this build (MEMKERNELS_HEAD_DIMS), e.g. "64,128,256".
const char* tensor_core_head_dims();

// The launchers (params fully set, tensor_core_refusal() == nullptr); per (head-dim bucket,
// dtype) they call the run_tc_* of csrc/tc_launchers.h.
void launch_tc_forward(DType dtype, const AttentionParams& params, cudaStream_t stream);
void launch_tc_backward(DType dtype, const AttentionParams& params, cudaStream_t stream);

}  // namespace memkernels
