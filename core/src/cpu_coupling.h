// CPU reference of the coupling samplers (otgpu/coupling.h) and the validation of
// couple()'s inputs. fp64. Internal (not installed).
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/coupling.h"
#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::detail {

/// Sizes of a validated coupling: K minibatches of bs0 rows of x0 and bs1 rows of x1.
struct CouplingShape {
  std::int64_t batch = 0, bs0 = 0, bs1 = 0, d = 0;
  std::int64_t pairs = 0;  ///< pairs per minibatch
  MemorySpace space = MemorySpace::host;
};

/// Checks x0 / x1 (present, rank 2 or 3 alike, same K and d, every size > 0, one
/// memory space, finite when in host memory) and the options (eps, rho, num_pairs,
/// exact needs bs0 == bs1). Messages name x0, x1 or the option and the value.
CouplingShape validate_coupling(const TensorView& x0, const TensorView& x1,
                                const CouplingOptions& options, const char* fn);

/// The Sinkhorn problem and options of an entropic coupling (uniform weights).
SinkhornProblem coupling_problem(const TensorView& x0, const TensorView& x1,
                                 const CouplingOptions& options);
SinkhornOptions coupling_sinkhorn_options(const CouplingOptions& options);

}  // namespace otgpu::detail

namespace otgpu::cpu {

/// num_pairs pairs per problem drawn from the plan of `result` (a solve of `problem`)
/// jointly, with or without replacement, keyed by `seed` (otgpu/coupling.h). Writes
/// i_out, j_out [B, num_pairs].
void sample_joint_pairs(const SinkhornProblem& problem, const SinkhornResult& result,
                        const detail::SinkhornShape& shape, std::int64_t num_pairs,
                        bool replacement, std::uint64_t seed, std::int64_t* i_out,
                        std::int64_t* j_out);

/// The uniform u of detail::stream_gumbel(seed, problem, i, j) = -log(-log u).
double gumbel_uniform(std::uint64_t seed, std::uint64_t problem, std::uint64_t i,
                      std::uint64_t j) noexcept;

/// Draw t's column of row C_i (length m) with replacement: argmax_j of log b_j +
/// (g_j - C_ij) inv + stream_gumbel(col_seed, problem, t, j) (first j on ties, -1 when
/// none is > -inf), the Gumbels' logs skipped where they provably cannot win.
/// a and thresh are scratch rows of length m.
std::int64_t draw_column(const double* log_b, const double* g, const double* c, std::int64_t m,
                         double inv, std::uint64_t col_seed, std::uint64_t problem, std::uint64_t t,
                         double* a, double* thresh);

/// The fp64 cost matrices [K, bs0, bs1] of host points x0, x1 (cost_kind sqeuclidean
/// or euclidean) by the assignment reference's kernels (cpu_cost.h: coordinate
/// differences at small d, the Gram form on centred points at large d, within its
/// bound delta ~ 1e-13 relative of the differences). Built once per call, so that the
/// solve, the draws and the pair costs read one matrix instead of each evaluating
/// the points pair by pair.
std::vector<double> point_cost_matrices(const TensorView& x0, const TensorView& x1, CostKind kind,
                                        const detail::CouplingShape& shape);

/// Mean of C(x_i, y_j) over each problem's `pairs` pairs (i, j) [B, pairs], in fp64.
std::vector<double> mean_pair_cost(const SinkhornProblem& problem,
                                   const detail::SinkhornShape& shape, std::int64_t pairs,
                                   const std::int64_t* i, const std::int64_t* j);

}  // namespace otgpu::cpu
