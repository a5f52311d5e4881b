// Device-side staging of caller tensors into the canonical Sinkhorn layout. These
// kernels touch each input once (O((n + m) d) per problem), so they are written for
// clarity; their cost is negligible next to one O(nm) half-step.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>

#include "grid.cuh"
#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_stage.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

constexpr int kBlock = 256;

using detail::block_sum;

__device__ __forceinline__ double load(const StridedSource& s, std::int64_t b, std::int64_t i,
                                       std::int64_t k) {
  std::int64_t off;
  if (s.rank == 3) {
    off = b * s.stride[0] + i * s.stride[1] + k * s.stride[2];
  } else if (s.rank == 2) {
    off = i * s.stride[0] + k * s.stride[1];
  } else {
    off = i * s.stride[0];
  }
  return s.is_f64 ? static_cast<const double*>(s.data)[off]
                  : static_cast<double>(static_cast<const float*>(s.data)[off]);
}

__global__ void stage_points_kernel(StridedSource src, std::int64_t B, std::int64_t rows,
                                    std::int64_t d, int dp, float* __restrict__ dst) {
  const std::int64_t total = B * rows * dp;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t k = e % dp;
    const std::int64_t i = (e / dp) % rows;
    const std::int64_t b = e / (dp * rows);
    // A rank-2 source [rows, d] is one problem: index it without b.
    StridedSource s = src;
    dst[e] = k < d ? static_cast<float>(s.rank == 3 ? load(s, b, i, k) : load(s, 0, i, k)) : 0.f;
  }
}

__global__ void stage_weights_kernel(StridedSource src, std::int64_t B, std::int64_t len,
                                     double* __restrict__ w, float* __restrict__ logw) {
  const std::int64_t total = B * len;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = e % len;
    const std::int64_t b = e / len;
    double v;
    if (src.data == nullptr) {
      v = 1.0 / static_cast<double>(len);
    } else if (src.rank == 2) {
      v = load(src, 0, b, i);  // [B, len]: stride[0] over problems, stride[1] over i
    } else {
      v = load(src, 0, i, 0);
    }
    w[e] = v;
    logw[e] = v > 0 ? static_cast<float>(log(v)) : -INFINITY;
  }
}

__global__ void __launch_bounds__(kBlock)
    balance_kernel(const double* __restrict__ a, double* __restrict__ bw, float* __restrict__ logB,
                   std::int64_t n, std::int64_t m) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.x;
  double ma = 0, mb = 0;
  for (std::int64_t i = threadIdx.x; i < n; i += kBlock) ma += a[b * n + i];
  for (std::int64_t j = threadIdx.x; j < m; j += kBlock) mb += bw[b * m + j];
  ma = block_sum<kBlock>(ma, shared);
  mb = block_sum<kBlock>(mb, shared);
  const double s = mb > 0 ? ma / mb : 1.0;
  for (std::int64_t j = threadIdx.x; j < m; j += kBlock) {
    const double v = bw[b * m + j] * s;
    bw[b * m + j] = v;
    logB[b * m + j] = v > 0 ? static_cast<float>(log(v)) : -INFINITY;
  }
}

__global__ void __launch_bounds__(kBlock)
    mean_sq_kernel(const float* __restrict__ X, const float* __restrict__ Y,
                   double* __restrict__ out, std::int64_t n, std::int64_t m, int dp) {
  __shared__ double shared[kBlock / 32];
  const std::int64_t b = blockIdx.x;
  double total = 0;
  for (int k = 0; k < dp; ++k) {
    double sx = 0, sxx = 0, sy = 0, syy = 0;
    for (std::int64_t i = threadIdx.x; i < n; i += kBlock) {
      const double v = X[(b * n + i) * dp + k];
      sx += v;
      sxx += v * v;
    }
    for (std::int64_t j = threadIdx.x; j < m; j += kBlock) {
      const double v = Y[(b * m + j) * dp + k];
      sy += v;
      syy += v * v;
    }
    sx = block_sum<kBlock>(sx, shared);
    sxx = block_sum<kBlock>(sxx, shared);
    sy = block_sum<kBlock>(sy, shared);
    syy = block_sum<kBlock>(syy, shared);
    const double mx = sx / static_cast<double>(n), my = sy / static_cast<double>(m);
    total += (sxx / static_cast<double>(n) - mx * mx) + (syy / static_cast<double>(m) - my * my) +
             (mx - my) * (mx - my);
  }
  if (threadIdx.x == 0) out[b] = total;
}

__global__ void eps_table_kernel(const double* __restrict__ mean_cost, double eps, double eps_init,
                                 double decay, double rho_a, double rho_b, int K,
                                 float* __restrict__ eps_tab, float* __restrict__ lam_a,
                                 float* __restrict__ lam_b, float* __restrict__ target_eps,
                                 float* __restrict__ init_eps, std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const double scale = mean_cost != nullptr ? mean_cost[b] : 1.0;
  const double e = eps * scale, e0 = eps_init * scale;
  for (int t = 0; t <= K; ++t) {
    const double et = ::otgpu::detail::scheduled_eps(e, e0, decay, t);
    eps_tab[t * B + b] = static_cast<float>(et);
    lam_a[t * B + b] = static_cast<float>(::otgpu::detail::unbalanced_lambda(rho_a, et));
    lam_b[t * B + b] = static_cast<float>(::otgpu::detail::unbalanced_lambda(rho_b, et));
  }
  if (target_eps != nullptr) target_eps[b] = static_cast<float>(e);
  if (init_eps != nullptr) init_eps[b] = static_cast<float>(eps_init > 0 ? e0 : 0.0);
}

__global__ void fill_ints_kernel(int* __restrict__ p, int value, std::int64_t count) {
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < count;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    p[e] = value;
  }
}

__global__ void copy_column_kernel(const double* __restrict__ src4, int k, double* __restrict__ out,
                                   std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < B) out[b] = src4[b * 4 + k];
}

unsigned grid_for(std::int64_t total) { return detail::grid_stride_blocks(total, kBlock); }

void check_batch(std::int64_t B, const char* what) {
  if (B <= 0 || B > 2147483647LL) {
    throw InvalidArgument(fmt::format("{}: batch B={} out of range", what, B));
  }
}

}  // namespace

void fill_ints(int* p, int value, std::int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  fill_ints_kernel<<<grid_for(count), kBlock, 0, stream>>>(p, value, count);
  OTGPU_LAUNCH_CHECK();
}

void copy_column(const double* src4, int k, double* out, std::int64_t B, cudaStream_t stream) {
  if (out == nullptr || B <= 0) return;
  copy_column_kernel<<<grid_for(B), kBlock, 0, stream>>>(src4, k, out, B);
  OTGPU_LAUNCH_CHECK();
}

void stage_points(const StridedSource& src, std::int64_t B, std::int64_t rows, std::int64_t d,
                  int dp, float* dst, cudaStream_t stream) {
  check_batch(B, "stage_points");
  stage_points_kernel<<<grid_for(B * rows * dp), kBlock, 0, stream>>>(src, B, rows, d, dp, dst);
  OTGPU_LAUNCH_CHECK();
}

void stage_weights(const StridedSource& src, std::int64_t B, std::int64_t len, double* w,
                   float* logw, cudaStream_t stream) {
  check_batch(B, "stage_weights");
  stage_weights_kernel<<<grid_for(B * len), kBlock, 0, stream>>>(src, B, len, w, logw);
  OTGPU_LAUNCH_CHECK();
}

void balance_weights(const double* a, double* b, float* logB, std::int64_t B, std::int64_t n,
                     std::int64_t m, cudaStream_t stream) {
  check_batch(B, "balance_weights");
  balance_kernel<<<static_cast<unsigned>(B), kBlock, 0, stream>>>(a, b, logB, n, m);
  OTGPU_LAUNCH_CHECK();
}

void mean_sqeuclidean_cost(const float* X, const float* Y, double* out, std::int64_t B,
                           std::int64_t n, std::int64_t m, int dp, cudaStream_t stream) {
  check_batch(B, "mean_sqeuclidean_cost");
  mean_sq_kernel<<<static_cast<unsigned>(B), kBlock, 0, stream>>>(X, Y, out, n, m, dp);
  OTGPU_LAUNCH_CHECK();
}

void make_eps_tables(const double* mean_cost, double eps, double eps_init, double decay,
                     double rho_a, double rho_b, int K, float* eps_tab, float* lam_a_tab,
                     float* lam_b_tab, float* target_eps, float* init_eps, std::int64_t B,
                     cudaStream_t stream) {
  check_batch(B, "make_eps_tables");
  eps_table_kernel<<<grid_for(B), kBlock, 0, stream>>>(mean_cost, eps, eps_init, decay, rho_a,
                                                       rho_b, K, eps_tab, lam_a_tab, lam_b_tab,
                                                       target_eps, init_eps, B);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
