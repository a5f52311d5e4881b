// Kernels of the CUDA Gaussian OT path and their launchers: device pointers, sizes and
// a stream in; no allocation, no synchronization, no policy (the eigen-decompositions
// and the products are cuSOLVER / cuBLAS calls of the host driver,
// host/src/cuda/gaussian_cuda.cpp). float64 throughout; every matrix is d x d
// symmetric, so row-major and column-major storage coincide. Plain C++ header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace otgpu::kernels {

/// trace[b] = tr S_b for `count` matrices s [count, d, d].
void gaussian_traces(const double* s, std::int64_t count, std::int64_t d, double* trace,
                     cudaStream_t stream);

/// Which function of the eigenvalues gaussian_scale_columns applies.
enum class SpectralFn : int {
  sqrt,       ///< sqrt(max(w, 0))
  pinv_sqrt,  ///< the pseudo-inverse square root, null below kGaussianNullRelTol * trace
};

/// out_b = V_b diag(f(w_b)): column k of the column-major eigenvector matrix V_b
/// scaled by f of its eigenvalue, so that out_b V_b^T = f(the matrix). vectors and
/// out are [count, d, d], values [count, d]; trace [count] is read for pinv_sqrt only.
void gaussian_scale_columns(const double* vectors, const double* values, const double* trace,
                            SpectralFn fn, std::int64_t count, std::int64_t d, double* out,
                            cudaStream_t stream);

/// ptrs[b] = base + (count == 1 ? 0 : b) * stride for b < batch: the operand of pair b
/// for the pointer-array batched GEMMs (a single block is shared by every pair).
void gaussian_pointer_array(double* base, std::int64_t count, std::int64_t stride,
                            std::int64_t batch, double** ptrs, cudaStream_t stream);

/// One block per pair b < batch: |m1 - m2|^2 and the eigenvalue sums of M_b (mu
/// [batch, d]) give out[b] = (W2^2, Bures^2, OT_eps) (OT_eps = 0 when sigma2 == 0),
/// with the expressions of detail/gaussian_math.h. Each input has 1 (shared) or
/// batch blocks (n_*).
struct GaussianPairValues {
  const double* m1 = nullptr;
  std::int64_t n_m1 = 1;
  const double* m2 = nullptr;
  std::int64_t n_m2 = 1;
  const double* tr_s1 = nullptr;
  std::int64_t n_s1 = 1;
  const double* tr_s2 = nullptr;
  std::int64_t n_s2 = 1;
  const double* mu = nullptr;
  std::int64_t batch = 0;
  std::int64_t d = 0;
  double sigma2 = 0;
  double* out = nullptr;  ///< [batch, 3]
};
void gaussian_pair_values(const GaussianPairValues& args, cudaStream_t stream);

/// a_b <- (a_b + a_b^T) / 2 for `count` matrices (round-off asymmetry of products).
void gaussian_symmetrize(double* a, std::int64_t count, std::int64_t d, cudaStream_t stream);

}  // namespace otgpu::kernels
