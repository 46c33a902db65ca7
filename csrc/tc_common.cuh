// CuTe pieces shared by the tensor-core attention kernels: the MMA and copy
// types per (head-dim bucket, element type), global->shared tile loads with
// cp.async, shared->register GEMMs, and the quad reductions of row statistics.
//
// Layout conventions: an MMA accumulator for a (rows x cols) tile is viewed as
// (2 rows, 2*MMA_N cols) per thread (rowcol view): lane t of a warp holds rows
// t/4 and t/4 + 8 of its warp's 16, and 2 adjacent columns of every 8, so the
// 4 lanes of a quad together hold whole rows. Row reductions are a thread's own
// columns in order, then xor-shuffles over the quad: a fixed order, so every
// result is bitwise reproducible.
#pragma once

#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include <cmath>
#include <cute/tensor.hpp>
#include <mutex>
#include <type_traits>

#include "attention.h"
#include "tc_config.h"
#include "tc_launchers.h"

namespace memkernels {
namespace tc {

using namespace cute;

constexpr int kMaxDevices = 64;

// Lets `kernel` take `bytes` of dynamic shared memory (above the default 48 KiB) on the
// current device. The attribute belongs to a (kernel, device) pair and costs a driver call,
// so it is set once per pair: `once` holds the calling launcher's flags, one per device
// (devices past kMaxDevices set it on every launch). A failure shows at the launch check.
template <typename Kernel>
void allow_dynamic_smem(std::once_flag (&once)[kMaxDevices], Kernel kernel, int bytes) {
  if (bytes <= 48 * 1024) return;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return;
  const auto set = [&] {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  };
  if (device >= 0 && device < kMaxDevices) {
    std::call_once(once[device], set);
  } else {
    set();
  }
}

template <DType kDType>
using element_t =
    std::conditional_t<kDType == DType::Float16, cutlass::half_t, cutlass::bfloat16_t>;

template <int kHeadDim_, typename Element_>
struct Traits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim % 64 == 0, "head-dim buckets are multiples of 64");

  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                   SM80_16x8x16_F32F16F16F32_TN, SM80_16x8x16_F32BF16BF16F32_TN>;
  // 4 warps stacked along M: a 64-row tile, each warp 16 full rows.
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<_4, _1, _1>>, Tile<_64, _16, _16>>;

  // 8 x 64 atoms, 16-byte chunks swizzled across the 8 rows: ldmatrix reads of
  // 8 rows hit 8 different bank groups.
  using SmemAtom =
      decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  template <int kRows>
  using SmemLayout = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kRows>, Int<kHeadDim>>{}));
  // The same memory read as (kHeadDim x kRows), for operands consumed transposed.
  template <int kRows>
  using SmemLayoutT = decltype(composition(
      SmemLayout<kRows>{}, make_layout(Shape<Int<kHeadDim>, Int<kRows>>{}, GenRowMajor{})));
  template <int kRows>
  using SmemLayoutTNoSwizzle = decltype(get_nonswizzle_portion(SmemLayoutT<kRows>{}));

  using LdsmAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using LdsmAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Element>;

  // 128 threads as 16 rows x 8 threads, each thread one 16-byte chunk (8 elements).
  using GmemCopy =
      decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
                               Layout<Shape<_16, _8>, Stride<_8, _1>>{}, Layout<Shape<_1, _8>>{}));
  // The same thread arrangement for the way back: 16-byte shared-memory reads and global stores.
  using GmemStore =
      decltype(make_tiled_copy(Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{},
                               Layout<Shape<_16, _8>, Stride<_8, _1>>{}, Layout<Shape<_1, _8>>{}));
};

// A (kRows x kCols) window of a (B, N, H, D) tensor at (b, row0, h, col0), rows
// beyond the tensor included (they are never dereferenced: see load_tile).
template <typename Element, int kRows, int kCols>
__device__ __forceinline__ auto gmem_tile(const TensorRef& t, int b, int h, int row0,
                                          int col0 = 0) {
  Element* base = static_cast<Element*>(t.ptr) + b * t.batch_stride + h * t.head_stride +
                  static_cast<int64_t>(row0) * t.row_stride + col0;
  return make_tensor(make_gmem_ptr(base), Shape<Int<kRows>, Int<kCols>>{},
                     make_stride(t.row_stride, _1{}));
}

// Asynchronously copies the valid part of a global tile into shared memory and
// zero-fills the rest (rows >= rows_valid, columns >= D): a zero row of V or dO
// keeps 0 * garbage from turning into NaN in the MMAs. D is a multiple of 8, so
// each 8-element chunk is wholly inside or outside.
template <typename Traits, typename GTensor, typename STensor>
__device__ __forceinline__ void load_tile(const GTensor& g, STensor& s, int rows_valid, int D) {
  typename Traits::GmemCopy gmem_copy;
  auto thr = gmem_copy.get_thread_slice(threadIdx.x);
  Tensor src = thr.partition_S(g);
  Tensor dst = thr.partition_D(s);
  Tensor coord = thr.partition_S(make_identity_tensor(make_shape(size<0>(s), size<1>(s))));
#pragma unroll
  for (int m = 0; m < size<1>(dst); ++m) {
#pragma unroll
    for (int k = 0; k < size<2>(dst); ++k) {
      if (get<0>(coord(0, m, k)) < rows_valid && get<1>(coord(0, m, k)) < D) {
        cute::copy(gmem_copy, src(_, m, k), dst(_, m, k));
      } else {
        cute::clear(dst(_, m, k));
      }
    }
  }
}

// Writes the valid part of a shared-memory tile (rows < rows_valid, columns < D) to its
// global tile in 16-byte chunks, the mirror of load_tile; thread `tid` of 128 moves its
// chunks. The caller synchronizes: the tile must be complete in shared memory.
template <typename Traits, typename STensor, typename GTensor>
__host__ __device__ __forceinline__ void store_tile(const STensor& s, GTensor&& g, int rows_valid,
                                                    int D, int tid) {
  typename Traits::GmemStore gmem_store;
  auto thr = gmem_store.get_thread_slice(tid);
  Tensor src = thr.partition_S(s);
  Tensor dst = thr.partition_D(g);
  Tensor coord = thr.partition_D(make_identity_tensor(make_shape(size<0>(s), size<1>(s))));
#pragma unroll
  for (int m = 0; m < size<1>(dst); ++m) {
#pragma unroll
    for (int k = 0; k < size<2>(dst); ++k) {
      if (get<0>(coord(0, m, k)) < rows_valid && get<1>(coord(0, m, k)) < D) {
        cute::copy(gmem_store, src(_, m, k), dst(_, m, k));
      }
    }
  }
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// acc += A @ B^T with A (M x K) and B (N x K) both read from shared memory, the
// next K-slice loaded while the current one multiplies.
template <typename Acc, typename RA, typename RB, typename SA, typename SB, typename TiledMma,
          typename CopyA, typename CopyB>
__device__ __forceinline__ void gemm_ss(Acc& acc, RA& rA, RB& rB, const SA& sA, const SB& sB,
                                        TiledMma tiled_mma, CopyA copy_a, CopyB copy_b) {
  auto thr_a = copy_a.get_thread_slice(threadIdx.x);
  auto thr_b = copy_b.get_thread_slice(threadIdx.x);
  Tensor rA_view = thr_a.retile_D(rA);
  Tensor rB_view = thr_b.retile_D(rB);
  cute::copy(copy_a, sA(_, _, _0{}), rA_view(_, _, _0{}));
  cute::copy(copy_b, sB(_, _, _0{}), rB_view(_, _, _0{}));
#pragma unroll
  for (int i = 0; i < size<2>(rA); ++i) {
    if (i < size<2>(rA) - 1) {
      cute::copy(copy_a, sA(_, _, i + 1), rA_view(_, _, i + 1));
      cute::copy(copy_b, sB(_, _, i + 1), rB_view(_, _, i + 1));
    }
    cute::gemm(tiled_mma, rA(_, _, i), rB(_, _, i), acc);
  }
}

// acc += A @ B^T with A already in registers (Q held for the whole kernel, or P / dS
// converted from an accumulator) and B streamed from shared memory.
template <typename Acc, typename RA, typename RB, typename SB, typename TiledMma, typename CopyB>
__device__ __forceinline__ void gemm_rs(Acc& acc, const RA& rA, RB& rB, const SB& sB,
                                        TiledMma tiled_mma, CopyB copy_b) {
  auto thr_b = copy_b.get_thread_slice(threadIdx.x);
  Tensor rB_view = thr_b.retile_D(rB);
  cute::copy(copy_b, sB(_, _, _0{}), rB_view(_, _, _0{}));
#pragma unroll
  for (int i = 0; i < size<2>(rA); ++i) {
    if (i < size<2>(rA) - 1) cute::copy(copy_b, sB(_, _, i + 1), rB_view(_, _, i + 1));
    cute::gemm(tiled_mma, rA(_, _, i), rB(_, _, i), acc);
  }
}

// (MMA=4, MMA_M, MMA_N) -> ((2, MMA_M) rows, (2, MMA_N) cols).
template <typename Layout>
__host__ __device__ __forceinline__ auto rowcol(Layout acc) {
  auto l = logical_divide(acc, Shape<_2>{});
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<2>(l)));
}

template <typename T>
__host__ __device__ __forceinline__ auto rowcol_view(T&& t) {
  return make_tensor(t.data(), rowcol(t.layout()));
}

// An accumulator (MMA=4, MMA_M, MMA_N) re-read as the A operand of the next
// m16n8k16 MMA: ((4, 2), MMA_M, MMA_N / 2).
template <typename Layout>
__device__ __forceinline__ auto acc_as_a(Layout acc) {
  auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

template <typename To, typename Engine, typename Layout>
__device__ __forceinline__ auto convert(const Tensor<Engine, Layout>& t) {
  using From = typename Engine::value_type;
  constexpr int n = decltype(size(t))::value;
  cutlass::NumericArrayConverter<To, From, n> op;
  Tensor out = make_tensor<To>(t.layout());  // owns its registers: safe to return
  *reinterpret_cast<cutlass::Array<To, n>*>(out.data()) =
      op(*reinterpret_cast<const cutlass::Array<From, n>*>(t.data()));
  return out;
}

// Sum / max over the 4 lanes of a quad (lanes that hold one row).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// Element pointer of [b, row, h, col] of a TensorRef (unit last-dim stride).
template <typename Element>
__device__ __forceinline__ Element* element_ptr(const TensorRef& t, int b, int row, int h,
                                                int col) {
  return static_cast<Element*>(t.ptr) + b * t.batch_stride + h * t.head_stride +
         static_cast<int64_t>(row) * t.row_stride + col;
}

// Decodes blockIdx.x = ((b * H + h) * n_blocks + block) * splits + split.
struct BlockCoord {
  int b, h, block, split;
};
__device__ __forceinline__ BlockCoord block_coord(int H, int n_blocks, int splits) {
  int i = blockIdx.x;
  const int split = i % splits;
  i /= splits;
  const int block = i % n_blocks;
  i /= n_blocks;
  return {i / H, i % H, block, split};
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace tc
}  // namespace memkernels
