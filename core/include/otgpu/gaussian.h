// Optimal transport between Gaussian measures in closed form (Bures-Wasserstein),
// unregularized and entropic, batched over pairs, on the CPU or the GPU.
//
// For mu = N(m1, S1) and nu = N(m2, S2) with the cost |x - y|^2:
//   W2^2(mu, nu)  = |m1 - m2|^2 + Bures^2(S1, S2)
//   Bures^2       = tr S1 + tr S2 - 2 tr (S1^{1/2} S2 S1^{1/2})^{1/2}
//   Monge map     T(x) = m2 + A (x - m1),
//                 A = S1^{-1/2} (S1^{1/2} S2 S1^{1/2})^{1/2} S1^{-1/2}  (symmetric PSD)
// Entropic OT with the library's Sinkhorn convention,
//   OT_eps = min_P <P, |x - y|^2> + eps KL(P | mu (x) nu),
// has the closed form of Janati, Muzellec, Peyre & Cuturi (NeurIPS 2020, Thm. 1;
// also Mallasto, Gerolin & Minh 2021) with sigma^2 = eps / 2:
//   D      = (4 S1^{1/2} S2 S1^{1/2} + sigma^4 I)^{1/2}
//   OT_eps = |m1 - m2|^2 + tr S1 + tr S2 - tr D + d sigma^2 (1 - log(2 sigma^2))
//            + sigma^2 log det(D + sigma^2 I)
// It tends to W2^2 as eps -> 0, and the Sinkhorn value of large samples of mu and nu
// converges to it (KL is relative to the product of the marginals, so the discrete
// and the continuous values have the same limit).
//
// Singular S1: S1^{-1/2} is the pseudo-inverse square root, with eigenvalues of S1 at
// or below kGaussianNullRelTol * tr S1 treated as zero (see detail/gaussian_math.h).
// The map then satisfies A S1 A = P S2 P (P the projector onto range(S1)): no linear
// map can push a degenerate Gaussian onto a non-degenerate one, and this one moves
// the mass supported by S1 optimally. W2 and OT_eps need no inverse and are exact for
// singular covariances too.
#pragma once

#include <vector>

#include "otgpu/types.h"

namespace otgpu {

class GpuContext;  // otgpu/device.h

/// A batch of Gaussians. mean is [d] or [B, d]; cov is [d, d] or [B, d, d], symmetric
/// positive semi-definite. A rank-lower tensor (no batch dimension) is shared by every
/// pair, so one source can be compared with B targets, or B means can share one
/// covariance. Host memory (float32 or float64, any strides); device memory is
/// accepted with the CUDA backend (it is read back once for validation).
struct GaussianBatch {
  TensorView mean;
  TensorView cov;
};

struct GaussianOTOptions {
  /// 0: unregularized W2^2 (and Bures^2). > 0: also the entropic value OT_eps.
  double eps = 0;
  /// Also return the matrix A of the Monge map for every pair.
  bool want_map = false;
  Backend backend = Backend::automatic;
  int device = 0;  ///< CUDA device ordinal
};

struct GaussianOTResult {
  Backend backend = Backend::cpu;  ///< the backend that actually ran
  std::int64_t batch = 0;          ///< number of pairs B
  std::int64_t d = 0;
  std::vector<double> w2_squared;     ///< [B] |m1 - m2|^2 + Bures^2
  std::vector<double> bures_squared;  ///< [B] (clamped at 0 against round-off)
  std::vector<double> entropic;       ///< [B] OT_eps when eps > 0, else empty
  std::vector<double> map_matrix;     ///< [B, d, d] row-major A when want_map, else empty
  double time_ms = 0;
};

/// Closed-form OT for each pair (source_b, target_b). B is the batch size of the
/// batched tensors (all batched tensors must agree); with no batched tensor B = 1.
/// The CPU computes in float64 (Jacobi eigen-decompositions); the GPU in float64 with
/// cuSOLVER. Throws ShapeError / DTypeError / NonFiniteInput / InvalidArgument (a
/// non-symmetric or non-PSD covariance names the pair and the value, eps < 0 or not
/// finite) and DeviceUnavailable when `backend = cuda` cannot run.
GaussianOTResult gaussian_ot(const GaussianBatch& source, const GaussianBatch& target,
                             const GaussianOTOptions& options = {});

/// The same on the GPU of `ctx` (otgpu/device.h), ordered on its stream after the
/// work queued there before the call, with the context's workspace, pinned staging
/// memory and cuBLAS / cuSOLVER handles: after the first call of a size, a call
/// allocates nothing. options.device is ignored (the context fixes the device);
/// options.backend must be automatic or cuda. Synchronous: returns when the results
/// are on the host. (The call without a context uses a cached context per host
/// thread and device, on the legacy default stream.)
GaussianOTResult gaussian_ot(GpuContext& ctx, const GaussianBatch& source,
                             const GaussianBatch& target, const GaussianOTOptions& options = {});

}  // namespace otgpu
