// CPU tests of exact assignment: brute force over all injections on tiny problems,
// the dual certificate recomputed here from (u, v) on larger ones, point costs against
// a dense matrix built here, and every bad input as one typed error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "check_util.h"
#include "otgpu/assignment.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "seeded_data.h"

namespace {

using otgpu::AssignmentOptions;
using otgpu::AssignmentProblem;
using otgpu::AssignmentResult;
using otgpu::CostKind;
using otgpu::DType;
using otgpu::MemorySpace;
using otgpu::TensorView;
using otgpu_test::point_cost;
using otgpu_test::uniform;

constexpr double kInf = std::numeric_limits<double>::infinity();

TensorView host_view(const std::vector<double>& v, std::initializer_list<std::int64_t> shape) {
  return TensorView::contiguous(v.data(), DType::f64, MemorySpace::host, shape);
}

/// The least cost over all injections of the smaller side into the larger one, by
/// enumerating permutations of the larger side (tiny sizes only); +inf if none.
double brute_force(const std::vector<double>& c, int n, int m) {
  const bool rows_small = n <= m;
  const int small = rows_small ? n : m, large = rows_small ? m : n;
  std::vector<int> perm(static_cast<std::size_t>(large));
  std::iota(perm.begin(), perm.end(), 0);
  double best = kInf;
  do {
    double s = 0;
    for (int k = 0; k < small; ++k) {
      const int i = rows_small ? k : perm[static_cast<std::size_t>(k)];
      const int j = rows_small ? perm[static_cast<std::size_t>(k)] : k;
      s += c[static_cast<std::size_t>(i * m + j)];
    }
    best = std::min(best, s);
  } while (std::next_permutation(perm.begin(), perm.end()));
  return best;
}

/// Checks problem b of r against the dense cost c [n, m]: a valid matching of
/// min(n, m) pairs, the reported cost equal to the sum over it, and the certificate
/// recomputed here: u_i + v_j <= c_ij + tol on allowed pairs, equality on matched
/// pairs, potentials of the larger side <= tol, and cost - (sum u + sum v) <= tol.
void check_certificate(const AssignmentResult& r, std::int64_t b, const std::vector<double>& c,
                       double tol) {
  const std::int64_t n = r.n, m = r.m;
  const auto* r2c = r.row_to_col.data() + b * n;
  const auto* c2r = r.col_to_row.data() + b * m;
  const double* u = r.u.data() + b * n;
  const double* v = r.v.data() + b * m;
  std::int64_t matched = 0;
  double cost = 0, dual = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (r2c[i] < 0) continue;
    ++matched;
    ASSERT_LT(r2c[i], m);
    ASSERT_EQ(c2r[r2c[i]], i) << "row " << i;
    const double cij = c[static_cast<std::size_t>(i * m + r2c[i])];
    ASSERT_TRUE(std::isfinite(cij)) << "forbidden pair matched at row " << i;
    cost += cij;
    EXPECT_NEAR(u[i] + v[r2c[i]], cij, tol) << "slack on matched pair, row " << i;
  }
  EXPECT_EQ(matched, std::min(n, m));
  for (std::int64_t i = 0; i < n; ++i) {
    dual += u[i];
    for (std::int64_t j = 0; j < m; ++j) {
      const double cij = c[static_cast<std::size_t>(i * m + j)];
      if (std::isfinite(cij)) {
        ASSERT_LE(u[i] + v[j], cij + tol) << i << "," << j;
      }
    }
    if (n > m) {
      EXPECT_LE(u[i], tol);
    }
  }
  for (std::int64_t j = 0; j < m; ++j) {
    dual += v[j];
    if (m > n) {
      EXPECT_LE(v[j], tol);
    }
  }
  const auto& rep = r.problems[static_cast<std::size_t>(b)];
  EXPECT_NEAR(rep.cost, cost, tol);
  EXPECT_LE(cost - dual, tol);
  EXPECT_LE(std::abs(rep.gap), tol);
  EXPECT_LE(rep.max_violation, tol);
}

AssignmentResult solve_matrix(const std::vector<double>& c, std::int64_t K, std::int64_t n,
                              std::int64_t m, int threads = 0) {
  AssignmentProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = host_view(c, {K, n, m});
  AssignmentOptions o;
  o.backend = otgpu::Backend::cpu;
  o.cpu_threads = threads;
  return otgpu::assignment(p, o);
}

TEST(AssignmentCpu, MatchesBruteForceOnTinyProblems) {
  std::mt19937_64 g(7);
  int cases = 0;
  for (int n = 1; n <= 6; ++n) {
    for (int m = 1; m <= 6; ++m) {
      for (int kind = 0; kind < 4; ++kind) {
        // 0 float, 1 small integers (ties), 2 all equal, 3 floats with forbidden pairs
        std::vector<double> c(static_cast<std::size_t>(n * m));
        std::uniform_int_distribution<int> small(0, 3);
        std::uniform_real_distribution<double> u(-2, 5);
        for (auto& x : c) x = kind == 1 ? small(g) : kind == 2 ? 1.5 : u(g);
        if (kind == 3) {
          std::bernoulli_distribution forbid(0.3);
          for (auto& x : c) {
            if (forbid(g)) x = kInf;
          }
        }
        const double best = brute_force(c, n, m);
        if (!std::isfinite(best)) {
          EXPECT_THROW(solve_matrix(c, 1, n, m), otgpu::Infeasible) << n << "x" << m;
          continue;
        }
        const auto r = solve_matrix(c, 1, n, m);
        EXPECT_NEAR(r.problems[0].cost, best, 1e-12) << n << "x" << m << " kind " << kind;
        check_certificate(r, 0, c, 1e-12);
        ++cases;
      }
    }
  }
  EXPECT_GT(cases, 130);
}

TEST(AssignmentCpu, CertificateOnLargerBatchesAndShapes) {
  struct Case {
    std::int64_t K, n, m;
    int values;  // 0 floats, 1 integers 0..9, 2 integers 0..1000
  };
  for (const Case cs : {Case{3, 300, 300, 0}, Case{2, 257, 400, 0}, Case{2, 400, 257, 0},
                        Case{5, 120, 120, 1}, Case{1, 500, 500, 2}, Case{4, 64, 70, 1}}) {
    std::vector<double> c(static_cast<std::size_t>(cs.K * cs.n * cs.m));
    std::mt19937_64 g(static_cast<unsigned>(cs.n * 31 + cs.m));
    std::uniform_int_distribution<int> i9(0, 9), i1000(0, 1000);
    std::uniform_real_distribution<double> u(0, 1);
    for (auto& x : c) x = cs.values == 0 ? u(g) : cs.values == 1 ? i9(g) : i1000(g);
    for (int threads : {1, 2}) {
      const auto r = solve_matrix(c, cs.K, cs.n, cs.m, threads);
      for (std::int64_t b = 0; b < cs.K; ++b) {
        std::vector<double> cb(c.begin() + b * cs.n * cs.m, c.begin() + (b + 1) * cs.n * cs.m);
        check_certificate(r, b, cb, 1e-9);
        if (cs.values != 0) {  // integer data: the optimum is an integer
          EXPECT_EQ(r.problems[static_cast<std::size_t>(b)].cost,
                    std::round(r.problems[static_cast<std::size_t>(b)].cost));
        }
      }
    }
  }
}

TEST(AssignmentCpu, SameResultForEveryThreadCount) {
  const std::int64_t K = 7, n = 90, m = 90;
  const auto c = uniform(static_cast<std::size_t>(K * n * m), 3);
  const auto a = solve_matrix(c, K, n, m, 1);
  const auto b = solve_matrix(c, K, n, m, 3);
  EXPECT_EQ(a.row_to_col, b.row_to_col);
  EXPECT_EQ(a.u, b.u);
}

TEST(AssignmentCpu, ForbiddenPairsAreAvoided) {
  // A shifted identity: the diagonal is cheapest but forbidden.
  const int n = 40;
  std::vector<double> c(static_cast<std::size_t>(n * n));
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j)
      c[static_cast<std::size_t>(i * n + j)] = i == j ? kInf : 1 + ((i + 2 * j) % 7);
  }
  const auto r = solve_matrix(c, 1, n, n);
  for (int i = 0; i < n; ++i) EXPECT_NE(r.row_to_col[static_cast<std::size_t>(i)], i);
  check_certificate(r, 0, c, 1e-12);
}

TEST(AssignmentCpu, PointCostsMatchTheMatrixPath) {
  const std::int64_t K = 2, n = 50, m = 60, d = 5;
  const auto x = uniform(static_cast<std::size_t>(K * n * d), 11, -1, 1);
  const auto y = uniform(static_cast<std::size_t>(K * m * d), 12, -1, 1);
  std::vector<float> xf(x.begin(), x.end());
  const std::vector<double> xfd(xf.begin(), xf.end());  // the fp32 values the solver reads
  for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean, CostKind::neg_dot}) {
    AssignmentProblem p;
    p.cost_kind = kind;
    p.x = TensorView::contiguous(xf.data(), DType::f32, MemorySpace::host, {K, n, d});
    p.y = host_view(y, {K, m, d});
    AssignmentOptions o;
    o.backend = otgpu::Backend::cpu;
    const auto r = otgpu::assignment(p, o);
    for (std::int64_t b = 0; b < K; ++b) {
      check_certificate(r, b, point_cost(xfd, y, b, n, m, d, kind), 1e-9);
    }
  }
}

template <class E>
void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& s : needles) {
      EXPECT_NE(what.find(s), std::string::npos) << "'" << s << "' not in: " << what;
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(AssignmentCpu, BadInputIsATypedError) {
  std::vector<double> c = uniform(2 * 3 * 3, 5);
  AssignmentProblem p;
  p.cost_kind = CostKind::matrix;
  auto run = [&] { otgpu::assignment(p, {otgpu::Backend::cpu}); };

  c[4] = std::nan("");
  p.cost = host_view(c, {2, 3, 3});
  expect_error<otgpu::NonFiniteInput>(run, {"cost", "[0, 1, 1]", "nan"});
  c[4] = -kInf;
  expect_error<otgpu::NonFiniteInput>(run, {"cost", "[0, 1, 1]", "-inf"});
  c[4] = 0.5;
  // An all-forbidden row of problem 1.
  for (int j = 0; j < 3; ++j) c[static_cast<std::size_t>(9 + 2 * 3 + j)] = kInf;
  expect_error<otgpu::Infeasible>(run, {"problem 1", "row 2"});
  // Hall's condition fails: rows 0 and 1 both only allowed in column 0.
  std::vector<double> h = {1, kInf, kInf, 2, kInf, kInf, 1, 1, 1};
  p.cost = host_view(h, {3, 3});
  expect_error<otgpu::Infeasible>(run, {"problem 0", "no matching"});
  // n > m (solved transposed): the message speaks of the caller's column.
  std::vector<double> tall = {1, kInf, 2, kInf, 3, kInf};
  p.cost = host_view(tall, {3, 2});
  expect_error<otgpu::Infeasible>(run, {"problem 0", "column 1 of the 3 x 2 problem"});
  p.cost = host_view(h, {3, 3});
  // The Infeasible class is an InvalidArgument.
  expect_error<otgpu::InvalidArgument>(run, {"infeasible"});

  p.cost = TensorView{};
  expect_error<otgpu::InvalidArgument>(run, {"cost", "required"});

  // Empty batch.
  std::vector<double> one(4, 1.0);
  TensorView empty = host_view(one, {1, 2, 2});
  empty.shape[0] = 0;
  p.cost = empty;
  expect_error<otgpu::ShapeError>(run, {"cost", "empty", "K = 0"});

  // Points: d mismatch, batch mismatch, rank mismatch, cost given too.
  const auto x = uniform(2 * 4 * 3, 1), y = uniform(2 * 5 * 2, 2);
  p = AssignmentProblem{};
  p.cost_kind = CostKind::sqeuclidean;
  p.x = host_view(x, {2, 4, 3});
  p.y = host_view(y, {2, 5, 2});
  expect_error<otgpu::ShapeError>(run, {"y", "d = 2", "d = 3"});
  p.y = host_view(y, {1, 10, 2});
  p.x = host_view(x, {2, 4, 3});
  expect_error<otgpu::ShapeError>(run, {"y", "K = 1", "K = 2"});
  p.y = host_view(y, {20, 1});
  expect_error<otgpu::ShapeError>(run, {"y", "rank 2"});
  p.y = host_view(y, {2, 4, 3});
  p.cost = host_view(one, {2, 2});
  expect_error<otgpu::InvalidArgument>(run, {"cost", "must be absent", "sqeuclidean"});
  p.cost = TensorView{};
  std::vector<double> xbad = x;
  xbad[5] = kInf;
  p.x = host_view(xbad, {2, 4, 3});
  expect_error<otgpu::NonFiniteInput>(run, {"x", "[0, 1, 2]", "inf"});

  p.x = host_view(x, {2, 4, 3});
  AssignmentOptions o;
  o.backend = otgpu::Backend::cpu;
  o.cpu_threads = -2;
  expect_error<otgpu::InvalidArgument>([&] { otgpu::assignment(p, o); }, {"cpu_threads", "-2"});
}

TEST(AssignmentCpu, NegDotIsParsedAndSinkhornRejectsIt) {
  EXPECT_EQ(otgpu::parse_cost_kind("neg_dot"), CostKind::neg_dot);
  EXPECT_EQ(otgpu::to_string(CostKind::neg_dot), "neg_dot");
  const auto x = uniform(4 * 2, 1);
  otgpu::SinkhornProblem p;
  p.cost_kind = CostKind::neg_dot;
  p.x = host_view(x, {4, 2});
  p.y = host_view(x, {4, 2});
  otgpu::SinkhornOptions o;
  o.backend = otgpu::Backend::cpu;
  expect_error<otgpu::InvalidArgument>([&] { otgpu::sinkhorn(p, o); }, {"cost_kind", "neg_dot"});
}

}  // namespace
