// The sharded Sinkhorn's own kernels (otgpu_kernels/sinkhorn_shard.h): element-wise
// pieces of the cross-shard g-merge, O(B m) work each.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>

#include "grid.cuh"
#include "otgpu/error.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/sinkhorn_shard.h"

namespace otgpu::kernels {

namespace {

constexpr int kBlock = 256;

__global__ void col_lse_kernel(const float* __restrict__ Gl, const float* __restrict__ eps,
                               double* __restrict__ L, std::int64_t B, std::int64_t m) {
  const std::int64_t total = B * m;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    L[k] = -static_cast<double>(Gl[k]) / static_cast<double>(eps[k / m]);
  }
}

__global__ void col_rescale_kernel(const double* __restrict__ L, const double* __restrict__ M,
                                   double* __restrict__ S, std::int64_t count) {
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double l = L[k], mx = M[k];
    if (l == -INFINITY) {
      S[k] = 0.0;
    } else if (isfinite(mx)) {
      S[k] = exp(l - mx);
    } else {
      S[k] = 1.0;
    }
  }
}

__global__ void col_finish_kernel(const double* __restrict__ M, const double* __restrict__ S,
                                  const float* __restrict__ eps, const float* __restrict__ lambda,
                                  const int* __restrict__ active, float* __restrict__ G,
                                  std::int64_t B, std::int64_t m) {
  const std::int64_t total = B * m;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = k / m;
    if (active != nullptr && active[b] == 0) continue;
    const double lam = lambda != nullptr ? static_cast<double>(lambda[b]) : 1.0;
    const double mx = M[k];
    // No weighted row in any shard: the half-steps' +inf (log 0 = -inf keeps the sign).
    const double lse = mx == -INFINITY ? -INFINITY : mx + log(S[k]);
    G[k] = static_cast<float>(lam * (-static_cast<double>(eps[b]) * lse));
  }
}

__global__ void scale_weights_kernel(double* __restrict__ bw, float* __restrict__ logB,
                                     const double* __restrict__ ratio, std::int64_t B,
                                     std::int64_t m) {
  const std::int64_t total = B * m;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    // As balance_weights does for one device: the log of the scaled weight.
    const double v = bw[k] * ratio[k / m];
    bw[k] = v;
    logB[k] = v > 0 ? static_cast<float>(log(v)) : -INFINITY;
  }
}

void check_bm(std::int64_t B, std::int64_t m, const char* what) {
  if (B < 0 || m < 0) {
    throw InvalidArgument(fmt::format("{}: sizes must be >= 0 (B={}, m={})", what, B, m));
  }
}

}  // namespace

void shard_col_lse(const float* Gl, const float* eps, double* L, std::int64_t B, std::int64_t m,
                   cudaStream_t stream) {
  check_bm(B, m, "shard_col_lse");
  if (B * m == 0) return;
  col_lse_kernel<<<detail::grid_stride_blocks(B * m, kBlock), kBlock, 0, stream>>>(Gl, eps, L, B,
                                                                                   m);
  OTGPU_LAUNCH_CHECK();
}

void shard_col_rescale(const double* L, const double* M, double* S, std::int64_t count,
                       cudaStream_t stream) {
  check_bm(1, count, "shard_col_rescale");
  if (count == 0) return;
  col_rescale_kernel<<<detail::grid_stride_blocks(count, kBlock), kBlock, 0, stream>>>(L, M, S,
                                                                                       count);
  OTGPU_LAUNCH_CHECK();
}

void shard_col_finish(const double* M, const double* S, const float* eps, const float* lambda,
                      const int* active, float* G, std::int64_t B, std::int64_t m,
                      cudaStream_t stream) {
  check_bm(B, m, "shard_col_finish");
  if (B * m == 0) return;
  col_finish_kernel<<<detail::grid_stride_blocks(B * m, kBlock), kBlock, 0, stream>>>(
      M, S, eps, lambda, active, G, B, m);
  OTGPU_LAUNCH_CHECK();
}

void shard_scale_weights(double* b, float* logB, const double* ratio, std::int64_t B,
                         std::int64_t m, cudaStream_t stream) {
  check_bm(B, m, "shard_scale_weights");
  if (B * m == 0) return;
  scale_weights_kernel<<<detail::grid_stride_blocks(B * m, kBlock), kBlock, 0, stream>>>(
      b, logB, ratio, B, m);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
