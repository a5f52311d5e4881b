// One problem of a validated batch gathered into contiguous fp64 arrays, with its
// cost matrix either held in memory (and transposed, so that both half-iterations
// read contiguous rows) or computed on the fly when it would not fit. Internal.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::cpu {

/// Largest cost matrix (plus its transpose) held in memory per problem.
inline constexpr std::int64_t kMaxDenseCostBytes = std::int64_t{1} << 30;

/// Smallest and largest C_ij of a problem.
struct CostRange {
  double min = 0, max = 0;
};

struct ProblemData {
  std::int64_t index = 0;  ///< problem number in the batch
  std::int64_t n = 0, m = 0, d = 0;
  CostKind kind = CostKind::sqeuclidean;
  std::vector<double> x, y;          ///< [n, d], [m, d] (point clouds only)
  std::vector<double> a, b;          ///< weights (b rescaled to the mass of a when balanced)
  std::vector<double> log_a, log_b;  ///< log of the weights; -inf for zero weights
  double mass_a = 0, mass_b = 0;
  std::vector<double> cost, cost_t;       ///< [n, m] and [m, n] when held in memory
  const TensorView* cost_view = nullptr;  ///< user matrix (CostKind::matrix)
  bool cost_batched = false;

  bool dense() const noexcept { return !cost.empty(); }
  double cost_at(std::int64_t i, std::int64_t j) const noexcept;
  /// Row i of C (length m): a pointer into the held matrix, or `scratch` filled.
  const double* cost_row(std::int64_t i, double* scratch) const noexcept;
  /// Column j of C (length n), as above.
  const double* cost_col(std::int64_t j, double* scratch) const noexcept;
  /// Unweighted mean of C over the n * m pairs.
  double mean_cost() const;
  /// min and max of C over the n * m pairs (one pass).
  CostRange cost_range() const;
};

/// Gathers problem `index`. `balanced` rescales b to the mass of a; C and C^T are
/// built when their 16 n m bytes fit in `dense_limit_bytes` (else C is computed on
/// the fly), with `threads` OpenMP threads.
ProblemData load_problem(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                         std::int64_t index, bool balanced, std::int64_t dense_limit_bytes,
                         int threads);

/// cpu::sinkhorn with the dense-cost limit as a parameter, so tests can exercise the
/// on-the-fly cost path on small problems (cpu::sinkhorn uses kMaxDenseCostBytes).
SinkhornResult sinkhorn_with_dense_limit(const SinkhornProblem& problem,
                                         const SinkhornOptions& options,
                                         const detail::SinkhornShape& shape,
                                         std::int64_t dense_limit_bytes);

/// Rescales b (and log b) to the mass of a, so that balanced masses match exactly.
void rescale_b_to_mass_of_a(ProblemData& p);

/// Row statistics of s_j = log w_j + (pot_j - c_j) * inv_eps over j < len:
/// max, sum_j exp(s_j - max), and optionally sum_j exp(s_j - max) * c_j. Two passes
/// (max, then exponentials) over `s`, a scratch of length len. Zero weights give
/// s_j = -inf and drop out.
struct RowLse {
  double max;
  double sum;
  double weighted_cost;
};
RowLse row_lse(const double* c, const double* log_w, const double* pot, std::int64_t len,
               double inv_eps, double* s, bool with_cost) noexcept;

}  // namespace otgpu::cpu
