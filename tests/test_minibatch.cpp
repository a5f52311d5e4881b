// CPU tests of the minibatch OT estimator (otgpu/minibatch.h): the estimate equals the
// mean of independent solves of the same minibatches, its gradient matches central
// finite differences (exact, Sinkhorn, debiased), the draws are keyed by the seed, and
// bad input is one typed error naming the argument.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "check_util.h"
#include "otgpu/assignment.h"
#include "otgpu/error.h"
#include "otgpu/minibatch.h"
#include "otgpu/sinkhorn.h"
#include "seeded_data.h"

namespace {

using otgpu::MinibatchMethod;
using otgpu::MinibatchOptions;
using otgpu::TensorView;
using otgpu_test::expect_error;
using otgpu_test::normal;

constexpr int kN = 12, kM = 10, kD = 2;

MinibatchOptions options(MinibatchMethod method, bool debiased = false) {
  MinibatchOptions o;
  o.k = 3;
  o.bs = 5;
  o.method = method;
  o.debiased = debiased;
  o.eps = 0.3;
  o.seed = 17;
  o.backend = otgpu::Backend::cpu;
  o.sinkhorn.tol = 1e-13;
  return o;
}

TEST(Minibatch, RowsAreKeyedUniqueAndSorted) {
  const auto a = otgpu::minibatch_rows(50, 8, 4, 9, 0);
  const auto b = otgpu::minibatch_rows(50, 8, 4, 9, 0);
  const auto c = otgpu::minibatch_rows(50, 8, 4, 9, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (int k = 0; k < 4; ++k) {
    std::set<std::int64_t> s(a.begin() + k * 8, a.begin() + (k + 1) * 8);
    EXPECT_EQ(s.size(), 8u);
    EXPECT_TRUE(std::is_sorted(a.begin() + k * 8, a.begin() + (k + 1) * 8));
    EXPECT_LT(*s.rbegin(), 50);
  }
  // Every point is drawn about equally often (uniform subsets).
  const auto many = otgpu::minibatch_rows(10, 3, 3000, 1, 0);
  std::vector<int> hits(10, 0);
  for (auto p : many) ++hits[static_cast<std::size_t>(p)];
  for (int h : hits) EXPECT_NEAR(h, 900, 120);
}

TEST(Minibatch, MeanOfIndependentSolves) {
  const auto x = normal(kN * kD, 1), y = normal(kM * kD, 2, 1.0);
  const auto xv = TensorView::host(x.data(), {kN, kD});
  const auto yv = TensorView::host(y.data(), {kM, kD});
  for (auto method : {MinibatchMethod::sinkhorn, MinibatchMethod::exact}) {
    for (bool debiased : {false, true}) {
      if (method == MinibatchMethod::exact && debiased) continue;
      const auto o = options(method, debiased);
      const auto r = otgpu::minibatch_ot(xv, yv, o);
      ASSERT_EQ(r.values.size(), 3u);
      double mean = 0;
      std::vector<double> vals;
      for (int k = 0; k < 3; ++k) {
        std::vector<double> xb, yb;
        for (int t = 0; t < 5; ++t) {
          for (int c = 0; c < kD; ++c) {
            xb.push_back(x[static_cast<std::size_t>(r.rows_x[k * 5 + t] * kD + c)]);
            yb.push_back(y[static_cast<std::size_t>(r.rows_y[k * 5 + t] * kD + c)]);
          }
        }
        double v = 0;
        if (method == MinibatchMethod::exact) {
          otgpu::AssignmentProblem ap;
          ap.x = TensorView::host(xb.data(), {5, kD});
          ap.y = TensorView::host(yb.data(), {5, kD});
          otgpu::AssignmentOptions ao;
          ao.backend = otgpu::Backend::cpu;
          v = otgpu::assignment(ap, ao).problems[0].cost / 5;
        } else {
          otgpu::SinkhornProblem sp;
          sp.x = TensorView::host(xb.data(), {5, kD});
          sp.y = TensorView::host(yb.data(), {5, kD});
          otgpu::SinkhornOptions so;
          so.eps = o.eps;
          so.eps_relative = true;
          so.tol = 1e-13;
          so.backend = otgpu::Backend::cpu;
          v = debiased ? otgpu::sinkhorn_divergence(sp, so)[0]
                       : otgpu::sinkhorn(sp, so).problems[0].ot_eps;
        }
        EXPECT_NEAR(r.values[static_cast<std::size_t>(k)], v, 1e-9 * (1 + std::abs(v)));
        mean += v / 3;
        vals.push_back(v);
      }
      EXPECT_NEAR(r.mean, mean, 1e-9 * (1 + std::abs(mean)));
      double var = 0;
      for (double v : vals) var += (v - mean) * (v - mean);
      EXPECT_NEAR(r.std_error, std::sqrt(var / 2 / 3), 1e-9);
      EXPECT_TRUE(r.converged);
    }
  }
}

void check_gradient(MinibatchMethod method, bool debiased) {
  auto x = normal(kN * kD, 3), y = normal(kM * kD, 4, 0.5);
  // An absolute eps: the gradient holds eps fixed, and a relative eps would move with
  // the points.
  MinibatchOptions o = options(method, debiased);
  o.eps_relative = false;
  o.eps = 0.5;
  const auto r = otgpu::minibatch_ot(TensorView::host(x.data(), {kN, kD}),
                                     TensorView::host(y.data(), {kM, kD}), o);
  MinibatchOptions value_only = o;
  value_only.gradient = false;
  auto value = [&] {
    return otgpu::minibatch_ot(TensorView::host(x.data(), {kN, kD}),
                               TensorView::host(y.data(), {kM, kD}), value_only)
        .mean;
  };
  const double h = 1e-5;
  int drawn = 0;
  for (auto* pts : {&x, &y}) {
    const auto& grad = pts == &x ? r.grad_x : r.grad_y;
    for (std::size_t e = 0; e < pts->size(); ++e) {
      const double keep = (*pts)[e];
      (*pts)[e] = keep + h;
      const double up = value();
      (*pts)[e] = keep - h;
      const double down = value();
      (*pts)[e] = keep;
      const double fd = (up - down) / (2 * h);
      EXPECT_NEAR(grad[e], fd, 2e-6 + 1e-5 * std::abs(fd))
          << (pts == &x ? "x" : "y") << " element " << e;
      if (grad[e] != 0) ++drawn;
    }
  }
  EXPECT_GT(drawn, 10);
}

TEST(Minibatch, GradientSinkhornMatchesFiniteDifferences) {
  check_gradient(MinibatchMethod::sinkhorn, false);
}
TEST(Minibatch, GradientDebiasedMatchesFiniteDifferences) {
  check_gradient(MinibatchMethod::sinkhorn, true);
}
TEST(Minibatch, GradientExactMatchesFiniteDifferences) {
  check_gradient(MinibatchMethod::exact, false);
}

TEST(Minibatch, SeedDeterminesTheEstimate) {
  const auto x = normal(40 * 3, 5), y = normal(30 * 3, 6);
  MinibatchOptions o = options(MinibatchMethod::sinkhorn);
  o.bs = 8;
  o.k = 4;
  const auto xv = TensorView::host(x.data(), {40, 3});
  const auto yv = TensorView::host(y.data(), {30, 3});
  const auto a = otgpu::minibatch_ot(xv, yv, o);
  const auto b = otgpu::minibatch_ot(xv, yv, o);
  EXPECT_EQ(a.values, b.values);
  EXPECT_EQ(a.grad_x, b.grad_x);
  o.seed = 18;
  const auto c = otgpu::minibatch_ot(xv, yv, o);
  EXPECT_NE(a.rows_x, c.rows_x);
}

TEST(Minibatch, BadInputIsATypedError) {
  const auto x = normal(kN * kD, 7), y = normal(kM * kD, 8);
  const auto xv = TensorView::host(x.data(), {kN, kD});
  const auto yv = TensorView::host(y.data(), {kM, kD});
  MinibatchOptions o = options(MinibatchMethod::sinkhorn);
  o.bs = 11;
  expect_error<otgpu::ShapeError>([&] { otgpu::minibatch_ot(xv, yv, o); }, "bs: 11");
  o.bs = 0;
  expect_error<otgpu::InvalidArgument>([&] { otgpu::minibatch_ot(xv, yv, o); }, "bs");
  o = options(MinibatchMethod::sinkhorn);
  o.k = 0;
  expect_error<otgpu::InvalidArgument>([&] { otgpu::minibatch_ot(xv, yv, o); }, "k: must be >= 1");
  o = options(MinibatchMethod::exact, true);
  expect_error<otgpu::InvalidArgument>([&] { otgpu::minibatch_ot(xv, yv, o); }, "debiased");
  o = options(MinibatchMethod::sinkhorn);
  expect_error<otgpu::ShapeError>(
      [&] {
        otgpu::minibatch_ot(xv, TensorView::host(y.data(), {5, 4}), o);
      },
      "d = 2");
  std::vector<double> bad = x;
  bad[3] = std::nan("");
  expect_error<otgpu::NonFiniteInput>(
      [&] {
        otgpu::minibatch_ot(TensorView::host(bad.data(), {kN, kD}), yv, o);
      },
      "x: element [1, 1] is nan");
  TensorView empty = xv;
  empty.shape[0] = 0;
  expect_error<otgpu::ShapeError>([&] { otgpu::minibatch_ot(empty, yv, o); }, "x is empty");
}

}  // namespace
