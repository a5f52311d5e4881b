// Derived outputs of the CPU backend (barycentric map, gradient, sampled partners)
// against a brute-force plan formed in the test and against finite differences.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "otgpu/otgpu.h"
#include "sinkhorn_cpu_util.h"

namespace {

using otgpu::CostKind;
using otgpu::SinkhornProblem;
using otgpu::TensorView;
using otgpu_test::cpu_options;
using otgpu_test::DenseProblem;

/// A batched point-cloud problem with its data kept alive.
struct Clouds {
  std::int64_t B, n, m, d;
  std::vector<double> x, y, a, b;
  CostKind kind = CostKind::sqeuclidean;

  Clouds(std::int64_t batch, std::int64_t rows, std::int64_t cols, std::int64_t dim,
         std::uint32_t seed)
      : B(batch), n(rows), m(cols), d(dim) {
    x = otgpu_test::uniform_values(static_cast<std::size_t>(B * n * d), seed);
    y = otgpu_test::uniform_values(static_cast<std::size_t>(B * m * d), seed + 1, -0.3, 1.2);
    for (std::int64_t k = 0; k < B; ++k) {
      const auto ak = otgpu_test::random_weights(static_cast<std::size_t>(n),
                                                 seed + 2 + 2 * static_cast<std::uint32_t>(k));
      const auto bk = otgpu_test::random_weights(static_cast<std::size_t>(m),
                                                 seed + 3 + 2 * static_cast<std::uint32_t>(k));
      a.insert(a.end(), ak.begin(), ak.end());
      b.insert(b.end(), bk.begin(), bk.end());
    }
  }
  SinkhornProblem problem() const {
    SinkhornProblem p;
    p.cost_kind = kind;
    p.x = TensorView::host(x.data(), {B, n, d});
    p.y = TensorView::host(y.data(), {B, m, d});
    p.a = TensorView::host(a.data(), {B, n});
    p.b = TensorView::host(b.data(), {B, m});
    return p;
  }
  DenseProblem dense(std::int64_t k) const {
    DenseProblem dp;
    dp.n = n;
    dp.m = m;
    dp.a.assign(a.begin() + k * n, a.begin() + (k + 1) * n);
    dp.b.assign(b.begin() + k * m, b.begin() + (k + 1) * m);
    const std::vector<double> xk(x.begin() + k * n * d, x.begin() + (k + 1) * n * d);
    const std::vector<double> yk(y.begin() + k * m * d, y.begin() + (k + 1) * m * d);
    dp.cost = otgpu_test::point_costs(xk, yk, d, kind == CostKind::sqeuclidean);
    return dp;
  }
  double xv(std::int64_t k, std::int64_t i, std::int64_t c) const {
    return x[static_cast<std::size_t>((k * n + i) * d + c)];
  }
  double yv(std::int64_t k, std::int64_t j, std::int64_t c) const {
    return y[static_cast<std::size_t>((k * m + j) * d + c)];
  }
};

TEST(DerivedCpu, BarycentricMapMatchesBruteForcePlan) {
  Clouds c(2, 20, 30, 3, 301);
  // A few iterations only: the map must follow P of the returned potentials even
  // when the row marginals are not yet matched.
  auto o = cpu_options(0.05, 0.0);
  o.max_iter = 4;
  const auto r = otgpu::sinkhorn(c.problem(), o);
  const auto t = otgpu::barycentric_map(c.problem(), r);
  ASSERT_EQ(t.size(), static_cast<std::size_t>(2 * 20 * 3));
  for (std::int64_t k = 0; k < c.B; ++k) {
    const auto dp = c.dense(k);
    const auto plan = otgpu_test::form_plan(dp, r, k);
    const auto rows = otgpu_test::row_sums(dp, plan);
    for (std::int64_t i = 0; i < c.n; ++i) {
      for (std::int64_t q = 0; q < c.d; ++q) {
        double s = 0;
        for (std::int64_t j = 0; j < c.m; ++j)
          s += plan[static_cast<std::size_t>(i * c.m + j)] * c.yv(k, j, q);
        EXPECT_NEAR(t[static_cast<std::size_t>((k * c.n + i) * c.d + q)],
                    s / rows[static_cast<std::size_t>(i)], 1e-12);
      }
    }
  }
}

TEST(DerivedCpu, GradientMatchesBruteForcePlan) {
  for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean}) {
    Clouds c(2, 15, 12, 2, 311);
    c.kind = kind;
    auto o = cpu_options(0.1, 0.0);
    o.max_iter = 6;
    const auto r = otgpu::sinkhorn(c.problem(), o);
    const auto grad = otgpu::gradient_x(c.problem(), r);
    for (std::int64_t k = 0; k < c.B; ++k) {
      const auto dp = c.dense(k);
      const auto plan = otgpu_test::form_plan(dp, r, k);
      for (std::int64_t i = 0; i < c.n; ++i) {
        for (std::int64_t q = 0; q < c.d; ++q) {
          double s = 0;
          for (std::int64_t j = 0; j < c.m; ++j) {
            const double pij = plan[static_cast<std::size_t>(i * c.m + j)];
            const double diff = c.xv(k, i, q) - c.yv(k, j, q);
            s += kind == CostKind::sqeuclidean ? 2 * pij * diff : pij * diff / dp.c(i, j);
          }
          EXPECT_NEAR(grad[static_cast<std::size_t>((k * c.n + i) * c.d + q)], s, 1e-12)
              << otgpu::to_string(kind);
        }
      }
    }
  }
}

TEST(DerivedCpu, GradientMatchesFiniteDifferencesOfOtEps) {
  for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean}) {
    Clouds c(1, 5, 6, 2, 321);
    c.kind = kind;
    const auto o = cpu_options(0.1, 1e-14);
    const auto r = otgpu::sinkhorn(c.problem(), o);
    ASSERT_TRUE(r.problems[0].converged);
    const auto grad = otgpu::gradient_x(c.problem(), r);
    const double h = 1e-5;
    for (std::int64_t i = 0; i < c.n; ++i) {
      for (std::int64_t q = 0; q < c.d; ++q) {
        Clouds plus = c, minus = c;
        plus.x[static_cast<std::size_t>(i * c.d + q)] += h;
        minus.x[static_cast<std::size_t>(i * c.d + q)] -= h;
        const double fd = (otgpu::sinkhorn(plus.problem(), o).problems[0].ot_eps -
                           otgpu::sinkhorn(minus.problem(), o).problems[0].ot_eps) /
                          (2 * h);
        EXPECT_NEAR(grad[static_cast<std::size_t>(i * c.d + q)], fd, 1e-7)
            << otgpu::to_string(kind) << " i=" << i << " k=" << q;
      }
    }
  }
}

TEST(DerivedCpu, SamplePartnersDeterministicPerSeed) {
  // n m above the parallel threshold, so rows really are split over threads.
  Clouds c(2, 400, 200, 2, 331);
  const auto r = otgpu::sinkhorn(c.problem(), cpu_options(0.05, 1e-6));
  const auto s1 = otgpu::sample_partners(c.problem(), r, 1234);
  const auto s1_again = otgpu::sample_partners(c.problem(), r, 1234);
  const auto s2 = otgpu::sample_partners(c.problem(), r, 1235);
  ASSERT_EQ(s1.size(), static_cast<std::size_t>(800));
  EXPECT_EQ(s1, s1_again);
  EXPECT_NE(s1, s2);
  for (auto j : s1) {
    EXPECT_GE(j, 0);
    EXPECT_LT(j, 200);
  }
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one_thread = otgpu::sample_partners(c.problem(), r, 1234);
  const auto map_one = otgpu::barycentric_map(c.problem(), r);
  const auto grad_one = otgpu::gradient_x(c.problem(), r);
  omp_set_num_threads(3);
  const auto three_threads = otgpu::sample_partners(c.problem(), r, 1234);
  const auto map_three = otgpu::barycentric_map(c.problem(), r);
  const auto grad_three = otgpu::gradient_x(c.problem(), r);
  omp_set_num_threads(saved);
  EXPECT_EQ(s1, one_thread);
  EXPECT_EQ(s1, three_threads);
  EXPECT_EQ(map_one, map_three);
  EXPECT_EQ(grad_one, grad_three);
}

TEST(DerivedCpu, SamplePartnersFollowPlanRows) {
  // Many rows at the same point share the row distribution P_i. / r_i, so the
  // partner counts are a multinomial sample of it: chi-square with m - 1 = 4 dof.
  const std::int64_t n = 2000, m = 5;
  std::vector<double> x(static_cast<std::size_t>(n), 0.3);
  const std::vector<double> y{0.0, 0.2, 0.5, 0.9, 1.4};
  const std::vector<double> b{0.3, 0.1, 0.25, 0.15, 0.2};
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {n, 1});
  p.y = TensorView::host(y.data(), {m, 1});
  p.b = TensorView::host(b.data(), {m});
  const double eps = 0.2;
  const auto r = otgpu::sinkhorn(p, cpu_options(eps, 1e-10));
  // Expected row distribution from the potentials, computed here.
  std::vector<double> prob(static_cast<std::size_t>(m));
  double z = 0;
  for (std::int64_t j = 0; j < m; ++j) {
    const double cj =
        (0.3 - y[static_cast<std::size_t>(j)]) * (0.3 - y[static_cast<std::size_t>(j)]);
    prob[static_cast<std::size_t>(j)] =
        b[static_cast<std::size_t>(j)] * std::exp((r.g[static_cast<std::size_t>(j)] - cj) / eps);
    z += prob[static_cast<std::size_t>(j)];
  }
  for (double& q : prob) q /= z;
  // At the balanced optimum every row is the same, so the columns receive b.
  for (std::int64_t j = 0; j < m; ++j)
    EXPECT_NEAR(prob[static_cast<std::size_t>(j)], b[static_cast<std::size_t>(j)], 1e-8);
  for (std::uint64_t seed : {7u, 8u, 9u}) {
    const auto s = otgpu::sample_partners(p, r, seed);
    std::vector<double> counts(static_cast<std::size_t>(m), 0.0);
    for (auto j : s) counts[static_cast<std::size_t>(j)] += 1;
    double chi2 = 0;
    for (std::int64_t j = 0; j < m; ++j) {
      const double e = static_cast<double>(n) * prob[static_cast<std::size_t>(j)];
      chi2 +=
          (counts[static_cast<std::size_t>(j)] - e) * (counts[static_cast<std::size_t>(j)] - e) / e;
    }
    EXPECT_LT(chi2, 18.47) << "seed " << seed;  // 99.9% quantile of chi2(4)
  }
}

TEST(DerivedCpu, SamplePartnersSkipZeroWeightsAndWorkOnMatrices) {
  DenseProblem dp;
  dp.n = 30;
  dp.m = 6;
  dp.a.assign(30, 1.0 / 30);
  dp.b = {0.25, 0.0, 0.25, 0.25, 0.0, 0.25};
  dp.cost = otgpu_test::uniform_values(30 * 6, 341);
  dp.cost[1] = -5.0;  // very attractive, but column 1 has no mass
  SinkhornProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(dp.cost.data(), {30, 6});
  p.a = TensorView::host(dp.a.data(), {30});
  p.b = TensorView::host(dp.b.data(), {6});
  const auto r = otgpu::sinkhorn(p, cpu_options(0.05, 1e-10));
  for (std::uint64_t seed = 0; seed < 5; ++seed) {
    for (auto j : otgpu::sample_partners(p, r, seed)) {
      EXPECT_NE(j, 1);
      EXPECT_NE(j, 4);
    }
  }
}

}  // namespace
