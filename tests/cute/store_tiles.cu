// The tensor-core kernels' output path, checked on the host with the kernels' own traits
// (csrc/tc_common.cuh) for every head-dim bucket: each accumulator element that a thread
// writes through the MMA's partition_C (rowcol view) into the swizzled shared-memory tile
// lands once, at its own (row, col), also in dk/dv's second column half at head dim 256; then
// store_tile's 16-byte chunks write exactly the valid rows and columns of the tile to global
// memory (ragged rows, head dims short of the bucket, padded row strides), nothing else.
// Built and run by tests/test_cute_layouts.py; exits 1 and names the first wrong element.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "tc_common.cuh"

using namespace memkernels;
using namespace memkernels::tc;

static int failures = 0;

static uint16_t code(int row, int col) { return static_cast<uint16_t>(row * 256 + col + 1); }

template <int kHeadDim, int kRows, int kCols>
void check(int rows_valid, int D, int row_stride, int col0_split) {
  using T = Traits<kHeadDim, cutlass::half_t>;
  using Element = cutlass::half_t;
  std::vector<Element> smem(kRows * kHeadDim, Element::bitcast(0));
  Tensor sFull = make_tensor(make_smem_ptr(smem.data()), typename T::template SmemLayout<kRows>{});
  Tensor s = local_tile(sFull, Shape<Int<kRows>, Int<kCols>>{}, make_coord(0, col0_split));
  typename T::TiledMma tiled_mma;
  for (int tid = 0; tid < kTcThreads; ++tid) {
    auto thr_mma = tiled_mma.get_thread_slice(tid);
    Tensor s_rc = rowcol_view(thr_mma.partition_C(s));
    Tensor c_rc =
        rowcol_view(thr_mma.partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kCols>>{})));
    for (int r = 0; r < size<0>(s_rc); ++r)
      for (int c = 0; c < size<1>(s_rc); ++c) {
        if (s_rc(r, c).raw() != 0) {
          std::printf("hdim %d %dx%d: smem element (%d, %d) written twice\n", kHeadDim, kRows,
                      kCols, int(get<0>(c_rc(r, c))), int(get<1>(c_rc(r, c))));
          ++failures;
        }
        s_rc(r, c) = Element::bitcast(code(get<0>(c_rc(r, c)), get<1>(c_rc(r, c))));
      }
  }
  for (int row = 0; row < kRows; ++row)
    for (int col = 0; col < kCols; ++col)
      if (s(row, col).raw() != code(row, col)) {
        std::printf("hdim %d %dx%d: smem (%d, %d) holds %d\n", kHeadDim, kRows, kCols, row, col,
                    s(row, col).raw());
        ++failures;
        return;
      }
  const int sentinel = 0xFFFF;
  std::vector<Element> gmem(kRows * row_stride + kCols, Element::bitcast(sentinel));
  for (int tid = 0; tid < kTcThreads; ++tid) {
    Tensor g = make_tensor(make_gmem_ptr(gmem.data()), Shape<Int<kRows>, Int<kCols>>{},
                           make_stride(int64_t(row_stride), _1{}));
    store_tile<T>(s, g, rows_valid, D, tid);
  }
  for (int i = 0; i < int(gmem.size()); ++i) {
    const int row = i / row_stride, col = i % row_stride;
    const bool valid = row < rows_valid && col < D && col < kCols && row < kRows;
    const int want = valid ? code(row, col) : sentinel;
    if (gmem[i].raw() != want) {
      std::printf("hdim %d %dx%d rows_valid %d D %d: global (%d, %d) holds %d, want %d\n", kHeadDim,
                  kRows, kCols, rows_valid, D, row, col, gmem[i].raw(), want);
      ++failures;
      return;
    }
  }
}

int main() {
  // (forward out and dq: 64 rows x the bucket; dk/dv: 64 key rows x kOutDim columns)
  for (int rows_valid : {1, 17, 63, 64}) {
    check<64, 64, 64>(rows_valid, 64, 3 * 64, 0);
    check<64, 64, 64>(rows_valid, 40, 3 * 64 + 8, 0);
    check<128, 64, 128>(rows_valid, 72, 2 * 72, 0);
    check<128, 64, 128>(rows_valid, 128, 128, 0);
    check<256, 64, 128>(rows_valid, 200 - 128, 256, 1);  // dk/dv's second column half
    check<256, 64, 256>(rows_valid, 200, 208, 0);
  }
  std::printf(failures ? "FAILED: %d\n" : "all store mappings correct\n", failures);
  return failures ? 1 : 0;
}
