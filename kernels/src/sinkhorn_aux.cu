// Per-problem reductions of the CUDA Sinkhorn driver. They touch O(n + m) values per
// problem (never O(nm), except dense sampling and the mean Euclidean cost), so they
// favour clarity and double accumulation over speed.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>

#include "otgpu/detail/math.h"
#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_aux.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

constexpr int kBlock = 256;

/// Block-wide sum of a double; every thread gets the result. All threads must call.
__device__ double block_sum(double v, double* shared /* [kBlock / 32] */) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kBlock / 32; ++w) total += shared[w];
  return total;
}

__global__ void __launch_bounds__(kBlock)
    check_residual_kernel(const double* __restrict__ a, const float* __restrict__ F,
                          const float* __restrict__ Ft, const float* __restrict__ eps,
                          const float* __restrict__ lambda_a, double tol, int iteration,
                          int* __restrict__ active, int* __restrict__ iterations,
                          double* __restrict__ residual, int* __restrict__ active_count,
                          std::int64_t n) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.x;
  if (active[b] == 0) return;  // uniform over the block
  const double e = eps[b];
  const double lam = lambda_a != nullptr ? lambda_a[b] : 1.0;
  double r = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += kBlock) {
    const double ai = a[b * n + i];
    if (ai > 0) r += ai * fabs(exp((F[b * n + i] - lam * Ft[b * n + i]) / e) - 1.0);
  }
  r = block_sum(r, shared);
  if (threadIdx.x == 0) {
    residual[b] = r;
    if (r <= tol) {
      active[b] = 0;
      iterations[b] = iteration;
    } else {
      atomicAdd(active_count, 1);
    }
  }
}

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
  const double lam_a = isinf(rho_a) ? 1.0 : rho_a / (rho_a + e);
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
  err = block_sum(err, shared);
  cost = block_sum(cost, shared);
  mass = block_sum(mass, shared);
  res = block_sum(res, shared);
  fa = block_sum(fa, shared);
  ma = block_sum(ma, shared);
  fb = block_sum(fb, shared);
  mb = block_sum(mb, shared);
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
                        std::int64_t m) {
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
    const double s =
        lw + (static_cast<double>(G[b * m + j]) - row[j]) / e +
        otgpu::detail::gumbel(seed, static_cast<std::uint64_t>(b), static_cast<std::uint64_t>(i),
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
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) atomicAdd(out + b, acc / (static_cast<double>(n) * static_cast<double>(m)));
}

void check_sizes(std::int64_t B, std::int64_t n, std::int64_t m, const char* what) {
  if (B <= 0 || n <= 0 || m <= 0) {
    throw InvalidArgument(
        fmt::format("{}: sizes must be positive (B={}, n={}, m={})", what, B, n, m));
  }
  if (B > 2147483647LL) throw InvalidArgument(fmt::format("{}: batch B={} too large", what, B));
}

}  // namespace

void sinkhorn_check_residual(const double* a, const float* F, const float* Ft, const float* eps,
                             const float* lambda_a, double tol, int iteration, int* active,
                             int* iterations, double* residual, int* active_count, std::int64_t B,
                             std::int64_t n, cudaStream_t stream) {
  check_sizes(B, n, 1, "sinkhorn_check_residual");
  check_residual_kernel<<<static_cast<unsigned>(B), kBlock, 0, stream>>>(
      a, F, Ft, eps, lambda_a, tol, iteration, active, iterations, residual, active_count, n);
  OTGPU_KERNEL_CHECK(cudaGetLastError());
}

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
  OTGPU_KERNEL_CHECK(cudaGetLastError());
}

void dense_sample(const float* C, const float* logB, const float* G, const float* eps,
                  std::uint64_t seed, std::int64_t* out, std::int64_t B, std::int64_t n,
                  std::int64_t m, cudaStream_t stream) {
  check_sizes(B, n, m, "dense_sample");
  if (B > 65535) throw InvalidArgument(fmt::format("dense_sample: batch B={} exceeds 65535", B));
  const dim3 grid(static_cast<unsigned>((n + kBlock - 1) / kBlock), static_cast<unsigned>(B));
  dense_sample_kernel<<<grid, kBlock, 0, stream>>>(C, logB, G, eps, seed, out, n, m);
  OTGPU_KERNEL_CHECK(cudaGetLastError());
}

void mean_euclidean_cost(const float* X, const float* Y, double* out, std::int64_t B,
                         std::int64_t n, std::int64_t m, int dp, cudaStream_t stream) {
  check_sizes(B, n, m, "mean_euclidean_cost");
  if (B > 65535)
    throw InvalidArgument(fmt::format("mean_euclidean_cost: batch B={} exceeds 65535", B));
  OTGPU_KERNEL_CHECK(cudaMemsetAsync(out, 0, static_cast<std::size_t>(B) * sizeof(double), stream));
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  const dim3 grid(static_cast<unsigned>(blocks < 1024 ? blocks : 1024), static_cast<unsigned>(B));
  mean_euclid_kernel<<<grid, kBlock, 0, stream>>>(X, Y, out, n, m, dp);
  OTGPU_KERNEL_CHECK(cudaGetLastError());
}

}  // namespace otgpu::kernels
