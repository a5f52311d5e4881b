// Review of the CUDA auction (kernels/src/assignment.cu). On the CPU (always run): the
// block kernel's auction replayed on the host, round by round, with the kernels' own
// rules (otgpu_kernels/auction_rules.h: eps schedule, bid, stopping test, tie rank) and
// the kernel's certificate and padding fold, against the fp64 Jonker-Volgenant
// reference on the shapes and costs at the edges (one row, one column, rectangular both
// ways, ties, every cost equal, forbidden pairs, a large cost offset, negative costs),
// and the two ways it stops without an answer. On a GPU (skips without one): the same
// edges on both paths of the kernels, a strided fp32 matrix, and a problem found
// infeasible before its first round, which must not report the assignment a previous
// call left in the workspace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/assignment.h"
#include "otgpu/error.h"
#include "otgpu_kernels/auction_rules.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>

#include "otgpu/device.h"
#endif

namespace {

using otgpu::AssignmentProblem;
using otgpu::Backend;
using otgpu::CostKind;
using otgpu::TensorView;
namespace auction = otgpu::kernels::auction;

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Replay {
  int status = 0;  ///< as the kernel's: 0 solved, 1 a line without an allowed pair, 2 round cap
  std::vector<std::int64_t> row_to_col;
  std::vector<double> u, v;
  double cost = 0, dual = 0;
  long long rounds = 0;
  int phases = 0;
};

/// auction_kernel on one problem, sequentially: the same state, rounds, phases,
/// certificate and fold. Where the kernel lets the first of equal highest bids claim a
/// column (atomicCAS), the replay takes the smallest row.
Replay replay_auction(const std::vector<double>& c, int n, int m) {
  const int N = std::max(n, m);
  auto C = [&](int i, int j) {
    return i < n && j < m ? c[static_cast<std::size_t>(i) * static_cast<std::size_t>(m) +
                              static_cast<std::size_t>(j)]
                          : 0.0;
  };
  double lo = kInf, hi = -kInf;
  for (double x : c) {
    if (x < kInf) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  }
  bool flag = false;
  if (n <= m) {
    for (int i = 0; i < n; ++i) {
      bool any = false;
      for (int j = 0; j < m; ++j) any = any || C(i, j) < kInf;
      flag = flag || !any;
    }
  }
  if (m <= n) {
    for (int j = 0; j < m; ++j) {
      bool any = false;
      for (int i = 0; i < n; ++i) any = any || C(i, j) < kInf;
      flag = flag || !any;
    }
  }
  const auction::Schedule sched = auction::schedule(lo, hi, N);
  const auto un = static_cast<std::size_t>(N);
  std::vector<double> price(un, 0.0), ru(un), my_bid(un), bid_val(un);
  std::vector<int> row_col(un, -1), col_row(un, -1), my_col(un), bid_row(un);
  Replay r;
  r.status = flag ? 1 : 0;
  double eps = sched.eps;
  while (r.status == 0) {
    std::fill(row_col.begin(), row_col.end(), -1);
    std::fill(col_row.begin(), col_row.end(), -1);
    std::fill(bid_row.begin(), bid_row.end(), -1);
    std::fill(bid_val.begin(), bid_val.end(), -kInf);
    long long pr = 0;
    ++r.phases;
    for (;;) {
      int count = 0;
      for (int i = 0; i < N; ++i) {
        if (row_col[static_cast<std::size_t>(i)] >= 0) continue;
        ++count;
        double v1 = -kInf, v2 = -kInf;
        int j1 = -1;
        for (int j = 0; j < N; ++j) {
          const double cij = C(i, j);
          if (!(cij < kInf)) continue;
          const double val = -cij - price[static_cast<std::size_t>(j)];
          if (val > v1 ||
              (val == v1 && j1 >= 0 && auction::tie_rank(j, i, N) < auction::tie_rank(j1, i, N))) {
            v2 = v1;
            v1 = val;
            j1 = j;
          } else if (val > v2) {
            v2 = val;
          }
        }
        if (j1 < 0) {
          flag = true;
          continue;
        }
        const double b =
            auction::bid(price[static_cast<std::size_t>(j1)], v1, v2, sched.range, eps);
        my_bid[static_cast<std::size_t>(i)] = b;
        my_col[static_cast<std::size_t>(i)] = j1;
        bid_val[static_cast<std::size_t>(j1)] = std::max(bid_val[static_cast<std::size_t>(j1)], b);
      }
      if (count == 0) break;
      if (flag) {
        r.status = 1;
        break;
      }
      if (++pr > sched.cap) {
        r.status = 2;
        break;
      }
      for (int i = 0; i < N; ++i) {
        if (row_col[static_cast<std::size_t>(i)] >= 0) continue;
        const auto j = static_cast<std::size_t>(my_col[static_cast<std::size_t>(i)]);
        if (bid_val[j] == my_bid[static_cast<std::size_t>(i)] && bid_row[j] < 0) bid_row[j] = i;
      }
      for (std::size_t j = 0; j < un; ++j) {
        const int w = bid_row[j];
        if (w >= 0) {
          const int old = col_row[j];
          if (old >= 0) row_col[static_cast<std::size_t>(old)] = -1;
          col_row[j] = w;
          row_col[static_cast<std::size_t>(w)] = static_cast<int>(j);
          price[j] = bid_val[j];
          bid_row[j] = -1;
        }
        bid_val[j] = -kInf;
      }
    }
    r.rounds += pr;
    if (r.status != 0) break;
    double cost = 0, acost = 0, dual = 0;
    for (int i = 0; i < N; ++i) {
      double mn = kInf;
      for (int j = 0; j < N; ++j) {
        if (C(i, j) < kInf) mn = std::min(mn, C(i, j) + price[static_cast<std::size_t>(j)]);
      }
      ru[static_cast<std::size_t>(i)] = mn;
      const double cc = C(i, row_col[static_cast<std::size_t>(i)]);
      cost += cc;
      acost += std::abs(cc);
      dual += mn;
    }
    for (double p : price) dual -= p;
    if (auction::phases_done(cost, acost, dual, sched.range, N, eps, sched.eps_floor)) break;
    eps = auction::next_eps(eps, sched.eps_floor);
  }
  if (r.status != 0) return r;
  double shift_u = 0, shift_v = 0;
  if (n < m) {
    double t = kInf;
    for (int i = n; i < N; ++i) t = std::min(t, ru[static_cast<std::size_t>(i)]);
    shift_u = -t;
    shift_v = t;
  } else if (n > m) {
    double sv = -kInf;
    for (int j = m; j < N; ++j) sv = std::max(sv, -price[static_cast<std::size_t>(j)]);
    shift_u = sv;
    shift_v = -sv;
  }
  for (int i = 0; i < n; ++i) {
    const int rc = row_col[static_cast<std::size_t>(i)];
    r.row_to_col.push_back(rc < m ? rc : -1);
    r.u.push_back(ru[static_cast<std::size_t>(i)] + shift_u);
    if (rc < m) r.cost += C(i, rc);
    r.dual += r.u.back();
  }
  for (int j = 0; j < m; ++j) {
    r.v.push_back(-price[static_cast<std::size_t>(j)] + shift_v);
    r.dual += r.v.back();
  }
  return r;
}

/// The replay's matching is optimal (its cost the CPU's to 1e-9 of the cost scale) and
/// its potentials certify it: feasible, the larger side's <= 0, the gap small.
void expect_replay_optimal(const std::vector<double>& c, int n, int m) {
  SCOPED_TRACE(testing::Message() << "n=" << n << " m=" << m);
  AssignmentProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(c.data(), {n, m});
  const auto ref = otgpu::assignment(p, {Backend::cpu});
  const Replay r = replay_auction(c, n, m);
  ASSERT_EQ(r.status, 0);
  double scale = 1e-300, abs_cost = 0;
  for (double x : c) {
    if (std::isfinite(x)) scale = std::max(scale, std::abs(x));
  }
  std::vector<int> used(static_cast<std::size_t>(m), 0);
  std::int64_t matched = 0;
  for (int i = 0; i < n; ++i) {
    const std::int64_t j = r.row_to_col[static_cast<std::size_t>(i)];
    if (j < 0) continue;
    ASSERT_LT(j, m);
    ASSERT_LT(
        c[static_cast<std::size_t>(i) * static_cast<std::size_t>(m) + static_cast<std::size_t>(j)],
        kInf);
    EXPECT_EQ(used[static_cast<std::size_t>(j)]++, 0) << "column " << j << " matched twice";
    abs_cost += std::abs(c[static_cast<std::size_t>(i * m + j)]);
    ++matched;
  }
  EXPECT_EQ(matched, std::min(n, m));
  const double tol = 1e-10 * abs_cost + 1e-12 * scale * std::max(n, m) + 1e-12;
  EXPECT_NEAR(r.cost, ref.problems[0].cost, tol);
  EXPECT_LE(r.cost - r.dual, tol);
  EXPECT_GE(r.cost - r.dual, -tol);
  double viol = 0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < m; ++j) {
      const double cij = c[static_cast<std::size_t>(i * m + j)];
      if (cij < kInf)
        viol = std::max(viol,
                        r.u[static_cast<std::size_t>(i)] + r.v[static_cast<std::size_t>(j)] - cij);
    }
    if (n > m) viol = std::max(viol, r.u[static_cast<std::size_t>(i)]);
  }
  if (n < m) {
    for (double vj : r.v) viol = std::max(viol, vj);
  }
  EXPECT_LE(viol, 1e-12 * std::max(scale, 1.0) * std::max(n, m));
}

std::vector<double> random_costs(int n, int m, unsigned seed, double lo = 0, double hi = 1) {
  return otgpu_test::uniform(static_cast<std::size_t>(n * m), seed, lo, hi);
}

TEST(AuctionReview, RulesOfTheSchedule) {
  const auto s = auction::schedule(2.0, 10.0, 100);
  EXPECT_EQ(s.range, 8.0);
  EXPECT_EQ(s.eps, 2.0);
  EXPECT_DOUBLE_EQ(s.eps_floor, 8.0 * 4e-16 * 100);
  EXPECT_EQ(s.cap, 20 * 100 + 2000);
  EXPECT_EQ(auction::schedule(-3.0, -3.0, 4).range, 3.0);     // every cost equal: |hi|
  EXPECT_EQ(auction::schedule(0.5, 0.5, 4).range, 1.0);       // ... at least 1
  EXPECT_EQ(auction::schedule(kInf, -kInf, 4).range, 1.0);    // no allowed pair
  EXPECT_EQ(auction::schedule(-1e308, 1e308, 4).range, 1.0);  // beyond fp64
  // A forbidden second choice: bid over it as if it were range + eps worse.
  EXPECT_DOUBLE_EQ(auction::bid(1.0, -2.0, -kInf, 8.0, 0.5), 1.0 + 8.0 + 0.5 + 0.5);
  EXPECT_DOUBLE_EQ(auction::bid(1.0, -2.0, -3.0, 8.0, 0.5), 1.0 + 1.0 + 0.5);
  // The phases end: eps reaches its floor after a bounded number of divisions by 8.
  for (const int N : {1, 64, 4096, 92681}) {
    const auto t = auction::schedule(0.0, 1.0, N);
    double eps = t.eps;
    int phases = 1;
    while (!auction::phases_done(1.0, 1.0, 0.0, t.range, N, eps, t.eps_floor)) {
      eps = auction::next_eps(eps, t.eps_floor);
      ASSERT_LE(++phases, 20) << "N=" << N;
    }
    EXPECT_EQ(eps, t.eps_floor);
  }
  // Equal values go to the first column at or after the row, cyclically.
  EXPECT_LT(auction::tie_rank(5, 5, 8), auction::tie_rank(6, 5, 8));
  EXPECT_LT(auction::tie_rank(7, 5, 8), auction::tie_rank(0, 5, 8));
  EXPECT_LT(auction::tie_rank(0, 5, 8), auction::tie_rank(4, 5, 8));
}

// The grid path's launch shape: every K * B blocks resident (K * B <= per_sm * #SMs, the
// cooperative launch's condition), 2 <= B <= #SMs, at most a block per 16 rows (but 2);
// the automatic rule only for K < #SMs and N > 256.
TEST(AuctionReview, GridLaunchStaysCoResident) {
  for (const int sms : {1, 2, 3, 78, 132}) {
    for (const int per_sm : {0, 1, 2, 3}) {
      for (const long long K : {1LL, 2LL, 3LL, 7LL, 64LL, 65LL, 131LL, 132LL, 300LL}) {
        for (const long long N : {1LL, 31LL, 64LL, 256LL, 257LL, 1000LL, 4096LL}) {
          for (const bool automatic : {false, true}) {
            const long long B = auction::grid_blocks(K, N, sms, per_sm, true, automatic, 16);
            SCOPED_TRACE(testing::Message() << "sms=" << sms << " per_sm=" << per_sm << " K=" << K
                                            << " N=" << N << " automatic=" << automatic);
            EXPECT_EQ(auction::grid_blocks(K, N, sms, per_sm, false, automatic, 16), 0);
            if (automatic && (K >= sms || N <= 256)) {
              EXPECT_EQ(B, 0);
            }
            if (B == 0) continue;
            EXPECT_GE(B, 2);
            EXPECT_LE(B, sms);
            EXPECT_LE(K * B, static_cast<long long>(per_sm) * sms);
            EXPECT_LE(B, std::max(2LL, (N + 15) / 16));
          }
        }
      }
    }
  }
  // The shapes the GPU suite's GridPathRule expects on a 132-SM device at one block per SM.
  EXPECT_EQ(auction::grid_blocks(1, 4096, 132, 1, true, true, 16), 132);
  EXPECT_EQ(auction::grid_blocks(2, 4096, 132, 1, true, true, 16), 66);
  EXPECT_EQ(auction::grid_blocks(3, 64, 132, 1, true, false, 16), 4);
  EXPECT_EQ(auction::grid_blocks(8, 256, 132, 1, true, false, 16), 16);
  EXPECT_EQ(auction::grid_blocks(1, 256, 132, 1, true, true, 16), 0);
}

// The warps that bid for one row on the grid path: a power of two up to a block, G rows'
// worth within the problem's warps, the largest such.
TEST(AuctionReview, GroupWarpsFitTheProblem) {
  for (const int warps : {32, 48, 64, 512, 2112}) {
    for (int count = 1; count <= 3000; ++count) {
      const int G = auction::group_warps(count, warps, 16);
      ASSERT_TRUE(G == 1 || G == 2 || G == 4 || G == 8 || G == 16) << G;
      if (G > 1) {
        ASSERT_LE(G * count, warps) << "count " << count;
      }
      ASSERT_TRUE(G == 16 || 2 * G * count > warps) << "count " << count;
    }
  }
}

TEST(AuctionReview, ReplayIsOptimalOnEdgeShapesAndCosts) {
  // Shapes: one pair, one row, one column, rectangular both ways, square.
  for (const auto& [n, m] : std::vector<std::pair<int, int>>{
           {1, 1}, {1, 7}, {7, 1}, {8, 8}, {13, 29}, {29, 13}, {40, 40}}) {
    expect_replay_optimal(random_costs(n, m, static_cast<unsigned>(n * 100 + m)), n, m);
  }
  // Integer costs with three levels (ties everywhere), rectangular too.
  for (const auto& [n, m] : std::vector<std::pair<int, int>>{{20, 20}, {12, 20}, {20, 12}}) {
    auto c = random_costs(n, m, 7);
    for (double& x : c) x = std::floor(x * 3);
    expect_replay_optimal(c, n, m);
  }
  // Every cost equal (range 0), at 3 and at 0.
  expect_replay_optimal(std::vector<double>(16 * 16, 3.0), 16, 16);
  expect_replay_optimal(std::vector<double>(9 * 5, 0.0), 9, 5);
  // A large offset (the scale is 1e6, the spread 1) and negative costs.
  {
    auto c = random_costs(15, 15, 8);
    for (double& x : c) x += 1e6;
    expect_replay_optimal(c, 15, 15);
    expect_replay_optimal(random_costs(17, 11, 9, -5, 5), 17, 11);
  }
  // Forbidden pairs, a feasible pattern (the diagonal kept), square and rectangular, and
  // a row with a single allowed column (its second choice is forbidden).
  for (const auto& [n, m] : std::vector<std::pair<int, int>>{{30, 30}, {10, 16}, {16, 10}}) {
    auto c = random_costs(n, m, 10);
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < m; ++j) {
        if ((i + 2 * j) % 3 == 0 && i != j) c[static_cast<std::size_t>(i * m + j)] = kInf;
      }
    }
    for (int j = 0; j < m; ++j) {
      if (j != 1) c[static_cast<std::size_t>(m + j)] = kInf;  // row 1: column 1 only
    }
    expect_replay_optimal(c, n, m);
  }
}

TEST(AuctionReview, ReplayStopsOnInfeasibleProblems) {
  // A row without an allowed pair: found before the first round.
  auto c = random_costs(6, 6, 11);
  for (int j = 0; j < 6; ++j) c[static_cast<std::size_t>(2 * 6 + j)] = kInf;
  const Replay a = replay_auction(c, 6, 6);
  EXPECT_EQ(a.status, 1);
  EXPECT_EQ(a.rounds, 0);
  // Hall's condition fails (three rows share two columns): the round cap stops the first
  // phase, with the prices still finite.
  const int n = 12;
  auto h = random_costs(n, n, 12);
  for (int i = 0; i < 3; ++i) {
    for (int j = 2; j < n; ++j) h[static_cast<std::size_t>(i * n + j)] = kInf;
  }
  const Replay b = replay_auction(h, n, n);
  EXPECT_EQ(b.status, 2);
  EXPECT_EQ(b.phases, 1);
  EXPECT_EQ(b.rounds, auction::schedule(0, 1, n).cap + 1);  // the round that hit the cap
}

// ---- on a GPU ----

/// OTGPU_AUCTION set for a scope (restored after).
class PathEnv {
 public:
  explicit PathEnv(const char* value) {
    if (const char* old = std::getenv("OTGPU_AUCTION")) {
      had_ = true;
      old_ = old;
    }
    ::setenv("OTGPU_AUCTION", value, 1);
  }
  ~PathEnv() {
    if (had_) {
      ::setenv("OTGPU_AUCTION", old_.c_str(), 1);
    } else {
      ::unsetenv("OTGPU_AUCTION");
    }
  }
  PathEnv(const PathEnv&) = delete;
  PathEnv& operator=(const PathEnv&) = delete;

 private:
  bool had_ = false;
  std::string old_;
};

/// The GPU on problem p and the CPU on its costs c [K, n, m] (a host copy: the CPU
/// backend refuses device views): the GPU's matching costs the optimum (1e-6 of the cost
/// scale: fp32 staging of an fp32 view), its potentials certify it.
void expect_gpu_matches_cpu(const AssignmentProblem& p, const std::vector<double>& c,
                            std::int64_t K, std::int64_t n, std::int64_t m) {
  AssignmentProblem hp;
  hp.cost_kind = CostKind::matrix;
  hp.cost = TensorView::host(c.data(), {K, n, m});
  const auto cpu = otgpu::assignment(hp, {Backend::cpu});
  const auto gpu = otgpu::assignment(p, {Backend::cuda});
  ASSERT_EQ(gpu.backend, Backend::cuda);
  for (std::int64_t b = 0; b < K; ++b) {
    SCOPED_TRACE(testing::Message() << "K=" << K << " n=" << n << " m=" << m << " problem " << b);
    double scale = 0, on_fp64 = 0;
    for (std::int64_t e = 0; e < n * m; ++e) {
      const double x = c[static_cast<std::size_t>(b * n * m + e)];
      if (std::isfinite(x)) scale = std::max(scale, std::abs(x));
    }
    std::vector<int> used(static_cast<std::size_t>(m), 0);
    std::int64_t matched = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t j = gpu.row_to_col[static_cast<std::size_t>(b * n + i)];
      if (j < 0) continue;
      ASSERT_LT(j, m);
      EXPECT_EQ(gpu.col_to_row[static_cast<std::size_t>(b * m + j)], i);
      EXPECT_EQ(used[static_cast<std::size_t>(j)]++, 0);
      on_fp64 += c[static_cast<std::size_t>((b * n + i) * m + j)];
      ++matched;
    }
    EXPECT_EQ(matched, std::min(n, m));
    const double ref = cpu.problems[static_cast<std::size_t>(b)].cost;
    const double tol = 1e-6 * std::max(std::abs(ref), scale) + 1e-12;
    EXPECT_NEAR(on_fp64, ref, tol);
    EXPECT_NEAR(gpu.problems[static_cast<std::size_t>(b)].cost, ref, tol);
    EXPECT_LE(std::abs(gpu.problems[static_cast<std::size_t>(b)].gap), tol);
    double viol = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < m; ++j) {
        const double x = c[static_cast<std::size_t>((b * n + i) * m + j)];
        if (std::isfinite(x))
          viol = std::max(viol, gpu.u[static_cast<std::size_t>(b * n + i)] +
                                    gpu.v[static_cast<std::size_t>(b * m + j)] - x);
      }
    }
    EXPECT_LE(viol, 1e-5 * std::max(scale, 1.0));
  }
}

void check_matrix(const std::vector<double>& c, std::int64_t K, std::int64_t n, std::int64_t m) {
  AssignmentProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(c.data(), {K, n, m});
  expect_gpu_matches_cpu(p, c, K, n, m);
}

TEST(AssignmentReviewGpu, EdgeShapesOnBothPaths) {
  REQUIRE_GPU();
  struct Shape {
    std::int64_t K, n, m;
  };
  // One pair; one row; one column; N not a multiple of a warp or of the 512 threads,
  // rectangular both ways; many tiny problems (the grid falls back to blocks there).
  const std::vector<Shape> shapes{{1, 1, 1},     {1, 1, 7},     {1, 7, 1},
                                  {2, 33, 65},   {3, 65, 33},   {1, 257, 257},
                                  {1, 513, 500}, {1, 500, 513}, {300, 5, 7}};
  for (const char* path : {"block", "grid"}) {
    const PathEnv env(path);
    SCOPED_TRACE(path);
    unsigned seed = 40;
    for (const Shape& s : shapes) {
      check_matrix(otgpu_test::uniform(static_cast<std::size_t>(s.K * s.n * s.m), ++seed), s.K, s.n,
                   s.m);
    }
    // A large offset (fp64 matrix: staged and solved in fp64), negative costs, every
    // cost equal, integer ties.
    auto off = otgpu_test::uniform(2 * 64 * 64, 50);
    for (double& x : off) x += 1e6;
    check_matrix(off, 2, 64, 64);
    check_matrix(otgpu_test::uniform(2 * 70 * 45, 51, -5, 5), 2, 70, 45);
    check_matrix(std::vector<double>(2 * 96 * 96, 3.0), 2, 96, 96);
    auto ties = otgpu_test::uniform(2 * 300 * 300, 52);
    for (double& x : ties) x = std::floor(x * 3);
    check_matrix(ties, 2, 300, 300);
  }
}

#ifdef OTGPU_WITH_CUDA
/// A device fp32 matrix read through a transposed view (strides {n m, 1, n}): the
/// staging kernel's strided gather.
TEST(AssignmentReviewGpu, StridedDeviceMatrix) {
  REQUIRE_GPU();
  const std::int64_t K = 2, n = 50, m = 37;
  const auto stored = otgpu_test::uniform(static_cast<std::size_t>(K * m * n), 60);  // [K, m, n]
  std::vector<float> f(stored.begin(), stored.end());
  std::vector<double> c(static_cast<std::size_t>(K * n * m));  // the [K, n, m] it shows
  for (std::int64_t b = 0; b < K; ++b)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < m; ++j)
        c[static_cast<std::size_t>((b * n + i) * m + j)] =
            f[static_cast<std::size_t>((b * m + j) * n + i)];
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, f.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  for (const char* path : {"block", "grid"}) {
    const PathEnv env(path);
    SCOPED_TRACE(path);
    AssignmentProblem p;
    p.cost_kind = CostKind::matrix;
    p.cost = TensorView::device(d, {K, n, m});
    p.cost.strides = {n * m, 1, n};
    expect_gpu_matches_cpu(p, c, K, n, m);
  }
  (void)cudaFree(d);
}

/// assignment_async on a problem with an all-forbidden row, right after a feasible
/// solve of the same size on the same context: the row is found before the first round
/// and the outputs must say "unmatched", not the previous call's assignment.
TEST(AssignmentReviewGpu, InfeasibleBeforeTheFirstRoundReportsNoStaleAssignment) {
  REQUIRE_GPU();
  const std::int64_t K = 2, n = 48;
  const auto good = otgpu_test::uniform(static_cast<std::size_t>(K * n * n), 70);
  auto bad = good;
  for (std::int64_t j = 0; j < n; ++j) bad[static_cast<std::size_t>(n * n + 7 * n + j)] = kInf;
  double* d = nullptr;
  std::int64_t* perm = nullptr;
  double* gap = nullptr;
  ASSERT_EQ(cudaMalloc(&d, good.size() * sizeof(double)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&perm, K * n * sizeof(std::int64_t)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&gap, K * sizeof(double)), cudaSuccess);
  for (const char* path : {"block", "grid"}) {
    const PathEnv env(path);
    SCOPED_TRACE(path);
    otgpu::GpuContext ctx(0, nullptr);
    AssignmentProblem p;
    p.cost_kind = CostKind::matrix;
    p.cost = TensorView::device(d, {K, n, n});
    otgpu::DeviceAssignmentOutputs out;
    out.row_to_col = perm;
    out.gap = gap;
    for (const std::vector<double>* costs :
         {&good, static_cast<const std::vector<double>*>(&bad)}) {
      ASSERT_EQ(
          cudaMemcpy(d, costs->data(), costs->size() * sizeof(double), cudaMemcpyHostToDevice),
          cudaSuccess);
      otgpu::assignment_async(ctx, p, {}, out);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    std::vector<std::int64_t> r(static_cast<std::size_t>(K * n));
    std::vector<double> g(static_cast<std::size_t>(K));
    ASSERT_EQ(cudaMemcpy(r.data(), perm, r.size() * 8, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(g.data(), gap, g.size() * 8, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_TRUE(std::isfinite(g[0]));
    EXPECT_EQ(g[1], kInf);
    for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(r[static_cast<std::size_t>(n + i)], -1) << i;
  }
  (void)cudaFree(d);
  (void)cudaFree(perm);
  (void)cudaFree(gap);
}
#endif

}  // namespace
