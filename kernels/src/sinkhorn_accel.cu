// The accelerated Sinkhorn steps (over-relaxation, symmetric average) and the
// per-problem relaxation rule. Element-wise over [B, n] with a grid-stride loop; the
// rule is one thread per problem running detail::overrelax_check, the same code as
// the CPU reference.
#include <cuda_runtime.h>

#include <cstdint>

#include "otgpu/detail/accel.h"
#include "otgpu/detail/eps_continuation.h"
#include "otgpu_kernels/sinkhorn_accel.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

constexpr int kBlock = 256;

/// Blocks for `count` elements, capped: the kernels stride over the rest.
unsigned blocks_for(std::int64_t count) {
  constexpr std::int64_t kMaxBlocks = 65535;
  const std::int64_t blocks = (count + kBlock - 1) / kBlock;
  return static_cast<unsigned>(blocks < kMaxBlocks ? (blocks > 0 ? blocks : 1) : kMaxBlocks);
}

__device__ __forceinline__ bool is_active(const int* active, std::int64_t b) {
  return active == nullptr || active[b] != 0;
}

__global__ void __launch_bounds__(kBlock)
    overrelax_kernel(float* __restrict__ F, const float* __restrict__ F_old,
                     const double* __restrict__ omega, const int* __restrict__ active,
                     std::int64_t n, std::int64_t total) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kBlock;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < total;
       e += stride) {
    const std::int64_t b = e / n;
    if (!is_active(active, b)) continue;
    const double w = omega[b];
    if (w == 1.0) continue;
    // In double: (1 - w) F_old + w F is a difference of nearby values for w near 2.
    F[e] = static_cast<float>((1.0 - w) * static_cast<double>(F_old[e]) +
                              w * static_cast<double>(F[e]));
  }
}

__global__ void __launch_bounds__(kBlock)
    symmetric_average_kernel(float* __restrict__ F, const float* __restrict__ Ft,
                             const int* __restrict__ active, std::int64_t n, std::int64_t total) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kBlock;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < total;
       e += stride) {
    if (!is_active(active, e / n)) continue;
    F[e] = 0.5f * (F[e] + Ft[e]);
  }
}

__global__ void __launch_bounds__(kBlock)
    overrelax_rule_kernel(const double* __restrict__ residual, int period, double tol,
                          const float* __restrict__ eps_cur, const float* __restrict__ eps_target,
                          const int* __restrict__ active, double* __restrict__ omega,
                          double* __restrict__ prev_residual, double* __restrict__ prev_rate,
                          int* __restrict__ failures, int* __restrict__ restore, std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (b >= B) return;
  if (!is_active(active, b)) {
    restore[b] = 0;
    return;
  }
  otgpu::detail::OverrelaxState s;
  s.omega = omega[b];
  s.prev_residual = prev_residual[b];
  s.prev_rate = prev_rate[b];
  s.failures = failures[b];
  const bool at_target = eps_cur == nullptr || !(eps_cur[b] > eps_target[b]);
  restore[b] = otgpu::detail::overrelax_rule_step(s, residual[b], period, at_target, tol) ? 1 : 0;
  omega[b] = s.omega;
  prev_residual[b] = s.prev_residual;
  prev_rate[b] = s.prev_rate;
  failures[b] = s.failures;
}

__global__ void __launch_bounds__(kBlock)
    commit_kernel(float* __restrict__ P, float* __restrict__ P_saved,
                  const int* __restrict__ restore, const int* __restrict__ active, std::int64_t n,
                  std::int64_t total) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kBlock;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x; e < total;
       e += stride) {
    const std::int64_t b = e / n;
    if (!is_active(active, b)) continue;
    if (restore[b] != 0) {
      P[e] = P_saved[e];
    } else {
      P_saved[e] = P[e];
    }
  }
}

}  // namespace

void sinkhorn_overrelax(float* F, const float* F_old, const double* omega, const int* active,
                        std::int64_t B, std::int64_t n, cudaStream_t stream) {
  const std::int64_t total = B * n;
  if (total <= 0) return;
  overrelax_kernel<<<blocks_for(total), kBlock, 0, stream>>>(F, F_old, omega, active, n, total);
  OTGPU_LAUNCH_CHECK();
}

void sinkhorn_symmetric_average(float* F, const float* Ft, const int* active, std::int64_t B,
                                std::int64_t n, cudaStream_t stream) {
  const std::int64_t total = B * n;
  if (total <= 0) return;
  symmetric_average_kernel<<<blocks_for(total), kBlock, 0, stream>>>(F, Ft, active, n, total);
  OTGPU_LAUNCH_CHECK();
}

void sinkhorn_overrelax_rule(const double* residual, int period, double tol, const float* eps_cur,
                             const float* eps_target, const int* active, double* omega,
                             double* prev_residual, double* prev_rate, int* failures, int* restore,
                             std::int64_t B, cudaStream_t stream) {
  if (B <= 0) return;
  // One thread per problem, no stride: every problem needs its own block slot.
  const auto blocks = static_cast<unsigned>((B + kBlock - 1) / kBlock);
  overrelax_rule_kernel<<<blocks, kBlock, 0, stream>>>(residual, period, tol, eps_cur, eps_target,
                                                       active, omega, prev_residual, prev_rate,
                                                       failures, restore, B);
  OTGPU_LAUNCH_CHECK();
}

void sinkhorn_overrelax_commit(float* F, float* G, float* F_saved, float* G_saved,
                               const int* restore, const int* active, std::int64_t B,
                               std::int64_t n, std::int64_t m, cudaStream_t stream) {
  if (B <= 0) return;
  commit_kernel<<<blocks_for(B * n), kBlock, 0, stream>>>(F, F_saved, restore, active, n, B * n);
  OTGPU_LAUNCH_CHECK();
  commit_kernel<<<blocks_for(B * m), kBlock, 0, stream>>>(G, G_saved, restore, active, m, B * m);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
