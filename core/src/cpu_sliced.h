// The CPU reference for exact 1-D OT and sliced Wasserstein: fp64 projections and
// merges, OpenMP over (problem, direction) pairs. The oracle for the CUDA path.
// Internal (not installed).
#pragma once

#include <vector>

#include "otgpu/sliced.h"
#include "sliced_validate.h"

namespace otgpu::cpu {

/// Fills per_direction, and grad_x / grad_y when options.gradients; value and
/// value_pp are left to detail::finalize_sliced_value.
SlicedResult sliced_wasserstein(const SlicedProblem& problem, const SlicedOptions& options,
                                const detail::SlicedShape& shape);

/// Monotone coupling of each problem of a d = 1 batch (x [B, n, 1], y [B, m, 1]).
std::vector<Coupling1D> monotone_coupling_1d(const SlicedProblem& problem, double p,
                                             const detail::SlicedShape& shape);

}  // namespace otgpu::cpu
