// Tensor-core backward dk/dv, head-dim bucket 256, bf16: one instantiation per file so
// that the build parallelises and MEMKERNELS_HEAD_DIMS can leave buckets out.
#include "tc_backward_dkdv.cuh"

namespace memkernels {
template <>
void run_tc_backward_dkdv<256, DType::BFloat16>(const AttentionParams& params,
                                                cudaStream_t stream) {
  tc::run_backward_dkdv<256, DType::BFloat16>(params, stream);
}
}  // namespace memkernels
