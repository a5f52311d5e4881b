// Problems of the sharded-Sinkhorn tests, shared by the local-group suite and the MPI
// check program: each built whole (for the single-process reference solve) and as the
// row slice of one rank (x or C, a and f_init sliced; y, b and g_init whole).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "otgpu/dist.h"
#include "otgpu/sinkhorn.h"

namespace otgpu::dist_test {

struct Case {
  const char* name;
  std::int64_t n, m, d;
  bool weighted;  ///< non-uniform a and b
  double rho;     ///< inf = balanced
  double eps;     ///< relative to the mean cost when `relative`
  bool relative;
  double eps_init;  ///< kAuto (continuation where it pays), 0 or a relative start
  bool matrix;      ///< a dense cost matrix split by rows instead of x
  bool warm;        ///< warm start from fixed f_init, g_init
};

/// n is never a multiple of 2, 3 or 4 together, so most splits are uneven.
inline std::vector<Case> cases() {
  const double inf = std::numeric_limits<double>::infinity();
  return {
      {"balanced", 37, 29, 3, false, inf, 0.05, true, 0.0, false, false},
      {"unbalanced", 41, 23, 2, true, 0.7, 0.1, true, 0.0, false, false},
      {"weighted", 35, 31, 4, true, inf, 0.08, true, 0.0, false, false},
      {"eps_continuation", 29, 27, 2, false, inf, 2e-3, true, kAuto, false, false},
      {"eps_geometric", 31, 25, 3, true, inf, 0.02, true, 1.0, false, false},
      {"cost_matrix", 33, 21, 0, true, inf, 0.05, true, 0.0, true, false},
      {"warm_start", 39, 26, 2, false, inf, 0.05, true, 0.0, false, true},
  };
}

/// The whole data of a case (seeded; every rank builds the same). `seed` 0: the
/// case's own seed (the local-group and MPI suites); other suites pass theirs.
struct Data {
  std::vector<double> x, y, a, b, c, f0, g0;
};

inline Data make_data(const Case& k, std::uint64_t seed = 0) {
  std::mt19937_64 gen(seed != 0 ? seed : 1234 + static_cast<std::uint64_t>(k.n * 7 + k.m));
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unif(0.2, 1.0);
  Data D;
  const std::int64_t d = k.matrix ? 2 : k.d;
  std::vector<double> x(static_cast<std::size_t>(k.n * d)), y(static_cast<std::size_t>(k.m * d));
  for (auto& v : x) v = normal(gen);
  for (auto& v : y) v = normal(gen) + 0.5;
  if (k.matrix) {
    // |x - y|^1.5: a cost that no point-cloud kind computes.
    D.c.resize(static_cast<std::size_t>(k.n * k.m));
    for (std::int64_t i = 0; i < k.n; ++i) {
      for (std::int64_t j = 0; j < k.m; ++j) {
        double s = 0;
        for (std::int64_t t = 0; t < d; ++t) {
          const double u =
              x[static_cast<std::size_t>(i * d + t)] - y[static_cast<std::size_t>(j * d + t)];
          s += u * u;
        }
        D.c[static_cast<std::size_t>(i * k.m + j)] = std::pow(s, 0.75);
      }
    }
  } else {
    D.x = x;
    D.y = y;
  }
  D.a.assign(static_cast<std::size_t>(k.n), 1.0 / static_cast<double>(k.n));
  D.b.assign(static_cast<std::size_t>(k.m), 1.0 / static_cast<double>(k.m));
  if (k.weighted) {
    double sa = 0, sb = 0;
    for (auto& v : D.a) sa += (v = unif(gen));
    for (auto& v : D.b) sb += (v = unif(gen));
    for (auto& v : D.a) v /= sa;
    // An unbalanced problem keeps different masses.
    const double mass_b = std::isinf(k.rho) ? 1.0 : 1.3;
    for (auto& v : D.b) v *= mass_b / sb;
  }
  if (k.warm) {
    for (std::int64_t i = 0; i < k.n; ++i) D.f0.push_back(0.1 * std::sin(static_cast<double>(i)));
    for (std::int64_t j = 0; j < k.m; ++j) D.g0.push_back(0.1 * std::cos(static_cast<double>(j)));
  }
  return D;
}

/// The problem of rows [r.begin, r.end) (the whole problem for {0, n}).
inline SinkhornProblem problem_of(const Case& k, const Data& D, dist::RowRange r) {
  SinkhornProblem p;
  const std::int64_t rows = r.size();
  if (k.matrix) {
    p.cost = TensorView::host(D.c.data() + r.begin * k.m, {rows, k.m});
    p.cost_kind = CostKind::matrix;
  } else {
    p.x = TensorView::host(D.x.data() + r.begin * k.d, {rows, k.d});
    p.y = TensorView::host(D.y.data(), {k.m, k.d});
  }
  // Uniform weights are left absent (the library's default: 1/n of the whole problem,
  // which a rank must not take as 1/n of its own rows).
  if (k.weighted) {
    p.a = TensorView::host(D.a.data() + r.begin, {rows});
    p.b = TensorView::host(D.b.data(), {k.m});
  }
  return p;
}

inline SinkhornOptions options_of(const Case& k, const Data& D, dist::RowRange r) {
  SinkhornOptions o;
  o.backend = Backend::cpu;
  o.cpu_threads = 1;
  o.eps = k.eps;
  o.eps_relative = k.relative;
  o.eps_init = k.eps_init;
  o.rho_a = o.rho_b = k.rho;
  o.tol = 1e-8;
  o.max_iter = 5000;
  if (k.warm) {
    o.f_init.assign(D.f0.begin() + r.begin, D.f0.begin() + r.end);
    o.g_init = D.g0;
  }
  return o;
}

/// "" when a and b agree to `rel` of the largest |b| (at least 1), else what differs.
inline std::string compare(const std::vector<double>& a, const std::vector<double>& b, double rel,
                           const std::string& what) {
  if (a.size() != b.size()) {
    return what + ": sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
  }
  double scale = 1.0;
  for (double v : b) scale = std::max(scale, std::fabs(v));
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!(std::fabs(a[i] - b[i]) <= rel * scale)) {
      char text[160];
      std::snprintf(text, sizeof text, "[%zu]: %.17g vs %.17g (difference %.3g, scale %.3g)", i,
                    a[i], b[i], a[i] - b[i], scale);
      return what + text;
    }
  }
  return "";
}

}  // namespace otgpu::dist_test

namespace otgpu::dist_test {

/// The sharded solve of case k on this rank against the single-process solve of the
/// whole problem (made on every rank): potentials (f gathered), OT_eps, iterations,
/// convergence, and the derived outputs (barycentric map and gradient gathered, and
/// the sampled partners, which must be equal). "" when all agree to `rel`.
inline std::string check_case(dist::Communicator& comm, const Case& k, double rel = 1e-10) {
  const Data D = make_data(k);
  const dist::RowRange all{0, k.n};
  const dist::RowRange mine = dist::row_range(k.n, comm.rank(), comm.size());
  const SinkhornProblem whole = problem_of(k, D, all);
  const SinkhornResult ref = sinkhorn(whole, options_of(k, D, all));
  const SinkhornProblem local = problem_of(k, D, mine);
  const SinkhornResult got = dist::sinkhorn(comm, local, options_of(k, D, mine));
  const std::string name = std::string(k.name) + " R=" + std::to_string(comm.size()) + ": ";
  if (got.n != mine.size()) return name + "result.n is not the local row count";
  const auto f = dist::allgather_rows(comm, got.f, 1);
  std::string e = compare(f, ref.f, rel, name + "f");
  if (!e.empty()) {
    double c0 = f[0] - ref.f[0], cmax = 0;
    for (std::size_t i = 0; i < f.size(); ++i)
      cmax = std::max(cmax, std::fabs(f[i] - ref.f[i] - c0));
    double gmax = 0;
    for (std::size_t j = 0; j < got.g.size(); ++j)
      gmax = std::max(gmax, std::fabs(got.g[j] - ref.g[j] + c0));
    e += " shift " + std::to_string(c0) + " dev " + std::to_string(cmax) + " gdev " +
         std::to_string(gmax) + " it " + std::to_string(got.problems[0].iterations) + " vs " +
         std::to_string(ref.problems[0].iterations);
  }
  if (e.empty()) e = compare(got.g, ref.g, rel, name + "g");
  const SinkhornReport &rg = got.problems[0], &rr = ref.problems[0];
  if (e.empty())
    e = compare({rg.ot_eps, rg.transport_cost, rg.eps}, {rr.ot_eps, rr.transport_cost, rr.eps}, rel,
                name + "(ot_eps, <P,C>, eps)");
  if (e.empty() &&
      (rg.iterations != rr.iterations || rg.converged != rr.converged || !rr.converged)) {
    e = name + "iterations " + std::to_string(rg.iterations) + " vs " +
        std::to_string(rr.iterations) + ", converged " + std::to_string(rg.converged) + " vs " +
        std::to_string(rr.converged);
  }
  // The residuals are at the level of tol; their difference is round-off of O(1) terms.
  if (e.empty()) e = compare({rg.residual}, {rr.residual}, 1e-12, name + "residual");
  if (!e.empty()) return e;
  if (!k.matrix) {
    e = compare(dist::allgather_rows(comm, dist::barycentric_map(comm, local, got), k.d),
                barycentric_map(whole, ref), rel, name + "barycentric_map");
    if (e.empty()) {
      e = compare(dist::allgather_rows(comm, dist::gradient_x(comm, local, got), k.d),
                  gradient_x(whole, ref), rel, name + "gradient_x");
    }
    if (!e.empty()) return e;
  }
  const auto mine_pairs = dist::sample_partners(comm, local, got, 99);
  const auto ref_pairs = sample_partners(whole, ref, 99);
  for (std::int64_t i = 0; i < mine.size(); ++i) {
    const auto want = ref_pairs[static_cast<std::size_t>(mine.begin + i)];
    if (mine_pairs[static_cast<std::size_t>(i)] != want) {
      return name + "partner of row " + std::to_string(mine.begin + i) + ": " +
             std::to_string(mine_pairs[static_cast<std::size_t>(i)]) + " vs " +
             std::to_string(want);
    }
  }
  return "";
}

}  // namespace otgpu::dist_test
