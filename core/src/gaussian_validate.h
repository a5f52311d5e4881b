// Input validation of the Gaussian OT entry points, and the packing of a validated
// batch for the CPU reference. Internal (not installed). Reads host views only: the
// GPU driver hands device inputs in as host views of a copy it read back through the
// runtime (pinned staging), so host and device data are checked by the same code.
#pragma once

#include <cstdint>

#include "gaussian_pairs.h"
#include "otgpu/gaussian.h"

namespace otgpu::detail {

/// Sizes of a validated Gaussian batch. Each of the four tensors holds one block
/// (count 1: shared by every pair) or `batch` blocks.
struct GaussianShape {
  std::int64_t batch = 1;
  std::int64_t d = 0;
  std::int64_t count_m1 = 1, count_s1 = 1, count_m2 = 1, count_s2 = 1;
  MemorySpace space = MemorySpace::host;  ///< where all four views live
};

/// Options (eps finite >= 0, device >= 0, backend code), ranks, dtypes, sizes,
/// strides (non-negative), square covariances, one d, agreeing batch sizes and one
/// memory space. Reads no element. Throws the typed errors of otgpu/error.h, every
/// message prefixed with "gaussian_ot: ".
GaussianShape validate_gaussian_shapes(const GaussianBatch& source, const GaussianBatch& target,
                                       const GaussianOTOptions& options);

/// The element values of views in host memory: every element finite (in the order
/// source.mean, source.cov, target.mean, target.cov, each in C order),
/// then every covariance symmetric within kGaussianSymmetryRelTol of its largest
/// entry and, once symmetrized, positive semi-definite: lambda_min >=
/// -kGaussianNullRelTol * trace. Messages name the tensor, the pair and the value.
void validate_gaussian_values(const GaussianBatch& source, const GaussianBatch& target,
                              const GaussianShape& shape);

/// The four host views as contiguous float64 blocks in C order, covariances
/// symmetrized ((S + S^T) / 2): the input of the CPU reference (cpu::gaussian_ot).
GaussianPairs pack_gaussian_pairs(const GaussianBatch& source, const GaussianBatch& target,
                                  const GaussianShape& shape);

}  // namespace otgpu::detail
