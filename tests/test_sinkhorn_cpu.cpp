// The CPU reference Sinkhorn solver against closed forms and invariants computed
// independently in the test (plans are formed here by brute force).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu_problem.h"
#include "otgpu/otgpu.h"
#include "sinkhorn_cpu_util.h"
#include "validate.h"

namespace {

using otgpu::CostKind;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;
using otgpu::TensorView;
using otgpu_test::cpu_options;
using otgpu_test::DenseProblem;

SinkhornProblem cloud_problem(const std::vector<double>& x, const std::vector<double>& y,
                              std::int64_t d, CostKind kind = CostKind::sqeuclidean) {
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {static_cast<std::int64_t>(x.size()) / d, d});
  p.y = TensorView::host(y.data(), {static_cast<std::int64_t>(y.size()) / d, d});
  p.cost_kind = kind;
  return p;
}

SinkhornProblem matrix_problem(const DenseProblem& dp) {
  SinkhornProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(dp.cost.data(), {dp.n, dp.m});
  p.a = TensorView::host(dp.a.data(), {dp.n});
  p.b = TensorView::host(dp.b.data(), {dp.m});
  return p;
}

DenseProblem random_dense(std::int64_t n, std::int64_t m, std::uint32_t seed) {
  DenseProblem dp;
  dp.n = n;
  dp.m = m;
  dp.a = otgpu_test::random_weights(static_cast<std::size_t>(n), seed);
  dp.b = otgpu_test::random_weights(static_cast<std::size_t>(m), seed + 1);
  dp.cost = otgpu_test::uniform_values(static_cast<std::size_t>(n * m), seed + 2, 0.0, 1.0);
  return dp;
}

void expect_same_result(const SinkhornResult& r1, const SinkhornResult& r2) {
  ASSERT_EQ(r1.f.size(), r2.f.size());
  ASSERT_EQ(r1.g.size(), r2.g.size());
  for (std::size_t i = 0; i < r1.f.size(); ++i) EXPECT_EQ(r1.f[i], r2.f[i]) << "f " << i;
  for (std::size_t j = 0; j < r1.g.size(); ++j) EXPECT_EQ(r1.g[j], r2.g[j]) << "g " << j;
  ASSERT_EQ(r1.problems.size(), r2.problems.size());
  for (std::size_t b = 0; b < r1.problems.size(); ++b) {
    EXPECT_EQ(r1.problems[b].ot_eps, r2.problems[b].ot_eps);
    EXPECT_EQ(r1.problems[b].transport_cost, r2.problems[b].transport_cost);
    EXPECT_EQ(r1.problems[b].residual, r2.problems[b].residual);
    EXPECT_EQ(r1.problems[b].iterations, r2.problems[b].iterations);
    EXPECT_EQ(r1.problems[b].converged, r2.problems[b].converged);
  }
}

/// sum over sorted pairs of (x_(k) - y_(k))^2 / n: exact W2^2 of two uniform 1-D
/// measures with the same number of points.
double sorted_matching_cost(std::vector<double> x, std::vector<double> y) {
  std::sort(x.begin(), x.end());
  std::sort(y.begin(), y.end());
  double s = 0;
  for (std::size_t k = 0; k < x.size(); ++k) s += (x[k] - y[k]) * (x[k] - y[k]);
  return s / static_cast<double>(x.size());
}

// ---------------------------------------------------------------- closed forms

TEST(SinkhornCpu, TwoDiracsAnyEps) {
  const std::vector<double> x{0.5, -1.0}, y{1.5, 1.0};  // C = 1 + 4 = 5
  for (double eps : {1e-3, 0.1, 1.0, 100.0}) {
    const auto r = otgpu::sinkhorn(cloud_problem(x, y, 2), cpu_options(eps));
    const auto& rep = r.problems[0];
    EXPECT_TRUE(rep.converged) << eps;
    EXPECT_NEAR(rep.ot_eps, 5.0, 1e-12) << eps;
    EXPECT_NEAR(rep.transport_cost, 5.0, 1e-12) << eps;
    EXPECT_NEAR(r.f[0] + r.g[0], 5.0, 1e-12) << eps;
    EXPECT_EQ(r.backend, otgpu::Backend::cpu);
    EXPECT_EQ(r.device, -1);
    EXPECT_EQ(r.d, 2);
  }
}

TEST(SinkhornCpu, IdenticalSeparatedPointsGiveDiagonalPlan) {
  // Points 1 apart with eps = 0.01: off-diagonal plan entries are ~exp(-100), so
  // P = I/n, <P, C> = 0 and OT_eps = eps KL(I/n | 1/n^2) = eps log n.
  const std::int64_t n = 6;
  std::vector<double> x;
  for (std::int64_t i = 0; i < n; ++i) x.insert(x.end(), {static_cast<double>(i), 0.0});
  const double eps = 0.01;
  const auto r = otgpu::sinkhorn(cloud_problem(x, x, 2), cpu_options(eps));
  const auto& rep = r.problems[0];
  EXPECT_TRUE(rep.converged);
  EXPECT_NEAR(rep.transport_cost, 0.0, 1e-30);
  EXPECT_NEAR(rep.ot_eps, eps * std::log(static_cast<double>(n)), 1e-14);
}

TEST(SinkhornCpu, TwoByTwoEntropicPlanClosedForm) {
  // a = b = (1/2, 1/2), C = [[0, 1], [1, 0]]: P = [[p, q], [q, p]] with p + q = 1/2
  // and p / q = exp(1/eps).
  DenseProblem dp;
  dp.n = dp.m = 2;
  dp.a = {0.5, 0.5};
  dp.b = {0.5, 0.5};
  dp.cost = {0.0, 1.0, 1.0, 0.0};
  for (double eps : {0.05, 0.3, 1.0, 5.0}) {
    const auto r = otgpu::sinkhorn(matrix_problem(dp), cpu_options(eps, 1e-13));
    const double p = 0.5 / (1.0 + std::exp(-1.0 / eps));
    const double q = 0.5 - p;
    const double kl = 2 * p * std::log(4 * p) + 2 * q * std::log(4 * q);
    const auto& rep = r.problems[0];
    EXPECT_TRUE(rep.converged);
    EXPECT_NEAR(rep.transport_cost, 2 * q, 1e-12) << eps;
    EXPECT_NEAR(rep.ot_eps, 2 * q + eps * kl, 1e-12) << eps;
    const auto plan = otgpu_test::form_plan(dp, r);
    EXPECT_NEAR(plan[0], p, 1e-12);
    EXPECT_NEAR(plan[1], q, 1e-12);
    EXPECT_NEAR(plan[2], q, 1e-12);
    EXPECT_NEAR(plan[3], p, 1e-12);
  }
}

TEST(SinkhornCpu, ConstantCostGivesProductPlan) {
  DenseProblem dp = random_dense(3, 4, 7);
  std::fill(dp.cost.begin(), dp.cost.end(), 2.5);
  const auto r = otgpu::sinkhorn(matrix_problem(dp), cpu_options(0.1));
  const auto& rep = r.problems[0];
  EXPECT_TRUE(rep.converged);
  EXPECT_LE(rep.iterations, 2);
  EXPECT_NEAR(rep.transport_cost, 2.5, 1e-13);
  EXPECT_NEAR(rep.ot_eps, 2.5, 1e-13);
  const auto plan = otgpu_test::form_plan(dp, r);
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t j = 0; j < 4; ++j) {
      EXPECT_NEAR(plan[static_cast<std::size_t>(i * 4 + j)],
                  dp.a[static_cast<std::size_t>(i)] * dp.b[static_cast<std::size_t>(j)], 1e-15);
    }
  }
}

TEST(SinkhornCpu, OneDimensionalSortedMatchingAsEpsShrinks) {
  const std::size_t n = 40;
  const auto x = otgpu_test::uniform_values(n, 11);
  const auto y = otgpu_test::uniform_values(n, 12, 0.2, 1.3);
  const double exact = sorted_matching_cost(x, y);
  double previous_error = INFINITY;
  for (double eps : {1e-2, 1e-3, 1e-4}) {
    // Sinkhorn needs ~1/eps iterations for a tight marginal at small eps, so the
    // tolerance is on the L1 marginal error at a level that matters for the cost.
    auto o = cpu_options(eps, 1e-5);
    o.eps_init = 1.0;
    o.eps_decay = 0.9;
    o.check_every = 10;
    const auto r = otgpu::sinkhorn(cloud_problem(x, y, 1), o);
    const auto& rep = r.problems[0];
    EXPECT_TRUE(rep.converged) << eps;
    const double err = std::fabs(rep.transport_cost - exact);
    EXPECT_LT(err, previous_error) << eps;
    // The entropic plan spreads mass over neighbours at distance ~sqrt(eps).
    EXPECT_LT(err, 10 * eps) << eps;
    previous_error = err;
  }
  EXPECT_LT(previous_error, 1e-3 * exact);
}

TEST(SinkhornCpu, SmallEpsWithScalingConvergesWithoutNan) {
  // eps = 1e-4 times the mean cost, reached by scaling down from eps_init = 1 (also
  // relative to the mean cost).
  const std::size_t n = 60;
  const auto x = otgpu_test::uniform_values(n, 21, 0.0, 3.0);
  const auto y = otgpu_test::uniform_values(n, 22, 0.5, 4.0);
  const double exact = sorted_matching_cost(x, y);
  auto o = cpu_options(1e-4, 1e-4);
  o.eps_relative = true;
  o.eps_init = 1.0;
  o.eps_decay = 0.9;
  o.check_every = 10;
  const auto r = otgpu::sinkhorn(cloud_problem(x, y, 1), o);
  const auto& rep = r.problems[0];
  EXPECT_TRUE(rep.converged);
  EXPECT_TRUE(std::isfinite(rep.ot_eps));
  for (double v : r.f) ASSERT_TRUE(std::isfinite(v));
  for (double v : r.g) ASSERT_TRUE(std::isfinite(v));
  EXPECT_LE(rep.residual, 1e-4);
  EXPECT_NEAR(rep.transport_cost, exact, 1e-3 * exact);
}

// ------------------------------------------------------------------ invariants

TEST(SinkhornCpu, MarginalsAndPrimalDualAtConvergence) {
  const DenseProblem dp = random_dense(30, 40, 3);
  const double eps = 0.05;
  const auto r = otgpu::sinkhorn(matrix_problem(dp), cpu_options(eps, 1e-11));
  const auto& rep = r.problems[0];
  ASSERT_TRUE(rep.converged);
  const auto plan = otgpu_test::form_plan(dp, r);
  const auto rows = otgpu_test::row_sums(dp, plan);
  const auto cols = otgpu_test::col_sums(dp, plan);
  double l1 = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) l1 += std::fabs(rows[i] - dp.a[i]);
  EXPECT_LE(l1, 1e-11);
  EXPECT_NEAR(rep.marginal_error, l1, 1e-13);
  EXPECT_DOUBLE_EQ(rep.marginal_error, rep.residual);  // balanced: the same quantity
  for (std::size_t j = 0; j < cols.size(); ++j) EXPECT_NEAR(cols[j], dp.b[j], 1e-14);
  double transport = 0;
  for (std::size_t k = 0; k < plan.size(); ++k) transport += plan[k] * dp.cost[k];
  EXPECT_NEAR(rep.transport_cost, transport, 1e-13);
  EXPECT_NEAR(rep.ot_eps, otgpu_test::primal_value(dp, plan, eps), 1e-10);
}

TEST(SinkhornCpu, MarginalErrorMatchesPlanBeforeConvergence) {
  const DenseProblem dp = random_dense(12, 9, 5);
  auto o = cpu_options(0.02);
  o.max_iter = 3;
  o.check_every = 0;
  const auto r = otgpu::sinkhorn(matrix_problem(dp), o);
  const auto& rep = r.problems[0];
  EXPECT_FALSE(rep.converged);
  EXPECT_EQ(rep.iterations, 3);
  const auto plan = otgpu_test::form_plan(dp, r);
  const auto rows = otgpu_test::row_sums(dp, plan);
  double l1 = 0, mass = 0, transport = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) l1 += std::fabs(rows[i] - dp.a[i]);
  for (std::size_t k = 0; k < plan.size(); ++k) {
    mass += plan[k];
    transport += plan[k] * dp.cost[k];
  }
  EXPECT_GT(l1, 1e-6);
  EXPECT_NEAR(rep.marginal_error, l1, 1e-12);
  EXPECT_NEAR(rep.transport_cost, transport, 1e-12);
  double fa = 0, gb = 0;
  for (std::size_t i = 0; i < 12; ++i) fa += dp.a[i] * r.f[i];
  for (std::size_t j = 0; j < 9; ++j) gb += dp.b[j] * r.g[j];
  EXPECT_NEAR(rep.ot_eps, fa + gb - 0.02 * (mass - 1.0), 1e-12);
}

TEST(SinkhornCpu, SwappingXAndYSwapsPotentials) {
  const auto x = otgpu_test::uniform_values(25 * 3, 31);
  const auto y = otgpu_test::uniform_values(18 * 3, 32, -0.5, 1.0);
  const auto a = otgpu_test::random_weights(25, 33);
  const auto b = otgpu_test::random_weights(18, 34);
  auto pxy = cloud_problem(x, y, 3);
  pxy.a = TensorView::host(a.data(), {25});
  pxy.b = TensorView::host(b.data(), {18});
  auto pyx = cloud_problem(y, x, 3);
  pyx.a = pxy.b;
  pyx.b = pxy.a;
  const auto o = cpu_options(0.05, 1e-12);
  const auto rxy = otgpu::sinkhorn(pxy, o);
  const auto ryx = otgpu::sinkhorn(pyx, o);
  ASSERT_TRUE(rxy.problems[0].converged && ryx.problems[0].converged);
  EXPECT_NEAR(rxy.problems[0].ot_eps, ryx.problems[0].ot_eps, 1e-11);
  // Potentials are unique up to f + k, g - k: compare after fixing that constant.
  const double k = rxy.f[0] - ryx.g[0];
  for (std::size_t i = 0; i < 25; ++i) EXPECT_NEAR(rxy.f[i], ryx.g[i] + k, 1e-9);
  for (std::size_t j = 0; j < 18; ++j) EXPECT_NEAR(rxy.g[j], ryx.f[j] - k, 1e-9);
}

TEST(SinkhornCpu, BatchedEqualsOneByOne) {
  const std::int64_t B = 3, n = 14, m = 11, d = 2;
  const auto x = otgpu_test::uniform_values(static_cast<std::size_t>(B * n * d), 41);
  const auto y = otgpu_test::uniform_values(static_cast<std::size_t>(B * m * d), 42);
  std::vector<double> a, b;
  for (std::int64_t k = 0; k < B; ++k) {
    const auto ak = otgpu_test::random_weights(n, 43 + static_cast<std::uint32_t>(k), 1.0 + k);
    const auto bk = otgpu_test::random_weights(m, 53 + static_cast<std::uint32_t>(k), 1.0 + k);
    a.insert(a.end(), ak.begin(), ak.end());
    b.insert(b.end(), bk.begin(), bk.end());
  }
  const auto shared_b = otgpu_test::random_weights(m, 60);
  SinkhornProblem batched;
  batched.x = TensorView::host(x.data(), {B, n, d});
  batched.y = TensorView::host(y.data(), {B, m, d});
  batched.a = TensorView::host(a.data(), {B, n});
  for (bool share_b : {false, true}) {
    batched.b =
        share_b ? TensorView::host(shared_b.data(), {m}) : TensorView::host(b.data(), {B, m});
    auto o = cpu_options(0.03, 1e-9);
    o.rho_b = share_b ? 0.5 : o.rho_b;  // shared b has mass 1 != mass(a): unbalanced
    o.check_every = 3;
    const auto rb = otgpu::sinkhorn(batched, o);
    for (std::int64_t k = 0; k < B; ++k) {
      SinkhornProblem one;
      one.x = TensorView::host(x.data() + k * n * d, {n, d});
      one.y = TensorView::host(y.data() + k * m * d, {m, d});
      one.a = TensorView::host(a.data() + k * n, {n});
      one.b = share_b ? TensorView::host(shared_b.data(), {m})
                      : TensorView::host(b.data() + k * m, {m});
      const auto r1 = otgpu::sinkhorn(one, o);
      const auto& p1 = r1.problems[0];
      const auto& pb = rb.problems[static_cast<std::size_t>(k)];
      EXPECT_TRUE(pb.converged);
      EXPECT_EQ(p1.iterations, pb.iterations) << k;
      EXPECT_EQ(p1.ot_eps, pb.ot_eps) << k;
      EXPECT_EQ(p1.transport_cost, pb.transport_cost) << k;
      for (std::int64_t i = 0; i < n; ++i) {
        EXPECT_EQ(r1.f[static_cast<std::size_t>(i)], rb.f[static_cast<std::size_t>(k * n + i)]);
      }
      for (std::int64_t j = 0; j < m; ++j) {
        EXPECT_EQ(r1.g[static_cast<std::size_t>(j)], rb.g[static_cast<std::size_t>(k * m + j)]);
      }
    }
  }
}

TEST(SinkhornCpu, TranslationAndCostShiftInvariance) {
  const std::int64_t n = 20, m = 15, d = 3;
  const auto x = otgpu_test::uniform_values(n * d, 71);
  const auto y = otgpu_test::uniform_values(m * d, 72);
  std::vector<double> xs = x, ys = y;
  const double shift[3] = {0.75, -2.0, 0.5};
  for (std::size_t k = 0; k < xs.size(); ++k) xs[k] += shift[k % 3];
  for (std::size_t k = 0; k < ys.size(); ++k) ys[k] += shift[k % 3];
  const auto o = cpu_options(0.05, 1e-12);
  const auto r = otgpu::sinkhorn(cloud_problem(x, y, d), o);
  const auto rs = otgpu::sinkhorn(cloud_problem(xs, ys, d), o);
  EXPECT_NEAR(r.problems[0].ot_eps, rs.problems[0].ot_eps, 1e-12);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < m; ++j) {
      EXPECT_NEAR(r.f[static_cast<std::size_t>(i)] + r.g[static_cast<std::size_t>(j)],
                  rs.f[static_cast<std::size_t>(i)] + rs.g[static_cast<std::size_t>(j)], 1e-10);
    }
  }
  // C + k: OT_eps grows by k times the mass, f + g by k, the plan is unchanged.
  DenseProblem dp = random_dense(n, m, 73);
  DenseProblem shifted = dp;
  for (double& c : shifted.cost) c += 3.0;
  const auto r0 = otgpu::sinkhorn(matrix_problem(dp), o);
  const auto r3 = otgpu::sinkhorn(matrix_problem(shifted), o);
  EXPECT_NEAR(r3.problems[0].ot_eps, r0.problems[0].ot_eps + 3.0, 1e-11);
  EXPECT_NEAR(r3.f[0] + r3.g[0], r0.f[0] + r0.g[0] + 3.0, 1e-10);
}

TEST(SinkhornCpu, Float32InputMatchesFloat64) {
  const std::int64_t n = 30, m = 25, d = 4;
  const auto x = otgpu_test::uniform_values(n * d, 81);
  const auto y = otgpu_test::uniform_values(m * d, 82);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
  const auto o = cpu_options(0.1, 1e-12);
  SinkhornProblem p32;
  p32.x = TensorView::host(xf.data(), {n, d});
  p32.y = TensorView::host(y.data(), {m, d});  // mixed dtypes are allowed
  const auto r64 = otgpu::sinkhorn(cloud_problem(x, y, d), o);
  const auto r32 = otgpu::sinkhorn(p32, o);
  EXPECT_NEAR(r32.problems[0].ot_eps, r64.problems[0].ot_eps,
              1e-6 * std::fabs(r64.problems[0].ot_eps));
  p32.y = TensorView::host(yf.data(), {m, d});
  const auto rf = otgpu::sinkhorn(p32, o);
  EXPECT_NEAR(rf.problems[0].ot_eps, r64.problems[0].ot_eps,
              1e-6 * std::fabs(r64.problems[0].ot_eps));
  EXPECT_NEAR(rf.problems[0].transport_cost, r64.problems[0].transport_cost,
              1e-6 * r64.problems[0].transport_cost);
}

TEST(SinkhornCpu, StridedViewsEqualContiguous) {
  const std::int64_t B = 2, n = 9, m = 7, d = 3;
  const auto x = otgpu_test::uniform_values(B * n * d, 91);
  const auto y = otgpu_test::uniform_values(B * m * d, 92);
  const auto a = otgpu_test::random_weights(B * n, 93, 2.0);  // each row mass ~1
  std::vector<double> a_rows(a);
  for (std::int64_t k = 0; k < B; ++k) {
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += a_rows[static_cast<std::size_t>(k * n + i)];
    for (std::int64_t i = 0; i < n; ++i) a_rows[static_cast<std::size_t>(k * n + i)] /= s;
  }
  SinkhornProblem contiguous;
  contiguous.x = TensorView::host(x.data(), {B, n, d});
  contiguous.y = TensorView::host(y.data(), {B, m, d});
  contiguous.a = TensorView::host(a_rows.data(), {B, n});

  // x stored as [d][n][B] (fully transposed), y padded to 5 per point, a every 2nd.
  std::vector<double> xt(static_cast<std::size_t>(B * n * d)),
      yp(static_cast<std::size_t>(B * m * 5), NAN);
  std::vector<double> ap(static_cast<std::size_t>(2 * B * n), NAN);
  for (std::int64_t k = 0; k < B; ++k) {
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t c = 0; c < d; ++c) {
        xt[static_cast<std::size_t>(c * n * B + i * B + k)] =
            x[static_cast<std::size_t>((k * n + i) * d + c)];
      }
      ap[static_cast<std::size_t>(2 * (k * n + i))] = a_rows[static_cast<std::size_t>(k * n + i)];
    }
    for (std::int64_t j = 0; j < m; ++j) {
      for (std::int64_t c = 0; c < d; ++c) {
        yp[static_cast<std::size_t>((k * m + j) * 5 + c)] =
            y[static_cast<std::size_t>((k * m + j) * d + c)];
      }
    }
  }
  SinkhornProblem strided = contiguous;
  strided.x.data = xt.data();
  strided.x.strides = {1, B, n * B};
  strided.y.data = yp.data();
  strided.y.strides = {m * 5, 5, 1};
  strided.a.data = ap.data();
  strided.a.strides = {2 * n, 2, 0};
  EXPECT_FALSE(strided.x.is_contiguous());
  const auto o = cpu_options(0.05, 1e-10);
  expect_same_result(otgpu::sinkhorn(contiguous, o), otgpu::sinkhorn(strided, o));
}

TEST(SinkhornCpu, ThreadCountDoesNotChangeResultsBitwise) {
  // B = 1 and n m above the parallel threshold: rows are split over threads;
  // B = 5 small problems: problems are split over threads.
  for (std::int64_t B : {1, 5}) {
    const std::int64_t n = B == 1 ? 300 : 37, m = B == 1 ? 251 : 29, d = 2;
    const auto x = otgpu_test::uniform_values(B * n * d, 101);
    const auto y = otgpu_test::uniform_values(B * m * d, 102);
    SinkhornProblem p;
    p.x = TensorView::host(x.data(), {B, n, d});
    p.y = TensorView::host(y.data(), {B, m, d});
    auto o = cpu_options(0.02, 1e-9);
    o.check_every = 4;
    o.max_iter = 60;
    o.cpu_threads = 1;
    const auto r1 = otgpu::sinkhorn(p, o);
    o.cpu_threads = 2;
    const auto r2 = otgpu::sinkhorn(p, o);
    o.cpu_threads = 3;  // more threads than rows divide evenly
    const auto r3 = otgpu::sinkhorn(p, o);
    expect_same_result(r1, r2);
    expect_same_result(r1, r3);
  }
}

TEST(SinkhornCpu, OnTheFlyCostEqualsHeldCost) {
  for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean}) {
    const std::int64_t n = 23, m = 17, d = 3;
    const auto x = otgpu_test::uniform_values(n * d, 111);
    const auto y = otgpu_test::uniform_values(m * d, 112);
    const auto problem = cloud_problem(x, y, d, kind);
    auto o = cpu_options(0.05, 1e-10);
    o.eps_relative = true;
    const auto shape = otgpu::detail::validate_sinkhorn(problem, o);
    const auto held =
        otgpu::cpu::sinkhorn_with_dense_limit(problem, o, shape, std::int64_t{1} << 30);
    const auto fly = otgpu::cpu::sinkhorn_with_dense_limit(problem, o, shape, 0);
    expect_same_result(held, fly);
  }
  DenseProblem dp = random_dense(13, 8, 113);
  const auto problem = matrix_problem(dp);
  const auto o = cpu_options(0.05, 1e-10);
  const auto shape = otgpu::detail::validate_sinkhorn(problem, o);
  expect_same_result(otgpu::cpu::sinkhorn_with_dense_limit(problem, o, shape, 1 << 30),
                     otgpu::cpu::sinkhorn_with_dense_limit(problem, o, shape, 0));
}

TEST(SinkhornCpu, ZeroWeightsActLikeRemovedPoints) {
  DenseProblem full = random_dense(6, 5, 121);
  full.a[2] = 0.0;
  full.b[4] = 0.0;
  double sa = 0, sb = 0;
  for (double w : full.a) sa += w;
  for (double w : full.b) sb += w;
  for (double& w : full.a) w /= sa;
  for (double& w : full.b) w /= sb;
  DenseProblem reduced;
  reduced.n = 5;
  reduced.m = 4;
  for (std::int64_t i = 0; i < 6; ++i) {
    if (i == 2) continue;
    reduced.a.push_back(full.a[static_cast<std::size_t>(i)]);
    for (std::int64_t j = 0; j < 4; ++j) reduced.cost.push_back(full.c(i, j));
  }
  reduced.b.assign(full.b.begin(), full.b.begin() + 4);
  const auto o = cpu_options(0.1, 1e-12);
  const auto rf = otgpu::sinkhorn(matrix_problem(full), o);
  const auto rr = otgpu::sinkhorn(matrix_problem(reduced), o);
  ASSERT_TRUE(rf.problems[0].converged);
  EXPECT_NEAR(rf.problems[0].ot_eps, rr.problems[0].ot_eps, 1e-12);
  EXPECT_NEAR(rf.problems[0].transport_cost, rr.problems[0].transport_cost, 1e-12);
  const double k = rf.f[0] - rr.f[0];
  EXPECT_NEAR(rf.f[5], rr.f[4] + k, 1e-10);
  EXPECT_NEAR(rf.g[3], rr.g[3] - k, 1e-10);
}

// ------------------------------------------------------------------ unbalanced

TEST(SinkhornCpu, LargeRhoMatchesBalanced) {
  const DenseProblem dp = random_dense(15, 12, 131);
  const auto balanced = otgpu::sinkhorn(matrix_problem(dp), cpu_options(0.05, 1e-11));
  // The constant mode f + k, g - k is only weakly pinned when rho is huge (it
  // contracts by ~eps/rho per iteration), so the fixed-point tolerance is looser.
  auto o = cpu_options(0.05, 1e-7);
  o.rho_a = o.rho_b = 1e8;
  const auto unbalanced = otgpu::sinkhorn(matrix_problem(dp), o);
  ASSERT_TRUE(unbalanced.problems[0].converged);
  EXPECT_NEAR(unbalanced.problems[0].ot_eps, balanced.problems[0].ot_eps, 1e-6);
  EXPECT_NEAR(unbalanced.problems[0].transport_cost, balanced.problems[0].transport_cost, 1e-6);
}

TEST(SinkhornCpu, SmallRhoShrinksTransportedMassAndConverges) {
  // Far-apart clouds: moving mass costs ~25, so a cheap KL penalty drops most of it.
  const std::int64_t n = 10, m = 12;
  auto x = otgpu_test::uniform_values(n * 2, 141);
  auto y = otgpu_test::uniform_values(m * 2, 142);
  for (double& v : y) v += 3.5;
  DenseProblem dp;
  dp.n = n;
  dp.m = m;
  dp.a.assign(n, 1.0 / n);
  dp.b.assign(m, 1.0 / m);
  dp.cost = otgpu_test::point_costs(x, y, 2, true);
  double previous_mass = 2.0;
  for (double rho : {1e3, 10.0, 1.0, 0.1}) {
    auto o = cpu_options(0.5, 1e-10);
    o.rho_a = o.rho_b = rho;
    const auto r = otgpu::sinkhorn(cloud_problem(x, y, 2), o);
    const auto& rep = r.problems[0];
    EXPECT_TRUE(rep.converged) << rho;
    EXPECT_LE(rep.residual, 1e-10);
    const auto plan = otgpu_test::form_plan(dp, r);
    double mass = 0;
    for (double v : plan) mass += v;
    EXPECT_LT(mass, previous_mass) << rho;
    previous_mass = mass;
    // Fixed point of the unbalanced updates: the dual objective equals the primal
    // <P,C> + eps KL(P|a(x)b) + rho KL(P1|a) + rho KL(P^T1|b).
    const auto rows = otgpu_test::row_sums(dp, plan);
    const auto cols = otgpu_test::col_sums(dp, plan);
    double marg = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double ri = rows[static_cast<std::size_t>(i)], ai = dp.a[static_cast<std::size_t>(i)];
      marg += rho * (ri * std::log(ri / ai) - ri + ai);
    }
    for (std::int64_t j = 0; j < m; ++j) {
      const double cj = cols[static_cast<std::size_t>(j)], bj = dp.b[static_cast<std::size_t>(j)];
      marg += rho * (cj * std::log(cj / bj) - cj + bj);
    }
    EXPECT_NEAR(rep.ot_eps, otgpu_test::primal_value(dp, plan, 0.5) + marg, 1e-8) << rho;
  }
  EXPECT_LT(previous_mass, 0.05);
}

// --------------------------------------------------------- options and control

TEST(SinkhornCpu, EpsRelativeUsesMeanCost) {
  const std::int64_t n = 16, m = 21, d = 3;
  const auto x = otgpu_test::uniform_values(n * d, 151);
  const auto y = otgpu_test::uniform_values(m * d, 152, 0.3, 2.0);
  for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean}) {
    const auto c = otgpu_test::point_costs(x, y, d, kind == CostKind::sqeuclidean);
    const double mean = std::accumulate(c.begin(), c.end(), 0.0) / static_cast<double>(c.size());
    auto o = cpu_options(0.05, 1e-9);
    o.eps_relative = true;
    const auto r = otgpu::sinkhorn(cloud_problem(x, y, d, kind), o);
    EXPECT_NEAR(r.problems[0].eps, 0.05 * mean, 1e-14 * mean);
    // Same problem with the absolute eps: identical up to round-off of eps.
    auto oa = cpu_options(r.problems[0].eps, 1e-9);
    const auto ra = otgpu::sinkhorn(cloud_problem(x, y, d, kind), oa);
    EXPECT_NEAR(r.problems[0].ot_eps, ra.problems[0].ot_eps, 1e-12);
  }
  DenseProblem dp = random_dense(5, 6, 153);
  auto o = cpu_options(0.1, 1e-9);
  o.eps_relative = true;
  const double mean =
      std::accumulate(dp.cost.begin(), dp.cost.end(), 0.0) / static_cast<double>(dp.cost.size());
  EXPECT_NEAR(otgpu::sinkhorn(matrix_problem(dp), o).problems[0].eps, 0.1 * mean, 1e-15);
}

TEST(SinkhornCpu, EpsRelativeRejectsZeroMeanCost) {
  const std::vector<double> x{1.0, 2.0, 1.0, 2.0};  // two identical points: C = 0
  auto o = cpu_options(0.1);
  o.eps_relative = true;
  try {
    otgpu::sinkhorn(cloud_problem(x, x, 2), o);
    FAIL() << "expected InvalidArgument";
  } catch (const otgpu::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("eps_relative: mean cost is 0"), std::string::npos)
        << e.what();
  }
}

TEST(SinkhornCpu, WarmStartFromConvergedSolution) {
  const DenseProblem dp = random_dense(20, 20, 161);
  auto o = cpu_options(0.02, 1e-9);
  o.check_every = 5;
  const auto cold = otgpu::sinkhorn(matrix_problem(dp), o);
  ASSERT_TRUE(cold.problems[0].converged);
  EXPECT_GT(cold.problems[0].iterations, 5);
  o.f_init = cold.f;
  o.g_init = cold.g;
  const auto warm = otgpu::sinkhorn(matrix_problem(dp), o);
  EXPECT_TRUE(warm.problems[0].converged);
  EXPECT_LE(warm.problems[0].iterations, 5);
  EXPECT_NEAR(warm.problems[0].ot_eps, cold.problems[0].ot_eps, 1e-10);
}

TEST(SinkhornCpu, IterationCapAndCheckEvery) {
  const DenseProblem dp = random_dense(10, 10, 171);
  auto o = cpu_options(0.001, 1e-14);
  o.max_iter = 7;
  o.check_every = 3;
  const auto r = otgpu::sinkhorn(matrix_problem(dp), o);
  EXPECT_FALSE(r.problems[0].converged);
  EXPECT_EQ(r.problems[0].iterations, 7);
  EXPECT_GT(r.problems[0].residual, 1e-14);
  // Checks only every 4th iteration: convergence is seen at a multiple of 4.
  auto oc = cpu_options(0.1, 1e-8);
  oc.check_every = 4;
  const auto rc = otgpu::sinkhorn(matrix_problem(dp), oc);
  EXPECT_TRUE(rc.problems[0].converged);
  EXPECT_EQ(rc.problems[0].iterations % 4, 0);
  // check_every = 0: exactly max_iter iterations, convergence judged at the end.
  oc.check_every = 0;
  oc.max_iter = 500;
  const auto r0 = otgpu::sinkhorn(matrix_problem(dp), oc);
  EXPECT_EQ(r0.problems[0].iterations, 500);
  EXPECT_TRUE(r0.problems[0].converged);
  // Checking does not perturb plain iterates: 8 iterations with and without checks.
  // (Over-relaxation decides at checks by design, so this is about plain updates.)
  oc.acceleration = otgpu::SinkhornAcceleration::none;
  oc.max_iter = 8;
  oc.tol = 0;
  const auto no_checks = otgpu::sinkhorn(matrix_problem(dp), oc);
  oc.check_every = 2;
  const auto checks = otgpu::sinkhorn(matrix_problem(dp), oc);
  expect_same_result(no_checks, checks);
}

TEST(SinkhornCpu, EpsScalingReachesTargetEps) {
  const DenseProblem dp = random_dense(12, 12, 181);
  auto o = cpu_options(0.01, 1e-10);
  o.eps_init = 10.0;
  o.eps_decay = 0.5;
  const auto r = otgpu::sinkhorn(matrix_problem(dp), o);
  const auto direct = otgpu::sinkhorn(matrix_problem(dp), cpu_options(0.01, 1e-10));
  ASSERT_TRUE(r.problems[0].converged);
  EXPECT_GE(r.problems[0].iterations, 11);  // 10 * 0.5^t > 0.01 up to t = 9
  EXPECT_EQ(r.problems[0].eps, 0.01);
  EXPECT_NEAR(r.problems[0].ot_eps, direct.problems[0].ot_eps, 1e-9);
}

TEST(SinkhornCpu, UnresolvableEpsIsRejectedWithTheWorkingRange) {
  // A subnormal eps (1/eps infinite) is far below what fp64 resolves against costs
  // of order 1: one clear error naming the range, instead of a silent non-answer.
  const DenseProblem dp = random_dense(4, 5, 191);
  auto o = cpu_options(1e-310);
  try {
    (void)otgpu::sinkhorn(matrix_problem(dp), o);
    ADD_FAILURE() << "eps = 1e-310 was accepted";
  } catch (const otgpu::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("working range"), std::string::npos) << e.what();
  }
}

// --------------------------------------------------------------- divergence

TEST(SinkhornCpu, SinkhornDivergenceIsZeroOnSelfAndPositive) {
  const std::int64_t n = 24, d = 2;
  const auto x = otgpu_test::uniform_values(n * d, 201);
  auto o = cpu_options(0.05, 1e-10);
  const auto self = otgpu::sinkhorn_divergence(cloud_problem(x, x, d), o);
  ASSERT_EQ(self.size(), 1u);
  EXPECT_NEAR(self[0], 0.0, 1e-10);
  double previous = 0;
  for (double offset : {0.1, 0.5, 1.0}) {
    auto y = otgpu_test::uniform_values(n * d, 202);
    for (double& v : y) v += offset;
    const auto s = otgpu::sinkhorn_divergence(cloud_problem(x, y, d), o);
    EXPECT_GT(s[0], previous) << offset;
    previous = s[0];
  }
  o.eps_relative = true;
  const auto y = otgpu_test::uniform_values(n * d, 203, 0.2, 1.4);
  EXPECT_GT(otgpu::sinkhorn_divergence(cloud_problem(x, y, d), o)[0], 0.0);
}

TEST(SinkhornCpu, AutoBackendRunsOnCpuWithoutDevice) {
  if (otgpu::cuda_available()) GTEST_SKIP() << "a CUDA device is present";
  const std::vector<double> x{0.0, 1.0}, y{2.0, 3.0};
  auto o = cpu_options(1.0);
  o.backend = otgpu::Backend::automatic;
  const auto r = otgpu::sinkhorn(cloud_problem(x, y, 1), o);
  EXPECT_EQ(r.backend, otgpu::Backend::cpu);
  EXPECT_TRUE(r.problems[0].converged);
  EXPECT_GE(r.time_ms, 0.0);
}

}  // namespace
