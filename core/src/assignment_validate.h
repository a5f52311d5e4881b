// Input validation of the exact assignment entry points, shared by every backend.
// Internal (not installed).
#pragma once

#include <cstdint>
#include <string_view>

#include "otgpu/assignment.h"

namespace otgpu::detail {

/// Sizes of a validated assignment batch.
struct AssignmentShape {
  std::int64_t batch = 0;  ///< K
  std::int64_t n = 0;      ///< rows (points of x)
  std::int64_t m = 0;      ///< columns (points of y)
  std::int64_t d = 0;      ///< point dimension; 0 for CostKind::matrix
  bool batched = false;    ///< the views are rank 3 ([K, ...]); rank 2 means K = 1
  MemorySpace space = MemorySpace::host;
};

/// Checks cost_kind, ranks, dtypes, strides, sizes (an empty batch or an empty side is
/// a ShapeError naming the view), matching batch sizes and d, one memory space, the
/// options (cpu_threads >= 0, device >= 0), and for host data: cost entries are finite
/// or +inf (NaN and -inf are NonFiniteInput naming the element), points are finite and
/// their costs do not overflow. Feasibility is the solver's (it throws Infeasible).
/// `fn` prefixes nothing; messages name the argument ("cost", "x", ...).
AssignmentShape validate_assignment(const AssignmentProblem& problem,
                                    const AssignmentOptions& options);

}  // namespace otgpu::detail
