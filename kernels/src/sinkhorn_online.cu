// Online point-cloud Sinkhorn kernels: C_ij is recomputed from X/Y tiles and never
// stored. One thread owns R rows (x in registers); a block streams tiles of kTJ
// columns of Y through shared memory and keeps a running base-2 (max, sum) per row,
// rescaled once per chunk of kChunk scores, so each pair costs one ex2.approx.
//
// Count and bound. One half-step evaluates n*m scores: per pair d subtracts and d
// FMAs for the distance, one FMA for the score, one MUFU.EX2 and one add (plus one
// rescale EX2 per kChunk pairs). An iteration (f- and g-update) therefore costs
// 2 n m (1 + 1/kChunk) exponentials. The H100 SXM retires 16 EX2/clk/SM against 128
// FP32 FMA/clk/SM, so for d <= ~4 the MUFU bounds the kernel at about
// 132 * 16 * 1.98e9 = 4.2e12 exp/s (bench W1 measures against the probed rate); R rows
// per thread amortize each shared-memory read of y_j over R pairs so the LSU stays
// below the MUFU. Around d >= 8 the 2d FP32 ops per pair pass the 8 FP32 ops per
// EX2 slot and the distance arithmetic becomes the bound.
//
// Distances use differences (x - y)^2, not |x|^2 + |y|^2 - 2<x,y>, on data centered
// by the driver: no cancellation, fp32-level accuracy of C (|dC| ~ 1e-7 C, far below
// eps for any eps the fp32 scores can resolve). Tensor cores (3xTF32 mma.sync on the
// -2<x,y> term for d >= 16) are not used yet: they need the |x|^2 + |y|^2 - 2<x,y>
// form, whose cancellation on near pairs must stay far below eps, and a fragment
// layout for the score tile; the fp32 SIMT path is exact to fp32 and correct by
// inspection, which matters more while it cannot be profiled here.
//
// Flash-decoding: when the row blocks alone cannot fill the GPU (short n, B = 1), the
// column range is split over blockIdx.z (the host planner chooses how many); each split
// writes a partial
// (max, sum) per row and a small kernel merges them.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdint>

#include "otgpu/detail/math.h"
#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "otgpu_kernels/sinkhorn_mma.h"
#include "otgpu_kernels/sinkhorn_online.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

using detail::ex2;
using detail::kLn2;
using detail::kLog2e;
using detail::Lse2;
using detail::lse2_empty;
using detail::lse2_push;
using detail::lse2_value;
using detail::potential_from_lse2;
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

/// Final write of a half-step row: the potential, or the split's partial pair.
__device__ __forceinline__ void write_row(const OnlinePass& p, std::int64_t b, std::int64_t i,
                                          Lse2 acc, float lam, float eps, float* out) {
  if (p.splits > 1) {
    reinterpret_cast<float2*>(p.partials)[(b * p.splits + blockIdx.z) * p.n_rows + i] =
        make_float2(acc.max, acc.sum);
  } else {
    out[b * p.n_rows + i] = potential_from_lse2(lse2_value(acc), lam, eps);
  }
}

/// Rows per thread for a padded dimension: more rows for small d, where each
/// shared-memory read of y_j is otherwise one load per exponential.
template <int DP>
constexpr int rows_per_thread() {
  return geometry::online_rows_per_thread(DP);
}

template <int DP, bool kEuclid>
__device__ __forceinline__ float cost_fixed(const float (&x)[DP], const float* y) {
  float acc = 0.f;
#pragma unroll
  for (int k = 0; k < DP; ++k) {
    const float diff = x[k] - y[k];
    acc = fmaf(diff, diff, acc);
  }
  return kEuclid ? sqrtf(acc) : acc;
}

template <bool kEuclid>
__device__ __forceinline__ float cost_dyn(const float* x, const float* y, int dp) {
  float acc = 0.f;
  for (int k = 0; k < dp; ++k) {
    const float diff = x[k] - y[k];
    acc = fmaf(diff, diff, acc);
  }
  return kEuclid ? sqrtf(acc) : acc;
}

/// Loads columns [j0, j0 + kTJ) of problem b into shared memory: ys [kTJ][DP] and
/// hs = log2(e) logw_j + pot_j * scale (-inf past n_cols and for zero weights).
/// Ends with a barrier; every thread of the block must call it.
template <int DP>
__device__ __forceinline__ void load_tile(const float* cols_b, const float* logw_b,
                                          const float* pot_b, std::int64_t j0, std::int64_t n_cols,
                                          float scale, float* ys, float* hs) {
  const std::int64_t left = n_cols - j0;
  const int cnt = left < kTJ ? static_cast<int>(left) : kTJ;
  const float* src = cols_b + j0 * DP;
  for (int k = threadIdx.x; k < kTJ * DP; k += blockDim.x) {
    ys[k] = (k / DP) < cnt ? src[k] : 0.f;
  }
  for (int k = threadIdx.x; k < kTJ; k += blockDim.x) {
    hs[k] = k < cnt ? scaled_term(logw_b[j0 + k], pot_b[j0 + k], scale) : -INFINITY;
  }
  __syncthreads();
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

template <int DP, bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_half_step_kernel(OnlinePass p, const float* __restrict__ lambda,
                            float* __restrict__ out) {
  constexpr int R = rows_per_thread<DP>();
  __shared__ __align__(16) float ys[kTJ * DP];
  __shared__ float hs[kTJ];
  const std::int64_t b = blockIdx.y;
  if (p.active != nullptr && p.active[b] == 0) return;  // uniform over the block
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * kThreads * R;
  float x[R][DP];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const std::int64_t i = row0 + r * kThreads + threadIdx.x;
#pragma unroll
    for (int k = 0; k < DP; ++k) {
      x[r][k] = i < p.n_rows ? p.rows[(b * p.n_rows + i) * DP + k] : 0.f;
    }
  }
  Lse2 acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = lse2_empty();
  const float* cols_b = p.cols + b * p.n_cols * DP;
  const float* logw_b = p.col_logw + b * p.n_cols;
  const float* pot_b = p.col_pot + b * p.n_cols;
  std::int64_t j_begin, j_end;
  split_range(p, j_begin, j_end);
  for (std::int64_t j0 = j_begin; j0 < j_end; j0 += kTJ) {
    load_tile<DP>(cols_b, logw_b, pot_b, j0, p.n_cols, scale, ys, hs);
#pragma unroll 2
    for (int jj = 0; jj < kTJ; jj += kChunk) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float s[kChunk];
#pragma unroll
        for (int q = 0; q < kChunk; ++q) {
          s[q] = fmaf(-scale, cost_fixed<DP, kEuclid>(x[r], ys + (jj + q) * DP), hs[jj + q]);
        }
        lse2_push(acc[r], s);
      }
    }
    __syncthreads();  // the tile is reused by the next load
  }
  const float lam = lambda != nullptr ? lambda[b] : 1.f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const std::int64_t i = row0 + r * kThreads + threadIdx.x;
    if (i < p.n_rows) write_row(p, b, i, acc[r], lam, eps, out);
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
  Lse2 acc = lse2_empty();
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
      lse2_push(acc, s);
    }
    __syncthreads();
  }
  if (valid) write_row(p, b, i, acc, lambda != nullptr ? lambda[b] : 1.f, eps, out);
}

/// Merges the splits' partial pairs of each row into the potential.
__global__ void __launch_bounds__(256)
    merge_splits_kernel(OnlinePass p, const float* __restrict__ lambda, float* __restrict__ out) {
  const std::int64_t b = blockIdx.y;
  if (p.active != nullptr && p.active[b] == 0) return;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= p.n_rows) return;
  const float2* part = reinterpret_cast<const float2*>(p.partials);
  Lse2 acc = lse2_empty();
  for (int z = 0; z < p.splits; ++z) {
    const float2 v = part[(b * p.splits + z) * p.n_rows + i];
    acc = detail::lse2_merge(acc, Lse2{v.x, v.y});
  }
  const float lam = lambda != nullptr ? lambda[b] : 1.f;
  out[b * p.n_rows + i] = potential_from_lse2(lse2_value(acc), lam, p.eps[b]);
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
                                     static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(j)));
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
  if (p.dp > 64 && p.dp % 4 != 0) {
    throw InvalidArgument(
        fmt::format("{}: padded dimension dp={} must be a multiple of 4 above 64", what, p.dp));
  }
}

std::size_t dyn_smem_bytes(int dp) { return geometry::online_smem_bytes(dp); }

/// Opts a dynamic-shared-memory kernel in to more than 48 KB when dp needs it.
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
    OTGPU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
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

void online_weighted_mean(const OnlinePass& p, int mode, float* out, cudaStream_t stream) {
  if (derived_needs_mma(p)) return online_weighted_mean_tiled(p, mode, out, stream);
  check_pass(p, "online_weighted_mean");
  if (mode != 0 && mode != 1) {
    throw InvalidArgument(fmt::format("online_weighted_mean: mode {} (expected 0 or 1)", mode));
  }
  const std::size_t smem = dyn_smem_bytes(p.dp);
  for (int k0 = 0; k0 < p.dp; k0 += kMeanCoords) {
    const int kc = p.dp - k0 < kMeanCoords ? p.dp - k0 : kMeanCoords;
    if (p.cost == CostKind::euclidean) {
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
