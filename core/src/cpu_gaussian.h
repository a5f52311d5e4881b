// The CPU reference of Gaussian (Bures) OT: float64 throughout, eigen-decompositions
// by cyclic Jacobi (no LAPACK). The oracle of the CUDA path. Internal.
#pragma once

#include <cstdint>
#include <vector>

#include "gaussian_pairs.h"
#include "otgpu/gaussian.h"

namespace otgpu::cpu {

/// Symmetric eigen-decomposition by cyclic Jacobi rotations. `a` is an n x n
/// row-major symmetric matrix (only its symmetric part is meaningful; it is
/// overwritten). Eigenvalues are returned ascending in `values`; when `vectors` is
/// non-null it receives the orthonormal eigenvectors as columns (row-major n x n:
/// vectors[i * n + k] is component i of eigenvector k). Accurate to a few ulps of
/// the matrix norm; throws Error if the sweeps do not converge (never observed).
void symmetric_eigen(std::vector<double>& a, std::int64_t n, std::vector<double>& values,
                     std::vector<double>* vectors);

/// True when the symmetric matrix a (n x n row-major) + shift * I has a Cholesky
/// factorization in float64: a cheap sufficient test for lambda_min(a) > -shift (up
/// to round-off). The validation confirms a failure with symmetric_eigen.
bool cholesky_succeeds(const double* a, std::int64_t n, double shift);

/// Closed-form Gaussian OT of every pair (see otgpu/gaussian.h). OpenMP over pairs.
GaussianOTResult gaussian_ot(const detail::GaussianPairs& pairs, const GaussianOTOptions& options);

}  // namespace otgpu::cpu
