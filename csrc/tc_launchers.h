// The per-(head-dim bucket, dtype) launchers of the tensor-core kernels: the
// templates, and a declaration of every explicit specialization, so that
// tc_dispatch.cu (which calls them) and csrc/tc_*_hdim*_*.cu (which define
// them, one per file) see the same declarations.
#pragma once

#include <cuda_runtime_api.h>

#include "attention.h"

namespace memkernels {

template <int kHeadDim, DType kDType>
void run_tc_forward(const AttentionParams& params, cudaStream_t stream);
template <int kHeadDim, DType kDType>
void run_tc_backward_dq(const AttentionParams& params, cudaStream_t stream);
template <int kHeadDim, DType kDType>
void run_tc_backward_dkdv(const AttentionParams& params, cudaStream_t stream);

#define MEMKERNELS_TC_LAUNCHERS(kHeadDim, kDType)                                                \
  template <>                                                                                    \
  void run_tc_forward<kHeadDim, kDType>(const AttentionParams& params, cudaStream_t stream);     \
  template <>                                                                                    \
  void run_tc_backward_dq<kHeadDim, kDType>(const AttentionParams& params, cudaStream_t stream); \
  template <>                                                                                    \
  void run_tc_backward_dkdv<kHeadDim, kDType>(const AttentionParams& params, cudaStream_t stream);

// Declared for every bucket; only those in MEMKERNELS_HEAD_DIMS are defined and called.
MEMKERNELS_TC_LAUNCHERS(64, DType::Float16)
MEMKERNELS_TC_LAUNCHERS(64, DType::BFloat16)
MEMKERNELS_TC_LAUNCHERS(128, DType::Float16)
MEMKERNELS_TC_LAUNCHERS(128, DType::BFloat16)
MEMKERNELS_TC_LAUNCHERS(256, DType::Float16)
MEMKERNELS_TC_LAUNCHERS(256, DType::BFloat16)

#undef MEMKERNELS_TC_LAUNCHERS

}  // namespace memkernels
