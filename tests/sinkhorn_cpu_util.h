// Helpers of the CPU Sinkhorn tests: seeded data, and an independent brute-force
// formation of the plan P from returned potentials (the solver never forms P).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "otgpu/otgpu.h"
#include "seeded_data.h"

namespace otgpu_test {

/// The shared seeded generator (seeded_data.h) under the name these suites use.
inline std::vector<double> uniform_values(std::size_t count, std::uint32_t seed, double lo = 0.0,
                                          double hi = 1.0) {
  return uniform(count, seed, lo, hi);
}

/// Positive weights with total mass `mass`.
inline std::vector<double> random_weights(std::size_t count, std::uint32_t seed,
                                          double mass = 1.0) {
  auto w = uniform_values(count, seed, 0.2, 1.0);
  double s = 0;
  for (double x : w) s += x;
  for (double& x : w) x *= mass / s;
  return w;
}

/// A dense problem spelled out in fp64: weights and cost matrix of one problem.
struct DenseProblem {
  std::int64_t n = 0, m = 0;
  std::vector<double> a, b, cost;  // cost [n, m]
  double c(std::int64_t i, std::int64_t j) const {
    return cost[static_cast<std::size_t>(i * m + j)];
  }
};

/// Cost matrix of point clouds x [n, d], y [m, d] computed directly.
inline std::vector<double> point_costs(const std::vector<double>& x, const std::vector<double>& y,
                                       std::int64_t d, bool squared) {
  const auto n = static_cast<std::int64_t>(x.size()) / d;
  const auto m = static_cast<std::int64_t>(y.size()) / d;
  std::vector<double> c(static_cast<std::size_t>(n * m));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < m; ++j) {
      double s = 0;
      for (std::int64_t k = 0; k < d; ++k) {
        const double t =
            x[static_cast<std::size_t>(i * d + k)] - y[static_cast<std::size_t>(j * d + k)];
        s += t * t;
      }
      c[static_cast<std::size_t>(i * m + j)] = squared ? s : std::sqrt(s);
    }
  }
  return c;
}

/// P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) for problem `b` of a result.
inline std::vector<double> form_plan(const DenseProblem& p, const otgpu::SinkhornResult& r,
                                     std::int64_t b = 0) {
  const double eps = r.problems[static_cast<std::size_t>(b)].eps;
  std::vector<double> plan(static_cast<std::size_t>(p.n * p.m));
  for (std::int64_t i = 0; i < p.n; ++i) {
    for (std::int64_t j = 0; j < p.m; ++j) {
      const double f = r.f[static_cast<std::size_t>(b * p.n + i)];
      const double g = r.g[static_cast<std::size_t>(b * p.m + j)];
      plan[static_cast<std::size_t>(i * p.m + j)] = p.a[static_cast<std::size_t>(i)] *
                                                    p.b[static_cast<std::size_t>(j)] *
                                                    std::exp((f + g - p.c(i, j)) / eps);
    }
  }
  return plan;
}

/// <P, C> + eps KL(P | a (x) b) with the generalized KL (sum P log(P/Q) - P + Q).
inline double primal_value(const DenseProblem& p, const std::vector<double>& plan, double eps) {
  double v = 0;
  for (std::int64_t i = 0; i < p.n; ++i) {
    for (std::int64_t j = 0; j < p.m; ++j) {
      const double pij = plan[static_cast<std::size_t>(i * p.m + j)];
      const double q = p.a[static_cast<std::size_t>(i)] * p.b[static_cast<std::size_t>(j)];
      v += pij * p.c(i, j) + eps * ((pij > 0 ? pij * std::log(pij / q) : 0.0) - pij + q);
    }
  }
  return v;
}

inline std::vector<double> row_sums(const DenseProblem& p, const std::vector<double>& plan) {
  std::vector<double> r(static_cast<std::size_t>(p.n), 0.0);
  for (std::int64_t i = 0; i < p.n; ++i) {
    for (std::int64_t j = 0; j < p.m; ++j)
      r[static_cast<std::size_t>(i)] += plan[static_cast<std::size_t>(i * p.m + j)];
  }
  return r;
}

inline std::vector<double> col_sums(const DenseProblem& p, const std::vector<double>& plan) {
  std::vector<double> c(static_cast<std::size_t>(p.m), 0.0);
  for (std::int64_t i = 0; i < p.n; ++i) {
    for (std::int64_t j = 0; j < p.m; ++j)
      c[static_cast<std::size_t>(j)] += plan[static_cast<std::size_t>(i * p.m + j)];
  }
  return c;
}

inline otgpu::SinkhornOptions cpu_options(double eps, double tol = 1e-10) {
  otgpu::SinkhornOptions o;
  o.backend = otgpu::Backend::cpu;
  o.eps = eps;
  o.tol = tol;
  o.max_iter = 20000;
  o.check_every = 1;
  // These tests pin iteration-level behaviour (caps, checks, warm starts) of plain
  // updates at eps: no eps scaling unless a test asks for it.
  o.eps_init = 0;
  return o;
}

}  // namespace otgpu_test
