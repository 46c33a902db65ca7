// Tensor-core forward, head-dim bucket 128, fp16: one instantiation per file so
// that the build parallelises and MEMKERNELS_HEAD_DIMS can leave buckets out.
#include "tc_forward.cuh"

namespace memkernels {
template <>
void run_tc_forward<128, DType::Float16>(const AttentionParams& params, cudaStream_t stream) {
  tc::run_forward<128, DType::Float16>(params, stream);
}
}  // namespace memkernels
