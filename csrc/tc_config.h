// Tile shapes of the tensor-core attention kernels, per head-dim bucket, shared
// by the kernels (as template arguments) and the host (shared-memory sizes).
//
// Every kernel runs 4 warps stacked along the tile's rows (16 rows each), so a
// row's softmax statistics live in one quad of lanes. The tiles are sized so
// that no kernel spills registers (csrc/NOTES.md has the ptxas table) and every
// kernel's shared memory fits 99 KB, the smallest opt-in limit of sm_80+ parts
// (sm_86/89); the host compares the need with the device's opt-in limit.
#pragma once

namespace memkernels {

constexpr int kTcThreads = 128;
constexpr int kTcRows = 64;  // rows of every tile that 4 warps x 16 rows cover

template <int kHeadDim>
struct ForwardTiles {
  static constexpr int kBlockM = kTcRows;                               // query rows
  static constexpr int kBlockN = 64;                                    // keys per streamed block
  static constexpr int kSmem = (kBlockM + 2 * kBlockN) * kHeadDim * 2;  // Q, K, V
};

template <int kHeadDim>
struct BackwardDqTiles {
  static constexpr int kBlockM = kTcRows;  // query rows
  // keys per block: above head dim 128, dq's accumulator leaves room for 16 only
  static constexpr int kBlockN = kHeadDim > 128 ? 16 : 64;
  static constexpr int kSmem = (2 * kBlockM + 2 * kBlockN) * kHeadDim * 2;  // Q, dO, K, V
};

template <int kHeadDim>
struct BackwardDkdvTiles {
  static constexpr int kBlockN = kTcRows;  // key rows (the MMA's M)
  // queries per streamed block, fewer as the dK/dV accumulators grow
  static constexpr int kBlockM = kHeadDim > 128 ? 16 : kHeadDim > 64 ? 32 : 64;
  // dK and dV accumulate in registers: above 128 columns each block owns half of them
  // and recomputes P and dP for its half instead of spilling.
  static constexpr int kOutDim = kHeadDim > 128 ? 128 : kHeadDim;
  static constexpr int kSplits = kHeadDim / kOutDim;
  static constexpr int kSmem = (2 * kBlockN + 2 * kBlockM) * kHeadDim * 2 + 2 * kBlockM * 4;
};

}  // namespace memkernels
