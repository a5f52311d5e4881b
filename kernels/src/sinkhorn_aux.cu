// Per-problem reductions of the CUDA Sinkhorn driver. They touch O(n + m) values per
// problem (never O(nm), except dense sampling and the mean Euclidean cost), so they
// favour clarity and double accumulation over speed.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>

#include "grid.cuh"
#include "otgpu/detail/math.h"
#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_aux.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

constexpr int kBlock = 256;

using detail::block_sum;

__global__ void __launch_bounds__(kBlock)
    finalize_kernel(const double* __restrict__ a, const double* __restrict__ bw,
                    const float* __restrict__ F, const float* __restrict__ G,
                    const float* __restrict__ Ft, const float* __restrict__ cmean,
                    const float* __restrict__ row_mass, const float* __restrict__ row_cost,
                    const float* __restrict__ eps, double rho_a, double rho_b,
                    double* __restrict__ out4, std::int64_t n, std::int64_t m) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.x;
  const double e = eps[b];
  const double lam_a = ::otgpu::detail::unbalanced_lambda(rho_a, e);
  double err = 0, cost = 0, mass = 0, res = 0, fa = 0, ma = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += kBlock) {
    const std::int64_t k = b * n + i;
    const double ai = a[k];
    if (ai <= 0) continue;
    const double f = F[k];
    const double mi = ai * exp((f - static_cast<double>(Ft[k])) / e);
    err += fabs(mi - ai);
    mass += mi;
    const double cm =
        cmean != nullptr
            ? static_cast<double>(cmean[k])
            : (row_mass[k] > 0.f ? static_cast<double>(row_cost[k]) / row_mass[k] : 0.0);
    cost += mi * cm;
    res += ai * fabs(exp((f - lam_a * static_cast<double>(Ft[k])) / e) - 1.0);
    fa += isinf(rho_a) ? ai * f : rho_a * ai * (1.0 - exp(-f / rho_a));
    ma += ai;
  }
  double fb = 0, mb = 0;
  for (std::int64_t j = threadIdx.x; j < m; j += kBlock) {
    const double bj = bw[b * m + j];
    if (bj <= 0) continue;
    const double g = G[b * m + j];
    fb += isinf(rho_b) ? bj * g : rho_b * bj * (1.0 - exp(-g / rho_b));
    mb += bj;
  }
  err = block_sum<kBlock>(err, shared);
  cost = block_sum<kBlock>(cost, shared);
  mass = block_sum<kBlock>(mass, shared);
  res = block_sum<kBlock>(res, shared);
  fa = block_sum<kBlock>(fa, shared);
  ma = block_sum<kBlock>(ma, shared);
  fb = block_sum<kBlock>(fb, shared);
  mb = block_sum<kBlock>(mb, shared);
  if (threadIdx.x == 0) {
    out4[b * 4 + 0] = fa + fb - e * (mass - ma * mb);
    out4[b * 4 + 1] = cost;
    out4[b * 4 + 2] = err;
    out4[b * 4 + 3] = res;
  }
}

__global__ void __launch_bounds__(kBlock)
    dense_sample_kernel(const float* __restrict__ C, const float* __restrict__ logB,
                        const float* __restrict__ G, const float* __restrict__ eps,
                        std::uint64_t seed, std::int64_t* __restrict__ out, std::int64_t n,
                        std::int64_t m, std::int64_t batch_offset, std::int64_t row_offset) {
  const std::int64_t b = blockIdx.y;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (i >= n) return;
  const double e = eps[b];
  double best = -INFINITY;
  std::int64_t arg = -1;
  const float* row = C + (b * n + i) * m;
  for (std::int64_t j = 0; j < m; ++j) {
    const float lw = logB[b * m + j];
    if (lw == -INFINITY) continue;
    const double s = lw + (static_cast<double>(G[b * m + j]) - row[j]) / e +
                     otgpu::detail::gumbel(seed, static_cast<std::uint64_t>(batch_offset + b),
                                           static_cast<std::uint64_t>(row_offset + i),
                                           static_cast<std::uint64_t>(j));
    if (s > best) {
      best = s;
      arg = j;
    }
  }
  out[b * n + i] = arg;
}

__global__ void __launch_bounds__(kBlock)
    mean_euclid_kernel(const float* __restrict__ X, const float* __restrict__ Y,
                       double* __restrict__ out, std::int64_t n, std::int64_t m, int dp) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.y;
  double acc = 0;
  // Rows of this block-chunk; columns streamed from global memory (L2-resident).
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * kBlock) {
    const float* x = X + (b * n + i) * dp;
    for (std::int64_t j = 0; j < m; ++j) {
      const float* y = Y + (b * m + j) * dp;
      float d2 = 0.f;
      for (int k = 0; k < dp; ++k) {
        const float diff = x[k] - y[k];
        d2 = fmaf(diff, diff, d2);
      }
      acc += sqrt(static_cast<double>(d2));
    }
  }
  acc = block_sum<kBlock>(acc, shared);
  if (threadIdx.x == 0) atomicAdd(out + b, acc / (static_cast<double>(n) * static_cast<double>(m)));
}

__global__ void __launch_bounds__(kBlock)
    mean_matrix_kernel(const float* __restrict__ C, double* __restrict__ out, std::int64_t nm) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.y;
  double acc = 0;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < nm;
       e += static_cast<std::int64_t>(gridDim.x) * kBlock) {
    acc += C[b * nm + e];
  }
  acc = block_sum<kBlock>(acc, shared);
  if (threadIdx.x == 0) atomicAdd(out + b, acc / static_cast<double>(nm));
}

__global__ void nonfinite_kernel(const float* __restrict__ p, std::int64_t count,
                                 unsigned long long* __restrict__ first) {
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < count;
       e += static_cast<std::int64_t>(gridDim.x) * kBlock) {
    if (!isfinite(p[e])) atomicMin(first, static_cast<unsigned long long>(e));
  }
}

__global__ void __launch_bounds__(kBlock)
    check_weights_kernel(const double* __restrict__ w, std::int64_t len, double* __restrict__ mass,
                         unsigned long long* __restrict__ first) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.x;
  double acc = 0;
  for (std::int64_t i = threadIdx.x; i < len; i += kBlock) {
    const double v = w[b * len + i];
    if (!isfinite(v) || v < 0) atomicMin(first, static_cast<unsigned long long>(b * len + i));
    acc += v;
  }
  acc = block_sum<kBlock>(acc, shared);
  if (threadIdx.x == 0) mass[b] = acc;
}

__global__ void __launch_bounds__(kBlock)
    mass_ratio_kernel(const double* __restrict__ a, const double* __restrict__ bw, std::int64_t n,
                      std::int64_t m, double tol_rel, double* __restrict__ ratio) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.x;
  double ma = 0, mb = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += kBlock) ma += a[b * n + i];
  for (std::int64_t j = threadIdx.x; j < m; j += kBlock) mb += bw[b * m + j];
  ma = block_sum<kBlock>(ma, shared);
  mb = block_sum<kBlock>(mb, shared);
  if (threadIdx.x == 0) {
    const bool close = isinf(tol_rel) || fabs(ma - mb) <= tol_rel * fmax(ma, mb);
    ratio[b] = close && mb > 0 ? ma / mb : 1.0;
  }
}

__global__ void finish_map_kernel(const float* __restrict__ T, const double* __restrict__ center,
                                  float* __restrict__ out, std::int64_t n, std::int64_t d, int dp,
                                  std::int64_t total) {
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * kBlock) {
    const std::int64_t k = e % d;
    const std::int64_t row = e / d;  // b * n + i
    const std::int64_t b = row / n;
    const double c = center != nullptr ? center[b * dp + k] : 0.0;
    out[e] = static_cast<float>(static_cast<double>(T[row * dp + k]) + c);
  }
}

__global__ void finish_gradient_kernel(const float* __restrict__ X, const float* __restrict__ V,
                                       const double* __restrict__ a, const float* __restrict__ F,
                                       const float* __restrict__ Ft, const float* __restrict__ eps,
                                       const double* __restrict__ ratio, bool euclid,
                                       float* __restrict__ out, std::int64_t n, std::int64_t d,
                                       int dp, std::int64_t total) {
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * kBlock) {
    const std::int64_t k = e % d;
    const std::int64_t row = e / d;  // b * n + i
    const std::int64_t b = row / n;
    const double ai = a[row];
    // A row without mass carries no plan (and F may be +inf there).
    double r = 0;
    if (ai > 0) {
      r = ai * exp((static_cast<double>(F[row]) - Ft[row]) / eps[b]);
      if (ratio != nullptr) r *= ratio[b];
    }
    const double v = V[row * dp + k];
    out[e] =
        static_cast<float>(euclid ? r * v : 2.0 * r * (static_cast<double>(X[row * dp + k]) - v));
  }
}

unsigned grid_for(std::int64_t total) { return detail::grid_stride_blocks(total, kBlock); }

void check_sizes(std::int64_t B, std::int64_t n, std::int64_t m, const char* what) {
  if (B <= 0 || n <= 0 || m <= 0) {
    throw InvalidArgument(
        fmt::format("{}: sizes must be positive (B={}, n={}, m={})", what, B, n, m));
  }
  if (B > 2147483647LL) throw InvalidArgument(fmt::format("{}: batch B={} too large", what, B));
}

}  // namespace

void sinkhorn_finalize(const double* a, const double* b, const float* F, const float* G,
                       const float* Ft, const float* cmean, const float* row_mass,
                       const float* row_cost, const float* eps, double rho_a, double rho_b,
                       double* out4, std::int64_t B, std::int64_t n, std::int64_t m,
                       cudaStream_t stream) {
  check_sizes(B, n, m, "sinkhorn_finalize");
  if (cmean == nullptr && (row_mass == nullptr || row_cost == nullptr)) {
    throw InvalidArgument("sinkhorn_finalize: needs cmean or both row_mass and row_cost");
  }
  finalize_kernel<<<static_cast<unsigned>(B), kBlock, 0, stream>>>(
      a, b, F, G, Ft, cmean, row_mass, row_cost, eps, rho_a, rho_b, out4, n, m);
  OTGPU_LAUNCH_CHECK();
}

void dense_sample(const float* C, const float* logB, const float* G, const float* eps,
                  std::uint64_t seed, std::int64_t* out, std::int64_t B, std::int64_t n,
                  std::int64_t m, cudaStream_t stream, std::int64_t batch_offset,
                  std::int64_t row_offset) {
  check_sizes(B, n, m, "dense_sample");
  if (B > 65535) throw InvalidArgument(fmt::format("dense_sample: batch B={} exceeds 65535", B));
  const dim3 grid(static_cast<unsigned>((n + kBlock - 1) / kBlock), static_cast<unsigned>(B));
  dense_sample_kernel<<<grid, kBlock, 0, stream>>>(C, logB, G, eps, seed, out, n, m, batch_offset,
                                                   row_offset);
  OTGPU_LAUNCH_CHECK();
}

void mean_euclidean_cost(const float* X, const float* Y, double* out, std::int64_t B,
                         std::int64_t n, std::int64_t m, int dp, cudaStream_t stream) {
  check_sizes(B, n, m, "mean_euclidean_cost");
  if (B > 65535)
    throw InvalidArgument(fmt::format("mean_euclidean_cost: batch B={} exceeds 65535", B));
  OTGPU_CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<std::size_t>(B) * sizeof(double), stream));
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  const dim3 grid(static_cast<unsigned>(blocks < 1024 ? blocks : 1024), static_cast<unsigned>(B));
  mean_euclid_kernel<<<grid, kBlock, 0, stream>>>(X, Y, out, n, m, dp);
  OTGPU_LAUNCH_CHECK();
}

void mean_matrix_cost(const float* C, std::int64_t B, std::int64_t nm, double* out,
                      cudaStream_t stream) {
  check_sizes(B, nm, 1, "mean_matrix_cost");
  if (B > 65535)
    throw InvalidArgument(fmt::format("mean_matrix_cost: batch B={} exceeds 65535", B));
  OTGPU_CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<std::size_t>(B) * sizeof(double), stream));
  const std::int64_t blocks = (nm + kBlock - 1) / kBlock;
  const dim3 grid(static_cast<unsigned>(blocks < 1024 ? blocks : 1024), static_cast<unsigned>(B));
  mean_matrix_kernel<<<grid, kBlock, 0, stream>>>(C, out, nm);
  OTGPU_LAUNCH_CHECK();
}

void find_nonfinite(const float* p, std::int64_t count, unsigned long long* first,
                    cudaStream_t stream) {
  // All bytes 0xff: ~0ull, the "none found" value atomicMin lowers.
  OTGPU_CUDA_CHECK(cudaMemsetAsync(first, 0xff, sizeof(unsigned long long), stream));
  if (count <= 0) return;
  nonfinite_kernel<<<grid_for(count), kBlock, 0, stream>>>(p, count, first);
  OTGPU_LAUNCH_CHECK();
}

void check_weights(const double* w, std::int64_t B, std::int64_t len, double* mass,
                   unsigned long long* first, cudaStream_t stream) {
  check_sizes(B, len, 1, "check_weights");
  OTGPU_CUDA_CHECK(cudaMemsetAsync(first, 0xff, sizeof(unsigned long long), stream));
  check_weights_kernel<<<static_cast<unsigned>(B), kBlock, 0, stream>>>(w, len, mass, first);
  OTGPU_LAUNCH_CHECK();
}

void mass_ratio(const double* a, const double* b, std::int64_t B, std::int64_t n, std::int64_t m,
                double tol_rel, double* ratio, cudaStream_t stream) {
  check_sizes(B, n, m, "mass_ratio");
  mass_ratio_kernel<<<static_cast<unsigned>(B), kBlock, 0, stream>>>(a, b, n, m, tol_rel, ratio);
  OTGPU_LAUNCH_CHECK();
}

void finish_map(const float* T, const double* center, float* out, std::int64_t B, std::int64_t n,
                std::int64_t d, int dp, cudaStream_t stream) {
  check_sizes(B, n, d, "finish_map");
  const std::int64_t total = B * n * d;
  finish_map_kernel<<<grid_for(total), kBlock, 0, stream>>>(T, center, out, n, d, dp, total);
  OTGPU_LAUNCH_CHECK();
}

void finish_gradient(const float* X, const float* V, const double* a, const float* F,
                     const float* Ft, const float* eps, const double* ratio, bool euclid,
                     float* out, std::int64_t B, std::int64_t n, std::int64_t d, int dp,
                     cudaStream_t stream) {
  check_sizes(B, n, d, "finish_gradient");
  const std::int64_t total = B * n * d;
  finish_gradient_kernel<<<grid_for(total), kBlock, 0, stream>>>(X, V, a, F, Ft, eps, ratio, euclid,
                                                                 out, n, d, dp, total);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
