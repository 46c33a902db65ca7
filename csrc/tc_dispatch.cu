// Which attention kernels run (tensor-core or scalar), and the tensor-core
// launchers over the head-dim buckets and dtypes compiled into this build.
// The buckets are chosen at build time (MEMKERNELS_HEAD_DIMS, see
// memkernels/_cuda_build.py), which defines MEMKERNELS_TC_HDIM<n> for each.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "attention.h"
#include "tc_config.h"
#include "tc_launchers.h"

namespace memkernels {
namespace {

constexpr int kBuckets[] = {
#ifdef MEMKERNELS_TC_HDIM64
    64,
#endif
#ifdef MEMKERNELS_TC_HDIM128
    128,
#endif
#ifdef MEMKERNELS_TC_HDIM256
    256,
#endif
    0,  // end marker (keeps the array non-empty when no bucket is compiled)
};

// The smallest compiled bucket that holds D, or 0.
int bucket_for(int64_t D) {
  for (int bucket : kBuckets) {
    if (bucket != 0 && D <= bucket) return bucket;
  }
  return 0;
}

template <int kHeadDim>
constexpr int smem_need() {
  return std::max({ForwardTiles<kHeadDim>::kSmem, BackwardDqTiles<kHeadDim>::kSmem,
                   BackwardDkdvTiles<kHeadDim>::kSmem});
}

int smem_need(int bucket) {
  return bucket == 64 ? smem_need<64>() : bucket == 128 ? smem_need<128>() : smem_need<256>();
}

constexpr int kMaxDevices = 64;

DeviceTraits query_device_traits(int device) {
  DeviceTraits traits;
  if (cudaDeviceGetAttribute(&traits.cc_major, cudaDevAttrComputeCapabilityMajor, device) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&traits.cc_minor, cudaDevAttrComputeCapabilityMinor, device) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&traits.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    cudaGetLastError();  // clear the error: the scalar path will run
    return DeviceTraits{};
  }
  return traits;
}

bool rows_aligned(const TensorRef& t, int64_t D) {
  const auto address = reinterpret_cast<uintptr_t>(t.ptr);
  return (t.dim_stride == 1 || D == 1) && address % 16 == 0 && t.batch_stride % 8 == 0 &&
         t.row_stride % 8 == 0 && t.head_stride % 8 == 0;
}

template <int kHeadDim>
void forward_bucket(DType dtype, const AttentionParams& p, cudaStream_t stream) {
  if (dtype == DType::Float16) {
    run_tc_forward<kHeadDim, DType::Float16>(p, stream);
  } else {
    run_tc_forward<kHeadDim, DType::BFloat16>(p, stream);
  }
}

template <int kHeadDim>
void backward_bucket(DType dtype, const AttentionParams& p, cudaStream_t stream) {
  if (dtype == DType::Float16) {
    run_tc_backward_dq<kHeadDim, DType::Float16>(p, stream);
    run_tc_backward_dkdv<kHeadDim, DType::Float16>(p, stream);
  } else {
    run_tc_backward_dq<kHeadDim, DType::BFloat16>(p, stream);
    run_tc_backward_dkdv<kHeadDim, DType::BFloat16>(p, stream);
  }
}

// Calls f(std::integral_constant<int, bucket>) for the compiled bucket that holds D.
template <typename F>
void with_bucket(int64_t D, F&& f) {
  switch (bucket_for(D)) {
#ifdef MEMKERNELS_TC_HDIM64
    case 64:
      f(std::integral_constant<int, 64>{});
      break;
#endif
#ifdef MEMKERNELS_TC_HDIM128
    case 128:
      f(std::integral_constant<int, 128>{});
      break;
#endif
#ifdef MEMKERNELS_TC_HDIM256
    case 256:
      f(std::integral_constant<int, 256>{});
      break;
#endif
    default:
      break;  // unreachable: tensor_core_refusal() refused this head dim
  }
}

}  // namespace

const char* tensor_core_head_dims() {
  return ""
#ifdef MEMKERNELS_TC_HDIM64
         "64,"
#endif
#ifdef MEMKERNELS_TC_HDIM128
         "128,"
#endif
#ifdef MEMKERNELS_TC_HDIM256
         "256,"
#endif
      ;
}

DeviceTraits device_traits(int device) {
  static std::once_flag queried[kMaxDevices];
  static DeviceTraits traits[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) return query_device_traits(device);
  std::call_once(queried[device], [device] { traits[device] = query_device_traits(device); });
  return traits[device];
}

const char* tensor_core_arch_refusal(int cc_major, int cc_minor) {
  if (cc_major == 0) return "the GPU's compute capability could not be queried";
  if (cc_major * 10 + cc_minor >= 80) return nullptr;
  return "the GPU is older than sm_80 (compute capability 8.0): the tensor-core kernels use "
         "cp.async and the m16n8k16 MMA, which it does not have";
}

const char* tensor_core_refusal(DType dtype, int64_t B, int64_t H, int64_t rows, int64_t keys,
                                int64_t D, const TensorRef* tensors, int n_tensors,
                                const DeviceTraits& device) {
  if (dtype == DType::Float32) {
    return "float32 runs on the scalar kernels (the tensor-core kernels take float16 and "
           "bfloat16)";
  }
  if (const char* why = tensor_core_arch_refusal(device.cc_major, device.cc_minor)) return why;
  if (D % 8 != 0)
    return "the head dim is not a multiple of 8 (the tensor-core kernels load 16-byte rows)";
  const int bucket = bucket_for(D);
  if (bucket == 0) {
    return "this build has no tensor-core kernel for this head dim (see MEMKERNELS_HEAD_DIMS and "
           "the CUTLASS headers at build time)";
  }
  for (int i = 0; i < n_tensors; ++i) {
    if (!rows_aligned(tensors[i], D)) {
      return "an operand's rows are not 16-byte aligned (a last-dim stride other than 1, or a "
             "pointer or stride that is not a multiple of 8 elements)";
    }
  }
  if (device.smem_optin < smem_need(bucket)) {
    return "the device's shared-memory opt-in limit is below what the tensor-core tiles need";
  }
  // Flattened grids: (b, h, row block) and (b, h, key block, column half).
  const int64_t blocks =
      B * H * std::max((rows + kTcRows - 1) / kTcRows, 2 * ((keys + kTcRows - 1) / kTcRows));
  if (blocks > INT_MAX) return "the grid would exceed 2^31 - 1 blocks";
  return nullptr;
}

void launch_tc_forward(DType dtype, const AttentionParams& p, cudaStream_t stream) {
  with_bucket(p.D, [&](auto head_dim) { forward_bucket<head_dim.value>(dtype, p, stream); });
}

void launch_tc_backward(DType dtype, const AttentionParams& p, cudaStream_t stream) {
  with_bucket(p.D, [&](auto head_dim) { backward_bucket<head_dim.value>(dtype, p, stream); });
}

}  // namespace memkernels
