// The scalar pieces of Gaussian OT shared verbatim by the CPU reference and the
// CUDA kernels: everything after the eigen-decompositions is a sum over the
// eigenvalues mu_k of M = S1^{1/2} S2 S1^{1/2}, so both backends evaluate the same
// expressions in the same order. Header-only, host+device.
#pragma once

#include <cmath>

#include "otgpu/config.h"

namespace otgpu::detail {

/// Eigenvalues of S1 at or below this fraction of tr S1 count as zero in the
/// pseudo-inverse square root of the Monge map. It matches the PSD tolerance of the
/// validation (an eigenvalue down to -kGaussianNullRelTol * tr is accepted as a
/// round-off zero), so the band [-tol, tol] is one notion of "zero" everywhere.
inline constexpr double kGaussianNullRelTol = 1e-10;

/// Relative symmetry tolerance of the inputs: max |S_ij - S_ji| <= tol * max |S_ij|.
/// Loose enough for matrices computed in float32, tight enough to catch a transposed
/// or garbled input. Accepted inputs are symmetrized ((S + S^T) / 2) before use.
inline constexpr double kGaussianSymmetryRelTol = 1e-6;

/// Square root of an eigenvalue that should be >= 0 (round-off negatives -> 0).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double psd_sqrt(double lambda) {
  return lambda > 0 ? sqrt(lambda) : 0.0;
}

/// 1 / sqrt(lambda) on the range of S1, 0 on its (numerical) null space.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double pinv_sqrt(double lambda, double null_threshold) {
  return lambda > null_threshold && lambda > 0 ? 1.0 / sqrt(lambda) : 0.0;
}

/// The entropic closed form's per-eigenvalue term. With sigma^2 = eps / 2, one
/// eigenvalue mu of M contributes to OT_eps - |m1 - m2|^2 - tr S1 - tr S2:
///   -sqrt(4 mu + sigma^4) + sigma^2 (1 - log(2 sigma^2)) + sigma^2 log(sqrt(4 mu + sigma^4) +
///   sigma^2)
/// (D = (4M + sigma^4 I)^{1/2} shares M's eigenvectors, so tr D and log det(D + sigma^2 I)
/// are sums over mu). The two logs are merged into log((D_k + sigma^2) / (2 sigma^2)) >= 0
/// so that no large log cancels for small eps.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double entropic_eigen_term(double mu, double sigma2) {
  const double s4 = sigma2 * sigma2;
  const double dk = sqrt(4.0 * (mu > 0 ? mu : 0.0) + s4);
  return -dk + sigma2 + sigma2 * log((dk + sigma2) / (2.0 * sigma2));
}

}  // namespace otgpu::detail
