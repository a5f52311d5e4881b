// Device-side control of the Sinkhorn iteration loop: the pieces that let a check
// period be captured once as a CUDA graph and replayed, and let a conditional WHILE
// node stop the loop on the device (no host read of the active count).
//
// Loop state: `state` is int[kLoopStateInts] in device memory; state[0] is the number
// of iterations done when a captured period starts (a graph cannot take the iteration
// number as a baked kernel argument: it changes at every replay); state[1] is unused;
// state[2..3] hold one double (8-byte aligned when state is), the largest residual of
// the last check (loop_max_residual), read by the host with the active count.
//
// Check-reuses-the-f-update. A check at the target eps computes
//   Ft_i = -eps LSE_j(logB_j + (G_j - C_ij)/eps)      (the balanced f-update)
// and the next iteration's f-update at the same eps and the same G is
//   F_i = -lambda_a eps LSE_j(...) = lambda_a Ft_i     (lambda_a = 1 when balanced),
// so the loop sets F = lambda_a Ft instead of computing the half-step again.
// Plain C++ header: includable from .cpp files.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace otgpu::kernels {

constexpr int kLoopStateInts = 4;

/// The double slot of the loop state that loop_check_residual may fill with the
/// largest residual of a check (state must be 8-byte aligned).
inline double* loop_max_residual(int* state) {
  return state != nullptr ? reinterpret_cast<double*>(state + 2) : nullptr;
}

/// state[0] = t (one thread; capturable, unlike a copy from pageable host memory).
void loop_set_iteration(int* state, int t, cudaStream_t stream);

/// F[b,i] = lambda_a[b] * Ft[b,i] for every active problem (lambda_a == nullptr: 1;
/// active == nullptr: all). Ft [B,n], F [B,n] (must not alias).
void loop_reuse_f(const float* Ft, const float* lambda_a, const int* active, float* F,
                  std::int64_t B, std::int64_t n, cudaStream_t stream);

/// The convergence check of iteration it = (state ? state[0] : 0) + offset, for every
/// active problem b:
///   R_b = sum_i a_i |exp((F_i - lambda_a Ft_i) / eps_b) - 1|   (terms with a_i = 0 skipped)
///   residual[b] = R_b; R_b <= tol: active[b] = 0, iterations[b] = it; else
///   atomicAdd(active_count, 1) (the caller zeroes *active_count before);
///   max_residual (nullable): *max_residual = max(*max_residual, R_b) over the problems
///   checked (the caller zeroes it before; residuals are >= 0, so the max is taken on
///   their bit patterns, and a NaN residual shows as NaN).
/// a [B,n] double; F, Ft [B,n]; eps, lambda_a [B] (lambda_a nullptr: 1).
void loop_check_residual(const double* a, const float* F, const float* Ft, const float* eps,
                         const float* lambda_a, double tol, const int* state, int offset,
                         int* active, int* iterations, double* residual, int* active_count,
                         double* max_residual, std::int64_t B, std::int64_t n, cudaStream_t stream);
/// A solve stopped early (its progress callback cancelled it) after t iterations:
/// iterations[b] = t for every problem still active (active[b] != 0). active, iterations [B].
void loop_stop_unfinished(const int* active, int* iterations, int t, std::int64_t B,
                          cudaStream_t stream);

/// End of a replayed check period without a conditional node: state[0] += period.
void loop_advance(int* state, int period, cudaStream_t stream);

/// True when this build's toolkit has conditional graph nodes (CUDA 12.4+) and the
/// driver runs them; false otherwise (never throws).
bool loop_conditional_supported() noexcept;

#if defined(CUDART_VERSION) && CUDART_VERSION >= 12040
/// Gate of a conditional WHILE loop over check periods: state[0] += advance, then
/// the condition of `handle` becomes (*active_count > 0 && state[0] + period <= t_limit):
/// another period runs only while a problem is active and it fits before the cap.
/// One thread; must run inside the graph that owns `handle`.
void loop_gate(cudaGraphConditionalHandle handle, int* state, int advance, int period,
               const int* active_count, int t_limit, cudaStream_t stream);
#endif

}  // namespace otgpu::kernels
