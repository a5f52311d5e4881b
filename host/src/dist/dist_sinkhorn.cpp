// otgpu::dist::sinkhorn and the sharded derived outputs: validation agreed over the
// ranks, the row layout, then the CPU solver's own iteration with its cross-row
// quantities merged over the communicator (cpu::sinkhorn_sharded), or with
// Backend::cuda the sharded CUDA driver (dist_cuda.h, host/src/cuda/sinkhorn_sharded.cpp).
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "cpu_sinkhorn.h"
#include "dist_cuda.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"
#include "validate.h"

namespace otgpu::dist {

namespace {

/// The backend of a sharded solve: cuda when asked for, or when the views live on a
/// device; otherwise the CPU (automatic stays on the CPU: every rank must take the same
/// road, and the device count may differ between ranks).
Backend sharded_backend(const SinkhornOptions& options, MemorySpace space) {
  return options.backend == Backend::cuda || space == MemorySpace::device ? Backend::cuda
                                                                          : Backend::cpu;
}

/// validate_sinkhorn of this rank's slice. The equal-mass check of a balanced problem
/// needs the mass of a over all ranks: it is skipped here (rho set finite for the
/// check) and made by the sharded solver once the masses are merged.
detail::SinkhornShape validate_local(const SinkhornProblem& local, const SinkhornOptions& options,
                                     const char* what) {
  SinkhornOptions probe = options;
  if (std::isinf(probe.rho_a) && std::isinf(probe.rho_b)) probe.rho_a = probe.rho_b = 1.0;
  const auto shape = detail::validate_sinkhorn(local, probe);
  if (shape.space != MemorySpace::host && options.backend == Backend::cpu) {
    throw InvalidArgument(fmt::format(
        "{}: backend cpu cannot read device tensors; use backend cuda (options.device = this "
        "rank's GPU)",
        what));
  }
  if (sharded_backend(options, shape.space) == Backend::cuda) {
    cuda_backend::require_device(options.device);
  }
  return shape;
}

/// Every rank must describe the same problem apart from its rows: the batch, m, d,
/// the cost kind and the options that decide the control flow. Checked by one
/// allreduce of the values and their negatives; all ranks throw the same error.
void check_same_problem(Communicator& comm, const detail::SinkhornShape& s,
                        const SinkhornProblem& local, const SinkhornOptions& o, const char* what) {
  const double v[] = {static_cast<double>(s.batch), static_cast<double>(s.m),
                      static_cast<double>(s.d), static_cast<double>(local.cost_kind), o.eps,
                      static_cast<double>(o.max_iter), static_cast<double>(o.check_every),
                      o.eps_relative ? 1.0 : 0.0, static_cast<double>(o.backend),
                      // Each rank takes its loop decisions (retirement, continuation
                      // levels, over-relaxation, balancing) from these with the
                      // allreduced values: ranks that differ here leave the loop at
                      // different iterations and the others wait in a collective forever.
                      o.tol, o.eps_init, o.eps_decay, o.rho_a, o.rho_b,
                      static_cast<double>(o.acceleration)};
  constexpr int kCount = sizeof v / sizeof v[0];
  double both[2 * kCount];
  for (int k = 0; k < kCount; ++k) {
    both[k] = v[k];
    both[kCount + k] = -v[k];
  }
  comm.allreduce(both, 2 * kCount, ReduceOp::max);
  static constexpr const char* kNames[] = {"batch",
                                           "m",
                                           "d",
                                           "cost kind",
                                           "eps",
                                           "max_iter",
                                           "check_every",
                                           "eps_relative",
                                           "backend",
                                           "tol",
                                           "eps_init (after a warm start sets it to 0)",
                                           "eps_decay",
                                           "rho_a",
                                           "rho_b",
                                           "acceleration"};
  static_assert(sizeof kNames / sizeof kNames[0] == kCount);
  for (int k = 0; k < kCount; ++k) {
    if (both[k] != -both[kCount + k]) {
      throw InvalidArgument(fmt::format(
          "{}: the ranks disagree on {} (from {} to {}); every rank must pass the same y, b and "
          "options and its own rows of x, a",
          what, kNames[k], -both[kCount + k], both[k]));
    }
  }
}

cpu::Shard shard_of(Communicator& comm, std::int64_t local_rows) {
  const RowLayout layout = row_layout(comm, local_rows);
  return {&comm, layout.offset(comm.rank()), layout.total()};
}

/// Validation of a derived-output call on this rank, agreed over the ranks.
detail::SinkhornShape validate_derived(Communicator& comm, const SinkhornProblem& local,
                                       const SinkhornResult& r, bool needs_points,
                                       const char* what) {
  detail::SinkhornShape shape;
  agree(comm, [&] {
    SinkhornOptions probe;
    probe.rho_a = probe.rho_b = 1.0;
    shape = validate_local(local, probe, what);
    if (needs_points && local.cost_kind == CostKind::matrix) {
      throw InvalidArgument(
          fmt::format("{}: needs point clouds x and y; the problem has cost_kind matrix", what));
    }
    if (r.batch != shape.batch || r.n != shape.n || r.m != shape.m ||
        r.f.size() != static_cast<std::size_t>(shape.batch * shape.n) ||
        r.g.size() != static_cast<std::size_t>(shape.batch * shape.m) ||
        r.problems.size() != static_cast<std::size_t>(shape.batch)) {
      throw ShapeError(fmt::format(
          "{}: local_result (B={}, n={}, m={}) does not belong to this rank's problem (B={}, "
          "n={}, m={})",
          what, r.batch, r.n, r.m, shape.batch, shape.n, shape.m));
    }
    if (r.backend == Backend::automatic) {
      throw InvalidArgument(fmt::format(
          "{}: local_result has no backend: it does not come from dist::sinkhorn", what));
    }
  });
  return shape;
}

}  // namespace

SinkhornResult sinkhorn(Communicator& comm, const SinkhornProblem& local_problem,
                        const SinkhornOptions& options) {
  detail::SinkhornShape shape;
  SinkhornOptions resolved;
  agree(comm, [&] {
    shape = validate_local(local_problem, options, "dist::sinkhorn");
    const Backend backend = sharded_backend(options, shape.space);
    resolved = detail::resolve_sinkhorn_options(options, backend);
    resolved.backend = backend;
  });
  check_same_problem(comm, shape, local_problem, resolved, "dist::sinkhorn");
  const auto t0 = std::chrono::steady_clock::now();
  const cpu::Shard shard = shard_of(comm, shape.n);
  SinkhornResult r = resolved.backend == Backend::cuda
                         ? cuda_backend::sinkhorn_sharded(comm, local_problem, resolved, shape,
                                                          shard.row_offset, shard.n_global)
                         : cpu::sinkhorn_sharded(shard, local_problem, resolved, shape);
  r.tol = resolved.tol;
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::vector<double> barycentric_map(Communicator& comm, const SinkhornProblem& local_problem,
                                    const SinkhornResult& local_result) {
  const auto shape =
      validate_derived(comm, local_problem, local_result, true, "dist::barycentric_map");
  if (local_result.backend == Backend::cuda) {
    std::vector<double> out;
    agree(comm,
          [&] { out = cuda_backend::barycentric_map_sharded(local_problem, local_result, shape); });
    return out;
  }
  return cpu::barycentric_map(local_problem, local_result, shape, shard_of(comm, shape.n));
}

std::vector<double> gradient_x(Communicator& comm, const SinkhornProblem& local_problem,
                               const SinkhornResult& local_result) {
  const auto shape = validate_derived(comm, local_problem, local_result, true, "dist::gradient_x");
  if (local_result.backend == Backend::cuda) {
    std::vector<double> out;
    agree(comm,
          [&] { out = cuda_backend::gradient_x_sharded(local_problem, local_result, shape); });
    return out;
  }
  return cpu::gradient_x(local_problem, local_result, shape, shard_of(comm, shape.n));
}

std::vector<std::int64_t> sample_partners(Communicator& comm, const SinkhornProblem& local_problem,
                                          const SinkhornResult& local_result, std::uint64_t seed) {
  const auto shape =
      validate_derived(comm, local_problem, local_result, false, "dist::sample_partners");
  const cpu::Shard shard = shard_of(comm, shape.n);
  if (local_result.backend == Backend::cuda) {
    std::vector<std::int64_t> out;
    agree(comm, [&] {
      out = cuda_backend::sample_partners_sharded(local_problem, local_result, shape, seed,
                                                  shard.row_offset);
    });
    return out;
  }
  return cpu::sample_partners(local_problem, local_result, shape, seed, shard);
}

}  // namespace otgpu::dist
