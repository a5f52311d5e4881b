// CPU tests of the minibatch couplings (otgpu/coupling.h): sampled pairs follow the
// entropic plan (chi-square against a dense plan solved here by plain Sinkhorn), draws
// without replacement never repeat, exact couplings are the optimal permutation
// (brute force on tiny problems, otgpu::assignment on larger ones), seeds determine the
// pairs, and bad input is one typed error naming the argument.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "check_util.h"
#include "otgpu/assignment.h"
#include "otgpu/coupling.h"
#include "otgpu/error.h"
#include "seeded_data.h"

namespace {

using otgpu::CouplingMethod;
using otgpu::CouplingOptions;
using otgpu::CouplingPairs;
using otgpu::CouplingResult;
using otgpu::TensorView;
using otgpu_test::expect_error;
using otgpu_test::normal;

double sqd(const double* x, const double* y, int d) {
  double s = 0;
  for (int c = 0; c < d; ++c) s += (x[c] - y[c]) * (x[c] - y[c]);
  return s;
}

/// The entropic plan of uniform weights, by plain alternating Sinkhorn in the
/// probability domain (independent of the library): P / sum(P), row-major [n, m].
std::vector<double> dense_plan(const std::vector<double>& x, const std::vector<double>& y, int n,
                               int m, int d, double eps_rel) {
  std::vector<double> C(static_cast<std::size_t>(n * m));
  double mean = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) mean += C[i * m + j] = sqd(&x[i * d], &y[j * d], d);
  mean /= n * m;
  const double eps = eps_rel * mean;
  std::vector<double> K(C.size()), u(n, 1.0), v(m, 1.0);
  for (std::size_t e = 0; e < C.size(); ++e) K[e] = std::exp(-C[e] / eps);
  for (int it = 0; it < 20000; ++it) {
    for (int i = 0; i < n; ++i) {
      double s = 0;
      for (int j = 0; j < m; ++j) s += K[i * m + j] * v[j];
      u[i] = (1.0 / n) / s;
    }
    for (int j = 0; j < m; ++j) {
      double s = 0;
      for (int i = 0; i < n; ++i) s += K[i * m + j] * u[i];
      v[j] = (1.0 / m) / s;
    }
  }
  std::vector<double> P(C.size());
  double total = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) total += P[i * m + j] = u[i] * K[i * m + j] * v[j];
  for (auto& p : P) p /= total;
  return P;
}

/// Pearson's statistic of the observed cell counts against n_draws * P.
double chi_square(const std::vector<double>& P, const std::vector<std::int64_t>& counts,
                  std::int64_t n_draws) {
  double chi = 0;
  for (std::size_t e = 0; e < P.size(); ++e) {
    const double expect = P[e] * static_cast<double>(n_draws);
    const double diff = static_cast<double>(counts[e]) - expect;
    chi += diff * diff / expect;
  }
  return chi;
}

// 6 x 5 cells: 29 degrees of freedom; P(chi2_29 > 70) ~ 3e-5.
constexpr double kChi29 = 70.0;

struct Small {
  int n = 6, m = 5, d = 2;
  std::vector<double> x = normal(12, 1), y = normal(10, 2, 0.0, 1.5);
  double eps_rel = 0.5;
};

CouplingOptions entropic(const Small& s) {
  CouplingOptions o;
  o.method = CouplingMethod::sinkhorn;
  o.eps = s.eps_rel;
  o.eps_relative = true;
  o.backend = otgpu::Backend::cpu;
  o.sinkhorn.tol = 1e-12;
  return o;
}

TEST(Coupling, JointDrawsWithReplacementFollowThePlan) {
  const Small s;
  const auto P = dense_plan(s.x, s.y, s.n, s.m, s.d, s.eps_rel);
  CouplingOptions o = entropic(s);
  o.num_pairs = 30000;
  o.replacement = true;
  o.seed = 7;
  const CouplingResult r =
      otgpu::couple(TensorView::host(s.x.data(), {6, 2}), TensorView::host(s.y.data(), {5, 2}), o);
  ASSERT_EQ(r.pairs, 30000);
  std::vector<std::int64_t> counts(P.size(), 0);
  for (std::size_t t = 0; t < r.i.size(); ++t) {
    ASSERT_GE(r.i[t], 0);
    ASSERT_LT(r.i[t], s.n);
    ASSERT_GE(r.j[t], 0);
    ASSERT_LT(r.j[t], s.m);
    ++counts[static_cast<std::size_t>(r.i[t] * s.m + r.j[t])];
  }
  EXPECT_LT(chi_square(P, counts, 30000), kChi29);
  // The report: the mean cost of the pairs drawn, and a converged solve.
  double mean = 0;
  for (std::size_t t = 0; t < r.i.size(); ++t) mean += sqd(&s.x[r.i[t] * 2], &s.y[r.j[t] * 2], 2);
  EXPECT_NEAR(r.problems[0].pair_cost, mean / 30000, 1e-9);
  EXPECT_TRUE(r.problems[0].converged);
}

TEST(Coupling, FirstDrawWithoutReplacementFollowsThePlan) {
  // K identical minibatches, one pair each: the first of a draw without replacement is
  // a draw from P, and each minibatch has its own keys.
  const Small s;
  const auto P = dense_plan(s.x, s.y, s.n, s.m, s.d, s.eps_rel);
  const int K = 6000;
  std::vector<double> xs, ys;
  for (int k = 0; k < K; ++k) {
    xs.insert(xs.end(), s.x.begin(), s.x.end());
    ys.insert(ys.end(), s.y.begin(), s.y.end());
  }
  CouplingOptions o = entropic(s);
  o.num_pairs = 1;
  o.replacement = false;
  o.seed = 11;
  const auto r = otgpu::couple(TensorView::host(xs.data(), {K, 6, 2}),
                               TensorView::host(ys.data(), {K, 5, 2}), o);
  std::vector<std::int64_t> counts(P.size(), 0);
  for (int k = 0; k < K; ++k) ++counts[static_cast<std::size_t>(r.i[k] * s.m + r.j[k])];
  EXPECT_LT(chi_square(P, counts, K), kChi29);
}

TEST(Coupling, WithoutReplacementHasNoDuplicatesAndIsOrdered) {
  const Small s;
  CouplingOptions o = entropic(s);
  o.replacement = false;
  for (std::int64_t pairs : {1, 7, 29, 30}) {
    o.num_pairs = pairs;
    const auto r = otgpu::couple(TensorView::host(s.x.data(), {6, 2}),
                                 TensorView::host(s.y.data(), {5, 2}), o);
    std::set<std::int64_t> seen;
    std::int64_t prev = -1;
    for (std::int64_t t = 0; t < pairs; ++t) {
      const std::int64_t e = r.i[t] * s.m + r.j[t];
      EXPECT_TRUE(seen.insert(e).second) << "duplicate pair at " << t;
      EXPECT_GT(e, prev) << "pairs come in increasing (i, j) order";
      prev = e;
    }
    EXPECT_EQ(static_cast<std::int64_t>(seen.size()), pairs);
  }
  // With replacement, 30 draws of 30 cells repeat with near certainty.
  o.replacement = true;
  o.num_pairs = 30;
  const auto r =
      otgpu::couple(TensorView::host(s.x.data(), {6, 2}), TensorView::host(s.y.data(), {5, 2}), o);
  std::set<std::int64_t> seen;
  for (std::int64_t t = 0; t < 30; ++t) seen.insert(r.i[t] * s.m + r.j[t]);
  EXPECT_LT(seen.size(), 30u);
}

TEST(Coupling, TopKPrefersTheHeavyEntries) {
  // Near-zero eps: the plan is the permutation; bs pairs without replacement are it.
  const int n = 8, d = 3;
  const auto x = normal(n * d, 5), y = normal(n * d, 6);
  CouplingOptions o;
  o.eps = 1e-4;
  o.backend = otgpu::Backend::cpu;
  o.replacement = false;
  const auto r =
      otgpu::couple(TensorView::host(x.data(), {n, d}), TensorView::host(y.data(), {n, d}), o);
  CouplingOptions e;
  e.method = CouplingMethod::exact;
  e.backend = otgpu::Backend::cpu;
  const auto ex =
      otgpu::couple(TensorView::host(x.data(), {n, d}), TensorView::host(y.data(), {n, d}), e);
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(r.i[i], i);
    EXPECT_EQ(r.j[i], ex.j[i]);
  }
}

TEST(Coupling, PerRowGivesOnePartnerPerRow) {
  const Small s;
  CouplingOptions o = entropic(s);
  o.pairs = CouplingPairs::per_row;
  o.num_pairs = 99;  // ignored: one pair per row
  const auto r =
      otgpu::couple(TensorView::host(s.x.data(), {6, 2}), TensorView::host(s.y.data(), {5, 2}), o);
  ASSERT_EQ(r.pairs, 6);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(r.i[i], i);
    EXPECT_GE(r.j[i], 0);
    EXPECT_LT(r.j[i], 5);
  }
}

TEST(Coupling, SeedsDetermineThePairs) {
  const int K = 3, bs0 = 9, bs1 = 7, d = 4;
  const auto x = normal(K * bs0 * d, 21), y = normal(K * bs1 * d, 22);
  const auto xv = TensorView::host(x.data(), {K, bs0, d});
  const auto yv = TensorView::host(y.data(), {K, bs1, d});
  for (bool repl : {true, false}) {
    CouplingOptions o;
    o.backend = otgpu::Backend::cpu;
    o.replacement = repl;
    o.num_pairs = 12;
    o.seed = 3;
    const auto a = otgpu::couple(xv, yv, o);
    const auto b = otgpu::couple(xv, yv, o);
    EXPECT_EQ(a.i, b.i);
    EXPECT_EQ(a.j, b.j);
    o.seed = 4;
    const auto c = otgpu::couple(xv, yv, o);
    EXPECT_TRUE(a.i != c.i || a.j != c.j);
    o.sinkhorn.cpu_threads = 1;
    o.seed = 3;
    const auto one = otgpu::couple(xv, yv, o);
    EXPECT_EQ(a.j, one.j);
    EXPECT_EQ(a.batch, K);
    EXPECT_EQ(a.i.size(), static_cast<std::size_t>(K * 12));
  }
}

TEST(Coupling, UnbalancedDrawsValidPairs) {
  const int n = 10, m = 14, d = 3;
  const auto x = normal(n * d, 31), y = normal(m * d, 32, 0.0, 2.0);
  CouplingOptions o;
  o.method = CouplingMethod::unbalanced;
  o.rho = 5.0;
  o.backend = otgpu::Backend::cpu;
  const auto r =
      otgpu::couple(TensorView::host(x.data(), {n, d}), TensorView::host(y.data(), {m, d}), o);
  ASSERT_EQ(r.pairs, n);
  for (std::size_t t = 0; t < r.i.size(); ++t) {
    EXPECT_LT(r.i[t], n);
    EXPECT_LT(r.j[t], m);
  }
  EXPECT_GT(r.problems[0].eps, 0);
}

double brute_force(const std::vector<double>& x, const std::vector<double>& y, int n, int d) {
  std::vector<int> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  double best = std::numeric_limits<double>::infinity();
  do {
    double c = 0;
    for (int i = 0; i < n; ++i) c += sqd(&x[i * d], &y[perm[i] * d], d);
    best = std::min(best, c);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}

TEST(Coupling, ExactIsTheOptimalPermutation) {
  const int K = 4, n = 6, d = 2;
  const auto x = normal(K * n * d, 41), y = normal(K * n * d, 42);
  CouplingOptions o;
  o.method = CouplingMethod::exact;
  o.backend = otgpu::Backend::cpu;
  const auto r = otgpu::couple(TensorView::host(x.data(), {K, n, d}),
                               TensorView::host(y.data(), {K, n, d}), o);
  ASSERT_EQ(r.pairs, n);
  for (int k = 0; k < K; ++k) {
    const std::vector<double> xk(x.begin() + k * n * d, x.begin() + (k + 1) * n * d);
    const std::vector<double> yk(y.begin() + k * n * d, y.begin() + (k + 1) * n * d);
    std::set<std::int64_t> cols;
    double c = 0;
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(r.i[k * n + i], i);
      cols.insert(r.j[k * n + i]);
      c += sqd(&xk[i * d], &yk[r.j[k * n + i] * d], d);
    }
    EXPECT_EQ(cols.size(), static_cast<std::size_t>(n)) << "a permutation";
    EXPECT_NEAR(c, brute_force(xk, yk, n, d), 1e-10);
    EXPECT_NEAR(r.problems[k].pair_cost, c / n, 1e-10);
    EXPECT_TRUE(r.problems[k].converged);
  }
  // The same matching as otgpu::assignment on a larger batch.
  const int big = 40;
  const auto xb = normal(big * 5, 43), yb = normal(big * 5, 44);
  const auto rb = otgpu::couple(TensorView::host(xb.data(), {big, 5}),
                                TensorView::host(yb.data(), {big, 5}), o);
  otgpu::AssignmentProblem ap;
  ap.x = TensorView::host(xb.data(), {big, 5});
  ap.y = TensorView::host(yb.data(), {big, 5});
  otgpu::AssignmentOptions ao;
  ao.backend = otgpu::Backend::cpu;
  const auto ar = otgpu::assignment(ap, ao);
  EXPECT_EQ(rb.j, ar.row_to_col);
  EXPECT_NEAR(rb.problems[0].ot * big, ar.problems[0].cost, 1e-9);
}

TEST(Coupling, BadInputIsATypedError) {
  const auto x = normal(24, 51), y = normal(24, 52);
  CouplingOptions o;
  o.backend = otgpu::Backend::cpu;
  const auto x62 = TensorView::host(x.data(), {6, 2});
  const auto x43 = TensorView::host(x.data(), {4, 3});
  const auto y62 = TensorView::host(y.data(), {6, 2});
  expect_error<otgpu::ShapeError>([&] { otgpu::couple(x62, x43, o); }, "d = 2");
  expect_error<otgpu::ShapeError>(
      [&] {
        otgpu::couple(TensorView::host(x.data(), {2, 3, 4}), x43, o);
      },
      "x1");
  expect_error<otgpu::ShapeError>(
      [&] {
        otgpu::couple(TensorView::host(x.data(), {2, 3, 4}), TensorView::host(y.data(), {3, 2, 4}),
                      o);
      },
      "K = 2");
  TensorView empty = TensorView::host(x.data(), {6, 2});
  empty.shape[0] = 0;
  expect_error<otgpu::ShapeError>([&] { otgpu::couple(empty, y62, o); }, "x0 is empty");
  std::vector<double> bad = x;
  bad[5] = std::nan("");
  expect_error<otgpu::NonFiniteInput>(
      [&] {
        otgpu::couple(TensorView::host(bad.data(), {6, 2}), y62, o);
      },
      "x0: element [2, 1] is nan");
  CouplingOptions ex = o;
  ex.method = CouplingMethod::exact;
  expect_error<otgpu::ShapeError>(
      [&] {
        otgpu::couple(x62, TensorView::host(y.data(), {5, 2}), ex);
      },
      "bs1 = 5");
  CouplingOptions ub = o;
  ub.method = CouplingMethod::unbalanced;
  ub.rho = 0;
  expect_error<otgpu::InvalidArgument>([&] { otgpu::couple(x62, y62, ub); }, "rho");
  CouplingOptions np = o;
  np.replacement = false;
  np.num_pairs = 37;
  expect_error<otgpu::InvalidArgument>([&] { otgpu::couple(x62, y62, np); }, "num_pairs");
  CouplingOptions ne = o;
  ne.eps = -1;
  expect_error<otgpu::InvalidArgument>([&] { otgpu::couple(x62, y62, ne); }, "eps");
  expect_error<otgpu::InvalidArgument>([] { otgpu::parse_coupling_method("emd"); }, "emd");
}

}  // namespace
