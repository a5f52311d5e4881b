// The CPU reference Sinkhorn solver: log-domain, fp64 accumulation, OpenMP over
// problems and rows. The oracle for every GPU kernel. Internal (not installed).
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::cpu {

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options,
                        const detail::SinkhornShape& shape);

/// The self-transport terms OT_eps(a, a) of a batch whose y is x and b is a, by the
/// symmetric update f <- (f + T(f)) / 2 (see ProblemSolver::solve_symmetric): the
/// CPU reference that the CUDA driver mirrors. f = g in the result; options as
/// resolved (tol, eps_init concrete); acceleration does not apply.
SinkhornResult sinkhorn_symmetric(const SinkhornProblem& problem, const SinkhornOptions& options,
                                  const detail::SinkhornShape& shape);

std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape);
std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape);
std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed);

}  // namespace otgpu::cpu
