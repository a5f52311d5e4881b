// otgpu::dist::sinkhorn and the sharded derived outputs: validation agreed over the
// ranks, the row layout, then the CPU solver's own iteration with its cross-row
// quantities merged over the communicator (cpu::sinkhorn_sharded).
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "cpu_sinkhorn.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"
#include "validate.h"

namespace otgpu::dist {

namespace {

/// validate_sinkhorn of this rank's slice. The equal-mass check of a balanced problem
/// needs the mass of a over all ranks: it is skipped here (rho set finite for the
/// check) and made by the sharded solver once the masses are merged.
detail::SinkhornShape validate_local(const SinkhornProblem& local, const SinkhornOptions& options,
                                     const char* what) {
  SinkhornOptions probe = options;
  if (std::isinf(probe.rho_a) && std::isinf(probe.rho_b)) probe.rho_a = probe.rho_b = 1.0;
  const auto shape = detail::validate_sinkhorn(local, probe);
  if (shape.space != MemorySpace::host) {
    throw DeviceUnavailable(fmt::format(
        "{}: the sharded solve takes host tensors (the sharded CUDA driver is not built yet)",
        what));
  }
  if (options.backend == Backend::cuda) {
    throw DeviceUnavailable(fmt::format(
        "{}: backend cuda is not available for a sharded solve yet (the sharded CUDA driver is "
        "not built); use backend cpu or automatic",
        what));
  }
  return shape;
}

/// Every rank must describe the same problem apart from its rows: the batch, m, d,
/// the cost kind and the options that decide the control flow. Checked by one
/// allreduce of the values and their negatives; all ranks throw the same error.
void check_same_problem(Communicator& comm, const detail::SinkhornShape& s,
                        const SinkhornProblem& local, const SinkhornOptions& o, const char* what) {
  const double v[] = {static_cast<double>(s.batch),
                      static_cast<double>(s.m),
                      static_cast<double>(s.d),
                      static_cast<double>(local.cost_kind),
                      o.eps,
                      static_cast<double>(o.max_iter),
                      static_cast<double>(o.check_every),
                      o.eps_relative ? 1.0 : 0.0};
  constexpr int kCount = sizeof v / sizeof v[0];
  double both[2 * kCount];
  for (int k = 0; k < kCount; ++k) {
    both[k] = v[k];
    both[kCount + k] = -v[k];
  }
  comm.allreduce(both, 2 * kCount, ReduceOp::max);
  static constexpr const char* kNames[] = {"batch", "m",        "d",           "cost kind",
                                           "eps",   "max_iter", "check_every", "eps_relative"};
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
    if (r.backend != Backend::cpu) {
      throw InvalidArgument(
          fmt::format("{}: local_result comes from backend {}, not a sharded "
                      "(cpu) solve",
                      what, to_string(r.backend)));
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
    resolved = detail::resolve_sinkhorn_options(options, Backend::cpu);
  });
  check_same_problem(comm, shape, local_problem, resolved, "dist::sinkhorn");
  const auto t0 = std::chrono::steady_clock::now();
  SinkhornResult r = cpu::sinkhorn_sharded(shard_of(comm, shape.n), local_problem, resolved, shape);
  r.tol = resolved.tol;
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::vector<double> barycentric_map(Communicator& comm, const SinkhornProblem& local_problem,
                                    const SinkhornResult& local_result) {
  const auto shape =
      validate_derived(comm, local_problem, local_result, true, "dist::barycentric_map");
  return cpu::barycentric_map(local_problem, local_result, shape, shard_of(comm, shape.n));
}

std::vector<double> gradient_x(Communicator& comm, const SinkhornProblem& local_problem,
                               const SinkhornResult& local_result) {
  const auto shape = validate_derived(comm, local_problem, local_result, true, "dist::gradient_x");
  return cpu::gradient_x(local_problem, local_result, shape, shard_of(comm, shape.n));
}

std::vector<std::int64_t> sample_partners(Communicator& comm, const SinkhornProblem& local_problem,
                                          const SinkhornResult& local_result, std::uint64_t seed) {
  const auto shape =
      validate_derived(comm, local_problem, local_result, false, "dist::sample_partners");
  return cpu::sample_partners(local_problem, local_result, shape, seed, shard_of(comm, shape.n));
}

}  // namespace otgpu::dist
