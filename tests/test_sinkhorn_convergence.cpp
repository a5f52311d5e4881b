// Time to solution of the CPU Sinkhorn (iteration counts are deterministic there):
// library defaults that converge, over-relaxation against plain updates (same fixed
// point, >= 10x fewer iterations at small eps), the eps schedule, the symmetric self
// terms of the divergence, progress and cancellation, thread counts, and the edges
// of what fp64 resolves.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "cpu_sinkhorn.h"
#include "otgpu/detail/accel.h"
#include "otgpu/otgpu.h"
#include "sinkhorn_cpu_util.h"
#include "validate.h"

namespace {

using otgpu::SinkhornAcceleration;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;

/// A point-cloud problem that owns its arrays: x [n, d], y [m, d], weights a, b.
struct Points {
  std::int64_t n = 0, m = 0, d = 0;
  std::vector<double> x, y, a, b;

  SinkhornProblem problem() const {
    SinkhornProblem p;
    using otgpu::DType;
    using otgpu::MemorySpace;
    using otgpu::TensorView;
    p.x = TensorView::contiguous(x.data(), DType::f64, MemorySpace::host, {n, d});
    p.y = TensorView::contiguous(y.data(), DType::f64, MemorySpace::host, {m, d});
    if (!a.empty()) p.a = TensorView::contiguous(a.data(), DType::f64, MemorySpace::host, {n});
    if (!b.empty()) p.b = TensorView::contiguous(b.data(), DType::f64, MemorySpace::host, {m});
    return p;
  }
  /// <a (x) b, C> for the squared Euclidean cost (uniform weights when absent).
  double mean_cost() const {
    const auto c = otgpu_test::point_costs(x, y, d, true);
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < m; ++j) {
        const double wa = a.empty() ? 1.0 / static_cast<double>(n) : a[static_cast<std::size_t>(i)];
        const double wb = b.empty() ? 1.0 / static_cast<double>(m) : b[static_cast<std::size_t>(j)];
        s += wa * wb * c[static_cast<std::size_t>(i * m + j)];
      }
    }
    return s;
  }
};

/// Uniform points in the unit cube; `weighted` gives cubed uniform weights (a few
/// points carry almost no mass: the slow, plateau-prone case of small-eps Sinkhorn).
Points uniform_points(std::int64_t n, std::int64_t m, std::int64_t d, std::uint32_t seed,
                      bool weighted) {
  Points p;
  p.n = n;
  p.m = m;
  p.d = d;
  p.x = otgpu_test::uniform_values(static_cast<std::size_t>(n * d), seed);
  p.y = otgpu_test::uniform_values(static_cast<std::size_t>(m * d), seed + 1);
  if (weighted) {
    auto cube = [](std::vector<double> w) {
      double s = 0;
      for (double& v : w) {
        v = v * v * v;
        s += v;
      }
      for (double& v : w) v /= s;
      return w;
    };
    p.a = cube(otgpu_test::uniform_values(static_cast<std::size_t>(n), seed + 2, 0.1, 1.0));
    p.b = cube(otgpu_test::uniform_values(static_cast<std::size_t>(m), seed + 3, 0.1, 1.0));
  }
  return p;
}

SinkhornOptions cpu_defaults(double eps) {
  SinkhornOptions o;
  o.backend = otgpu::Backend::cpu;
  o.eps = eps;
  return o;
}

/// Potentials agree up to the gauge (f + c, g - c) of balanced problems.
void expect_same_potentials(const SinkhornResult& r1, const SinkhornResult& r2, double tol) {
  ASSERT_EQ(r1.f.size(), r2.f.size());
  const double shift = r1.f[0] - r2.f[0];
  for (std::size_t i = 0; i < r1.f.size(); ++i) EXPECT_NEAR(r1.f[i] - shift, r2.f[i], tol) << i;
  for (std::size_t j = 0; j < r1.g.size(); ++j) EXPECT_NEAR(r1.g[j] + shift, r2.g[j], tol) << j;
}

// ------------------------------------------------------------------- defaults

TEST(SinkhornDefaults, ResolvedPerBackendAndReported) {
  const SinkhornOptions o;
  EXPECT_EQ(o.tol, otgpu::kAuto);
  EXPECT_EQ(o.eps_init, otgpu::kAuto);
  EXPECT_EQ(o.max_iter, 100000);
  EXPECT_EQ(o.acceleration, SinkhornAcceleration::overrelax);
  const auto cpu = otgpu::detail::resolve_sinkhorn_options(o, otgpu::Backend::cpu);
  const auto gpu = otgpu::detail::resolve_sinkhorn_options(o, otgpu::Backend::cuda);
  EXPECT_EQ(cpu.tol, 1e-6);
  EXPECT_EQ(gpu.tol, 1e-4);
  EXPECT_EQ(cpu.eps_init, otgpu::kAuto);  // the CPU solver decides per problem
  EXPECT_EQ(gpu.eps_init, otgpu::kAuto);  // the CUDA synchronous driver decides per problem
  // Given values are kept; a warm start turns the automatic schedule off.
  SinkhornOptions given = o;
  given.tol = 3e-7;
  given.eps_init = 0.0;
  const auto kept = otgpu::detail::resolve_sinkhorn_options(given, otgpu::Backend::cuda);
  EXPECT_EQ(kept.tol, 3e-7);
  EXPECT_EQ(kept.eps_init, 0.0);
  SinkhornOptions warm = o;
  warm.f_init = {0.0};
  EXPECT_EQ(otgpu::detail::resolve_sinkhorn_options(warm, otgpu::Backend::cpu).eps_init, 0.0);

  const Points p = uniform_points(30, 20, 2, 7, false);
  const auto r = otgpu::sinkhorn(p.problem(), cpu_defaults(0.01));
  EXPECT_EQ(r.tol, 1e-6);
}

TEST(SinkhornDefaults, DefaultOptionsConvergeOnTypicalProblems) {
  // The README's situation: only eps is given. Uniform and weighted, absolute and
  // relative eps, n != m, several dimensions.
  struct Case {
    std::int64_t n, m, d;
    bool weighted, relative;
    double eps;
  };
  const Case cases[] = {{64, 48, 2, false, false, 0.01}, {64, 48, 2, true, false, 0.01},
                        {40, 40, 3, false, true, 0.01},  {40, 60, 5, true, true, 0.005},
                        {20, 20, 1, false, true, 0.02},  {100, 80, 8, false, false, 0.5}};
  for (const Case& c : cases) {
    const Points p =
        uniform_points(c.n, c.m, c.d, 100 + static_cast<std::uint32_t>(c.n), c.weighted);
    SinkhornOptions o = cpu_defaults(c.eps);
    o.eps_relative = c.relative;
    const auto r = otgpu::sinkhorn(p.problem(), o);
    const auto& rep = r.problems[0];
    EXPECT_TRUE(rep.converged) << c.n << "x" << c.m << " d=" << c.d << " eps=" << c.eps
                               << " residual " << rep.residual;
    EXPECT_LE(rep.marginal_error, 1e-6);
    EXPECT_LT(rep.iterations, 5000);
  }
}

// ------------------------------------------------------------- acceleration

TEST(SinkhornAccel, SmallEpsTenTimesFewerIterationsThanPlain) {
  // eps = 1e-3 x mean cost, n = m = 200, d = 2: plain Sinkhorn needs ~5e4 iterations
  // to an L1 marginal error of 1e-6; the over-relaxed iteration must need >= 10x
  // fewer to the same error (both with the default eps schedule).
  const Points p = uniform_points(200, 200, 2, 11, false);
  SinkhornOptions o = cpu_defaults(1e-3);
  o.eps_relative = true;
  const auto fast = otgpu::sinkhorn(p.problem(), o);
  o.acceleration = SinkhornAcceleration::none;
  const auto plain = otgpu::sinkhorn(p.problem(), o);
  const auto& rf = fast.problems[0];
  const auto& rp = plain.problems[0];
  ASSERT_TRUE(rf.converged);
  ASSERT_TRUE(rp.converged);
  EXPECT_EQ(rf.acceleration, SinkhornAcceleration::overrelax);
  EXPECT_GT(rf.omega, 1.5);
  EXPECT_EQ(rp.acceleration, SinkhornAcceleration::none);
  EXPECT_LE(rf.marginal_error, 1e-6);
  EXPECT_LE(rp.marginal_error, 1e-6);
  EXPECT_LE(10 * rf.iterations, rp.iterations) << rf.iterations << " vs " << rp.iterations;
  EXPECT_LE(rf.iterations, 6000);  // budget (5,000-ish measured)
  EXPECT_NEAR(rf.ot_eps, rp.ot_eps, 1e-6 * std::fabs(rp.ot_eps));
}

TEST(SinkhornAccel, SameFixedPointAsPlainSinkhorn) {
  // Converged to 1e-13, the two iterations give the same potentials (up to the gauge)
  // to 1e-9, and the same value.
  for (bool weighted : {false, true}) {
    const Points p = uniform_points(40, 30, 2, 21, weighted);
    SinkhornOptions o = cpu_defaults(0.01);
    o.tol = 1e-13;
    o.check_every = 5;
    const auto fast = otgpu::sinkhorn(p.problem(), o);
    o.acceleration = SinkhornAcceleration::none;
    const auto plain = otgpu::sinkhorn(p.problem(), o);
    ASSERT_TRUE(fast.problems[0].converged);
    ASSERT_TRUE(plain.problems[0].converged);
    EXPECT_EQ(fast.problems[0].acceleration, SinkhornAcceleration::overrelax);
    expect_same_potentials(fast, plain, 1e-9);
    EXPECT_NEAR(fast.problems[0].ot_eps, plain.problems[0].ot_eps, 1e-12);
  }
}

TEST(SinkhornAccel, RuleFromThePlainRate) {
  using namespace otgpu::detail;
  // w* = 2 / (1 + sqrt(1 - r)): r = 0.99 -> 2 / 1.1.
  EXPECT_NEAR(overrelax_omega(0.99), 2.0 / 1.1, 1e-15);
  EXPECT_EQ(overrelax_omega(0.0), 1.0);
  EXPECT_EQ(overrelax_omega(1.0), 1.0);
  EXPECT_EQ(overrelax_omega(0.9999999), kOverrelaxMaxOmega);
  // Plain checks at a steady rate 0.99 per iteration (period 10) switch w on at the
  // second agreeing period; a non-improving relaxed check restores and halves w - 1.
  OverrelaxState s;
  double res = 1.0;
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(overrelax_check(s, res, 10), kOverrelaxAccept);
    res *= std::pow(0.99, 10);
  }
  EXPECT_NEAR(s.omega, 2.0 / 1.1, 1e-9);
  const double w = s.omega;
  EXPECT_EQ(overrelax_check(s, 2.0, 10), kOverrelaxRestore);
  EXPECT_NEAR(s.omega, 1.0 + 0.5 * (w - 1.0), 1e-15);
  EXPECT_EQ(overrelax_check(s, 2.0, 10), kOverrelaxRestore);
  EXPECT_EQ(overrelax_check(s, 2.0, 10), kOverrelaxRestore);
  EXPECT_EQ(s.omega, 1.0);  // three failures: plain for good
  EXPECT_EQ(overrelax_check(s, res * 0.5, 10), kOverrelaxAccept);
  EXPECT_EQ(overrelax_check(s, res * 0.25, 10), kOverrelaxAccept);
  EXPECT_EQ(overrelax_check(s, res * 0.125, 10), kOverrelaxAccept);
  EXPECT_EQ(s.omega, 1.0);
}

TEST(SinkhornAccel, ThreadCountDoesNotChangeAcceleratedResultsBitwise) {
  // n m = 300 x 250 is above the parallel threshold: rows really are split.
  const Points p = uniform_points(300, 250, 3, 31, true);
  SinkhornOptions o = cpu_defaults(0.005);
  o.eps_relative = true;
  o.max_iter = 400;
  o.cpu_threads = 1;
  const auto r1 = otgpu::sinkhorn(p.problem(), o);
  for (int threads : {0, 2, 3}) {
    o.cpu_threads = threads;
    const auto rt = otgpu::sinkhorn(p.problem(), o);
    EXPECT_EQ(r1.f, rt.f) << threads;
    EXPECT_EQ(r1.g, rt.g) << threads;
    EXPECT_EQ(r1.problems[0].iterations, rt.problems[0].iterations);
    EXPECT_EQ(r1.problems[0].ot_eps, rt.problems[0].ot_eps);
  }
}

// ----------------------------------------------------------- eps schedule

TEST(SinkhornSchedule, ContinuationDoesNotSlowDownThePlateauCase) {
  // A small weighted problem at eps = 1e-3 where the former schedule (one iteration
  // per level from 1024 eps, halving) handed the target eps a transient that sat on a
  // plateau: 1,270 iterations against 370 from a cold start. The continuation
  // schedule (each level solved loosely) must not be slower than the cold start.
  const Points p = uniform_points(8, 20, 2, 520, true);
  const double eps = 1e-3;
  SinkhornOptions o = cpu_defaults(eps);
  o.max_iter = 20000;
  const auto scaled = otgpu::sinkhorn(p.problem(), o);
  SinkhornOptions cold = o;
  cold.eps_init = 0;
  const auto plain = otgpu::sinkhorn(p.problem(), cold);
  // The former schedule, replayed: one iteration per level, then the target eps.
  SinkhornOptions one = cold;
  one.max_iter = 1;
  one.check_every = 0;
  std::vector<double> f(8, 0.0), g(20, 0.0);
  int former = 0;
  for (int t = 0;; ++t) {
    const double e = std::max(eps, 1024 * eps * std::pow(0.5, t));
    if (e == eps) break;
    one.eps = e;
    one.f_init = f;
    one.g_init = g;
    const auto r = otgpu::sinkhorn(p.problem(), one);
    f = r.f;
    g = r.g;
    ++former;
  }
  SinkhornOptions rest = cold;
  rest.f_init = f;
  rest.g_init = g;
  former += otgpu::sinkhorn(p.problem(), rest).problems[0].iterations;

  ASSERT_TRUE(scaled.problems[0].converged);
  ASSERT_TRUE(plain.problems[0].converged);
  const int s = scaled.problems[0].iterations, c = plain.problems[0].iterations;
  EXPECT_GT(former, 2 * c) << "the replayed former schedule no longer shows the plateau";
  EXPECT_LE(s, c) << "scaled " << s << " vs cold start " << c;
  EXPECT_LE(s, 400);  // budget (300 measured)
  expect_same_potentials(scaled, plain, 1e-6);
}

TEST(SinkhornSchedule, LevelRule) {
  using namespace otgpu::detail;
  EXPECT_TRUE(eps_level_done(kEpsLevelTol, 1));
  EXPECT_FALSE(eps_level_done(2 * kEpsLevelTol, 1));
  EXPECT_TRUE(eps_level_done(2 * kEpsLevelTol, kEpsLevelMaxIters));
  EXPECT_TRUE(eps_level_done(std::nan(""), 1));
}

TEST(SinkhornSchedule, NoScalingAboveTheCostSpread) {
  // eps = 10 x the cost spread: the schedule would start above the spread, where the
  // plan is a (x) b whatever eps_t; it is skipped, so scaled == unscaled bit for bit.
  const Points p = uniform_points(30, 30, 2, 41, false);
  SinkhornOptions o = cpu_defaults(20.0);
  const auto scaled = otgpu::sinkhorn(p.problem(), o);
  o.eps_init = 0;
  const auto plain = otgpu::sinkhorn(p.problem(), o);
  EXPECT_EQ(scaled.f, plain.f);
  EXPECT_EQ(scaled.problems[0].iterations, plain.problems[0].iterations);
}

// -------------------------------------------------------------- divergence

TEST(SinkhornDivergenceCpu, SymmetricSelfTermsMatchAlternatingAndConvergeFast) {
  // The symmetric solver converges within a budget and gives the self term
  // OT_eps(a, a) and the potential that plain alternating Sinkhorn gives.
  Points p = uniform_points(64, 64, 8, 51, true);
  p.y = p.x;
  p.b = p.a;
  SinkhornOptions o = cpu_defaults(0.5);
  o.tol = 1e-12;
  const SinkhornProblem prob = p.problem();
  const auto shape = otgpu::detail::validate_sinkhorn(prob, o);
  const auto sym = otgpu::cpu::sinkhorn_symmetric(
      prob, otgpu::detail::resolve_sinkhorn_options(o, otgpu::Backend::cpu), shape);
  o.acceleration = SinkhornAcceleration::none;
  o.eps_init = 0;
  const auto alt = otgpu::sinkhorn(prob, o);
  ASSERT_TRUE(sym.problems[0].converged);
  ASSERT_TRUE(alt.problems[0].converged);
  EXPECT_NEAR(sym.problems[0].ot_eps, alt.problems[0].ot_eps, 1e-10);
  EXPECT_LE(sym.problems[0].iterations, 100);
  // The symmetric potential is the (gauge-free) potential of the self problem.
  for (std::size_t i = 0; i < sym.f.size(); ++i) {
    EXPECT_NEAR(sym.f[i], 0.5 * (alt.f[i] + alt.g[i]), 1e-9);
  }
}

TEST(SinkhornDivergenceCpu, IssueSizedBatchWithinBudget) {
  // The issue's case: 2 x 256 x 200, d = 8, unit-variance clouds (mean cost ~16),
  // eps 0.5, library defaults; it ran for over 16 minutes (alternating self terms from
  // a scaled start converge sublinearly on x against x). Budgets on the (x, y) solve
  // and on the symmetric self terms, and the divergence against an assembly from
  // alternating solves of the three terms.
  const double unit_variance = std::sqrt(12.0);
  std::vector<double> x2 = otgpu_test::uniform_values(2 * 256 * 8, 62);
  std::vector<double> y2 = otgpu_test::uniform_values(2 * 200 * 8, 63);
  for (double& v : x2) v *= unit_variance;
  for (double& v : y2) v = (v + 0.3) * unit_variance;
  using otgpu::DType;
  using otgpu::MemorySpace;
  using otgpu::TensorView;
  SinkhornProblem prob;
  prob.x = TensorView::contiguous(x2.data(), DType::f64, MemorySpace::host, {2, 256, 8});
  prob.y = TensorView::contiguous(y2.data(), DType::f64, MemorySpace::host, {2, 200, 8});
  const SinkhornOptions o = cpu_defaults(0.5);
  const auto div = otgpu::sinkhorn_divergence(prob, o);
  ASSERT_EQ(div.size(), 2u);
  const auto xy = otgpu::sinkhorn(prob, o);
  for (std::size_t b = 0; b < 2; ++b) {
    EXPECT_TRUE(xy.problems[b].converged);
    EXPECT_LE(xy.problems[b].iterations, 400);
    // Self terms, one problem at a time: symmetric (budget) and alternating (oracle).
    for (const auto& [pts, len] :
         {std::pair{&x2, std::int64_t{256}}, std::pair{&y2, std::int64_t{200}}}) {
      SinkhornProblem self;
      self.x = TensorView::contiguous(pts->data() + static_cast<std::ptrdiff_t>(b) * len * 8,
                                      DType::f64, MemorySpace::host, {len, 8});
      self.y = self.x;
      const auto shape = otgpu::detail::validate_sinkhorn(self, o);
      const auto sym = otgpu::cpu::sinkhorn_symmetric(
          self, otgpu::detail::resolve_sinkhorn_options(o, otgpu::Backend::cpu), shape);
      EXPECT_TRUE(sym.problems[0].converged);
      EXPECT_LE(sym.problems[0].iterations, 100);
    }
  }
  // The oracle: alternating (over-relaxed) updates from a cold start, to 1e-9.
  SinkhornOptions plain = o;
  plain.tol = 1e-9;
  plain.eps_init = 0;
  for (std::size_t b = 0; b < 2; ++b) {
    auto one = [&](const std::vector<double>& u, std::int64_t nu, const std::vector<double>& v,
                   std::int64_t nv) {
      SinkhornProblem q;
      q.x = TensorView::contiguous(u.data() + static_cast<std::ptrdiff_t>(b) * nu * 8, DType::f64,
                                   MemorySpace::host, {nu, 8});
      q.y = TensorView::contiguous(v.data() + static_cast<std::ptrdiff_t>(b) * nv * 8, DType::f64,
                                   MemorySpace::host, {nv, 8});
      const auto r = otgpu::sinkhorn(q, plain);
      EXPECT_TRUE(r.problems[0].converged);
      return r.problems[0].ot_eps;
    };
    const double ref =
        one(x2, 256, y2, 200) - 0.5 * (one(x2, 256, x2, 256) + one(y2, 200, y2, 200));
    EXPECT_NEAR(div[b], ref, 1e-5 * std::fabs(ref)) << b;
  }
}

// ------------------------------------------------------ progress and cancel

TEST(SinkhornProgressCpu, CalledAtChecksWithMonotoneIterations) {
  const Points p = uniform_points(50, 40, 2, 71, false);
  std::vector<double> x2(p.x), y2(p.y);
  x2.insert(x2.end(), p.x.begin(), p.x.end());
  y2.insert(y2.end(), p.y.begin(), p.y.end());
  for (std::size_t k = p.x.size(); k < x2.size(); ++k) x2[k] *= 0.5;
  SinkhornProblem prob;
  prob.x = otgpu::TensorView::contiguous(x2.data(), otgpu::DType::f64, otgpu::MemorySpace::host,
                                         {2, 50, 2});
  prob.y = otgpu::TensorView::contiguous(y2.data(), otgpu::DType::f64, otgpu::MemorySpace::host,
                                         {2, 40, 2});
  SinkhornOptions o = cpu_defaults(0.01);
  o.check_every = 5;
  std::vector<otgpu::SinkhornProgress> calls;
  o.progress = [&](const otgpu::SinkhornProgress& pr) {
    calls.push_back(pr);
    return true;
  };
  const auto r = otgpu::sinkhorn(prob, o);
  ASSERT_FALSE(calls.empty());
  EXPECT_FALSE(r.cancelled);
  int last[2] = {0, 0};
  double last_elapsed = 0;
  for (const auto& c : calls) {
    ASSERT_TRUE(c.problem == 0 || c.problem == 1) << c.problem;
    EXPECT_GT(c.iteration, last[c.problem]);
    EXPECT_EQ(c.iteration % 5, 0);
    last[c.problem] = c.iteration;
    EXPECT_EQ(c.eps, 0.01);
    EXPECT_TRUE(std::isfinite(c.residual));
    EXPECT_GE(c.elapsed_s, last_elapsed);
    last_elapsed = c.elapsed_s;
    EXPECT_GE(c.active, 1);
    EXPECT_LE(c.active, 2);
  }
  // The last call of each problem is its converging check.
  for (int b = 0; b < 2; ++b) {
    EXPECT_EQ(last[b], r.problems[static_cast<std::size_t>(b)].iterations);
    EXPECT_TRUE(r.problems[static_cast<std::size_t>(b)].converged);
  }
}

TEST(SinkhornProgressCpu, ReturningFalseCancels) {
  const Points p = uniform_points(50, 40, 2, 81, false);
  SinkhornOptions o = cpu_defaults(0.001);
  o.eps_relative = true;
  o.check_every = 5;
  int calls = 0;
  o.progress = [&](const otgpu::SinkhornProgress&) {
    ++calls;
    return calls < 3;
  };
  const auto r = otgpu::sinkhorn(p.problem(), o);
  EXPECT_EQ(calls, 3);
  EXPECT_TRUE(r.cancelled);
  EXPECT_FALSE(r.problems[0].converged);
  for (double v : r.f) EXPECT_TRUE(std::isfinite(v));
}

// ------------------------------------------------------------------- edges

TEST(SinkhornEdges, CostOverflowIsOneClearError) {
  Points p = uniform_points(5, 6, 2, 91, false);
  for (double& v : p.x) v *= 1e200;
  try {
    (void)otgpu::sinkhorn(p.problem(), cpu_defaults(0.1));
    ADD_FAILURE() << "an overflowing cost was accepted";
  } catch (const otgpu::NonFiniteInput& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cost"), std::string::npos) << msg;
    EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
    EXPECT_NE(msg.find("i = "), std::string::npos) << msg;
  }
}

TEST(SinkhornEdges, EpsOutsideTheResolvableRangeIsRejected) {
  const Points p = uniform_points(10, 12, 2, 93, false);
  for (double rel : {1e-30, 1e-14, 1e300, 1e17}) {
    SinkhornOptions o = cpu_defaults(rel);
    o.eps_relative = true;
    try {
      (void)otgpu::sinkhorn(p.problem(), o);
      ADD_FAILURE() << "eps = " << rel << " x mean cost was accepted";
    } catch (const otgpu::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("working range"), std::string::npos) << e.what();
    }
  }
}

TEST(SinkhornEdges, LargeEpsValueTendsToTheMeanCostWithoutCancellation) {
  // OT_eps = <a (x) b, C> - O(Var / eps): at eps = 1e3 .. 1e12 x the cost scale the
  // value must be the weighted mean cost to ~1/eps (the former dual form cancelled
  // to 0 or noise there).
  for (bool weighted : {false, true}) {
    const Points p = uniform_points(20, 15, 3, 95, weighted);
    const double mean = p.mean_cost();
    for (double rel : {1e3, 1e6, 1e9, 1e12}) {
      SinkhornOptions o = cpu_defaults(rel * mean);
      const auto r = otgpu::sinkhorn(p.problem(), o);
      const auto& rep = r.problems[0];
      EXPECT_TRUE(rep.converged);
      EXPECT_NEAR(rep.ot_eps, mean, std::max(1e-12, 2.0 / rel) * mean) << rel;
      EXPECT_LE(rep.ot_eps, mean * (1 + 1e-14)) << rel;  // OT_eps <= <a (x) b, C>
      EXPECT_NEAR(rep.transport_cost, mean, std::max(1e-12, 2.0 / rel) * mean) << rel;
    }
  }
}

TEST(SinkhornEdges, ConvergedOnlyWithinTolOfTheMarginals) {
  // Capped runs: converged is never claimed with a residual above tol.
  const Points p = uniform_points(30, 30, 2, 97, true);
  SinkhornOptions o = cpu_defaults(0.001);
  o.eps_relative = true;
  for (int cap : {1, 7, 50, 333}) {
    o.max_iter = cap;
    const auto r = otgpu::sinkhorn(p.problem(), o);
    const auto& rep = r.problems[0];
    if (rep.converged) {
      EXPECT_LE(rep.residual, r.tol);
      EXPECT_LE(rep.marginal_error, r.tol);
    } else {
      EXPECT_GT(rep.residual, r.tol);
    }
  }
}

}  // namespace
