// Online point-cloud Sinkhorn kernels: C_ij is recomputed from X/Y tiles and never
// stored. One thread owns R rows (x in registers); a block streams tiles of kTJ
// columns of Y through shared memory and keeps a running base-2 (max, sum) per row,
// rescaled once per chunk of K scores, so each pair costs one ex2.approx.
//
// Scores (the arithmetic is otgpu/detail/online_lse.h, shared with the CPU tests that
// pin its fp32 accuracy). Squared Euclidean, on data centered at staging:
//   s_ij = h_j + <x'_i, y_j> - r_i,  h_j = log2(e) log b_j + scale (g_j - |y_j|^2),
//   x'_i = 2 scale x_i, r_i = scale |x_i|^2, scale = log2(e)/eps:
// h_j is computed once per tile by the thread that loads y_j, x'_i once per launch, r_i
// is subtracted after the LSE: a pair is d FFMA (the chain starts at h_j), where the
// difference form (x - y)^2 took 2d. The rounding of h_j + <x', y> is ~ u scale
// (|x|^2 + |y|^2), i.e. eps times the error is fp32 relative to the cost scale at any eps
// (measured: < 1e-6 of the mean cost, < 0.01 eps at eps = 1e-4 x mean cost, clouds
// offset by 1e4 and centered). Euclidean: differences (a root of a cancelled norm form
// would lose half the digits of near pairs) and the root as c2 * rsqrt(c2) (one MUFU).
//
// LSE: branch-free. The running max starts at a finite sentinel (-1e30), so an empty
// or all -inf chunk is ordinary arithmetic (ex2(-inf) = 0, sentinel - sentinel = 0): no
// `max != -inf` test per row and chunk. The chunk's terms are summed as a tree and
// added to the running sum once (fma(sum, rescale, chunk)): the long fp32 sum sees n/K
// additions.
//
// Count and bound (static SASS, scripts/sass-report; bench/results/sass-*-simt.md). Per
// pair: d FFMA, FMNMX, FADD, MUFU.EX2, FADD, plus a rescale per K pairs and the
// shared loads of y_j (ceil((d+1)/4) LDS.128, broadcast) per R rows: 6.5 instructions
// per pair at d = 2 (R = 4, K = 16), 86 at d = 64 (R = 1, K = 8). The H100/H200 SM
// issues 128 instructions but 16 MUFU.EX2 per clock: up to 8 instructions per pair the
// kernel is exp-bound (d <= 2, ~0.8 of the MUFU's issue share at d = 2); above, FP32
// issue bounds it, at ~d + 6 instructions per pair (tensor cores for the <x', y> tile at
// d >= 16 are a separate kernel: issue 10, item 2).
//
// Flash-decoding: when the row blocks alone cannot fill the GPU (short n, B = 1), the
// column range is split over blockIdx.z (the host planner chooses how many from the
// kernel's measured occupancy); each split writes a partial (max - r_i, sum) per row and
// a small kernel merges them.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdint>

#include "otgpu/detail/math.h"
#include "otgpu/detail/online_lse.h"
#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "otgpu_kernels/sinkhorn_mma.h"
#include "otgpu_kernels/sinkhorn_online.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

namespace ol = otgpu::detail::online;
using detail::ex2;
using detail::kLn2;
using detail::kLog2e;
using detail::scaled_term;

constexpr int kThreads = geometry::kOnlineThreads;  // threads per block
constexpr int kTJ = geometry::kOnlineTileCols;      // columns per shared-memory tile
constexpr int kChunk = 8;                           // scores per rescale of the running sum
constexpr std::int64_t kMaxGridY = geometry::kMaxBatchPerLaunch;
constexpr int kMaxSplits = geometry::kOnlineMaxSplits;

/// Columns per split, a whole number of tiles so that no tile straddles two splits
/// (only the global last tile is short).
__host__ __device__ __forceinline__ std::int64_t split_span(std::int64_t n_cols, int splits) {
  return geometry::online_split_span(n_cols, splits);
}

/// Column range [begin, end) of split z (empty past the end: an identity partial).
__device__ __forceinline__ void split_range(const OnlinePass& p, std::int64_t& begin,
                                            std::int64_t& end) {
  if (p.splits <= 1) {
    begin = 0;
    end = p.n_cols;
    return;
  }
  const std::int64_t span = split_span(p.n_cols, p.splits);
  begin = static_cast<std::int64_t>(blockIdx.z) * span;
  end = begin + span < p.n_cols ? begin + span : p.n_cols;
}

/// Final write of a half-step row: the potential, or the split's partial pair. rc is
/// the row constant of the score (scale |x_i|^2 for the squared Euclidean form, 0 for
/// the difference form), subtracted from the LSE here, once per row; a partial carries
/// it in its max so that the merge needs no point data.
__device__ __forceinline__ void write_row(const OnlinePass& p, std::int64_t b, std::int64_t i,
                                          ol::Lse acc, float rc, float lam, float eps, float* out) {
  if (p.splits > 1) {
    reinterpret_cast<float2*>(p.partials)[(b * p.splits + blockIdx.z) * p.n_rows + i] =
        make_float2(acc.max - rc, acc.sum);
  } else {
    out[b * p.n_rows + i] = ol::potential(ol::lse_value(acc) - rc, lam, eps);
  }
}

/// Rows per thread for a padded dimension: more rows for small d, where each
/// shared-memory read of y_j is otherwise one load per exponential.
template <int DP>
constexpr int rows_per_thread() {
  return geometry::online_rows_per_thread(DP);
}

template <bool kEuclid>
__device__ __forceinline__ float cost_dyn(const float* x, const float* y, int dp) {
  float acc = 0.f;
  for (int k = 0; k < dp; ++k) {
    const float diff = x[k] - y[k];
    acc = fmaf(diff, diff, acc);
  }
  return kEuclid ? ol::euclid_from_sq(acc) : acc;
}

/// Loads DP coordinates of one point from global memory with the widest aligned loads
/// (rows of dp = 4k floats start on 16 bytes: the workspace is 256-byte aligned).
template <int DP>
__device__ __forceinline__ void load_point(const float* __restrict__ src, float (&v)[DP]) {
  if constexpr (DP % 4 == 0) {
#pragma unroll
    for (int k = 0; k < DP; k += 4) {
      const float4 t = __ldg(reinterpret_cast<const float4*>(src + k));
      v[k] = t.x;
      v[k + 1] = t.y;
      v[k + 2] = t.z;
      v[k + 3] = t.w;
    }
  } else if constexpr (DP == 2) {
    const float2 t = __ldg(reinterpret_cast<const float2*>(src));
    v[0] = t.x;
    v[1] = t.y;
  } else {
#pragma unroll
    for (int k = 0; k < DP; ++k) v[k] = __ldg(src + k);
  }
}

/// Loads columns [j0, j0 + kTJ) of problem b into the packed tile: per column its DP
/// coordinates, then its column term (h_j of otgpu/detail/online_lse.h: with -scale
/// |y_j|^2 folded in for the squared Euclidean form), zero-padded to the stride. Columns
/// past n_cols are zero points with h = -inf. One thread per column computes |y_j|^2
/// while the point is in its registers. Ends with a barrier; every thread must call it.
template <int DP, bool kEuclid>
__device__ __forceinline__ void load_tile_packed(const OnlinePass& p, std::int64_t b,
                                                 std::int64_t j0, float scale, float* tile) {
  constexpr int S = geometry::online_tile_stride(DP);
  for (int c = threadIdx.x; c < kTJ; c += blockDim.x) {
    const std::int64_t j = j0 + c;
    float v[S];
#pragma unroll
    for (int k = 0; k < S; ++k) v[k] = 0.f;
    float h = -INFINITY;
    if (j < p.n_cols) {
      float y[DP];
      load_point<DP>(p.cols + (b * p.n_cols + j) * DP, y);
#pragma unroll
      for (int k = 0; k < DP; ++k) v[k] = y[k];
      const float lw = p.col_logw[b * p.n_cols + j];
      const float pot = p.col_pot[b * p.n_cols + j];
      h = kEuclid ? ol::col_term(lw, pot, scale)
                  : ol::col_term_sq(lw, pot, ol::norm2<DP>(y), scale);
    }
    v[DP] = h;
    float* dst = tile + c * S;
    if constexpr (S % 4 == 0) {
#pragma unroll
      for (int k = 0; k < S; k += 4) {
        reinterpret_cast<float4*>(dst)[k / 4] = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
      }
    } else {
      reinterpret_cast<float2*>(dst)[0] = make_float2(v[0], v[1]);
    }
  }
  __syncthreads();
}

/// Reads column c of the packed tile: its coordinates and its term (broadcast loads:
/// every thread of the block reads the same column).
template <int DP>
__device__ __forceinline__ void read_col(const float* __restrict__ col, float (&y)[DP], float& h) {
  if constexpr (DP == 1) {
    const float2 t = *reinterpret_cast<const float2*>(col);
    y[0] = t.x;
    h = t.y;
  } else if constexpr (DP == 2) {
    const float4 t = *reinterpret_cast<const float4*>(col);
    y[0] = t.x;
    y[1] = t.y;
    h = t.z;
  } else {
#pragma unroll
    for (int k = 0; k < DP; k += 4) {
      const float4 t = reinterpret_cast<const float4*>(col)[k / 4];
      y[k] = t.x;
      y[k + 1] = t.y;
      y[k + 2] = t.z;
      y[k + 3] = t.w;
    }
    h = col[DP];
  }
}

/// The base-2 score of a pair before the row constant. Squared Euclidean: x holds
/// 2 scale x_i, the FMA chain starts at h_j (d FMAs). Euclidean: differences, the root
/// as c2 rsqrt(c2), then one FMA.
template <int DP, bool kEuclid>
__device__ __forceinline__ float pair_score(const float (&x)[DP], const float (&y)[DP], float h,
                                            float scale) {
  if constexpr (kEuclid) {
    return fmaf(-scale, ol::euclid_from_sq(ol::sqdist<DP>(x, y)), h);
  } else {
    return ol::score_sq<DP>(x, y, h);
  }
}

/// Loads R rows of the block into registers: prescaled by 2 scale for the squared
/// Euclidean form (rc = scale |x|^2, the row constant), raw for the Euclidean one.
template <int DP, int R, bool kEuclid>
__device__ __forceinline__ void load_rows(const OnlinePass& p, std::int64_t b, std::int64_t row0,
                                          float scale, float (&x)[R][DP], float (&rc)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const std::int64_t i = row0 + r * kThreads + threadIdx.x;
    if (i < p.n_rows) {
      load_point<DP>(p.rows + (b * p.n_rows + i) * DP, x[r]);
    } else {
#pragma unroll
      for (int k = 0; k < DP; ++k) x[r][k] = 0.f;
    }
    if constexpr (kEuclid) {
      rc[r] = 0.f;
    } else {
      rc[r] = scale * ol::norm2<DP>(x[r]);
      const float two_scale = 2.f * scale;
#pragma unroll
      for (int k = 0; k < DP; ++k) x[r][k] *= two_scale;
    }
  }
}

/// The runtime-dp version of load_tile for the kernels with dynamic shared memory:
/// ys [kTJ][dp], hs [kTJ]. Returns the number of real columns in the tile (the rest
/// are zero points with -inf scores). Ends with a barrier; every thread must call it.
__device__ __forceinline__ int load_tile_dyn(const OnlinePass& p, std::int64_t b, std::int64_t j0,
                                             float scale, float* ys, float* hs) {
  const int dp = p.dp;
  const std::int64_t left = p.n_cols - j0;
  const int cnt = left < kTJ ? static_cast<int>(left) : kTJ;
  const float* src = p.cols + (b * p.n_cols + j0) * dp;
  for (int k = threadIdx.x; k < kTJ * dp; k += blockDim.x) {
    ys[k] = (k / dp) < cnt ? src[k] : 0.f;
  }
  for (int k = threadIdx.x; k < kTJ; k += blockDim.x) {
    hs[k] = k < cnt ? scaled_term(p.col_logw[b * p.n_cols + j0 + k],
                                  p.col_pot[b * p.n_cols + j0 + k], scale)
                    : -INFINITY;
  }
  __syncthreads();
  return cnt;
}

// ---------------------------------------------------------------- half-step ----

// Per pair, squared Euclidean: d FFMA (score), FMNMX (chunk max), FADD (s - max),
// MUFU.EX2, FADD (tree sum); per chunk of K: one rescale (FMNMX, FADD, EX2, FFMA); per
// column and R rows: ceil((d+1)/4) LDS.128. No branch in the loop: the sentinel max
// makes empty and -inf chunks ordinary arithmetic.
template <int DP, bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_half_step_kernel(OnlinePass p, const float* __restrict__ lambda,
                            float* __restrict__ out) {
  constexpr int R = rows_per_thread<DP>();
  constexpr int K = geometry::online_chunk(DP);
  constexpr int S = geometry::online_tile_stride(DP);
  __shared__ __align__(16) float tile[kTJ * S];
  const std::int64_t b = blockIdx.y;
  if (p.active != nullptr && p.active[b] == 0) return;  // uniform over the block
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kThreads * R;
  float x[R][DP], rc[R];
  load_rows<DP, R, kEuclid>(p, b, row0, scale, x, rc);
  ol::Lse acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = ol::lse_empty();
  std::int64_t j_begin, j_end;
  split_range(p, j_begin, j_end);
  for (std::int64_t j0 = j_begin; j0 < j_end; j0 += kTJ) {
    load_tile_packed<DP, kEuclid>(p, b, j0, scale, tile);
#pragma unroll 1
    for (int jj = 0; jj < kTJ; jj += K) {
      float s[R][K];
#pragma unroll
      for (int q = 0; q < K; ++q) {
        float y[DP], h;
        read_col<DP>(tile + (jj + q) * S, y, h);
#pragma unroll
        for (int r = 0; r < R; ++r) s[r][q] = pair_score<DP, kEuclid>(x[r], y, h, scale);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) ol::lse_push(acc[r], s[r]);
    }
    __syncthreads();  // the tile is reused by the next load
  }
  const float lam = lambda != nullptr ? lambda[b] : 1.f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const std::int64_t i = row0 + r * kThreads + threadIdx.x;
    if (i < p.n_rows) write_row(p, b, i, acc[r], rc[r], lam, eps, out);
  }
}

// Any padded dimension (multiple of 4 above 64): rows read from global memory (L1),
// columns in shared-memory tiles of kTJ x dp floats (dynamic shared memory).
template <bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_half_step_dyn_kernel(OnlinePass p, const float* __restrict__ lambda,
                                float* __restrict__ out) {
  extern __shared__ __align__(16) float dyn_smem[];
  const int dp = p.dp;
  float* ys = dyn_smem;
  float* hs = dyn_smem + static_cast<std::size_t>(kTJ) * dp;
  const std::int64_t b = blockIdx.y;
  if (p.active != nullptr && p.active[b] == 0) return;
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool valid = i < p.n_rows;
  const float* x = p.rows + (b * p.n_rows + (valid ? i : 0)) * dp;
  ol::Lse acc = ol::lse_empty();
  std::int64_t j_begin, j_end;
  split_range(p, j_begin, j_end);
  for (std::int64_t j0 = j_begin; j0 < j_end; j0 += kTJ) {
    load_tile_dyn(p, b, j0, scale, ys, hs);  // padding columns score -inf
    for (int jj = 0; jj < kTJ; jj += kChunk) {
      float s[kChunk];
#pragma unroll
      for (int q = 0; q < kChunk; ++q) {
        s[q] = fmaf(-scale, cost_dyn<kEuclid>(x, ys + static_cast<std::size_t>(jj + q) * dp, dp),
                    hs[jj + q]);
      }
      ol::lse_push(acc, s);
    }
    __syncthreads();
  }
  if (valid) write_row(p, b, i, acc, 0.f, lambda != nullptr ? lambda[b] : 1.f, eps, out);
}

/// Merges the splits' partial pairs of each row into the potential.
__global__ void __launch_bounds__(256)
    merge_splits_kernel(OnlinePass p, const float* __restrict__ lambda, float* __restrict__ out) {
  const std::int64_t b = blockIdx.y;
  if (p.active != nullptr && p.active[b] == 0) return;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= p.n_rows) return;
  const float2* part = reinterpret_cast<const float2*>(p.partials);
  ol::Lse acc = ol::lse_empty();
  for (int z = 0; z < p.splits; ++z) {
    const float2 v = part[(b * p.splits + z) * p.n_rows + i];
    acc = ol::lse_merge(acc, ol::Lse{v.x, v.y});
  }
  const float lam = lambda != nullptr ? lambda[b] : 1.f;
  out[b * p.n_rows + i] = ol::potential(ol::lse_value(acc), lam, p.eps[b]);
}

// ---------------------------------------------------------------- row stats ----

/// Running (max, sum w, sum w*c) in base 2.
struct Stat2 {
  float max, s0, s1;
};

template <bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_row_stats_kernel(OnlinePass p, float* __restrict__ lse, float* __restrict__ cmean) {
  extern __shared__ __align__(16) float dyn_smem[];
  const int dp = p.dp;
  float* ys = dyn_smem;
  float* hs = dyn_smem + static_cast<std::size_t>(kTJ) * dp;
  const std::int64_t b = blockIdx.y;
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool valid = i < p.n_rows;
  const float* xg = p.rows + (b * p.n_rows + (valid ? i : 0)) * dp;
  Stat2 st{-INFINITY, 0.f, 0.f};
  for (std::int64_t j0 = 0; j0 < p.n_cols; j0 += kTJ) {
    load_tile_dyn(p, b, j0, scale, ys, hs);  // padding columns score -inf
    for (int jj = 0; jj < kTJ; jj += kChunk) {
      float s[kChunk], c[kChunk];
      float cmax = -INFINITY;
#pragma unroll
      for (int q = 0; q < kChunk; ++q) {
        c[q] = cost_dyn<kEuclid>(xg, ys + static_cast<std::size_t>(jj + q) * dp, dp);
        s[q] = fmaf(-scale, c[q], hs[jj + q]);
        cmax = fmaxf(cmax, s[q]);
      }
      const float nmax = fmaxf(st.max, cmax);
      if (nmax != -INFINITY) {
        const float f = ex2(st.max - nmax);
        float s0 = st.s0 * f, s1 = st.s1 * f;
#pragma unroll
        for (int q = 0; q < kChunk; ++q) {
          const float e = ex2(s[q] - nmax);
          s0 += e;
          s1 = fmaf(e, c[q], s1);
        }
        st = {nmax, s0, s1};
      }
    }
    __syncthreads();
  }
  if (valid) {
    const std::int64_t o = b * p.n_rows + i;
    lse[o] = st.max == -INFINITY ? -INFINITY : kLn2 * (st.max + log2f(st.s0));
    cmean[o] = st.s0 > 0.f ? st.s1 / st.s0 : 0.f;
  }
}

// ------------------------------------------------------- weighted means (map) ----

constexpr int kMeanCoords = 64;  // coordinates accumulated per pass

/// mode 0: v = y_j (barycentric map); mode 1: v = (x_i - y_j)/|x_i - y_j|.
/// Accumulates coordinates [k0, k0 + kc) of the softmax-weighted mean of v_ij.
template <bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_weighted_mean_kernel(OnlinePass p, int mode, int k0, int kc, float* __restrict__ out) {
  extern __shared__ __align__(16) float dyn_smem[];
  const int dp = p.dp;
  float* ys = dyn_smem;
  float* hs = dyn_smem + static_cast<std::size_t>(kTJ) * dp;
  const std::int64_t b = blockIdx.y;
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool valid = i < p.n_rows;
  const float* xg = p.rows + (b * p.n_rows + (valid ? i : 0)) * dp;
  float acc[kMeanCoords];
#pragma unroll
  for (int k = 0; k < kMeanCoords; ++k) acc[k] = 0.f;
  float run_max = -INFINITY, run_sum = 0.f;
  for (std::int64_t j0 = 0; j0 < p.n_cols; j0 += kTJ) {
    const int cnt = load_tile_dyn(p, b, j0, scale, ys, hs);
    for (int jj = 0; jj < cnt; ++jj) {
      const float* y = ys + static_cast<std::size_t>(jj) * dp;
      const float c2 = cost_dyn<false>(xg, y, dp);
      const float c = kEuclid ? sqrtf(c2) : c2;
      const float s = fmaf(-scale, c, hs[jj]);
      if (s == -INFINITY) continue;
      if (s > run_max) {
        const float f = ex2(run_max - s);
        run_sum *= f;
#pragma unroll
        for (int k = 0; k < kMeanCoords; ++k) acc[k] *= f;
        run_max = s;
      }
      const float w = ex2(s - run_max);
      run_sum += w;
      const float inv_dist = (mode == 1 && c2 > 0.f) ? rsqrtf(c2) : 0.f;
#pragma unroll
      for (int k = 0; k < kMeanCoords; ++k) {
        if (k < kc) {
          const float v = mode == 0 ? y[k0 + k] : (xg[k0 + k] - y[k0 + k]) * inv_dist;
          acc[k] = fmaf(w, v, acc[k]);
        }
      }
    }
    __syncthreads();
  }
  if (valid) {
    const float inv = run_sum > 0.f ? 1.f / run_sum : 0.f;
    float* o = out + (b * p.n_rows + i) * dp + k0;
    for (int k = 0; k < kc; ++k) o[k] = acc[k] * inv;
  }
}

/// One pass for padded dp <= 64: the row's LSE and the softmax-weighted sum of v_ij
/// together, both under the same running max (rescaled once per chunk of 8 columns:
/// 1/8 ex2 and dp/8 multiplies per pair), the row in registers, the columns from the
/// packed tile. Per pair: the score (d FMAs, or 2d + 3 for the Euclidean difference
/// form), one ex2 and d FMAs of the accumulation: about twice a half-step's FP32 work
/// and the same exponentials, in one launch (the former path ran a half-step for the
/// potential and then a separate mean kernel with one ex2 and a branch per pair).
/// mode 0: v = y_j; mode 1: v = (x_i - y_j)/|x_i - y_j| (0 when x_i = y_j).
/// pot_out (nullptr: not written) receives the balanced potential -eps LSE_j(...) of the
/// same row, the half-step with lambda = 1.
template <int DP, bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_weighted_mean_fixed_kernel(OnlinePass p, int mode, float* __restrict__ out,
                                      float* __restrict__ pot_out) {
  constexpr int K = 8;
  constexpr int S = geometry::online_tile_stride(DP);
  // Columns of a chunk unrolled: all for small DP; one at a time from DP = 32, where
  // K unrolled columns of 2 DP operations each make ptxas hoist more loads than the
  // 255 registers hold (it spilled kilobytes); s, inv and e then live in local memory,
  // one access per column against 2-3 DP operations.
  constexpr int kColUnroll = DP >= 32 ? 1 : K;
  __shared__ __align__(16) float tile[kTJ * S];
  const std::int64_t b = blockIdx.y;
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kThreads;
  const std::int64_t i = row0 + threadIdx.x;
  float x[1][DP], rc[1];
  load_rows<DP, 1, kEuclid>(p, b, row0, scale, x, rc);
  float acc[DP];
#pragma unroll
  for (int k = 0; k < DP; ++k) acc[k] = 0.f;
  ol::Lse st = ol::lse_empty();
  for (std::int64_t j0 = 0; j0 < p.n_cols; j0 += kTJ) {
    load_tile_packed<DP, kEuclid>(p, b, j0, scale, tile);
#pragma unroll 1
    for (int jj = 0; jj < kTJ; jj += K) {
      float s[K], inv[K];
#pragma unroll(kColUnroll)
      for (int q = 0; q < K; ++q) {
        float y[DP], h;
        read_col<DP>(tile + (jj + q) * S, y, h);
        if constexpr (kEuclid) {
          // c = c2 rsqrt(c2) as in euclid_from_sq, and the same rsqrt is 1/c.
          const float c2 = ol::sqdist<DP>(x[0], y);
          const float c2m = fmaxf(c2, 1e-30f);
          const float r = ol::rsqrt(c2m);
          s[q] = fmaf(-scale, c2m * r, h);
          inv[q] = c2 > 0.f ? r : 0.f;
        } else {
          s[q] = ol::score_sq<DP>(x[0], y, h);
          inv[q] = 1.f;
        }
      }
      float m = st.max;
#pragma unroll
      for (int q = 0; q < K; ++q) m = fmaxf(m, s[q]);
      const float f = ol::ex2(st.max - m);
#pragma unroll
      for (int k = 0; k < DP; ++k) acc[k] *= f;
      // The columns are read again rather than kept: an opaque offset stops the
      // compiler from reusing the first reads, which would hold K x DP values live.
      int again = jj * S;
      asm volatile("" : "+r"(again));
      float e[K];
#pragma unroll(kColUnroll)
      for (int q = 0; q < K; ++q) {
        e[q] = ol::ex2(s[q] - m);
        float y[DP], h;
        read_col<DP>(tile + again + q * S, y, h);
        if (kEuclid && mode == 1) {
          const float w = e[q] * inv[q];
#pragma unroll
          for (int k = 0; k < DP; ++k) acc[k] = fmaf(w, x[0][k] - y[k], acc[k]);
        } else {
#pragma unroll
          for (int k = 0; k < DP; ++k) acc[k] = fmaf(e[q], y[k], acc[k]);
        }
      }
      st.sum = fmaf(st.sum, f, ol::tree_sum(e));
      st.max = m;
    }
    __syncthreads();
  }
  if (i < p.n_rows) {
    const float inv_sum = st.sum > 0.f ? 1.f / st.sum : 0.f;
    float* o = out + (b * p.n_rows + i) * DP;
#pragma unroll
    for (int k = 0; k < DP; ++k) o[k] = acc[k] * inv_sum;
    if (pot_out != nullptr) {
      pot_out[b * p.n_rows + i] = ol::potential(ol::lse_value(st) - rc[0], 1.f, eps);
    }
  }
}

// ----------------------------------------------------------------- sampling ----

template <bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_sample_kernel(OnlinePass p, std::uint64_t seed, std::int64_t* __restrict__ out) {
  extern __shared__ __align__(16) float dyn_smem[];
  const int dp = p.dp;
  float* ys = dyn_smem;
  float* hs = dyn_smem + static_cast<std::size_t>(kTJ) * dp;
  const std::int64_t b = blockIdx.y;
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool valid = i < p.n_rows;
  const float* xg = p.rows + (b * p.n_rows + (valid ? i : 0)) * dp;
  float best = -INFINITY;
  std::int64_t arg = -1;
  for (std::int64_t j0 = 0; j0 < p.n_cols; j0 += kTJ) {
    const int cnt = load_tile_dyn(p, b, j0, scale, ys, hs);
    if (valid) {
      for (int jj = 0; jj < cnt; ++jj) {
        if (hs[jj] == -INFINITY) continue;  // zero weight: never sampled
        const std::int64_t j = j0 + jj;
        const float c = cost_dyn<kEuclid>(xg, ys + static_cast<std::size_t>(jj) * dp, dp);
        // Base-2 score plus the Gumbel variate in base 2 (argmax is scale invariant).
        const float s = fmaf(-scale, c, hs[jj]) +
                        kLog2e * static_cast<float>(otgpu::detail::gumbel(
                                     seed, static_cast<std::uint64_t>(p.batch_offset + b),
                                     static_cast<std::uint64_t>(p.row_offset + i),
                                     static_cast<std::uint64_t>(j)));
        if (s > best) {
          best = s;
          arg = j;
        }
      }
    }
    __syncthreads();
  }
  if (valid) out[b * p.n_rows + i] = arg;
}

// ----------------------------------------------------------------- launchers ----

void check_pass(const OnlinePass& p, const char* what) {
  if (p.B <= 0 || p.n_rows <= 0 || p.n_cols <= 0 || p.dp <= 0) {
    throw InvalidArgument(
        fmt::format("{}: sizes must be positive (B={}, n_rows={}, n_cols={}, dp={})", what, p.B,
                    p.n_rows, p.n_cols, p.dp));
  }
  if (p.B > kMaxGridY) {
    throw InvalidArgument(
        fmt::format("{}: batch B={} exceeds {} per launch", what, p.B, kMaxGridY));
  }
  if (p.cost != CostKind::sqeuclidean && p.cost != CostKind::euclidean) {
    throw InvalidArgument(fmt::format("{}: cost must be sqeuclidean or euclidean", what));
  }
  // The fixed-dimension kernels load points with float4 (dp % 4 == 0) or float2 (dp = 2).
  const auto misaligned = [&](const float* q) {
    const std::size_t align = p.dp % 4 == 0 ? 16 : (p.dp == 2 ? 8 : 4);
    return reinterpret_cast<std::uintptr_t>(q) % align != 0;
  };
  if (misaligned(p.rows) || misaligned(p.cols)) {
    throw InvalidArgument(
        fmt::format("{}: rows/cols must be aligned to the point size (dp={})", what, p.dp));
  }
  if (p.dp > 64 && p.dp % 4 != 0) {
    throw InvalidArgument(
        fmt::format("{}: padded dimension dp={} must be a multiple of 4 above 64", what, p.dp));
  }
}

std::size_t dyn_smem_bytes(int dp) { return geometry::online_smem_bytes(dp); }

/// Opts a dynamic-shared-memory kernel in to more than 48 KB when dp needs it. The cap
/// is a per-function attribute, not a per-launch one: set to this launch's size, a
/// host thread launching a larger dp could raise it and a second thread lower it again
/// before the first launches (the launch then fails with an invalid argument). So it
/// is always the device's opt-in limit, which every launcher agrees on; occupancy
/// follows the launch's own size. The kernels using it have no static shared memory.
template <class Kernel>
void prepare_dyn(Kernel kernel, std::size_t smem) {
  if (smem > 48 * 1024) {
    int dev = 0, limit = 0;
    OTGPU_CUDA_CHECK(cudaGetDevice(&dev));
    OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > static_cast<std::size_t>(limit)) {
      throw InvalidArgument(fmt::format(
          "online Sinkhorn: dimension too large: a tile needs {} bytes of shared memory, the "
          "device allows {}",
          smem, limit));
    }
    OTGPU_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit));
  }
}

template <int DP, bool kEuclid>
void launch_fixed(const OnlinePass& p, const float* lambda, float* out, cudaStream_t s) {
  constexpr int R = rows_per_thread<DP>();
  const std::int64_t per_block = static_cast<std::int64_t>(kThreads) * R;
  const dim3 grid(static_cast<unsigned>((p.n_rows + per_block - 1) / per_block),
                  static_cast<unsigned>(p.B), static_cast<unsigned>(p.splits));
  online_half_step_kernel<DP, kEuclid><<<grid, kThreads, 0, s>>>(p, lambda, out);
}

template <bool kEuclid>
void launch_half(const OnlinePass& p, const float* lambda, float* out, cudaStream_t s) {
  switch (p.dp) {
    case 1:
      return launch_fixed<1, kEuclid>(p, lambda, out, s);
    case 2:
      return launch_fixed<2, kEuclid>(p, lambda, out, s);
    case 4:
      return launch_fixed<4, kEuclid>(p, lambda, out, s);
    case 8:
      return launch_fixed<8, kEuclid>(p, lambda, out, s);
    case 16:
      return launch_fixed<16, kEuclid>(p, lambda, out, s);
    case 32:
      return launch_fixed<32, kEuclid>(p, lambda, out, s);
    case 64:
      return launch_fixed<64, kEuclid>(p, lambda, out, s);
    default:
      break;
  }
  const std::size_t smem = dyn_smem_bytes(p.dp);
  prepare_dyn(online_half_step_dyn_kernel<kEuclid>, smem);
  const dim3 grid(static_cast<unsigned>((p.n_rows + kThreads - 1) / kThreads),
                  static_cast<unsigned>(p.B), static_cast<unsigned>(p.splits));
  online_half_step_dyn_kernel<kEuclid><<<grid, kThreads, smem, s>>>(p, lambda, out);
}

dim3 row_grid(const OnlinePass& p) {
  return dim3(static_cast<unsigned>((p.n_rows + kThreads - 1) / kThreads),
              static_cast<unsigned>(p.B));
}

}  // namespace

void online_half_step(const OnlinePass& p, const float* lambda, float* out, cudaStream_t stream) {
  if (p.tensor_cores) return online_half_step_mma(p, lambda, out, stream);  // sinkhorn_mma.h
  check_pass(p, "online_half_step");
  if (p.dp <= 64 && (p.dp & (p.dp - 1)) != 0) {
    throw InvalidArgument(
        fmt::format("online_half_step: dp={} must be a power of two up to 64", p.dp));
  }
  if (p.splits < 1 || p.splits > kMaxSplits || (p.splits > 1 && p.partials == nullptr)) {
    throw InvalidArgument(
        fmt::format("online_half_step: splits={} must be in [1, {}] and splits > 1 needs partials",
                    p.splits, kMaxSplits));
  }
  if (p.cost == CostKind::euclidean) {
    launch_half<true>(p, lambda, out, stream);
  } else {
    launch_half<false>(p, lambda, out, stream);
  }
  OTGPU_LAUNCH_CHECK();
  if (p.splits > 1) {
    const dim3 grid(static_cast<unsigned>((p.n_rows + 255) / 256), static_cast<unsigned>(p.B));
    merge_splits_kernel<<<grid, 256, 0, stream>>>(p, lambda, out);
    OTGPU_LAUNCH_CHECK();
  }
}

namespace {

template <int DP>
OnlineKernelHandle fixed_handle() {
  return {reinterpret_cast<const void*>(&online_half_step_kernel<DP, false>), 0};
}

}  // namespace

OnlineKernelHandle online_half_step_handle(int dp) {
  switch (dp) {
    case 1:
      return fixed_handle<1>();
    case 2:
      return fixed_handle<2>();
    case 4:
      return fixed_handle<4>();
    case 8:
      return fixed_handle<8>();
    case 16:
      return fixed_handle<16>();
    case 32:
      return fixed_handle<32>();
    case 64:
      return fixed_handle<64>();
    default:
      break;
  }
  if (dp <= 0 || dp % 4 != 0) {
    throw InvalidArgument(fmt::format(
        "online_half_step_handle: padded dimension dp={} must be a power of two up to 64 or a "
        "multiple of 4",
        dp));
  }
  const std::size_t smem = dyn_smem_bytes(dp);
  // The opt-in must precede the occupancy query, or a tile above 48 KB counts as 0 blocks.
  prepare_dyn(online_half_step_dyn_kernel<false>, smem);
  return {reinterpret_cast<const void*>(&online_half_step_dyn_kernel<false>), smem};
}

void online_row_stats(const OnlinePass& p, float* lse, float* cost_mean, cudaStream_t stream) {
  if (derived_needs_mma(p)) return online_row_stats_mma(p, lse, cost_mean, stream);
  check_pass(p, "online_row_stats");
  const std::size_t smem = dyn_smem_bytes(p.dp);
  if (p.cost == CostKind::euclidean) {
    prepare_dyn(online_row_stats_kernel<true>, smem);
    online_row_stats_kernel<true><<<row_grid(p), kThreads, smem, stream>>>(p, lse, cost_mean);
  } else {
    prepare_dyn(online_row_stats_kernel<false>, smem);
    online_row_stats_kernel<false><<<row_grid(p), kThreads, smem, stream>>>(p, lse, cost_mean);
  }
  OTGPU_LAUNCH_CHECK();
}

namespace {

template <int DP, bool kEuclid>
void launch_mean_fixed(const OnlinePass& p, int mode, float* out, float* pot_out, cudaStream_t s) {
  online_weighted_mean_fixed_kernel<DP, kEuclid>
      <<<row_grid(p), kThreads, 0, s>>>(p, mode, out, pot_out);
}

template <bool kEuclid>
bool launch_mean(const OnlinePass& p, int mode, float* out, float* pot_out, cudaStream_t s) {
  switch (p.dp) {
    case 1:
      return launch_mean_fixed<1, kEuclid>(p, mode, out, pot_out, s), true;
    case 2:
      return launch_mean_fixed<2, kEuclid>(p, mode, out, pot_out, s), true;
    case 4:
      return launch_mean_fixed<4, kEuclid>(p, mode, out, pot_out, s), true;
    case 8:
      return launch_mean_fixed<8, kEuclid>(p, mode, out, pot_out, s), true;
    case 16:
      return launch_mean_fixed<16, kEuclid>(p, mode, out, pot_out, s), true;
    case 32:
      return launch_mean_fixed<32, kEuclid>(p, mode, out, pot_out, s), true;
    case 64:
      return launch_mean_fixed<64, kEuclid>(p, mode, out, pot_out, s), true;
    default:
      return false;
  }
}

}  // namespace

void online_weighted_mean(const OnlinePass& p, int mode, float* out, cudaStream_t stream,
                          float* potential_out) {
  // Checked before the dispatch: the tiled tensor-core mean would take mode 1 with the
  // squared Euclidean cost and return unit directions the gradient does not use.
  if (mode != 0 && mode != 1) {
    throw InvalidArgument(fmt::format("online_weighted_mean: mode {} (expected 0 or 1)", mode));
  }
  if (mode == 1 && p.cost != CostKind::euclidean) {
    throw InvalidArgument(
        "online_weighted_mean: mode 1 (the gradient direction of |x - y|) "
        "needs cost euclidean");
  }
  if (derived_needs_mma(p)) {
    // The derived kernels' column tile does not fit: the potential by a (tensor-core)
    // half-step, then the tiled mean.
    if (potential_out != nullptr) {
      OnlinePass single = p;
      single.splits = 1;
      single.partials = nullptr;
      online_half_step(single, nullptr, potential_out, stream);
    }
    return online_weighted_mean_tiled(p, mode, out, stream);
  }
  check_pass(p, "online_weighted_mean");
  const bool euclid = p.cost == CostKind::euclidean;
  if (euclid ? launch_mean<true>(p, mode, out, potential_out, stream)
             : launch_mean<false>(p, mode, out, potential_out, stream)) {
    OTGPU_LAUNCH_CHECK();
    return;
  }
  // Padded dp above 64: the potential by a half-step, then the mean in passes of
  // kMeanCoords coordinates.
  if (potential_out != nullptr) {
    OnlinePass single = p;
    single.splits = 1;
    single.partials = nullptr;
    online_half_step(single, nullptr, potential_out, stream);
  }
  const std::size_t smem = dyn_smem_bytes(p.dp);
  for (int k0 = 0; k0 < p.dp; k0 += kMeanCoords) {
    const int kc = p.dp - k0 < kMeanCoords ? p.dp - k0 : kMeanCoords;
    if (euclid) {
      prepare_dyn(online_weighted_mean_kernel<true>, smem);
      online_weighted_mean_kernel<true>
          <<<row_grid(p), kThreads, smem, stream>>>(p, mode, k0, kc, out);
    } else {
      prepare_dyn(online_weighted_mean_kernel<false>, smem);
      online_weighted_mean_kernel<false>
          <<<row_grid(p), kThreads, smem, stream>>>(p, mode, k0, kc, out);
    }
    OTGPU_LAUNCH_CHECK();
  }
}

void online_sample(const OnlinePass& p, std::uint64_t seed, std::int64_t* out,
                   cudaStream_t stream) {
  if (derived_needs_mma(p)) return online_sample_mma(p, seed, out, stream);
  check_pass(p, "online_sample");
  const std::size_t smem = dyn_smem_bytes(p.dp);
  if (p.cost == CostKind::euclidean) {
    prepare_dyn(online_sample_kernel<true>, smem);
    online_sample_kernel<true><<<row_grid(p), kThreads, smem, stream>>>(p, seed, out);
  } else {
    prepare_dyn(online_sample_kernel<false>, smem);
    online_sample_kernel<false><<<row_grid(p), kThreads, smem, stream>>>(p, seed, out);
  }
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
