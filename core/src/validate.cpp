// Validation of Sinkhorn problems and options, shared by every backend: everything a
// solver relies on is checked here once, so the solvers can assume a sane batch.
#include "validate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_numeric.h"
#include "otgpu/detail/sinkhorn_rules.h"
#include "otgpu/error.h"

namespace otgpu::detail {

namespace {

std::string index_string(std::int64_t i0, std::int64_t i1, std::int64_t i2, int rank) {
  if (rank == 1) return fmt::format("[{}]", i0);
  if (rank == 2) return fmt::format("[{}, {}]", i0, i1);
  return fmt::format("[{}, {}, {}]", i0, i1, i2);
}

/// Rank, dtype, strides and sizes of one present view, independent of the others.
void check_view_basics(const TensorView& v, const char* name) {
  if (v.rank < 1 || v.rank > TensorView::kMaxRank) {
    throw ShapeError(
        fmt::format("{}: rank {} not supported (1 to {})", name, v.rank, TensorView::kMaxRank));
  }
  if (v.dtype != DType::f32 && v.dtype != DType::f64) {
    throw DTypeError(fmt::format("{}: unsupported dtype code {} (float32 or float64 expected)",
                                 name, static_cast<int>(v.dtype)));
  }
  if (v.space != MemorySpace::host && v.space != MemorySpace::device) {
    throw InvalidArgument(
        fmt::format("{}: unknown memory space code {}", name, static_cast<int>(v.space)));
  }
  for (int k = 0; k < v.rank; ++k) {
    if (v.dim(k) <= 0) {
      throw ShapeError(fmt::format("{}: size {} in dimension {} of {} (sizes must be > 0)", name,
                                   v.dim(k), k, v.describe()));
    }
    if (v.stride(k) < 0) {
      throw ShapeError(fmt::format("{}: stride {} in dimension {} of {} is negative", name,
                                   v.stride(k), k, v.describe()));
    }
  }
}

/// Weights must be [len] (shared) or, for a batched problem, [B, len].
bool check_weight_shape(const TensorView& w, const char* name, const char* len_name,
                        std::int64_t batch, std::int64_t len, bool problem_batched) {
  if (!w.present()) return false;
  check_view_basics(w, name);
  if (w.rank == 1 && w.dim(0) == len) return false;
  if (w.rank == 2 && problem_batched && w.dim(0) == batch && w.dim(1) == len) return true;
  if (problem_batched) {
    throw ShapeError(fmt::format("{}: expected [{}] = [{}] or [B, {}] = [{}, {}], got {}", name,
                                 len_name, len, len_name, batch, len, w.describe()));
  }
  throw ShapeError(fmt::format("{}: expected [{}] = [{}] (the problem is not batched), got {}",
                               name, len_name, len, w.describe()));
}

void check_option(double value, const char* name, const char* rule, bool ok) {
  if (!ok) throw InvalidArgument(fmt::format("{}: must be {}, got {}", name, rule, value));
}

void check_warm_start(const std::vector<double>& init, const char* name, const char* len_name,
                      std::int64_t batch, std::int64_t len) {
  if (init.empty()) return;
  const auto want = static_cast<std::size_t>(batch * len);
  if (init.size() != want) {
    throw ShapeError(fmt::format("{}: size {} does not match B * {} = {} * {} = {}", name,
                                 init.size(), len_name, batch, len, want));
  }
  for (std::size_t i = 0; i < init.size(); ++i) {
    if (!std::isfinite(init[i])) {
      throw NonFiniteInput(fmt::format("{}: element {} is {}", name, i, init[i]));
    }
  }
}

/// Every element of a host view must be finite; names the first offender.
void check_all_finite(const TensorView& v, const char* name) {
  const std::int64_t d0 = v.dim(0);
  const std::int64_t d1 = v.rank > 1 ? v.dim(1) : 1;
  const std::int64_t d2 = v.rank > 2 ? v.dim(2) : 1;
  for (std::int64_t i0 = 0; i0 < d0; ++i0) {
    for (std::int64_t i1 = 0; i1 < d1; ++i1) {
      for (std::int64_t i2 = 0; i2 < d2; ++i2) {
        const double x = load_as_double(v, i0, i1, i2);
        if (!std::isfinite(x)) {
          throw NonFiniteInput(
              fmt::format("{}: element {} is {}", name, index_string(i0, i1, i2, v.rank), x));
        }
      }
    }
  }
}

/// Checks the weights of every problem and returns their masses ([B], or [1] when
/// shared); absent weights are uniform with mass 1.
std::vector<double> weight_masses(const TensorView& w, bool batched, std::int64_t batch,
                                  const char* name) {
  if (!w.present()) return {1.0};
  const std::int64_t rows = batched ? batch : 1;
  const std::int64_t len = batched ? w.dim(1) : w.dim(0);
  std::vector<double> masses(static_cast<std::size_t>(rows));
  for (std::int64_t b = 0; b < rows; ++b) {
    cpu::CompensatedSum mass;
    for (std::int64_t i = 0; i < len; ++i) {
      const double x = cpu::load_problem_element(w, batched, b, i);
      const std::string where = batched ? index_string(b, i, 0, 2) : index_string(i, 0, 0, 1);
      if (!std::isfinite(x)) {
        throw NonFiniteInput(fmt::format("{}: element {} is {}", name, where, x));
      }
      if (x < 0) {
        throw NonFiniteInput(
            fmt::format("{}: element {} is {} (weights must be >= 0)", name, where, x));
      }
      mass.add(x);
    }
    if (!(mass.value() > 0)) {
      if (batched) {
        throw InvalidArgument(
            fmt::format("{}: problem {} has total mass 0 (weights need a positive mass)", name, b));
      }
      throw InvalidArgument(
          fmt::format("{}: total mass is 0 (weights need a positive mass)", name));
    }
    masses[static_cast<std::size_t>(b)] = mass.value();
  }
  return masses;
}

/// The point-cloud cost must be finite for every pair: points near 1e200 are finite
/// but |x - y|^2 overflows. A cheap bound (C_ij <= (R_x + R_y)^2 with R the radius
/// around x_0) clears the usual case; only when it is not finite are the pairs
/// scanned, to name the first one that overflows.
void check_point_costs_finite(const SinkhornProblem& problem, const SinkhornShape& s) {
  const bool batched = problem.x.rank == 3;
  const bool squared = problem.cost_kind == CostKind::sqeuclidean;
  std::vector<double> xi(static_cast<std::size_t>(s.d)), yj(static_cast<std::size_t>(s.d));
  std::vector<double> x0(static_cast<std::size_t>(s.d));
  auto load = [&](const TensorView& v, std::int64_t b, std::int64_t i, std::vector<double>& out) {
    for (std::int64_t k = 0; k < s.d; ++k) {
      out[static_cast<std::size_t>(k)] = cpu::load_problem_element(v, batched, b, i, k);
    }
  };
  auto dist2 = [&](const std::vector<double>& u, const std::vector<double>& v) {
    double acc = 0;
    for (std::size_t k = 0; k < u.size(); ++k) acc += (u[k] - v[k]) * (u[k] - v[k]);
    return acc;
  };
  for (std::int64_t b = 0; b < s.batch; ++b) {
    load(problem.x, b, 0, x0);
    double rx = 0, ry = 0;
    for (std::int64_t i = 0; i < s.n; ++i) {
      load(problem.x, b, i, xi);
      rx = std::max(rx, std::sqrt(dist2(xi, x0)));
    }
    for (std::int64_t j = 0; j < s.m; ++j) {
      load(problem.y, b, j, yj);
      ry = std::max(ry, std::sqrt(dist2(yj, x0)));
    }
    const double bound = squared ? (rx + ry) * (rx + ry) : rx + ry;
    if (std::isfinite(bound)) continue;
    for (std::int64_t i = 0; i < s.n; ++i) {
      load(problem.x, b, i, xi);
      for (std::int64_t j = 0; j < s.m; ++j) {
        load(problem.y, b, j, yj);
        const double sq = dist2(xi, yj);
        if (std::isfinite(sq)) continue;
        const std::string where = batched ? fmt::format("problem {}, i = {}, j = {}", b, i, j)
                                          : fmt::format("i = {}, j = {}", i, j);
        throw NonFiniteInput(fmt::format(
            "cost: C_ij = {} overflows to inf at {} (x and y are finite but too far apart for "
            "float64; rescale the points, e.g. divide them by a common length)",
            squared ? "|x_i - y_j|^2" : "|x_i - y_j|", where));
      }
    }
  }
}

}  // namespace

SinkhornShape validate_sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options) {
  SinkhornShape s;
  const char* kind_name = nullptr;
  switch (problem.cost_kind) {
    case CostKind::sqeuclidean:
      kind_name = "sqeuclidean";
      break;
    case CostKind::euclidean:
      kind_name = "euclidean";
      break;
    case CostKind::matrix:
      kind_name = "matrix";
      break;
    case CostKind::neg_dot:
      throw InvalidArgument(
          "cost_kind: neg_dot (C_ij = -<x_i, y_j>) is not supported by Sinkhorn (it is for exact "
          "assignment; use sqeuclidean, euclidean or a cost matrix)");
  }
  if (kind_name == nullptr) {
    throw InvalidArgument(
        fmt::format("cost_kind: unknown value {}", static_cast<int>(problem.cost_kind)));
  }

  // ---- shapes ----
  bool problem_batched = false;
  const TensorView* first = nullptr;  // the view that fixes the memory space
  if (problem.cost_kind == CostKind::matrix) {
    if (!problem.cost.present()) {
      throw InvalidArgument("cost: required when cost_kind is matrix");
    }
    if (problem.x.present() || problem.y.present()) {
      throw InvalidArgument(fmt::format(
          "{}: must be absent when cost_kind is matrix (the cost matrix is given), got {}",
          problem.x.present() ? "x" : "y",
          problem.x.present() ? problem.x.describe() : problem.y.describe()));
    }
    const TensorView& c = problem.cost;
    check_view_basics(c, "cost");
    if (c.rank < 2) {
      throw ShapeError(fmt::format("cost: expected [n, m] or [B, n, m], got {}", c.describe()));
    }
    problem_batched = c.rank == 3;
    s.batch = problem_batched ? c.dim(0) : 1;
    s.n = c.dim(c.rank - 2);
    s.m = c.dim(c.rank - 1);
    s.d = 0;
    first = &c;
  } else {
    if (problem.cost.present()) {
      throw InvalidArgument(
          fmt::format("cost: must be absent for cost_kind {} (it is computed from x and y), got {}",
                      kind_name, problem.cost.describe()));
    }
    if (!problem.x.present() || !problem.y.present()) {
      throw InvalidArgument(
          fmt::format("{}: required for cost_kind {}", problem.x.present() ? "y" : "x", kind_name));
    }
    const TensorView& x = problem.x;
    const TensorView& y = problem.y;
    check_view_basics(x, "x");
    check_view_basics(y, "y");
    if (x.rank < 2) {
      throw ShapeError(fmt::format("x: expected [n, d] or [B, n, d], got {}", x.describe()));
    }
    problem_batched = x.rank == 3;
    const bool same_batch = !problem_batched || y.dim(0) == x.dim(0);
    if (y.rank != x.rank || !same_batch || y.dim(y.rank - 1) != x.dim(x.rank - 1)) {
      throw ShapeError(fmt::format(
          "y: shape {} does not match x {} (same rank, batch size and dimension d expected)",
          y.describe(), x.describe()));
    }
    s.batch = problem_batched ? x.dim(0) : 1;
    s.n = x.dim(x.rank - 2);
    s.m = y.dim(y.rank - 2);
    s.d = x.dim(x.rank - 1);
    first = &x;
  }
  s.a_batched = check_weight_shape(problem.a, "a", "n", s.batch, s.n, problem_batched);
  s.b_batched = check_weight_shape(problem.b, "b", "m", s.batch, s.m, problem_batched);

  s.space = first->space;
  const std::pair<const TensorView*, const char*> views[] = {{&problem.x, "x"},
                                                             {&problem.y, "y"},
                                                             {&problem.cost, "cost"},
                                                             {&problem.a, "a"},
                                                             {&problem.b, "b"}};
  for (const auto& [v, name] : views) {
    if (v->present() && v->space != s.space) {
      throw InvalidArgument(fmt::format(
          "{}: is in {} memory but {} is in {} memory (all tensors must be in one memory space)",
          name, v->space == MemorySpace::host ? "host" : "device",
          first == &problem.x ? "x" : "cost", s.space == MemorySpace::host ? "host" : "device"));
    }
  }

  // ---- options ----
  const SinkhornOptions& o = options;
  check_option(o.eps, "eps", "finite and > 0", std::isfinite(o.eps) && o.eps > 0);
  if (o.max_iter < 1) {
    throw InvalidArgument(fmt::format("max_iter: must be >= 1, got {}", o.max_iter));
  }
  check_option(o.tol, "tol", "finite and >= 0 (or kAuto = -1 for the backend's default)",
               o.tol == kAuto || (std::isfinite(o.tol) && o.tol >= 0));
  if (o.check_every < 0) {
    throw InvalidArgument(
        fmt::format("check_every: must be >= 0 (0 = no checks), got {}", o.check_every));
  }
  check_option(o.eps_init, "eps_init",
               "finite and >= 0 (0 turns eps scaling off; kAuto = -1 starts at 1024 x eps)",
               o.eps_init == kAuto || (std::isfinite(o.eps_init) && o.eps_init >= 0));
  if ((o.eps_init > 0 || o.eps_init == kAuto) && !(o.eps_decay > 0 && o.eps_decay < 1)) {
    throw InvalidArgument(fmt::format(
        "eps_decay: must be in (0, 1) when eps scaling is on (eps_init {}), got {}",
        o.eps_init == kAuto ? std::string("automatic") : fmt::format("= {}", o.eps_init),
        o.eps_decay));
  }
  check_option(o.rho_a, "rho_a", "> 0 (+inf for a hard marginal constraint)", o.rho_a > 0);
  check_option(o.rho_b, "rho_b", "> 0 (+inf for a hard marginal constraint)", o.rho_b > 0);
  check_warm_start(o.f_init, "f_init", "n", s.batch, s.n);
  check_warm_start(o.g_init, "g_init", "m", s.batch, s.m);
  if (o.cpu_threads < 0) {
    throw InvalidArgument(
        fmt::format("cpu_threads: must be >= 0 (0 = all hardware threads), got {}", o.cpu_threads));
  }
  if (o.device < 0) {
    throw InvalidArgument(fmt::format("device: must be >= 0, got {}", o.device));
  }
  if (o.acceleration != SinkhornAcceleration::none &&
      o.acceleration != SinkhornAcceleration::overrelax) {
    throw InvalidArgument(fmt::format("acceleration: unknown value {} (none or overrelax)",
                                      static_cast<int>(o.acceleration)));
  }
  if (o.precision != Precision::fp32 && o.precision != Precision::tf32 &&
      o.precision != Precision::bf16) {
    throw InvalidArgument(fmt::format(
        "precision: {} is not an option (fp32, tf32 or bf16; fp64 is only reported by the CPU)",
        o.precision == Precision::fp64 ? std::string("fp64")
                                       : fmt::format("value {}", static_cast<int>(o.precision))));
  }

  // ---- data (host only: device data is checked on the device by the CUDA backend) ----
  if (s.space == MemorySpace::host) {
    if (problem.cost_kind == CostKind::matrix) {
      check_all_finite(problem.cost, "cost");
    } else {
      check_all_finite(problem.x, "x");
      check_all_finite(problem.y, "y");
      check_point_costs_finite(problem, s);
    }
    const auto mass_a = weight_masses(problem.a, s.a_batched, s.batch, "a");
    const auto mass_b = weight_masses(problem.b, s.b_batched, s.batch, "b");
    const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
    if (balanced) {
      for (std::int64_t b = 0; b < s.batch; ++b) {
        const double ma = mass_a[mass_a.size() == 1 ? 0 : static_cast<std::size_t>(b)];
        const double mb = mass_b[mass_b.size() == 1 ? 0 : static_cast<std::size_t>(b)];
        if (!detail::masses_match(ma, mb)) {
          throw InvalidArgument(fmt::format(
              "a, b: problem {} has mass(a) = {} and mass(b) = {}; a balanced problem "
              "(rho_a = rho_b = inf) needs equal masses (relative 1e-5); set rho_a / rho_b "
              "for unbalanced transport",
              b, ma, mb));
        }
        // Shared weights give the same masses for every problem: one check suffices.
        if (mass_a.size() == 1 && mass_b.size() == 1) break;
      }
    }
  }
  return s;
}

SinkhornOptions resolve_sinkhorn_options(const SinkhornOptions& options, Backend backend) {
  SinkhornOptions o = options;
  if (o.tol == kAuto) o.tol = default_tolerance(backend);
  if (o.eps_init == kAuto) {
    // Both backends keep kAuto: the CPU solver and the CUDA synchronous driver run the
    // continuation schedule from 1024 x eps where it pays (per problem, from the
    // costs; otgpu/detail/eps_continuation.h). The CUDA small kernel and
    // sinkhorn_async read kAuto as no scaling. A warm start is presumably near the
    // solution already: scaling would throw it away.
    const bool warm = !o.f_init.empty() || !o.g_init.empty();
    if (warm) o.eps_init = 0.0;
  }
  return o;
}

double default_tolerance(Backend backend) noexcept {
  return backend == Backend::cuda ? 1e-4 : 1e-6;
}

}  // namespace otgpu::detail
