// CPU pieces of the minibatch OT estimator (otgpu/minibatch.h): validation, the
// gather of the minibatches and the exact matched-cost gradient. Internal.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/minibatch.h"

namespace otgpu::cpu {

/// Checks x [N, d], y [M, d] (host, finite, same d) and the options; returns {N, M, d}.
struct MinibatchShape {
  std::int64_t N = 0, M = 0, d = 0;
};
MinibatchShape validate_minibatch(const TensorView& x, const TensorView& y,
                                  const MinibatchOptions& options);

/// out [K, bs, d] fp64: the rows `rows` [K, bs] of the host view v [N, d].
std::vector<double> gather_rows(const TensorView& v, const std::vector<std::int64_t>& rows,
                                std::int64_t d);

/// grad_x c(x, y) for the cost kind (sqeuclidean 2 (x - y), euclidean (x - y)/|x - y|,
/// 0 at x = y), times `scale`, added to out [d].
void add_cost_gradient(CostKind kind, const double* x, const double* y, std::int64_t d,
                       double scale, double* out);

/// C(x, y) for the cost kind.
double point_pair_cost(CostKind kind, const double* x, const double* y, std::int64_t d);

}  // namespace otgpu::cpu
