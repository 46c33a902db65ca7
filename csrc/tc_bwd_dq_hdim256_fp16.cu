// Tensor-core backward dq/delta, head-dim bucket 256, fp16: one instantiation per file so
// that the build parallelises and MEMKERNELS_HEAD_DIMS can leave buckets out.
#include "tc_backward_dq.cuh"

namespace memkernels {
template <>
void run_tc_backward_dq<256, DType::Float16>(const AttentionParams& params, cudaStream_t stream) {
  tc::run_backward_dq<256, DType::Float16>(params, stream);
}
}  // namespace memkernels
