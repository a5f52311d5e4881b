// The eps continuation of the CUDA driver and the start of the over-relaxation
// state: per-problem decisions by the shared host+device rules
// (otgpu/detail/eps_continuation.h), one thread per problem, and the cost range
// they need (a min/max reduction over the n x m costs, one thread per row).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "otgpu/detail/eps_continuation.h"
#include "otgpu_kernels/sinkhorn_continuation.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

constexpr int kBlock = 256;

/// Order-preserving map of fp32 to unsigned: atomicMin/atomicMax on the codes order
/// the floats (negative values flip all bits, others set the sign bit).
__host__ __device__ __forceinline__ unsigned encode(float v) {
  unsigned u = 0;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

__host__ __device__ __forceinline__ float decode(unsigned u) {
  const unsigned bits = (u & 0x80000000u) != 0 ? (u & 0x7fffffffu) : ~u;
  float v = 0;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

__global__ void range_reset_kernel(unsigned* range, std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (b >= B) return;
  range[2 * b] = encode(INFINITY);
  range[2 * b + 1] = encode(-INFINITY);
}

__global__ void __launch_bounds__(kBlock)
    cost_range_kernel(CostKind cost, const float* __restrict__ X, const float* __restrict__ Y,
                      const float* __restrict__ C, std::int64_t n, std::int64_t m, int dp,
                      unsigned* __restrict__ range) {
  const std::int64_t b = blockIdx.y;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  float lo = INFINITY, hi = -INFINITY;
  if (i < n) {
    if (cost == CostKind::matrix) {
      const float* row = C + (b * n + i) * m;
      for (std::int64_t j = 0; j < m; ++j) {
        lo = fminf(lo, row[j]);
        hi = fmaxf(hi, row[j]);
      }
    } else {
      const float* x = X + (b * n + i) * dp;
      for (std::int64_t j = 0; j < m; ++j) {
        const float* y = Y + (b * m + j) * dp;
        float s = 0.0f;
        for (int k = 0; k < dp; ++k) {
          const float t = x[k] - y[k];
          s = fmaf(t, t, s);
        }
        const float c = cost == CostKind::euclidean ? sqrtf(s) : s;
        lo = fminf(lo, c);
        hi = fmaxf(hi, c);
      }
    }
  }
  for (int off = 16; off > 0; off /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
  }
  if ((threadIdx.x & 31) == 0 && lo <= hi) {
    atomicMin(&range[2 * b], encode(lo));
    atomicMax(&range[2 * b + 1], encode(hi));
  }
}

__global__ void continuation_init_kernel(const float* __restrict__ eps_target,
                                         const unsigned* __restrict__ range, double rho_a,
                                         double rho_b, float* __restrict__ eps_cur,
                                         float* __restrict__ lam_a, float* __restrict__ lam_b,
                                         int* __restrict__ level_iters, int* scaling_count,
                                         std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (b >= B) return;
  otgpu::detail::EpsLevelF32 s;
  if (otgpu::detail::eps_level_start_f32(s, eps_target[b], decode(range[2 * b]),
                                         decode(range[2 * b + 1]), rho_a, rho_b))
    atomicAdd(scaling_count, 1);
  eps_cur[b] = s.eps_cur;
  lam_a[b] = s.lam_a;
  lam_b[b] = s.lam_b;
  level_iters[b] = s.level_iters;
}

__global__ void continuation_step_kernel(const double* __restrict__ residual,
                                         const float* __restrict__ eps_target, double tol,
                                         int check_every, int iteration, double decay, double rho_a,
                                         double rho_b, int* __restrict__ active,
                                         int* __restrict__ iterations, int* active_count,
                                         float* __restrict__ eps_cur, float* __restrict__ lam_a,
                                         float* __restrict__ lam_b, int* __restrict__ level_iters,
                                         int* levels_left, std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (b >= B || active[b] == 0) return;
  otgpu::detail::EpsLevelF32 s{eps_cur[b], lam_a[b], lam_b[b], level_iters[b]};
  const int action = otgpu::detail::eps_level_step_f32(s, eps_target[b], decay, residual[b], tol,
                                                       check_every, iteration, rho_a, rho_b);
  eps_cur[b] = s.eps_cur;
  lam_a[b] = s.lam_a;
  lam_b[b] = s.lam_b;
  level_iters[b] = s.level_iters;
  if (action == otgpu::detail::kEpsRetire) {
    active[b] = 0;
    iterations[b] = iteration;
    atomicSub(active_count, 1);
    return;
  }
  if (levels_left != nullptr && s.eps_cur > eps_target[b]) atomicAdd(levels_left, 1);
}

__global__ void overrelax_init_kernel(double* omega, double* prev_residual, double* prev_rate,
                                      int* failures, int* restore, std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (b >= B) return;
  const otgpu::detail::OverrelaxState s;
  omega[b] = s.omega;
  prev_residual[b] = s.prev_residual;
  prev_rate[b] = s.prev_rate;
  failures[b] = s.failures;
  restore[b] = 0;
}

unsigned blocks_of(std::int64_t count) {
  return static_cast<unsigned>((count + kBlock - 1) / kBlock);
}

}  // namespace

void cost_range(CostKind cost, const float* X, const float* Y, const float* C, std::int64_t B,
                std::int64_t n, std::int64_t m, int dp, unsigned* range, cudaStream_t stream) {
  if (B <= 0) return;
  range_reset_kernel<<<blocks_of(B), kBlock, 0, stream>>>(range, B);
  OTGPU_LAUNCH_CHECK();
  if (n <= 0 || m <= 0) return;
  const dim3 grid(blocks_of(n), static_cast<unsigned>(B));
  cost_range_kernel<<<grid, kBlock, 0, stream>>>(cost, X, Y, C, n, m, dp, range);
  OTGPU_LAUNCH_CHECK();
}

float cost_range_value(unsigned encoded) { return decode(encoded); }

void continuation_init(const float* eps_target, const unsigned* range, double rho_a, double rho_b,
                       float* eps_cur, float* lam_a_cur, float* lam_b_cur, int* level_iters,
                       int* scaling_count, std::int64_t B, cudaStream_t stream) {
  OTGPU_CUDA_CHECK(cudaMemsetAsync(scaling_count, 0, sizeof(int), stream));
  if (B <= 0) return;
  continuation_init_kernel<<<blocks_of(B), kBlock, 0, stream>>>(eps_target, range, rho_a, rho_b,
                                                                eps_cur, lam_a_cur, lam_b_cur,
                                                                level_iters, scaling_count, B);
  OTGPU_LAUNCH_CHECK();
}

void continuation_step(const double* residual, const float* eps_target, double tol, int check_every,
                       int iteration, double decay, double rho_a, double rho_b, int* active,
                       int* iterations, int* active_count, float* eps_cur, float* lam_a_cur,
                       float* lam_b_cur, int* level_iters, int* levels_left, std::int64_t B,
                       cudaStream_t stream) {
  if (levels_left != nullptr)
    OTGPU_CUDA_CHECK(cudaMemsetAsync(levels_left, 0, sizeof(int), stream));
  if (B <= 0) return;
  continuation_step_kernel<<<blocks_of(B), kBlock, 0, stream>>>(
      residual, eps_target, tol, check_every, iteration, decay, rho_a, rho_b, active, iterations,
      active_count, eps_cur, lam_a_cur, lam_b_cur, level_iters, levels_left, B);
  OTGPU_LAUNCH_CHECK();
}

void overrelax_state_init(double* omega, double* prev_residual, double* prev_rate, int* failures,
                          int* restore, std::int64_t B, cudaStream_t stream) {
  if (B <= 0) return;
  overrelax_init_kernel<<<blocks_of(B), kBlock, 0, stream>>>(omega, prev_residual, prev_rate,
                                                             failures, restore, B);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
