// Public Sinkhorn entry points: validate, pick the backend, dispatch.
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cmath>

#include "cpu_numeric.h"
#include "cpu_sinkhorn.h"
#include "dist/multi_device.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_host/backend.h"
#include "otgpu_host/cuda_backend.h"
#include "validate.h"

namespace otgpu {

namespace {
std::atomic<std::int64_t> g_solves{0};
}  // namespace

std::int64_t detail::solve_count() noexcept { return g_solves.load(std::memory_order_relaxed); }

bool cuda_available() noexcept { return cuda_backend::device_count() > 0; }

int cuda_device_count() noexcept { return cuda_backend::device_count(); }

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options) {
  const auto shape = detail::validate_sinkhorn(problem, options);
  if (!options.devices.empty()) {
    // Split over several devices or logical shards (host/src/dist/multi_device.cpp).
    const auto t0 = std::chrono::steady_clock::now();
    SinkhornResult r = dist::sinkhorn_devices(problem, options, shape);
    r.time_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
  const Backend backend =
      detail::resolve_backend(options.backend, options.device, shape.space, "sinkhorn");
  // The library's defaults (tol, eps scaling) for the backend that runs, in one place.
  const SinkhornOptions resolved = detail::resolve_sinkhorn_options(options, backend);
  const auto t0 = std::chrono::steady_clock::now();
  SinkhornResult r = backend == Backend::cuda ? cuda_backend::sinkhorn(problem, resolved, shape)
                                              : cpu::sinkhorn(problem, resolved, shape);
  r.tol = resolved.tol;
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  g_solves.fetch_add(1, std::memory_order_relaxed);
  return r;
}

SinkhornResult sinkhorn(GpuContext& ctx, const SinkhornProblem& problem,
                        const SinkhornOptions& options) {
  // A context is one device: a split over devices would ignore it (or silently drop
  // the split), so only the context's own device is accepted.
  if (!options.devices.empty() &&
      !(options.devices.size() == 1 && options.devices[0] == ctx.device())) {
    throw InvalidArgument(fmt::format(
        "devices: {} entries given to the GpuContext overload of sinkhorn, which solves on the "
        "context's device {}; for a split over devices call otgpu::sinkhorn(problem, options) "
        "without a context",
        options.devices.size(), ctx.device()));
  }
  SinkhornOptions o = options;
  o.devices.clear();
  o.backend = Backend::cuda;
  o.device = ctx.device();
  const auto shape = detail::validate_sinkhorn(problem, o);
  // The same defaults as every other entry point (a kAuto tol must never reach the
  // device: no residual is <= -1).
  o = detail::resolve_sinkhorn_options(o, Backend::cuda);
  const auto t0 = std::chrono::steady_clock::now();
  SinkhornResult r = cuda_backend::sinkhorn(problem, o, shape, &ctx);
  r.tol = o.tol;
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  g_solves.fetch_add(1, std::memory_order_relaxed);
  return r;
}

namespace {

detail::SinkhornShape validate_derived(const SinkhornProblem& problem, const SinkhornResult& result,
                                       bool needs_points, const char* what) {
  // Shape and data checks only. A finite rho skips the equal-mass check: the result
  // may come from an unbalanced solve, and derived outputs need no matched masses.
  SinkhornOptions probe;
  probe.rho_a = probe.rho_b = 1.0;
  const auto shape = detail::validate_sinkhorn(problem, probe);
  if (needs_points && problem.cost_kind == CostKind::matrix) {
    throw InvalidArgument(
        fmt::format("{}: needs point clouds x and y; the problem has cost_kind matrix", what));
  }
  if (result.batch != shape.batch || result.n != shape.n || result.m != shape.m ||
      result.f.size() != static_cast<std::size_t>(shape.batch * shape.n) ||
      result.g.size() != static_cast<std::size_t>(shape.batch * shape.m) ||
      result.problems.size() != static_cast<std::size_t>(shape.batch)) {
    throw ShapeError(fmt::format(
        "{}: result (B={}, n={}, m={}, f size {}, g size {}) does not belong to the problem "
        "(B={}, n={}, m={})",
        what, result.batch, result.n, result.m, result.f.size(), result.g.size(), shape.batch,
        shape.n, shape.m));
  }
  return shape;
}

}  // namespace

std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result) {
  const auto shape = validate_derived(problem, result, true, "barycentric_map");
  // A solve over SinkhornOptions::devices kept one state per shard: each shard maps its
  // own rows on its own device (never the whole problem restaged on one).
  if (const auto* st = dist::devices_state(result)) {
    return dist::barycentric_map_devices(problem, *st, shape);
  }
  if (result.backend == Backend::cuda) {
    return cuda_backend::barycentric_map(problem, result, shape, result.device);
  }
  return cpu::barycentric_map(problem, result, shape);
}

std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result) {
  const auto shape = validate_derived(problem, result, true, "gradient_x");
  if (const auto* st = dist::devices_state(result)) {
    return dist::gradient_x_devices(problem, *st, shape);
  }
  if (result.backend == Backend::cuda) {
    return cuda_backend::gradient_x(problem, result, shape, result.device);
  }
  return cpu::gradient_x(problem, result, shape);
}

std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result, std::uint64_t seed) {
  const auto shape = validate_derived(problem, result, false, "sample_partners");
  if (const auto* st = dist::devices_state(result)) {
    return dist::sample_partners_devices(problem, *st, shape, seed);
  }
  if (result.backend == Backend::cuda) {
    return cuda_backend::sample_partners(problem, result, shape, seed, result.device);
  }
  return cpu::sample_partners(problem, result, shape, seed);
}

namespace {

void require_cuda_result(const SinkhornResult& result, const char* what) {
  if (result.backend != Backend::cuda) {
    throw InvalidArgument(fmt::format(
        "{}: the GpuContext overload needs a result of the cuda backend, got backend {}", what,
        to_string(result.backend)));
  }
  // Its state is one per shard, each on its shard's device: a context is one device.
  if (dist::devices_state(result) != nullptr) {
    throw InvalidArgument(fmt::format(
        "{}: result comes from a solve over several devices (SinkhornOptions::devices); the "
        "GpuContext overload runs on one device: call otgpu::{}(problem, result) without a "
        "context",
        what, what));
  }
}

}  // namespace

std::vector<double> barycentric_map(GpuContext& ctx, const SinkhornProblem& problem,
                                    const SinkhornResult& result) {
  const auto shape = validate_derived(problem, result, true, "barycentric_map");
  require_cuda_result(result, "barycentric_map");
  return cuda_backend::barycentric_map(problem, result, shape, ctx.device(), &ctx);
}

std::vector<double> gradient_x(GpuContext& ctx, const SinkhornProblem& problem,
                               const SinkhornResult& result) {
  const auto shape = validate_derived(problem, result, true, "gradient_x");
  require_cuda_result(result, "gradient_x");
  return cuda_backend::gradient_x(problem, result, shape, ctx.device(), &ctx);
}

std::vector<std::int64_t> sample_partners(GpuContext& ctx, const SinkhornProblem& problem,
                                          const SinkhornResult& result, std::uint64_t seed) {
  const auto shape = validate_derived(problem, result, false, "sample_partners");
  require_cuda_result(result, "sample_partners");
  return cuda_backend::sample_partners(problem, result, shape, seed, ctx.device(), &ctx);
}

namespace {

/// Total mass of weights in host memory per problem ([B] when batched, else [1]);
/// absent weights are uniform with mass 1.
std::vector<double> host_weight_masses(const TensorView& w, bool batched, std::int64_t batch) {
  if (!w.present()) return {1.0};
  const std::int64_t rows = batched ? batch : 1;
  const std::int64_t len = batched ? w.dim(1) : w.dim(0);
  std::vector<double> out(static_cast<std::size_t>(rows));
  for (std::int64_t b = 0; b < rows; ++b) {
    cpu::CompensatedSum sum;
    for (std::int64_t i = 0; i < len; ++i) sum.add(cpu::load_problem_element(w, batched, b, i));
    out[static_cast<std::size_t>(b)] = sum.value();
  }
  return out;
}

}  // namespace

std::vector<double> sinkhorn_divergence(const SinkhornProblem& problem, const SinkhornResult& xy,
                                        const SinkhornOptions& options) {
  if (problem.cost_kind == CostKind::matrix) {
    throw InvalidArgument(
        "sinkhorn_divergence: needs point clouds x and y (cost_kind matrix has no C(x, x))");
  }
  const auto shape = detail::validate_sinkhorn(problem, options);
  if (xy.batch != shape.batch || xy.n != shape.n || xy.m != shape.m ||
      xy.problems.size() != static_cast<std::size_t>(shape.batch)) {
    throw ShapeError(fmt::format(
        "sinkhorn_divergence: result xy (B={}, n={}, m={}, {} reports) does not belong to the "
        "problem (B={}, n={}, m={})",
        xy.batch, xy.n, xy.m, xy.problems.size(), shape.batch, shape.n, shape.m));
  }
  // The self terms use the absolute eps of the (x, y) problem, per problem; when the
  // batch's eps differ, each problem is solved on its own.
  SinkhornOptions self = options;
  self.eps_relative = false;
  self.eps_init = options.eps_relative && options.eps_init > 0 ? 0.0  // rescaled per problem below
                                                               : options.eps_init;
  self.f_init.clear();
  self.g_init.clear();
  // Unbalanced: the self problems OT_eps(a, a) and OT_eps(b, b) are symmetric only
  // with one penalty on both marginals (Sejourne et al. 2019 define the divergence
  // for that case; its positivity needs it).
  const bool balanced = std::isinf(options.rho_a) && std::isinf(options.rho_b);
  if (!balanced && !(options.rho_a == options.rho_b)) {
    throw InvalidArgument(fmt::format(
        "sinkhorn_divergence: rho_a = {} and rho_b = {} differ; the unbalanced divergence "
        "needs one marginal penalty rho_a = rho_b",
        options.rho_a, options.rho_b));
  }
  const auto B = static_cast<std::size_t>(xy.batch);
  // Masses of a and b per problem (the mass term below), from host or device memory.
  std::vector<double> mass_a, mass_b;
  if (!balanced) {
    auto masses = [&](const TensorView& w, bool batched) {
      return shape.space == MemorySpace::device
                 ? cuda_backend::weight_masses(w, batched, shape.batch, xy.device)
                 : host_weight_masses(w, batched, shape.batch);
    };
    mass_a = masses(problem.a, shape.a_batched);
    mass_b = masses(problem.b, shape.b_batched);
  }
  std::vector<double> out(B);
  auto self_term = [&](const TensorView& pts, const TensorView& w, std::size_t b) {
    SinkhornProblem p;
    p.cost_kind = problem.cost_kind;
    // Slice problem b out of a batched view (rank 3) without copying.
    auto slice = [b, &pts](TensorView v) {
      if (v.present() && v.rank == 3) {
        v.data =
            static_cast<const char*>(v.data) + static_cast<std::int64_t>(b) * v.strides[0] *
                                                   static_cast<std::int64_t>(dtype_size(v.dtype));
        v.rank = 2;
        v.shape = {v.shape[1], v.shape[2], 0};
        v.strides = {v.strides[1], v.strides[2], 0};
      } else if (v.present() && v.rank == 2 && pts.rank == 3) {
        // batched weights [B, n] -> [n]
        v.data =
            static_cast<const char*>(v.data) + static_cast<std::int64_t>(b) * v.strides[0] *
                                                   static_cast<std::int64_t>(dtype_size(v.dtype));
        v.rank = 1;
        v.shape = {v.shape[1], 0, 0};
        v.strides = {v.strides[1], 0, 0};
      }
      return v;
    };
    p.x = slice(pts);
    p.y = p.x;
    p.a = slice(w);
    p.b = p.a;
    SinkhornOptions o = self;
    o.eps = xy.problems[b].eps;
    if (options.eps_relative && options.eps_init > 0) {
      o.eps_init = options.eps_init * (xy.problems[b].eps / options.eps);
    }
    // The symmetric update (a few dozen iterations where alternating ones take
    // thousands on these problems), on the backend of the (x, y) solve.
    const auto self_shape = detail::validate_sinkhorn(p, o);
    g_solves.fetch_add(1, std::memory_order_relaxed);
    if (xy.backend == Backend::cpu) {
      return cpu::sinkhorn_symmetric(p, detail::resolve_sinkhorn_options(o, Backend::cpu),
                                     self_shape)
          .problems[0]
          .ot_eps;
    }
    o.device = xy.device >= 0 ? xy.device : o.device;
    return cuda_backend::sinkhorn_symmetric(p, detail::resolve_sinkhorn_options(o, Backend::cuda),
                                            self_shape)
        .problems[0]
        .ot_eps;
  };
  for (std::size_t b = 0; b < B; ++b) {
    const double xx = self_term(problem.x, problem.a, b);
    const double yy = self_term(problem.y, problem.b, b);
    out[b] = xy.problems[b].ot_eps - 0.5 * (xx + yy);
    if (!balanced) {
      // OT_eps carries the constant eps m(a) m(b) of eps KL(P | a x b) (sinkhorn.h);
      // the three terms leave eps (m_a m_b - m_a^2 / 2 - m_b^2 / 2) =
      // -eps/2 (m_a - m_b)^2 behind, which the mass term cancels.
      const double ma = mass_a[mass_a.size() == 1 ? 0 : b];
      const double mb = mass_b[mass_b.size() == 1 ? 0 : b];
      out[b] += 0.5 * xy.problems[b].eps * (ma - mb) * (ma - mb);
    }
  }
  return out;
}

std::vector<double> sinkhorn_divergence(const SinkhornProblem& problem,
                                        const SinkhornOptions& options) {
  if (problem.cost_kind == CostKind::matrix) {
    throw InvalidArgument(
        "sinkhorn_divergence: needs point clouds x and y (cost_kind matrix has no C(x, x))");
  }
  return sinkhorn_divergence(problem, sinkhorn(problem, options), options);
}

}  // namespace otgpu
