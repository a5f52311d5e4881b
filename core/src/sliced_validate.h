// Input validation and shared bookkeeping of the sliced / 1-D OT entry points.
// Internal (not installed).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "otgpu/sliced.h"

namespace otgpu::detail {

/// Sizes of a validated sliced batch.
struct SlicedShape {
  std::int64_t batch = 0;
  std::int64_t n = 0;
  std::int64_t m = 0;
  std::int64_t d = 0;
  std::int64_t projections = 0;  ///< L (from the directions view when given)
  bool a_batched = false;        ///< a is [B, n] (else shared [n] or uniform)
  bool b_batched = false;
  MemorySpace space = MemorySpace::host;  ///< where all present views live
};

/// Checks ranks, shapes, strides, memory spaces, options (p >= 1 finite,
/// projections >= 1, directions [d, L]), finiteness of host inputs, non-negative
/// weights with positive finite mass per problem and non-zero host directions.
/// `fn` prefixes every message. Throws the typed errors of otgpu/error.h.
SlicedShape validate_sliced(const SlicedProblem& problem, const SlicedOptions& options,
                            std::string_view fn = "sliced_wasserstein");

/// The unit directions [d, L] row-major: options.directions (host view, columns
/// normalized) or drawn from options.seed.
std::vector<double> host_directions(const SlicedOptions& options, const SlicedShape& shape);

/// Fills value_pp and value from per_direction (mean, or max when max_sliced).
void finalize_sliced_value(SlicedResult& result, const SlicedOptions& options);

/// Per (b, l) weights of the terms whose derivative enters the gradient: 1/L for the
/// mean, 1 for the first largest term of each problem for max-sliced. [B, L].
std::vector<double> sliced_term_weights(const std::vector<double>& per_direction,
                                        std::int64_t batch, std::int64_t projections,
                                        bool max_sliced);

/// View of problem b of a rank-3 points view or of a batched rank-2 weights view
/// (shared/absent views are returned unchanged).
TensorView slice_problem(const TensorView& v, std::int64_t b, bool batched_weights);

}  // namespace otgpu::detail
