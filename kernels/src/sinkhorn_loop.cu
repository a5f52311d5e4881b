// Device-side loop control of the Sinkhorn iterations (sinkhorn_loop.h).
#include "otgpu_kernels/sinkhorn_loop.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdint>

#include "otgpu/error.h"
#include "otgpu_kernels/cuda_check.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

using detail::block_sum;

constexpr int kBlock = 256;
constexpr int kReuseThreads = 256;

__global__ void set_iteration_kernel(int* __restrict__ state, int t) { state[0] = t; }

__global__ void advance_kernel(int* __restrict__ state, int period) { state[0] += period; }

__global__ void __launch_bounds__(kReuseThreads)
    reuse_f_kernel(const float* __restrict__ Ft, const float* __restrict__ lambda_a,
                   const int* __restrict__ active, float* __restrict__ F, std::int64_t n) {
  const std::int64_t b = blockIdx.y;
  if (active != nullptr && active[b] == 0) return;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kReuseThreads + threadIdx.x;
  if (i >= n) return;
  // Balanced: lambda = 1 and F = Ft bit for bit, exactly what the half-step gives.
  const float lam = lambda_a != nullptr ? lambda_a[b] : 1.f;
  F[b * n + i] = lam * Ft[b * n + i];
}

__global__ void __launch_bounds__(kBlock)
    check_kernel(const double* __restrict__ a, const float* __restrict__ F,
                 const float* __restrict__ Ft, const float* __restrict__ eps,
                 const float* __restrict__ lambda_a, double tol, const int* __restrict__ state,
                 int offset, int* __restrict__ active, int* __restrict__ iterations,
                 double* __restrict__ residual, int* __restrict__ active_count,
                 double* __restrict__ max_residual, std::int64_t n) {
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
  r = block_sum<kBlock>(r, shared);
  if (threadIdx.x == 0) {
    residual[b] = r;
    if (max_residual != nullptr) {
      // r >= 0 (or NaN): unsigned order of the bits is the order of the values.
      atomicMax(reinterpret_cast<unsigned long long*>(max_residual),
                static_cast<unsigned long long>(__double_as_longlong(r)));
    }
    if (r <= tol) {
      active[b] = 0;
      iterations[b] = (state != nullptr ? state[0] : 0) + offset;
    } else {
      atomicAdd(active_count, 1);
    }
  }
}

__global__ void stop_unfinished_kernel(const int* __restrict__ active, int* __restrict__ iterations,
                                       int t, std::int64_t B) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  if (b < B && active[b] != 0) iterations[b] = t;
}

#if defined(CUDART_VERSION) && CUDART_VERSION >= 12040
__global__ void gate_kernel(cudaGraphConditionalHandle handle, int* __restrict__ state, int advance,
                            int period, const int* __restrict__ active_count, int t_limit) {
  const int t = state[0] + advance;
  state[0] = t;
  // t + period <= t_limit, written so that it cannot overflow near INT_MAX.
  const bool more = *active_count > 0 && t <= t_limit - period;
  cudaGraphSetConditional(handle, more ? 1u : 0u);
}
#endif

void check_batch(std::int64_t B, std::int64_t n, const char* who) {
  if (B <= 0 || n <= 0)
    throw InvalidArgument(fmt::format("{}: sizes must be positive (B={}, n={})", who, B, n));
}

}  // namespace

void loop_set_iteration(int* state, int t, cudaStream_t stream) {
  if (state == nullptr) throw InvalidArgument("loop_set_iteration: state must not be null");
  set_iteration_kernel<<<1, 1, 0, stream>>>(state, t);
  OTGPU_LAUNCH_CHECK();
}

void loop_advance(int* state, int period, cudaStream_t stream) {
  if (state == nullptr) throw InvalidArgument("loop_advance: state must not be null");
  advance_kernel<<<1, 1, 0, stream>>>(state, period);
  OTGPU_LAUNCH_CHECK();
}

void loop_reuse_f(const float* Ft, const float* lambda_a, const int* active, float* F,
                  std::int64_t B, std::int64_t n, cudaStream_t stream) {
  check_batch(B, n, "loop_reuse_f");
  if (B > 65535) throw InvalidArgument(fmt::format("loop_reuse_f: batch B={} exceeds 65535", B));
  const dim3 grid(static_cast<unsigned>((n + kReuseThreads - 1) / kReuseThreads),
                  static_cast<unsigned>(B));
  reuse_f_kernel<<<grid, kReuseThreads, 0, stream>>>(Ft, lambda_a, active, F, n);
  OTGPU_LAUNCH_CHECK();
}

void loop_check_residual(const double* a, const float* F, const float* Ft, const float* eps,
                         const float* lambda_a, double tol, const int* state, int offset,
                         int* active, int* iterations, double* residual, int* active_count,
                         double* max_residual, std::int64_t B, std::int64_t n,
                         cudaStream_t stream) {
  check_batch(B, n, "loop_check_residual");
  check_kernel<<<static_cast<unsigned>(B), kBlock, 0, stream>>>(
      a, F, Ft, eps, lambda_a, tol, state, offset, active, iterations, residual, active_count,
      max_residual, n);
  OTGPU_LAUNCH_CHECK();
}

void loop_stop_unfinished(const int* active, int* iterations, int t, std::int64_t B,
                          cudaStream_t stream) {
  check_batch(B, 1, "loop_stop_unfinished");
  if (active == nullptr || iterations == nullptr)
    throw InvalidArgument("loop_stop_unfinished: active and iterations must not be null");
  stop_unfinished_kernel<<<static_cast<unsigned>((B + kBlock - 1) / kBlock), kBlock, 0, stream>>>(
      active, iterations, t, B);
  OTGPU_LAUNCH_CHECK();
}

bool loop_conditional_supported() noexcept {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12040
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return driver >= 12040;
#else
  return false;
#endif
}

#if defined(CUDART_VERSION) && CUDART_VERSION >= 12040
void loop_gate(cudaGraphConditionalHandle handle, int* state, int advance, int period,
               const int* active_count, int t_limit, cudaStream_t stream) {
  if (state == nullptr || active_count == nullptr)
    throw InvalidArgument("loop_gate: state and active_count must not be null");
  gate_kernel<<<1, 1, 0, stream>>>(handle, state, advance, period, active_count, t_limit);
  OTGPU_LAUNCH_CHECK();
}
#endif

}  // namespace otgpu::kernels
