// delta[b, h, r] = rowsum(dout * out) over the head dim, in float32: the
// softmax-backward correction shared by memory_read and slot_attention.
// One warp per row (b, r, h); rows are numbered (b * H + h) * R + r so the
// float32 result is written contiguously as (B, H, R).
#include "common.cuh"

namespace memkernels {
namespace {

using namespace detail;

template <typename T, int NPL>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarp)
    row_delta_kernel(View4 dout, View4 out, float* __restrict__ delta, int64_t B, int64_t R,
                     int64_t H, int D) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= B * H * R) return;
  const auto [b, h, r] = split_head_row(row, H, R);
  float a[NPL], o[NPL];
  load_row<T, NPL>(a, static_cast<const T*>(dout.ptr) + row_offset(dout, b, r, h), dout.s3, D,
                   lane);
  load_row<T, NPL>(o, static_cast<const T*>(out.ptr) + row_offset(out, b, r, h), out.s3, D, lane);
  const float s = warp_allreduce1(partial_dot<NPL>(a, o));
  if (lane == 0) delta[row] = s;
}

}  // namespace

void launch_row_delta(DType dtype, View4 dout, View4 out, float* delta, int64_t B, int64_t R,
                      int64_t H, int64_t D, cudaStream_t stream) {
  const dim3 grid(blocks_for_rows(B * H * R));
  const dim3 block(kWarpsPerBlock * kWarp);
  MEMKERNELS_DISPATCH_DTYPE(dtype, [&] {
    MEMKERNELS_DISPATCH_HEADDIM(D, [&] {
      row_delta_kernel<scalar_t, NPL>
          <<<grid, block, 0, stream>>>(dout, out, delta, B, R, H, static_cast<int>(D));
    });
  });
}

}  // namespace memkernels
