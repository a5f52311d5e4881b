// Launch geometry of the Sinkhorn kernels as pure functions of the problem shape:
// rows per block, column tiles, the dense column split, the small kernel's
// shared-memory layout. The kernels launch with exactly these numbers and the host
// planner (otgpu_host/planner.h) sizes grids, column splits and workspaces from
// them, on any build: plain C++, no CUDA header, no device query. Occupancy (blocks
// per SM) is a property of the compiled kernels and is measured on the host, not
// guessed here.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "otgpu/detail/sinkhorn_rules.h"

namespace otgpu::kernels::geometry {

/// Most problems one batched launch carries: the batch is the grid's y axis of the
/// online, dense and aux launches (gridDim.y <= 65,535). Larger batches are chunked.
constexpr std::int64_t kMaxBatchPerLaunch = 65535;

// ---- online point-cloud half-step (sinkhorn_online.cu) ------------------------------

constexpr int kOnlineThreads = 128;     ///< threads per block
constexpr int kOnlineTileCols = 64;     ///< columns per shared-memory tile
constexpr int kOnlineMaxSplits = 1024;  ///< most column splits of one half-step
constexpr int kOnlineMaxFixedDim = 64;  ///< padded dims up to here have a specialised kernel

/// Rows each thread owns for padded dimension dp: more rows for small d, where a
/// shared-memory read of y_j is otherwise one load per exponential. Above 64 the
/// dynamic-dimension kernel owns one row per thread.
constexpr int online_rows_per_thread(int dp) { return dp <= 16 ? 4 : (dp <= 32 ? 2 : 1); }

/// Rows one block of the half-step owns.
constexpr std::int64_t online_rows_per_block(int dp) {
  return static_cast<std::int64_t>(kOnlineThreads) *
         (dp <= kOnlineMaxFixedDim ? online_rows_per_thread(dp) : 1);
}

/// Floats per column in the packed tile of the fixed-dimension kernels: the dp
/// coordinates of y_j, then its column term h_j, padded to 16 bytes so that a column
/// is read with 128-bit shared loads (dp = 2: one LDS.128 gives y0, y1 and h).
constexpr int online_tile_stride(int dp) { return dp == 1 ? 2 : (dp + 1 + 3) / 4 * 4; }

/// Scores per rescale of the running (max, sum) in the fixed-dimension half-step: 16
/// for small dp (the rescale's ex2 and multiply are then 1/16 of a pair), 8 above
/// where the score registers [rows][chunk] would crowd out the point coordinates.
constexpr int online_chunk(int dp) { return dp <= 4 ? 16 : 8; }

/// Shared memory of one half-step block: the packed tile [kTJ][online_tile_stride]
/// for dp <= 64 (static), a tile of columns [kTJ][dp] and their terms [kTJ] above
/// (dynamic). The dynamic-memory kernels of every dp (row statistics, sampling) use
/// the second layout, which never needs more than the first.
constexpr std::size_t online_smem_bytes(int dp) {
  return dp <= kOnlineMaxFixedDim
             ? static_cast<std::size_t>(kOnlineTileCols) *
                   static_cast<std::size_t>(online_tile_stride(dp)) * sizeof(float)
             : (static_cast<std::size_t>(kOnlineTileCols) * static_cast<std::size_t>(dp) +
                kOnlineTileCols) *
                   sizeof(float);
}

/// Column tiles of a row of n_cols columns.
constexpr std::int64_t online_col_tiles(std::int64_t n_cols) {
  return (n_cols + kOnlineTileCols - 1) / kOnlineTileCols;
}

/// Columns per split, a whole number of tiles so that no tile straddles two splits.
constexpr std::int64_t online_split_span(std::int64_t n_cols, int splits) {
  return (online_col_tiles(n_cols) + splits - 1) / splits * kOnlineTileCols;
}

/// Floats of split partials one half-step needs: a (max, sum) pair per problem, split
/// and row; 0 without splits.
constexpr std::size_t online_partials_floats(std::int64_t B, std::int64_t n_rows, int splits) {
  return splits <= 1 ? 0
                     : 2 * static_cast<std::size_t>(B) * static_cast<std::size_t>(splits) *
                           static_cast<std::size_t>(n_rows);
}

// ---- dense half-steps (sinkhorn_dense.cu) -------------------------------------------

constexpr int kDenseRowWarps = 4;
constexpr int kDenseRowsPerWarp = 4;
constexpr int kDenseRowsPerBlock = kDenseRowWarps * kDenseRowsPerWarp;
constexpr int kDenseRowThreads = kDenseRowWarps * 32;
constexpr int kDenseColThreads = 128;
constexpr int kDenseColTile = kDenseColThreads * 4;  ///< columns per block (4 per thread)
/// Blocks the column half-step aims for: several waves on a 132-SM GPU at 16 blocks of
/// 128 threads per SM.
constexpr std::int64_t kDenseColTargetBlocks = 2048;
constexpr std::int64_t kDenseColMinRows = 32;  ///< fewest rows one column split reduces

/// How the column half-step cuts the rows: `nsplit` ranges of `rows_per_split` rows,
/// each reduced by its own blocks into (max, sum) partials, merged by a second kernel.
struct DenseColSplit {
  std::int64_t tiles = 0;
  std::int64_t nsplit = 1;
  std::int64_t rows_per_split = 0;
};

constexpr DenseColSplit dense_col_split(std::int64_t B, std::int64_t n, std::int64_t m) {
  DenseColSplit s;
  s.tiles = (m + kDenseColTile - 1) / kDenseColTile;
  const std::int64_t max_split =
      std::max<std::int64_t>(1, (n + kDenseColMinRows - 1) / kDenseColMinRows);
  const std::int64_t want = (kDenseColTargetBlocks + B * s.tiles - 1) / (B * s.tiles);
  const std::int64_t nsplit = std::clamp<std::int64_t>(want, 1, max_split);
  s.rows_per_split = (n + nsplit - 1) / nsplit;
  s.nsplit = (n + s.rows_per_split - 1) / s.rows_per_split;  // no empty range
  return s;
}

/// Bytes of (max, sum) float pairs the column half-step needs (0 for a single range).
constexpr std::size_t dense_col_workspace_bytes(std::int64_t B, std::int64_t n, std::int64_t m) {
  const DenseColSplit s = dense_col_split(B, n, m);
  return s.nsplit == 1 ? 0 : static_cast<std::size_t>(B * s.nsplit * m) * 2 * sizeof(float);
}

// ---- many small problems (sinkhorn_small.cu) ----------------------------------------

constexpr int kSmallMaxThreads = 512;
constexpr int kSmallMaxOnlineDim = 32;       ///< points recomputed from shared memory up to here
constexpr std::int64_t kSmallMaxSide = 512;  ///< the planner's bound on n and m

/// Shared-memory layout of one block, in floats from the start of dynamic shared
/// memory; every region starts on a 16-byte boundary (float4 loads of points).
struct SmallLayout {
  int threads = 0;
  int dim = 0;  ///< padded point dimension of the recomputing variant; 0 = cached cost
  int ld = 0;   ///< row stride of the cached cost (odd: conflict-free rows and columns)
  int f = 0, g = 0, log_a = 0, log_b = 0, w = 0, ftilde = 0, scratch = 0, red = 0;
  int x = 0, y = 0, norm_x = 0, norm_y = 0, cost = 0;
  std::int64_t floats = 0;
  constexpr std::size_t bytes() const { return static_cast<std::size_t>(floats) * sizeof(float); }
};

/// Threads of a small-kernel block: a power of two (the source slices of a pass divide
/// the block evenly), at least 64, up to 512.
constexpr int small_threads(std::int64_t n, std::int64_t m) {
  int t = 64;
  while (t < std::max(n, m) && t < kSmallMaxThreads) t *= 2;
  return t;
}

constexpr SmallLayout small_layout(std::int64_t n, std::int64_t m, int dim, bool cached) {
  SmallLayout L;
  L.threads = small_threads(n, m);
  L.dim = cached ? 0 : dim;
  L.ld = cached ? static_cast<int>(m | 1) : 0;
  std::int64_t at = 0;
  auto take = [&at](std::int64_t count) {
    const std::int64_t start = at;
    at += (count + 3) / 4 * 4;
    return static_cast<int>(start);
  };
  L.f = take(n);
  L.g = take(m);
  L.log_a = take(n);
  L.log_b = take(m);
  L.w = take(std::max(n, m));
  L.ftilde = take(n);
  L.scratch = take(2 * std::int64_t{L.threads});  // one Lse2 per thread
  L.red = take(2 * 33);                           // 33 doubles for the residual sum
  if (cached) {
    L.cost = take(n * L.ld);
  } else {
    L.x = take(n * dim);
    L.y = take(m * dim);
    if (dim >= 8) {
      L.norm_x = take(n);
      L.norm_y = take(m);
    }
  }
  L.floats = at;
  return L;
}

/// The variant of the small kernel for a shape under a shared-memory limit per block:
/// the n x m cost cached in shared memory, or recomputed from the points (d <= 32).
struct SmallVariant {
  bool cached = false;
  int dim = 0;
  SmallLayout layout;
  bool fits = false;
};

/// point_cloud: sqeuclidean / euclidean (false: a cost matrix, always cached).
constexpr SmallVariant small_variant(bool point_cloud, std::int64_t n, std::int64_t m,
                                     std::int64_t d, std::size_t smem_limit) {
  SmallVariant cached_v;
  cached_v.cached = true;
  cached_v.layout = small_layout(n, m, 0, true);
  cached_v.fits = cached_v.layout.bytes() <= smem_limit;
  if (!point_cloud) return cached_v;

  SmallVariant online_v;
  if (d <= kSmallMaxOnlineDim) {
    online_v.dim = detail::padded_dim(d);
    online_v.layout = small_layout(n, m, online_v.dim, false);
    online_v.fits = online_v.layout.bytes() <= smem_limit;
  }
  // With d >= 8 a cached score is one LDS against d FMAs; with d <= 4 recomputing
  // is cheaper than the non-broadcast LDS and keeps many blocks per SM.
  if (cached_v.fits && (d >= 8 || !online_v.fits)) return cached_v;
  if (online_v.fits) return online_v;
  // Nothing fits: report the smaller need.
  if (d <= kSmallMaxOnlineDim && online_v.layout.bytes() < cached_v.layout.bytes()) return online_v;
  return cached_v;
}

}  // namespace otgpu::kernels::geometry
