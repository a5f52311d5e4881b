// Dense-cost Sinkhorn half-steps (C [B,n,m] in device memory). Memory-bound: each
// half-step streams C once; everything else (potentials, weights) is O(n + m) and
// stays in L1/L2. Per element: one FMA for the base-2 score, one max, and 1 + 1/8
// ex2 (chunks of 8 scores share one rescale), far below the MUFU and FMA limits at
// the copy bandwidth (H100: ~0.7e12 elements/s against ~3.7e12 ex2/s).
#include "otgpu_kernels/sinkhorn_dense.h"
#include "otgpu_kernels/sinkhorn_geometry.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "otgpu/error.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {
namespace {

using detail::ex2;
using detail::kLog2e;
using detail::Lse2;
using detail::lse2_empty;
using detail::lse2_merge;
using detail::lse2_push;
using detail::lse2_value;
using detail::lse2_warp_allreduce;
using detail::potential_from_lse2;
using detail::scaled_term;

// ---- row half-step ---------------------------------------------------------------
// A warp owns kRowsPerWarp consecutive rows and sweeps the columns once: each
// column term v_j = log2e*logB_j + G_j*scale is loaded and formed once per warp and
// reused for all its rows, and every lane keeps kRowsPerWarp x 2 float4 loads of C
// in flight (Little's law: ~32 KB per SM with two blocks per SM).
constexpr int kRowsPerWarp = geometry::kDenseRowsPerWarp;
constexpr int kRowsPerBlock = geometry::kDenseRowsPerBlock;
constexpr int kRowThreads = geometry::kDenseRowThreads;
// Columns one lane step covers: vector path 32 lanes x 2 float4, scalar path 32 x 8.
constexpr int kRowStep = 256;

template <bool kVec>
__global__ void __launch_bounds__(kRowThreads)
    dense_row_lse_kernel(const float* __restrict__ C, const float* __restrict__ logB,
                         const float* __restrict__ G, const float* __restrict__ eps,
                         const float* __restrict__ lambda, const int* __restrict__ active,
                         float* __restrict__ out, std::int64_t n, std::int64_t m,
                         std::int64_t blocks_per_problem) {
  const std::int64_t b = blockIdx.x / blocks_per_problem;
  if (active != nullptr && active[b] == 0) return;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t i0 =
      (blockIdx.x % blocks_per_problem) * kRowsPerBlock + std::int64_t{warp} * kRowsPerWarp;
  // The kernel has no block-level barrier, so a warp past the last row may leave.
  if (i0 >= n) return;

  const float e = eps[b];
  const float scale = kLog2e / e;
  const float* lb = logB + b * m;
  const float* g = G + b * m;
  // Rows past n (last warp of a problem) re-read row n-1 and are not written: the
  // loads stay branch-free and the waste is at most kRowsPerWarp-1 rows per problem.
  const float* rows[kRowsPerWarp];
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k)
    rows[k] = C + (b * n + std::min<std::int64_t>(i0 + k, n - 1)) * m;

  Lse2 acc[kRowsPerWarp];
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) acc[k] = lse2_empty();

  if constexpr (kVec) {
    for (std::int64_t c0 = std::int64_t{lane} * 4; c0 < m; c0 += kRowStep) {
      // m % 4 == 0, so a float4 is wholly inside or wholly past the row.
      const std::int64_t c1 = c0 + 128;
      const bool has1 = c1 < m;
      float v[8];
      {
        const float4 lb0 = __ldg(reinterpret_cast<const float4*>(lb + c0));
        const float4 g0 = __ldg(reinterpret_cast<const float4*>(g + c0));
        v[0] = scaled_term(lb0.x, g0.x, scale);
        v[1] = scaled_term(lb0.y, g0.y, scale);
        v[2] = scaled_term(lb0.z, g0.z, scale);
        v[3] = scaled_term(lb0.w, g0.w, scale);
        if (has1) {
          const float4 lb1 = __ldg(reinterpret_cast<const float4*>(lb + c1));
          const float4 g1 = __ldg(reinterpret_cast<const float4*>(g + c1));
          v[4] = scaled_term(lb1.x, g1.x, scale);
          v[5] = scaled_term(lb1.y, g1.y, scale);
          v[6] = scaled_term(lb1.z, g1.z, scale);
          v[7] = scaled_term(lb1.w, g1.w, scale);
        } else {
          v[4] = v[5] = v[6] = v[7] = -INFINITY;
        }
      }
      float4 x0[kRowsPerWarp], x1[kRowsPerWarp];
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        x0[k] = __ldcs(reinterpret_cast<const float4*>(rows[k] + c0));
        x1[k] = has1 ? __ldcs(reinterpret_cast<const float4*>(rows[k] + c1))
                     : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        // A -inf column term stays -inf whatever the (finite) cost.
        const float s[8] = {fmaf(-scale, x0[k].x, v[0]), fmaf(-scale, x0[k].y, v[1]),
                            fmaf(-scale, x0[k].z, v[2]), fmaf(-scale, x0[k].w, v[3]),
                            fmaf(-scale, x1[k].x, v[4]), fmaf(-scale, x1[k].y, v[5]),
                            fmaf(-scale, x1[k].z, v[6]), fmaf(-scale, x1[k].w, v[7])};
        lse2_push(acc[k], s);
      }
    }
  } else {
    for (std::int64_t c0 = lane; c0 < m; c0 += kRowStep) {
      float v[8];
      std::int64_t cc[8];
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const std::int64_t c = c0 + 32 * q;
        // Out-of-row columns read column m-1 (valid memory) and get a -inf term.
        cc[q] = std::min(c, m - 1);
        v[q] = c < m ? scaled_term(__ldg(lb + cc[q]), __ldg(g + cc[q]), scale) : -INFINITY;
      }
#pragma unroll
      for (int k = 0; k < kRowsPerWarp; ++k) {
        float s[8];
#pragma unroll
        for (int q = 0; q < 8; ++q) s[q] = fmaf(-scale, __ldcs(rows[k] + cc[q]), v[q]);
        lse2_push(acc[k], s);
      }
    }
  }

  const float lam = lambda != nullptr ? lambda[b] : 1.0f;
#pragma unroll
  for (int k = 0; k < kRowsPerWarp; ++k) {
    const Lse2 total = lse2_warp_allreduce(acc[k]);
    if (lane == k && i0 + k < n)
      out[b * n + i0 + k] = potential_from_lse2(lse2_value(total), lam, e);
  }
}

// ---- column half-step --------------------------------------------------------------
// A block owns kColTile consecutive columns (each thread 4) and a range of rows; the
// threads of a warp read consecutive columns of one row, so C is read row-major and
// coalesced. Partial (max, sum) per (row range, column) go to the workspace unless
// one range covers all rows.
constexpr int kColThreads = geometry::kDenseColThreads;
constexpr int kColTile = geometry::kDenseColTile;
constexpr int kColRowChunk = 8;

using ColSplit = geometry::DenseColSplit;

ColSplit col_split(std::int64_t B, std::int64_t n, std::int64_t m) {
  return geometry::dense_col_split(B, n, m);
}

template <bool kVec>
__global__ void __launch_bounds__(kColThreads)
    dense_col_lse_kernel(const float* __restrict__ C, const float* __restrict__ logA,
                         const float* __restrict__ F, const float* __restrict__ eps,
                         const float* __restrict__ lambda, const int* __restrict__ active,
                         float* __restrict__ G, float2* __restrict__ partial, std::int64_t n,
                         std::int64_t m, std::int64_t tiles, std::int64_t nsplit,
                         std::int64_t rows_per_split) {
  // Blocks in reverse: the row half-step streams C from its first row to its last, so
  // the column half-step starts at the end (still in L2) and ends at the start, where
  // the next row half-step begins. When C fits in L2 (~50 MB) both passes hit it after
  // the first; above, each pass saves up to the L2's size of DRAM reads.
  const std::int64_t blk = static_cast<std::int64_t>(gridDim.x) - 1 - blockIdx.x;
  const std::int64_t tile = blk % tiles;
  const std::int64_t rest = blk / tiles;
  const std::int64_t split = rest % nsplit;
  const std::int64_t b = rest / nsplit;
  if (active != nullptr && active[b] == 0) return;

  // Vector path: columns cbase..cbase+3; scalar path: cbase + 128*k (coalesced).
  const std::int64_t cbase =
      tile * kColTile + (kVec ? std::int64_t{threadIdx.x} * 4 : std::int64_t{threadIdx.x});
  if (cbase >= m) return;  // no block-level barrier below
  std::int64_t col[4];
  bool valid[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const std::int64_t c = kVec ? cbase + k : cbase + std::int64_t{kColThreads} * k;
    valid[k] = c < m;
    col[k] = std::min(c, m - 1);  // invalid columns compute on column m-1, never written
  }

  const float e = eps[b];
  const float scale = kLog2e / e;
  const std::int64_t r0 = split * rows_per_split;
  const std::int64_t r1 = std::min(n, r0 + rows_per_split);
  const float* la = logA + b * n;
  const float* f = F + b * n;
  const float* Cb = C + b * n * m;

  Lse2 acc[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) acc[k] = lse2_empty();

  for (std::int64_t r = r0; r < r1; r += kColRowChunk) {
    float u[kColRowChunk];
    const float* crow[kColRowChunk];
#pragma unroll
    for (int q = 0; q < kColRowChunk; ++q) {
      // Rows past the range re-read row r1-1 with a -inf row term.
      const std::int64_t row = std::min(r + q, r1 - 1);
      u[q] = r + q < r1 ? scaled_term(__ldg(la + row), __ldg(f + row), scale) : -INFINITY;
      crow[q] = Cb + row * m;
    }
    float s[4][kColRowChunk];
    if constexpr (kVec) {
#pragma unroll
      for (int q = 0; q < kColRowChunk; ++q) {
        const float4 x = __ldcs(reinterpret_cast<const float4*>(crow[q] + cbase));
        s[0][q] = fmaf(-scale, x.x, u[q]);
        s[1][q] = fmaf(-scale, x.y, u[q]);
        s[2][q] = fmaf(-scale, x.z, u[q]);
        s[3][q] = fmaf(-scale, x.w, u[q]);
      }
    } else {
#pragma unroll
      for (int q = 0; q < kColRowChunk; ++q)
#pragma unroll
        for (int k = 0; k < 4; ++k) s[k][q] = fmaf(-scale, __ldcs(crow[q] + col[k]), u[q]);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) lse2_push(acc[k], s[k]);
  }

  const float lam = lambda != nullptr ? lambda[b] : 1.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!valid[k]) continue;
    if (nsplit == 1)
      G[b * m + col[k]] = potential_from_lse2(lse2_value(acc[k]), lam, e);
    else
      partial[(b * nsplit + split) * m + col[k]] = make_float2(acc[k].max, acc[k].sum);
  }
}

constexpr int kMergeThreads = 256;

__global__ void __launch_bounds__(kMergeThreads)
    dense_col_merge_kernel(const float2* __restrict__ partial, const float* __restrict__ eps,
                           const float* __restrict__ lambda, const int* __restrict__ active,
                           float* __restrict__ G, std::int64_t B, std::int64_t m,
                           std::int64_t nsplit) {
  const std::int64_t idx = std::int64_t{blockIdx.x} * kMergeThreads + threadIdx.x;
  if (idx >= B * m) return;
  const std::int64_t b = idx / m;
  const std::int64_t j = idx % m;
  if (active != nullptr && active[b] == 0) return;
  Lse2 acc = lse2_empty();
  for (std::int64_t s = 0; s < nsplit; ++s) {
    const float2 p = partial[(b * nsplit + s) * m + j];
    acc = lse2_merge(acc, Lse2{p.x, p.y});
  }
  const float lam = lambda != nullptr ? lambda[b] : 1.0f;
  G[idx] = potential_from_lse2(lse2_value(acc), lam, eps[b]);
}

// ---- row statistics ------------------------------------------------------------------
// Once per solve: a warp per row, plain sums of P_ij (no max needed: at the
// potentials of a Sinkhorn iterate P_ij <= ~1, far from fp32 overflow).
constexpr int kStatsWarps = 8;

__global__ void __launch_bounds__(kStatsWarps * 32)
    dense_row_stats_kernel(const float* __restrict__ C, const float* __restrict__ logA,
                           const float* __restrict__ logB, const float* __restrict__ F,
                           const float* __restrict__ G, const float* __restrict__ eps,
                           float* __restrict__ row_mass, float* __restrict__ row_cost,
                           std::int64_t B, std::int64_t n, std::int64_t m) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t row =
      std::int64_t{blockIdx.x} * kStatsWarps + static_cast<std::int64_t>(threadIdx.x) / 32;
  if (row >= B * n) return;
  const std::int64_t b = row / n;
  const float scale = kLog2e / eps[b];
  const float u = scaled_term(logA[row], F[row], scale);
  float mass = 0.f, cost = 0.f;
  if (u != -INFINITY) {
    const float* crow = C + row * m;  // (b*n + i)*m
    const float* lb = logB + b * m;
    const float* g = G + b * m;
    for (std::int64_t c = lane; c < m; c += 32) {
      const float x = __ldcs(crow + c);
      const float v = scaled_term(__ldg(lb + c), __ldg(g + c), scale);
      const float p = ex2(fmaf(-scale, x, u) + v);
      mass += p;
      cost = fmaf(p, x, cost);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    mass += __shfl_xor_sync(0xffffffffu, mass, off);
    cost += __shfl_xor_sync(0xffffffffu, cost, off);
  }
  if (lane == 0) {
    row_mass[row] = mass;
    if (row_cost != nullptr) row_cost[row] = cost;
  }
}

// ---- host side -----------------------------------------------------------------------

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_sizes(const char* who, std::int64_t B, std::int64_t n, std::int64_t m) {
  if (B <= 0) throw InvalidArgument(fmt::format("{}: batch size B must be > 0, got {}", who, B));
  if (n <= 0) throw InvalidArgument(fmt::format("{}: rows n must be > 0, got {}", who, n));
  if (m <= 0) throw InvalidArgument(fmt::format("{}: columns m must be > 0, got {}", who, m));
}

void check_ptr(const char* who, const char* name, const void* p) {
  if (p == nullptr)
    throw InvalidArgument(fmt::format("{}: device pointer {} must not be null", who, name));
}

unsigned grid_size(const char* who, std::int64_t blocks) {
  if (blocks > 0x7fffffff)
    throw InvalidArgument(fmt::format(
        "{}: {} thread blocks exceed the grid limit 2^31-1 (batch too large)", who, blocks));
  return static_cast<unsigned>(blocks);
}

}  // namespace

void dense_row_update(const float* C, const float* logB, const float* G, const float* eps,
                      const float* lambda_a, const int* active, float* out, std::int64_t B,
                      std::int64_t n, std::int64_t m, cudaStream_t stream) {
  constexpr const char* who = "dense_row_update";
  check_sizes(who, B, n, m);
  check_ptr(who, "C", C);
  check_ptr(who, "logB", logB);
  check_ptr(who, "G", G);
  check_ptr(who, "eps", eps);
  check_ptr(who, "out", out);
  const std::int64_t per_problem = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  const unsigned grid = grid_size(who, B * per_problem);
  const bool vec = m % 4 == 0 && aligned16(C) && aligned16(G) && aligned16(logB);
  if (vec)
    dense_row_lse_kernel<true><<<grid, kRowThreads, 0, stream>>>(C, logB, G, eps, lambda_a, active,
                                                                 out, n, m, per_problem);
  else
    dense_row_lse_kernel<false><<<grid, kRowThreads, 0, stream>>>(C, logB, G, eps, lambda_a, active,
                                                                  out, n, m, per_problem);
  OTGPU_LAUNCH_CHECK();
}

std::size_t dense_col_workspace_bytes(std::int64_t B, std::int64_t n, std::int64_t m) {
  check_sizes("dense_col_workspace_bytes", B, n, m);
  static_assert(sizeof(float2) == 2 * sizeof(float), "partials are (max, sum) float pairs");
  return geometry::dense_col_workspace_bytes(B, n, m);
}

void dense_col_update(const float* C, const float* logA, const float* F, const float* eps,
                      const float* lambda_b, const int* active, float* G, void* workspace,
                      std::size_t workspace_bytes, std::int64_t B, std::int64_t n, std::int64_t m,
                      cudaStream_t stream) {
  constexpr const char* who = "dense_col_update";
  check_sizes(who, B, n, m);
  check_ptr(who, "C", C);
  check_ptr(who, "logA", logA);
  check_ptr(who, "F", F);
  check_ptr(who, "eps", eps);
  check_ptr(who, "G", G);
  const ColSplit s = col_split(B, n, m);
  const std::size_t need =
      s.nsplit == 1 ? 0 : static_cast<std::size_t>(B * s.nsplit * m) * sizeof(float2);
  if (need > 0) {
    if (workspace == nullptr || workspace_bytes < need)
      throw InvalidArgument(
          fmt::format("{}: workspace of {} bytes at {} is too small, dense_col_workspace_bytes({}, "
                      "{}, {}) = {}",
                      who, workspace_bytes, workspace, B, n, m, need));
    if (reinterpret_cast<std::uintptr_t>(workspace) % alignof(float2) != 0)
      throw InvalidArgument(fmt::format("{}: workspace {} is not 8-byte aligned", who, workspace));
  }
  auto* partial = static_cast<float2*>(workspace);
  const unsigned grid = grid_size(who, B * s.nsplit * s.tiles);
  if (m % 4 == 0 && aligned16(C))
    dense_col_lse_kernel<true><<<grid, kColThreads, 0, stream>>>(
        C, logA, F, eps, lambda_b, active, G, partial, n, m, s.tiles, s.nsplit, s.rows_per_split);
  else
    dense_col_lse_kernel<false><<<grid, kColThreads, 0, stream>>>(
        C, logA, F, eps, lambda_b, active, G, partial, n, m, s.tiles, s.nsplit, s.rows_per_split);
  OTGPU_LAUNCH_CHECK();
  if (s.nsplit > 1) {
    const unsigned mgrid = grid_size(who, (B * m + kMergeThreads - 1) / kMergeThreads);
    dense_col_merge_kernel<<<mgrid, kMergeThreads, 0, stream>>>(partial, eps, lambda_b, active, G,
                                                                B, m, s.nsplit);
    OTGPU_LAUNCH_CHECK();
  }
}

void dense_row_stats(const float* C, const float* logA, const float* logB, const float* F,
                     const float* G, const float* eps, float* row_mass, float* row_cost,
                     std::int64_t B, std::int64_t n, std::int64_t m, cudaStream_t stream) {
  constexpr const char* who = "dense_row_stats";
  check_sizes(who, B, n, m);
  check_ptr(who, "C", C);
  check_ptr(who, "logA", logA);
  check_ptr(who, "logB", logB);
  check_ptr(who, "F", F);
  check_ptr(who, "G", G);
  check_ptr(who, "eps", eps);
  check_ptr(who, "row_mass", row_mass);
  const unsigned grid = grid_size(who, (B * n + kStatsWarps - 1) / kStatsWarps);
  dense_row_stats_kernel<<<grid, kStatsWarps * 32, 0, stream>>>(C, logA, logB, F, G, eps, row_mass,
                                                                row_cost, B, n, m);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
