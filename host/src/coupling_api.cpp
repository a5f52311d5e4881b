// Public coupling entry points (otgpu/coupling.h): validate, pick the backend,
// solve (Sinkhorn or the exact assignment) and draw the pairs.
#include <fmt/format.h>

#include <chrono>
#include <numeric>

#include "cpu_coupling.h"
#include "cpu_sinkhorn.h"
#include "otgpu/assignment.h"
#include "otgpu/coupling.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu_host/backend.h"
#include "otgpu_host/coupling_cuda.h"
#include "validate.h"

namespace otgpu {

CouplingMethod parse_coupling_method(std::string_view text, std::string_view arg_name) {
  if (text == "exact") return CouplingMethod::exact;
  if (text == "sinkhorn") return CouplingMethod::sinkhorn;
  if (text == "unbalanced") return CouplingMethod::unbalanced;
  throw InvalidArgument(fmt::format(
      "{}: unknown coupling method '{}' (exact, sinkhorn, unbalanced)", arg_name, text));
}

std::string_view to_string(CouplingMethod m) noexcept {
  switch (m) {
    case CouplingMethod::exact:
      return "exact";
    case CouplingMethod::sinkhorn:
      return "sinkhorn";
    case CouplingMethod::unbalanced:
      return "unbalanced";
  }
  return "?";
}

std::int64_t coupling_pairs(std::int64_t bs0, std::int64_t bs1, const CouplingOptions& options) {
  (void)bs1;
  if (options.method == CouplingMethod::exact || options.pairs == CouplingPairs::per_row) {
    return bs0;
  }
  return options.num_pairs > 0 ? options.num_pairs : bs0;
}

namespace {

double elapsed_ms(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// The exact coupling: the optimal permutation of every minibatch (assignment.h).
CouplingResult couple_exact(const TensorView& x0, const TensorView& x1,
                            const CouplingOptions& options, const detail::CouplingShape& s,
                            GpuContext* ctx) {
  AssignmentProblem ap;
  ap.x = x0;
  ap.y = x1;
  ap.cost_kind = options.cost_kind;
  AssignmentOptions ao;
  ao.backend = options.backend;
  ao.device = options.device;
  ao.cpu_threads = options.sinkhorn.cpu_threads;
  const AssignmentResult ar = ctx != nullptr ? assignment(*ctx, ap, ao) : assignment(ap, ao);
  CouplingResult r;
  r.backend = ar.backend;
  r.batch = s.batch;
  r.pairs = s.bs0;
  r.i.resize(static_cast<std::size_t>(s.batch * s.bs0));
  r.j = ar.row_to_col;
  r.problems.resize(static_cast<std::size_t>(s.batch));
  for (std::int64_t k = 0; k < s.batch; ++k) {
    std::iota(r.i.begin() + k * s.bs0, r.i.begin() + (k + 1) * s.bs0, std::int64_t{0});
    const AssignmentReport& rep = ar.problems[static_cast<std::size_t>(k)];
    CouplingReport& out = r.problems[static_cast<std::size_t>(k)];
    out.pair_cost = rep.cost / static_cast<double>(s.bs0);
    out.ot = out.pair_cost;
    out.gap = rep.gap;
    out.iterations = static_cast<int>(rep.iterations);
    // The certificate: the gap is round-off of the cost's magnitude.
    out.converged = rep.gap <= 1e-6 * std::max(1.0, std::abs(rep.cost));
  }
  return r;
}

CouplingResult couple_entropic_cpu(const TensorView& x0, const TensorView& x1,
                                   const CouplingOptions& options, const detail::CouplingShape& s) {
  SinkhornProblem sp = detail::coupling_problem(x0, x1, options);
  // Host points whose cost matrices fit: built once by the cost kernels and handed to
  // the solve as a matrix, which the draws and the pair costs then read too (the
  // point path evaluates every pair by its coordinates, once for the solve and again
  // for the draws).
  std::vector<double> dense;
  constexpr std::int64_t kDenseLimitBytes = std::int64_t{1} << 28;
  if (s.space == MemorySpace::host &&
      (options.cost_kind == CostKind::sqeuclidean || options.cost_kind == CostKind::euclidean) &&
      s.batch * s.bs0 * s.bs1 <= kDenseLimitBytes / 8) {
    dense = cpu::point_cost_matrices(x0, x1, options.cost_kind, s);
    sp.x = {};
    sp.y = {};
    sp.cost = x0.rank == 3 ? TensorView::host(dense.data(), {s.batch, s.bs0, s.bs1})
                           : TensorView::host(dense.data(), {s.bs0, s.bs1});
    sp.cost_kind = CostKind::matrix;
  }
  SinkhornOptions so = detail::coupling_sinkhorn_options(options);
  so.backend = Backend::cpu;
  const SinkhornResult res = sinkhorn(sp, so);
  const auto shape = detail::validate_sinkhorn(sp, so);
  CouplingResult r;
  r.backend = Backend::cpu;
  r.batch = s.batch;
  r.pairs = s.pairs;
  r.i.resize(static_cast<std::size_t>(s.batch * s.pairs));
  r.j.resize(r.i.size());
  if (options.pairs == CouplingPairs::per_row) {
    r.j = cpu::sample_partners(sp, res, shape, options.seed);
    for (std::int64_t k = 0; k < s.batch; ++k) {
      std::iota(r.i.begin() + k * s.bs0, r.i.begin() + (k + 1) * s.bs0, std::int64_t{0});
    }
  } else {
    cpu::sample_joint_pairs(sp, res, shape, s.pairs, options.replacement, options.seed, r.i.data(),
                            r.j.data());
  }
  const auto costs = cpu::mean_pair_cost(sp, shape, s.pairs, r.i.data(), r.j.data());
  r.problems.resize(static_cast<std::size_t>(s.batch));
  for (std::size_t k = 0; k < r.problems.size(); ++k) {
    const SinkhornReport& rep = res.problems[k];
    CouplingReport& out = r.problems[k];
    out.pair_cost = costs[k];
    out.ot = rep.ot_eps;
    out.eps = rep.eps;
    out.gap = rep.residual;
    out.iterations = rep.iterations;
    out.converged = rep.converged;
  }
  return r;
}

}  // namespace

CouplingResult couple(const TensorView& x0, const TensorView& x1, const CouplingOptions& options) {
  const auto s = detail::validate_coupling(x0, x1, options, "couple");
  const auto t0 = std::chrono::steady_clock::now();
  CouplingResult r;
  if (options.method == CouplingMethod::exact) {
    r = couple_exact(x0, x1, options, s, nullptr);
  } else {
    const Backend backend =
        detail::resolve_backend(options.backend, options.device, s.space, "couple");
    r = backend == Backend::cuda ? coupling_cuda::couple_entropic(x0, x1, options, s, nullptr)
                                 : couple_entropic_cpu(x0, x1, options, s);
  }
  r.time_ms = elapsed_ms(t0);
  return r;
}

CouplingResult couple(GpuContext& ctx, const TensorView& x0, const TensorView& x1,
                      const CouplingOptions& options) {
  CouplingOptions o = options;
  o.backend = Backend::cuda;
  o.device = ctx.device();
  const auto s = detail::validate_coupling(x0, x1, o, "couple");
  const auto t0 = std::chrono::steady_clock::now();
  CouplingResult r = o.method == CouplingMethod::exact
                         ? couple_exact(x0, x1, o, s, &ctx)
                         : coupling_cuda::couple_entropic(x0, x1, o, s, &ctx);
  r.time_ms = elapsed_ms(t0);
  return r;
}

namespace {
detail::CouplingShape async_shape(GpuContext& ctx, const TensorView& x0, const TensorView& x1,
                                  CouplingOptions& o, const char* fn) {
  o.backend = Backend::cuda;
  o.device = ctx.device();
  const auto s = detail::validate_coupling(x0, x1, o, fn);
  if (s.space != MemorySpace::device) {
    throw InvalidArgument(
        fmt::format("{}: x0 and x1 must be in device memory (use couple() for host data)", fn));
  }
  return s;
}
}  // namespace

void couple_async(GpuContext& ctx, const TensorView& x0, const TensorView& x1,
                  const CouplingOptions& options, std::int64_t* i_out, std::int64_t* j_out) {
  CouplingOptions o = options;
  const auto s = async_shape(ctx, x0, x1, o, "couple_async");
  if (i_out == nullptr || j_out == nullptr) {
    throw InvalidArgument("couple_async: i_out and j_out must be device buffers, got null");
  }
  if (o.method == CouplingMethod::exact) {
    AssignmentProblem ap;
    ap.x = x0;
    ap.y = x1;
    ap.cost_kind = o.cost_kind;
    AssignmentOptions ao;
    ao.backend = Backend::cuda;
    ao.device = ctx.device();
    DeviceAssignmentOutputs out;
    out.row_to_col = j_out;
    assignment_async(ctx, ap, ao, out);
    coupling_cuda::fill_row_indices(ctx, i_out, s.batch, s.bs0);
    return;
  }
  coupling_cuda::couple_entropic_async(ctx, x0, x1, o, s, i_out, j_out);
}

std::size_t coupling_async_workspace_bytes(const TensorView& x0, const TensorView& x1,
                                           const CouplingOptions& options) {
  CouplingOptions o = options;
  o.backend = Backend::cuda;
  const auto s = detail::validate_coupling(x0, x1, o, "coupling_async_workspace_bytes");
  if (o.method == CouplingMethod::exact) return 0;  // the assignment sizes its own workspace
  return coupling_cuda::entropic_workspace_bytes(x0, x1, o, s);
}

}  // namespace otgpu
