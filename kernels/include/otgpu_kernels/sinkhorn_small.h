// Launcher of the many-small-problems Sinkhorn kernel: one thread block per
// problem runs a chunk of iterations [t_begin, t_end) entirely inside the kernel,
// with the potentials, the log weights and the cost source (point clouds, or the
// cost matrix itself) in shared memory. For B in the hundreds or thousands and
// n, m up to a few hundred (W2), where a launch per half-step would cost more than
// the half-step itself.
//
// Data layout: the canonical one of the CUDA Sinkhorn backend (sinkhorn_dense.h):
// fp32, contiguous, batch-major device arrays. X [B,n,d], Y [B,m,d] or C [B,n,m];
// logA [B,n], logB [B,m] (-INFINITY for zero weights); F [B,n], G [B,m].
//
// Semantics (identical to the CPU reference core/src/cpu_sinkhorn.cpp), per problem:
//   for t in [t_begin, min(t_end, max_iter)):
//     eps_t = max(eps, eps_init * eps_decay^t)   (eps_t = eps when eps_init <= 0)
//     lambda_{a,b} = rho / (rho + eps_t)          (1 when rho = +inf)
//     F = f-update(G, eps_t, lambda_a); G = g-update(F, eps_t, lambda_b)
//     iterations = t + 1
//     if check_every > 0 and (t+1) % check_every == 0 and eps_t == eps:
//       ftilde_i = -eps LSE_j(logB_j + (G_j - C_ij)/eps)
//       R = sum_i exp(logA_i) |exp((F_i - lambda_a ftilde_i)/eps) - 1|
//       residual = R; if R <= tol: converged, stop
//   after iteration max_iter - 1 (no checks, or the cap between checks) R is
//   measured once more, with the target eps, and converged = (R <= tol).
// Potentials and counters carry over between chunks, so the driver may call it
// with t_begin = 0, k, 2k, ... and stop when no problem is active any more.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <limits>

#include "otgpu/sinkhorn.h"

namespace otgpu::kernels {

struct SmallSinkhornArgs {
  /// sqeuclidean / euclidean: X and Y are used; matrix: C is used.
  CostKind cost = CostKind::sqeuclidean;
  const float* X = nullptr;         ///< [B,n,d] (the driver should center X and Y by one
                                    ///< common vector per problem: costs are translation
                                    ///< invariant and fp32 distances lose less)
  const float* Y = nullptr;         ///< [B,m,d]
  const float* C = nullptr;         ///< [B,n,m]
  const float* logA = nullptr;      ///< [B,n]
  const float* logB = nullptr;      ///< [B,m]
  float* F = nullptr;               ///< [B,n] in: start potentials, out: after the chunk
  float* G = nullptr;               ///< [B,m] in/out
  const float* eps = nullptr;       ///< [B] target eps per problem (> 0)
  const float* eps_init = nullptr;  ///< [B] schedule start per problem, <= 0 = off;
                                    ///< nullptr = off for every problem
  double eps_decay = 0.5;
  double rho_a = std::numeric_limits<double>::infinity();
  double rho_b = std::numeric_limits<double>::infinity();
  double tol = 1e-6;
  int max_iter = 1000;
  int check_every = 10;
  int t_begin = 0;  ///< first iteration of this chunk (the iteration count so far)
  int t_end = 0;    ///< one past the last iteration of this chunk (clamped to max_iter)
  /// [B] in/out, or nullptr (all active, nothing written). In: 0 = skip the problem
  /// (no work, nothing written). Out: set to 0 when the problem converged or ran
  /// max_iter iterations.
  int* active = nullptr;
  /// [B] outputs, written for every problem active at entry: iterations (t + 1 of
  /// the last iteration run; left unchanged when the chunk runs none), converged
  /// (0/1). residual is written only when this chunk measured R (the driver
  /// initializes it, e.g. to +inf).
  int* iterations = nullptr;
  float* residual = nullptr;
  int* converged = nullptr;
  std::int64_t B = 0, n = 0, m = 0, d = 0;
};

/// Dynamic shared memory (bytes) the kernel needs for these sizes on `device` (the
/// variant, cost cached in shared memory or recomputed from the points, is chosen
/// under the device's opt-in limit). Greater than the limit when nothing fits.
std::size_t small_kernel_smem_bytes(CostKind cost, std::int64_t n, std::int64_t m, std::int64_t d,
                                    int device);

/// True when some variant of the kernel fits in the shared memory of `device`
/// (H100: 227 KB per block). Point clouds need d <= 32 unless the n x m cost matrix
/// itself fits. Throws CudaError when the device cannot be queried.
bool small_kernel_fits(CostKind cost, std::int64_t n, std::int64_t m, std::int64_t d, int device);

/// Runs iterations [t_begin, min(t_end, max_iter)) of every active problem on the
/// current device, one block per problem. Throws InvalidArgument on bad sizes or
/// options and when the problem does not fit (see small_kernel_fits).
void small_sinkhorn(const SmallSinkhornArgs& args, cudaStream_t stream);

}  // namespace otgpu::kernels
