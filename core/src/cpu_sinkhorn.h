// The CPU reference Sinkhorn solver: log-domain, fp64 accumulation, OpenMP over
// problems and rows. The oracle for every GPU kernel. Internal (not installed).
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::dist {
class Communicator;
}

namespace otgpu::cpu {

/// Where a problem's rows live: comm null means all of them in this process (the
/// ordinary solve); else this process holds rows [row_offset, row_offset + n) of
/// n_global, split over comm's ranks, with y and b replicated (see otgpu/dist.h).
struct Shard {
  dist::Communicator* comm = nullptr;
  std::int64_t row_offset = 0;
  std::int64_t n_global = 0;
};

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options,
                        const detail::SinkhornShape& shape);

/// The self-transport terms OT_eps(a, a) of a batch whose y is x and b is a, by the
/// symmetric update f <- (f + T(f)) / 2 (see ProblemSolver::solve_symmetric): the
/// CPU reference that the CUDA driver mirrors. f = g in the result; options as
/// resolved (tol, eps_init concrete); acceleration does not apply.
SinkhornResult sinkhorn_symmetric(const SinkhornProblem& problem, const SinkhornOptions& options,
                                  const detail::SinkhornShape& shape);

/// The solve of one shard of every problem (shape.n = this rank's rows): the same
/// iteration as sinkhorn(), its cross-row quantities (column LSEs, residuals, dual
/// terms, masses, mean and range of the costs) merged over shard.comm. Problems run one
/// after the other (every rank issues the same collectives in the same order). A
/// size-1 communicator gives sinkhorn()'s result bit for bit.
SinkhornResult sinkhorn_sharded(const Shard& shard, const SinkhornProblem& problem,
                                const SinkhornOptions& options, const detail::SinkhornShape& shape);

/// Derived outputs of the rows of `problem` (a shard when shard.comm is set: the mass of
/// a is then merged over the ranks, and the sampled partners key Philox by the global
/// row index row_offset + i).
std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape, const Shard& shard = {});
std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape, const Shard& shard = {});
std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed,
                                          const Shard& shard = {});

}  // namespace otgpu::cpu
