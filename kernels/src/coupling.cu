// Kernels of the coupling samplers (otgpu_kernels/coupling.h). Every random number is
// the counter-based Philox of otgpu/detail/coupling_math.h, as on the CPU, so a draw
// depends on (seed, problem, index) only, never on the launch shape.
#include <cuda_runtime.h>
#include <cub/cub.cuh>

#include <algorithm>
#include <cstdint>

#include "grid.cuh"
#include "otgpu/detail/coupling_math.h"
#include "otgpu_kernels/coupling.h"
#include "otgpu_kernels/coupling_rules.h"
#include "otgpu_kernels/cuda_check.h"

namespace otgpu::kernels {

namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kTile = 4096;  // entries per tile of the ordered compaction
constexpr std::int64_t kMaxGridY = 65535;

using topk::ordered_bits;

/// The perturbed log-plan key of entry e = i * m + j of problem k (problem k's C, f, g).
__device__ __forceinline__ std::uint32_t topk_key(const float* C, const float* f, const float* g,
                                                  double inv_eps, std::int64_t m, std::int64_t e,
                                                  std::uint64_t key_seed, std::int64_t k) {
  const std::int64_t i = e / m, j = e - i * m;
  return ordered_bits(topk::key_value(f[i], g[j], C[e], inv_eps, key_seed, k, i, j));
}

__global__ void __launch_bounds__(kThreads)
    row_sqnorms_kernel(const float* __restrict__ x, std::int64_t rows, std::int64_t d,
                       float* __restrict__ out) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t r = blockIdx.x;
  if (r >= rows) return;
  float acc = 0.f;
  for (std::int64_t c = threadIdx.x; c < d; c += kThreads) {
    const float v = x[r * d + c];
    acc += v * v;
  }
  const float total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) out[r] = total;
}

__global__ void __launch_bounds__(kThreads)
    sqdist_kernel(float* __restrict__ C, const float* __restrict__ nx, const float* __restrict__ ny,
                  std::int64_t K, std::int64_t n, std::int64_t m, bool euclidean) {
  const std::int64_t total = K * n * m;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t k = e / (n * m), rem = e - k * n * m;
    const std::int64_t i = rem / m, j = rem - i * m;
    float c = fmaxf(nx[k * n + i] + ny[k * m + j] - 2.f * C[e], 0.f);
    C[e] = euclidean ? sqrtf(c) : c;
  }
}

__global__ void __launch_bounds__(kThreads)
    eps_kernel(const float* __restrict__ C, std::int64_t nm, double eps, bool relative,
               double* __restrict__ out) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t k = blockIdx.x;
  double acc = 0;
  if (relative) {
    for (std::int64_t e = threadIdx.x; e < nm; e += kThreads) acc += C[k * nm + e];
  }
  const double total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) out[k] = relative ? eps * total / static_cast<double>(nm) : eps;
}

struct MaxOp {
  template <class T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return a < b ? b : a;
  }
};

struct LseF {
  float max, sum;
};

__device__ __forceinline__ LseF lse_merge_f(LseF a, LseF b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  if (a.max >= b.max) return {a.max, a.sum + b.sum * __expf(b.max - a.max)};
  return {b.max, b.sum + a.sum * __expf(a.max - b.max)};
}

struct LseMerge {
  __device__ __forceinline__ LseF operator()(const LseF& a, const LseF& b) const {
    return lse_merge_f(a, b);
  }
};

__global__ void __launch_bounds__(kThreads)
    row_log_mass_kernel(const float* __restrict__ C, const float* __restrict__ f,
                        const float* __restrict__ g, const double* __restrict__ eps, std::int64_t n,
                        std::int64_t m, float* __restrict__ logr) {
  using Reduce = cub::BlockReduce<LseF, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t row = blockIdx.x;  // k * n + i
  const std::int64_t k = row / n;
  const float inv = static_cast<float>(1.0 / eps[k]);
  const float* c = C + row * m;
  const float* gk = g + k * m;
  LseF acc{-INFINITY, 0.f};
  for (std::int64_t j = threadIdx.x; j < m; j += kThreads) {
    const float s = (gk[j] - c[j]) * inv;
    // A zero-mass entry (an infinite cost): exp(-inf - (-inf)) below would be NaN while
    // the running max is still -inf.
    if (s == -INFINITY) continue;
    if (s <= acc.max) {
      acc.sum += __expf(s - acc.max);
    } else {
      acc.sum = acc.sum * __expf(acc.max - s) + 1.f;
      acc.max = s;
    }
  }
  const LseF total = Reduce(tmp).Reduce(acc, LseMerge{});
  if (threadIdx.x == 0) logr[row] = f[row] * inv + total.max + __logf(total.sum);
}

__global__ void __launch_bounds__(kThreads)
    draw_rows_kernel(const float* __restrict__ logr, std::int64_t n, std::int64_t P,
                     std::uint64_t seed, double* __restrict__ cdf, std::int64_t* __restrict__ out) {
  using ReduceF = cub::BlockReduce<float, kThreads>;
  using ReduceI = cub::BlockReduce<std::int64_t, kThreads>;
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ union {
    typename ReduceF::TempStorage rf;
    typename ReduceI::TempStorage ri;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ float s_top;
  __shared__ double s_carry;
  __shared__ std::int64_t s_last;
  const std::int64_t k = blockIdx.x;
  const float* lr = logr + k * n;
  double* cd = cdf + k * n;
  float top = -INFINITY;
  std::int64_t last = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += kThreads) top = fmaxf(top, lr[i]);
  top = ReduceF(tmp.rf).Reduce(top, MaxOp{});
  if (threadIdx.x == 0) {
    s_top = top;
    s_carry = 0;
  }
  __syncthreads();
  top = s_top;
  // Inclusive prefix sums of r_i / r_max in double, a chunk of kThreads at a time.
  for (std::int64_t base = 0; base < n; base += kThreads) {
    const std::int64_t i = base + threadIdx.x;
    const double w = i < n ? exp(static_cast<double>(lr[i]) - static_cast<double>(top)) : 0.0;
    if (w > 0 && i > last) last = i;
    double incl, chunk;
    Scan(tmp.scan).InclusiveSum(w, incl, chunk);
    const double carry = s_carry;
    if (i < n) cd[i] = carry + incl;
    __syncthreads();
    if (threadIdx.x == 0) s_carry = carry + chunk;
    __syncthreads();
  }
  last = ReduceI(tmp.ri).Reduce(last, MaxOp{});
  if (threadIdx.x == 0) s_last = last;
  __syncthreads();
  const double total = s_carry;
  for (std::int64_t t = threadIdx.x; t < P; t += kThreads) {
    const double u = draws::row_uniform(seed, k, t) * total;
    std::int64_t lo = 0, hi = n;  // first index with cdf > u
    while (lo < hi) {
      const std::int64_t mid = (lo + hi) / 2;
      if (cd[mid] > u) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    out[k * P + t] = lo < s_last ? lo : s_last;
  }
}

__global__ void __launch_bounds__(kThreads)
    draw_columns_kernel(const float* __restrict__ C, const float* __restrict__ g,
                        const double* __restrict__ eps, const std::int64_t* __restrict__ rows,
                        std::int64_t K, std::int64_t n, std::int64_t m, std::int64_t P,
                        std::uint64_t col_seed, std::int64_t* __restrict__ out) {
  const std::int64_t warp = (blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= K * P) return;
  const std::int64_t k = warp / P, t = warp - k * P;
  const std::int64_t i = rows[warp];
  const double inv = 1.0 / eps[k];
  const float* c = C + (k * n + i) * m;
  const float* gk = g + k * m;
  double best = -INFINITY;
  std::int64_t arg = -1;
  for (std::int64_t j = lane; j < m; j += 32) {
    const double v = draws::column_score(gk[j], c[j], inv, col_seed, k, t, j);
    if (v > best) {
      best = v;
      arg = j;
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const double ob = __shfl_down_sync(0xffffffffu, best, off);
    const std::int64_t oa = __shfl_down_sync(0xffffffffu, arg, off);
    if (ob > best || (ob == best && oa >= 0 && (arg < 0 || oa < arg))) {
      best = ob;
      arg = oa;
    }
  }
  if (lane == 0) out[warp] = arg;
}

// ---- Gumbel-top-k: radix select of the threshold, then an ordered compaction ----

__global__ void __launch_bounds__(kThreads)
    topk_init_kernel(std::uint32_t* prefix, std::uint32_t* remaining, std::int64_t K,
                     std::int64_t P) {
  const std::int64_t k = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x;
  if (k >= K) return;
  prefix[k] = 0;
  remaining[k] = static_cast<std::uint32_t>(P);
}

/// Histogram of the 8 bits at `shift` of the keys whose higher bits equal the prefix.
__global__ void __launch_bounds__(kThreads)
    topk_hist_kernel(const float* __restrict__ C, const float* __restrict__ f,
                     const float* __restrict__ g, const double* __restrict__ eps, std::int64_t n,
                     std::int64_t m, std::uint64_t key_seed, int shift,
                     const std::uint32_t* __restrict__ prefix, std::uint32_t* __restrict__ hist,
                     std::int64_t k0) {
  __shared__ std::uint32_t local[256];
  const std::int64_t k = k0 + blockIdx.y;
  for (int b = threadIdx.x; b < 256; b += kThreads) local[b] = 0;
  __syncthreads();
  const std::int64_t nm = n * m;
  const double inv = 1.0 / eps[k];
  const std::uint32_t want = prefix[k];
  const std::uint32_t high_mask = shift >= 24 ? 0u : (0xffffffffu << (shift + 8));
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; e < nm;
       e += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const std::uint32_t u = topk_key(C + k * nm, f + k * n, g + k * m, inv, m, e, key_seed, k);
    if ((u & high_mask) == (want & high_mask)) atomicAdd(&local[(u >> shift) & 255u], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += kThreads) {
    if (local[b] != 0) atomicAdd(&hist[k * 256 + b], local[b]);
  }
}

/// Picks the bin holding the remaining-th largest key; clears the histogram.
__global__ void topk_select_kernel(std::uint32_t* hist, std::uint32_t* prefix,
                                   std::uint32_t* remaining, std::int64_t K, int shift) {
  const std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (k >= K) return;
  std::uint32_t* h = hist + k * 256;
  const std::uint32_t need = remaining[k];
  std::uint32_t above = 0;
  const int bin = topk::pick_bin(h, need, above);
  prefix[k] |= static_cast<std::uint32_t>(bin) << shift;
  remaining[k] = need - above;
  for (int b = 0; b < 256; ++b) h[b] = 0;
}

/// Per tile: keys above the threshold and keys equal to it.
__global__ void __launch_bounds__(kThreads)
    topk_count_kernel(const float* __restrict__ C, const float* __restrict__ f,
                      const float* __restrict__ g, const double* __restrict__ eps, std::int64_t n,
                      std::int64_t m, std::uint64_t key_seed,
                      const std::uint32_t* __restrict__ prefix, std::int64_t tiles,
                      std::uint32_t* __restrict__ tile_gt, std::uint32_t* __restrict__ tile_eq,
                      std::int64_t k0) {
  using Reduce = cub::BlockReduce<std::uint32_t, kThreads>;
  __shared__ typename Reduce::TempStorage tmp_gt;
  __shared__ typename Reduce::TempStorage tmp_eq;
  const std::int64_t k = k0 + blockIdx.y, tile = blockIdx.x;
  const std::int64_t nm = n * m;
  const double inv = 1.0 / eps[k];
  const std::uint32_t thr = prefix[k];
  std::uint32_t gt = 0, eq = 0;
  const std::int64_t end = nm < (tile + 1) * kTile ? nm : (tile + 1) * kTile;
  for (std::int64_t e = tile * kTile + threadIdx.x; e < end; e += kThreads) {
    const std::uint32_t u = topk_key(C + k * nm, f + k * n, g + k * m, inv, m, e, key_seed, k);
    gt += u > thr;
    eq += u == thr;
  }
  const std::uint32_t tg = Reduce(tmp_gt).Sum(gt);
  const std::uint32_t te = Reduce(tmp_eq).Sum(eq);
  if (threadIdx.x == 0) {
    tile_gt[k * tiles + tile] = tg;
    tile_eq[k * tiles + tile] = te;
  }
}

/// Per problem: exclusive offsets of the ties and of the selected entries per tile.
__global__ void __launch_bounds__(kThreads)
    topk_scan_kernel(const std::uint32_t* __restrict__ tile_gt,
                     const std::uint32_t* __restrict__ tile_eq,
                     const std::uint32_t* __restrict__ remaining, std::int64_t tiles,
                     std::int64_t* __restrict__ eq_off, std::int64_t* __restrict__ sel_off) {
  using Scan = cub::BlockScan<std::int64_t, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ std::int64_t s_eq, s_sel;
  const std::int64_t k = blockIdx.x;
  const std::int64_t need = remaining[k];
  if (threadIdx.x == 0) s_eq = s_sel = 0;
  __syncthreads();
  for (std::int64_t base = 0; base < tiles; base += kThreads) {
    const std::int64_t t = base + threadIdx.x;
    const std::int64_t eq = t < tiles ? tile_eq[k * tiles + t] : 0;
    std::int64_t eq_excl, eq_total;
    Scan(tmp).ExclusiveSum(eq, eq_excl, eq_total);
    __syncthreads();
    const std::int64_t before_eq = s_eq + eq_excl;
    // Ties of this tile that are taken: those of rank < need among all ties.
    const std::int64_t taken = topk::ties_taken(need, before_eq, eq);
    const std::int64_t sel = t < tiles ? tile_gt[k * tiles + t] + taken : 0;
    std::int64_t sel_excl, sel_total;
    Scan(tmp).ExclusiveSum(sel, sel_excl, sel_total);
    if (t < tiles) {
      eq_off[k * tiles + t] = before_eq;
      sel_off[k * tiles + t] = s_sel + sel_excl;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      s_eq += eq_total;
      s_sel += sel_total;
    }
    __syncthreads();
  }
}

/// Writes the selected entries of each tile in increasing linear index.
__global__ void __launch_bounds__(kThreads)
    topk_write_kernel(const float* __restrict__ C, const float* __restrict__ f,
                      const float* __restrict__ g, const double* __restrict__ eps, std::int64_t n,
                      std::int64_t m, std::int64_t P, std::uint64_t key_seed,
                      const std::uint32_t* __restrict__ prefix,
                      const std::uint32_t* __restrict__ remaining, std::int64_t tiles,
                      const std::int64_t* __restrict__ eq_off,
                      const std::int64_t* __restrict__ sel_off, std::int64_t* __restrict__ i_out,
                      std::int64_t* __restrict__ j_out, std::int64_t k0) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ std::int64_t s_eq, s_sel;
  const std::int64_t k = k0 + blockIdx.y, tile = blockIdx.x;
  const std::int64_t nm = n * m;
  const double inv = 1.0 / eps[k];
  const std::uint32_t thr = prefix[k];
  const std::int64_t need = remaining[k];
  if (threadIdx.x == 0) {
    s_eq = eq_off[k * tiles + tile];
    s_sel = sel_off[k * tiles + tile];
  }
  __syncthreads();
  const std::int64_t end = nm < (tile + 1) * kTile ? nm : (tile + 1) * kTile;
  for (std::int64_t base = tile * kTile; base < end; base += kThreads) {
    const std::int64_t e = base + threadIdx.x;
    std::uint32_t u = 0;
    if (e < end) u = topk_key(C + k * nm, f + k * n, g + k * m, inv, m, e, key_seed, k);
    const int is_eq = e < end && u == thr;
    int eq_rank, eq_total;
    Scan(tmp).ExclusiveSum(is_eq, eq_rank, eq_total);
    __syncthreads();
    const int chosen = e < end && (u > thr || (is_eq && s_eq + eq_rank < need));
    int sel_rank, sel_total;
    Scan(tmp).ExclusiveSum(chosen, sel_rank, sel_total);
    const std::int64_t pos = s_sel + sel_rank;
    if (chosen && pos < P) {
      i_out[k * P + pos] = e / m;
      j_out[k * P + pos] = e % m;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      s_eq += eq_total;
      s_sel += sel_total;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads)
    iota_kernel(std::int64_t* out, std::int64_t K, std::int64_t n) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < K * n;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    out[e] = e % n;
  }
}

__global__ void __launch_bounds__(kThreads)
    pair_cost_kernel(const float* __restrict__ C, const std::int64_t* __restrict__ i,
                     const std::int64_t* __restrict__ j, std::int64_t n, std::int64_t m,
                     std::int64_t P, double* __restrict__ mean) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t k = blockIdx.x;
  using ReduceN = cub::BlockReduce<std::int64_t, kThreads>;
  __shared__ typename ReduceN::TempStorage tmp_n;
  double acc = 0;
  std::int64_t valid = 0;
  for (std::int64_t t = threadIdx.x; t < P; t += kThreads) {
    const std::int64_t a = i[k * P + t], b = j[k * P + t];
    if (a >= 0 && b >= 0) {
      acc += C[(k * n + a) * m + b];
      ++valid;
    }
  }
  const double total = Reduce(tmp).Sum(acc);
  const std::int64_t count = ReduceN(tmp_n).Sum(valid);
  // The mean over the pairs that exist (a draw over NaN scores has j = -1), 0 for none:
  // what the CPU's mean_pair_cost reports.
  if (threadIdx.x == 0) mean[k] = count > 0 ? total / static_cast<double>(count) : 0.0;
}

unsigned blocks_for(std::int64_t total) { return detail::grid_stride_blocks(total, kThreads); }

}  // namespace

void row_sqnorms(const float* x, std::int64_t rows, std::int64_t d, float* out, cudaStream_t s) {
  if (rows <= 0) return;
  row_sqnorms_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, rows, d, out);
  OTGPU_LAUNCH_CHECK();
}

void sqdist_from_gram(float* C, const float* nx, const float* ny, std::int64_t K, std::int64_t n,
                      std::int64_t m, bool euclidean, cudaStream_t s) {
  sqdist_kernel<<<blocks_for(K * n * m), kThreads, 0, s>>>(C, nx, ny, K, n, m, euclidean);
  OTGPU_LAUNCH_CHECK();
}

void coupling_eps(const float* C, std::int64_t K, std::int64_t nm, double eps, bool relative,
                  double* eps_out, cudaStream_t s) {
  eps_kernel<<<static_cast<unsigned>(K), kThreads, 0, s>>>(C, nm, eps, relative, eps_out);
  OTGPU_LAUNCH_CHECK();
}

void row_log_mass(const float* C, const float* f, const float* g, const double* eps, std::int64_t K,
                  std::int64_t n, std::int64_t m, float* logr, cudaStream_t s) {
  row_log_mass_kernel<<<static_cast<unsigned>(K * n), kThreads, 0, s>>>(C, f, g, eps, n, m, logr);
  OTGPU_LAUNCH_CHECK();
}

void draw_rows(const float* logr, std::int64_t K, std::int64_t n, std::int64_t P,
               std::uint64_t seed, double* cdf, std::int64_t* i_out, cudaStream_t s) {
  draw_rows_kernel<<<static_cast<unsigned>(K), kThreads, 0, s>>>(logr, n, P, seed, cdf, i_out);
  OTGPU_LAUNCH_CHECK();
}

void draw_columns(const float* C, const float* g, const double* eps, const std::int64_t* i_in,
                  std::int64_t K, std::int64_t n, std::int64_t m, std::int64_t P,
                  std::uint64_t col_seed, std::int64_t* j_out, cudaStream_t s) {
  const std::int64_t warps = K * P;
  const auto blocks = static_cast<unsigned>((warps * 32 + kThreads - 1) / kThreads);
  draw_columns_kernel<<<blocks, kThreads, 0, s>>>(C, g, eps, i_in, K, n, m, P, col_seed, j_out);
  OTGPU_LAUNCH_CHECK();
}

std::int64_t topk_tiles(std::int64_t nm) { return (nm + kTile - 1) / kTile; }

void topk_pairs(const float* C, const float* f, const float* g, const double* eps, std::int64_t K,
                std::int64_t n, std::int64_t m, std::int64_t P, std::uint64_t key_seed,
                const TopKScratch& sc, std::int64_t* i_out, std::int64_t* j_out, cudaStream_t s) {
  const std::int64_t nm = n * m, tiles = topk_tiles(nm);
  OTGPU_CUDA_CHECK(cudaMemsetAsync(sc.hist, 0, static_cast<std::size_t>(K) * 256 * 4, s));
  topk_init_kernel<<<static_cast<unsigned>((K + kThreads - 1) / kThreads), kThreads, 0, s>>>(
      sc.prefix, sc.remaining, K, P);
  OTGPU_LAUNCH_CHECK();
  // Blocks per problem of the histogram passes: enough to fill the device with K = 1.
  const auto hist_blocks = static_cast<unsigned>(
      std::clamp<std::int64_t>((nm + kThreads * 16 - 1) / (kThreads * 16), 1, 4096));
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (std::int64_t k0 = 0; k0 < K; k0 += kMaxGridY) {
      const auto ky = static_cast<unsigned>(std::min(kMaxGridY, K - k0));
      topk_hist_kernel<<<dim3(hist_blocks, ky), kThreads, 0, s>>>(C, f, g, eps, n, m, key_seed,
                                                                  shift, sc.prefix, sc.hist, k0);
      OTGPU_LAUNCH_CHECK();
    }
    topk_select_kernel<<<static_cast<unsigned>((K + 127) / 128), 128, 0, s>>>(
        sc.hist, sc.prefix, sc.remaining, K, shift);
    OTGPU_LAUNCH_CHECK();
  }
  for (std::int64_t k0 = 0; k0 < K; k0 += kMaxGridY) {
    const auto ky = static_cast<unsigned>(std::min(kMaxGridY, K - k0));
    topk_count_kernel<<<dim3(static_cast<unsigned>(tiles), ky), kThreads, 0, s>>>(
        C, f, g, eps, n, m, key_seed, sc.prefix, tiles, sc.tile_gt, sc.tile_eq, k0);
    OTGPU_LAUNCH_CHECK();
  }
  topk_scan_kernel<<<static_cast<unsigned>(K), kThreads, 0, s>>>(
      sc.tile_gt, sc.tile_eq, sc.remaining, tiles, sc.tile_eq_off, sc.tile_sel_off);
  OTGPU_LAUNCH_CHECK();
  for (std::int64_t k0 = 0; k0 < K; k0 += kMaxGridY) {
    const auto ky = static_cast<unsigned>(std::min(kMaxGridY, K - k0));
    topk_write_kernel<<<dim3(static_cast<unsigned>(tiles), ky), kThreads, 0, s>>>(
        C, f, g, eps, n, m, P, key_seed, sc.prefix, sc.remaining, tiles, sc.tile_eq_off,
        sc.tile_sel_off, i_out, j_out, k0);
    OTGPU_LAUNCH_CHECK();
  }
}

void iota_rows(std::int64_t* out, std::int64_t K, std::int64_t n, cudaStream_t s) {
  iota_kernel<<<blocks_for(K * n), kThreads, 0, s>>>(out, K, n);
  OTGPU_LAUNCH_CHECK();
}

void pair_cost_mean(const float* C, const std::int64_t* i, const std::int64_t* j, std::int64_t K,
                    std::int64_t n, std::int64_t m, std::int64_t P, double* mean, cudaStream_t s) {
  pair_cost_kernel<<<static_cast<unsigned>(K), kThreads, 0, s>>>(C, i, j, n, m, P, mean);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
