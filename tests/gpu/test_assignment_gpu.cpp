// The CUDA exact assignment against the CPU reference (fp64 Jonker-Volgenant): equal
// optimal cost to 1e-6 relative on float geometric costs, the certificate recomputed
// here from the returned potentials, rectangular and forbidden-pair problems, the
// stream-ordered async path and no allocation after the first call of a size. Both
// paths of the auction (one block per problem; several blocks per problem, forced with
// OTGPU_AUCTION=grid|block, which the driver reads at every call) are run on the same
// problems.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "check_util.h"
#include "gpu_test_util.h"
#include "otgpu/assignment.h"
#include "otgpu/error.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/gpu_context_impl.h"
#include "otgpu/device.h"
#include "otgpu_kernels/assignment.h"
#endif

namespace {

using otgpu::AssignmentOptions;
using otgpu::AssignmentProblem;
using otgpu::AssignmentResult;
using otgpu::Backend;
using otgpu::CostKind;
using otgpu::TensorView;
using otgpu_test::point_cost;

constexpr double kInf = std::numeric_limits<double>::infinity();

/// OTGPU_AUCTION set for a scope (restored after).
class AuctionPathEnv {
 public:
  explicit AuctionPathEnv(const char* value) {
    if (const char* old = std::getenv("OTGPU_AUCTION")) {
      had_ = true;
      old_ = old;
    }
    ::setenv("OTGPU_AUCTION", value, 1);
  }
  ~AuctionPathEnv() {
    if (had_) {
      ::setenv("OTGPU_AUCTION", old_.c_str(), 1);
    } else {
      ::unsetenv("OTGPU_AUCTION");
    }
  }
  AuctionPathEnv(const AuctionPathEnv&) = delete;
  AuctionPathEnv& operator=(const AuctionPathEnv&) = delete;

 private:
  bool had_ = false;
  std::string old_;
};

/// The GPU's matching evaluated on the fp64 cost must cost what the CPU's optimum
/// costs (1e-6 relative), and its potentials must certify it within the reported
/// tolerance scaled to the costs (the GPU solves on fp32 costs).
void expect_matches_cpu(const AssignmentResult& g, const AssignmentResult& c, std::int64_t b,
                        const std::vector<double>& cost) {
  const std::int64_t n = g.n, m = g.m;
  const auto& rc = c.problems[static_cast<std::size_t>(b)];
  const auto& rg = g.problems[static_cast<std::size_t>(b)];
  double on_fp64 = 0, scale = 0;
  std::int64_t matched = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t j = g.row_to_col[static_cast<std::size_t>(b * n + i)];
    if (j < 0) continue;
    ++matched;
    ASSERT_EQ(g.col_to_row[static_cast<std::size_t>(b * m + j)], i);
    on_fp64 += cost[static_cast<std::size_t>(i * m + j)];
  }
  for (double v : cost) {
    if (std::isfinite(v)) scale = std::max(scale, std::abs(v));
  }
  EXPECT_EQ(matched, std::min(n, m));
  const double tol = 1e-6 * std::max(std::abs(rc.cost), 1e-3 * scale);
  EXPECT_NEAR(on_fp64, rc.cost, tol) << "problem " << b;
  EXPECT_NEAR(rg.cost, rc.cost, tol) << "problem " << b;
  EXPECT_LE(rg.gap, tol) << "problem " << b;
  EXPECT_GE(rg.gap, -tol) << "problem " << b;
  // The certificate, recomputed against the fp64 cost: violations are fp32 cost
  // round-off at most.
  double viol = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < m; ++j) {
      const double cij = cost[static_cast<std::size_t>(i * m + j)];
      if (!std::isfinite(cij)) continue;
      viol = std::max(viol, g.u[static_cast<std::size_t>(b * n + i)] +
                                g.v[static_cast<std::size_t>(b * m + j)] - cij);
    }
  }
  EXPECT_LE(viol, 1e-5 * std::max(scale, 1.0)) << "problem " << b;
  EXPECT_LE(rg.max_violation, 1e-5 * std::max(scale, 1.0)) << "problem " << b;
}

struct PointCase {
  std::int64_t K, n, m, d;
  CostKind kind;
};

/// Point clouds of every case solved on the GPU (by the path the environment selects)
/// and on the CPU.
void check_point_clouds(const std::vector<PointCase>& cases) {
  for (const PointCase& cs : cases) {
    const auto x = otgpu_test::uniform(static_cast<std::size_t>(cs.K * cs.n * cs.d), 3, -1, 1);
    const auto y = otgpu_test::uniform(static_cast<std::size_t>(cs.K * cs.m * cs.d), 4, -1, 1);
    AssignmentProblem p;
    p.cost_kind = cs.kind;
    p.x = TensorView::host(x.data(), {cs.K, cs.n, cs.d});
    p.y = TensorView::host(y.data(), {cs.K, cs.m, cs.d});
    AssignmentOptions o;
    o.backend = Backend::cpu;
    const auto c = otgpu::assignment(p, o);
    o.backend = Backend::cuda;
    const auto g = otgpu::assignment(p, o);
    EXPECT_EQ(g.backend, Backend::cuda);
    for (std::int64_t b = 0; b < cs.K; ++b) {
      SCOPED_TRACE(testing::Message() << "K=" << cs.K << " n=" << cs.n << " m=" << cs.m
                                      << " d=" << cs.d << " kind=" << otgpu::to_string(cs.kind));
      expect_matches_cpu(g, c, b, point_cost(x, y, b, cs.n, cs.m, cs.d, cs.kind));
    }
  }
}

const std::vector<PointCase> kSmallPointCases{{4, 256, 256, 64, CostKind::sqeuclidean},
                                              {3, 200, 300, 8, CostKind::euclidean},
                                              {3, 300, 200, 8, CostKind::neg_dot},
                                              {64, 64, 64, 2, CostKind::sqeuclidean}};

TEST(AssignmentGpu, PointCloudsMatchTheCpu) {
  REQUIRE_GPU();
  std::vector<PointCase> cases = kSmallPointCases;
  cases.push_back({1, 1024, 1024, 3072, CostKind::sqeuclidean});
  check_point_clouds(cases);
}

void check_matrices_ties_and_forbidden_pairs() {
  const std::int64_t K = 3, n = 150, m = 150;
  auto c = otgpu_test::uniform(static_cast<std::size_t>(K * n * m), 9);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < m; ++j) {
      double& v1 = c[static_cast<std::size_t>((1 * n + i) * m + j)];
      v1 = std::floor(v1 * 5);  // problem 1: integer costs, many ties
      // Problem 2: a third of the pairs forbidden, the diagonal kept (feasible).
      if ((i + 2 * j) % 3 == 0 && i != j) c[static_cast<std::size_t>((2 * n + i) * m + j)] = kInf;
    }
  }
  AssignmentProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(c.data(), {K, n, m});
  const auto cpu = otgpu::assignment(p, {Backend::cpu});
  const auto gpu = otgpu::assignment(p, {Backend::cuda});
  for (std::int64_t b = 0; b < K; ++b) {
    std::vector<double> cb(c.begin() + b * n * m, c.begin() + (b + 1) * n * m);
    expect_matches_cpu(gpu, cpu, b, cb);
  }
  // An all-forbidden row: the typed error, naming the problem.
  for (std::int64_t j = 0; j < m; ++j) c[static_cast<std::size_t>(2 * n * m + 5 * m + j)] = kInf;
  EXPECT_THROW(otgpu::assignment(p, {Backend::cuda}), otgpu::Infeasible);
}

TEST(AssignmentGpu, MatricesIntegerTiesAndForbiddenPairs) {
  REQUIRE_GPU();
  check_matrices_ties_and_forbidden_pairs();
}

/// Cost matrices [K, n, m] (host, fp64) solved on the GPU and the CPU, every problem
/// compared.
void check_matrix_batch(const std::vector<double>& c, std::int64_t K, std::int64_t n,
                        std::int64_t m) {
  AssignmentProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(c.data(), {K, n, m});
  const auto cpu = otgpu::assignment(p, {Backend::cpu});
  const auto gpu = otgpu::assignment(p, {Backend::cuda});
  for (std::int64_t b = 0; b < K; ++b) {
    SCOPED_TRACE(testing::Message() << "K=" << K << " n=" << n << " m=" << m << " problem " << b);
    std::vector<double> cb(c.begin() + b * n * m, c.begin() + (b + 1) * n * m);
    expect_matches_cpu(gpu, cpu, b, cb);
  }
}

// The grid path (several blocks per problem) on the sizes it exists for, K = 1 and 2.
TEST(AssignmentGpu, GridPathMatchesTheCpuOnGeometricCosts) {
  REQUIRE_GPU();
  const AuctionPathEnv env("grid");
  check_point_clouds({{1, 512, 512, 64, CostKind::sqeuclidean},
                      {2, 1024, 1024, 16, CostKind::sqeuclidean},
                      {1, 2048, 2048, 8, CostKind::sqeuclidean},
                      {2, 2048, 2048, 4, CostKind::euclidean},
                      {2, 700, 1024, 8, CostKind::sqeuclidean}});
}

TEST(AssignmentGpu, GridPathIntegerAndTiedCosts) {
  REQUIRE_GPU();
  const AuctionPathEnv env("grid");
  {
    // Problem 0: 5 cost levels (ties everywhere); problem 1: 100 levels.
    const std::int64_t K = 2, n = 1024;
    auto c = otgpu_test::uniform(static_cast<std::size_t>(K * n * n), 21);
    for (std::size_t e = 0; e < c.size(); ++e)
      c[e] = std::floor(c[e] * (e < c.size() / 2 ? 5 : 100));
    check_matrix_batch(c, K, n, n);
  }
  {
    // Every cost equal (every matching optimal, the cost range 0), and integer costs
    // on 2048 rows.
    const std::int64_t K = 2, n = 2048;
    auto c = otgpu_test::uniform(static_cast<std::size_t>(K * n * n), 22);
    for (std::size_t e = 0; e < c.size(); ++e)
      c[e] = e < c.size() / 2 ? 3.0 : std::floor(c[e] * 20);
    check_matrix_batch(c, K, n, n);
  }
  {
    // Rectangular integer costs with forbidden pairs (a feasible pattern: the
    // diagonal kept), both orientations.
    for (const auto& [n, m] : {std::pair<std::int64_t, std::int64_t>{512, 768}, {768, 512}}) {
      auto c = otgpu_test::uniform(static_cast<std::size_t>(n * m), 23);
      for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t j = 0; j < m; ++j) {
          double& v = c[static_cast<std::size_t>(i * m + j)];
          v = std::floor(v * 10);
          if ((3 * i + j) % 4 == 0 && i != j) v = kInf;
        }
      }
      check_matrix_batch(c, 1, n, m);
    }
  }
}

// The grid path forced on small problems (N down to 64, K up to 64, at least two blocks
// per problem): the same cases as the block path above.
TEST(AssignmentGpu, GridPathForcedOnSmallProblems) {
  REQUIRE_GPU();
  const AuctionPathEnv env("grid");
  check_point_clouds(kSmallPointCases);
  check_matrices_ties_and_forbidden_pairs();
}

// Every row and column has an allowed pair but three rows share two columns (Hall's
// condition fails): the auction climbs to its round cap, and the synchronous call
// re-solves on the CPU, which throws. Both paths.
TEST(AssignmentGpu, HallViolationIsInfeasibleOnBothPaths) {
  REQUIRE_GPU();
  const std::int64_t n = 40;
  auto c = otgpu_test::uniform(static_cast<std::size_t>(n * n), 31);
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t j = 2; j < n; ++j) c[static_cast<std::size_t>(i * n + j)] = kInf;
  }
  AssignmentProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::host(c.data(), {n, n});
  for (const char* path : {"block", "grid"}) {
    const AuctionPathEnv env(path);
    EXPECT_THROW(otgpu::assignment(p, {Backend::cuda}), otgpu::Infeasible) << path;
  }
  // Row 2 allowed on column 2 as well: feasible, the same answer as the CPU.
  c[2 * n + 2] = 0.5;
  for (const char* path : {"block", "grid"}) {
    const AuctionPathEnv env(path);
    SCOPED_TRACE(path);
    check_matrix_batch(c, 1, n, n);
  }
}

#ifdef OTGPU_WITH_CUDA
// The path each size takes: the grid for few large problems (and when forced), never
// below two blocks per problem or above #SMs.
TEST(AssignmentGpu, GridPathRule) {
  REQUIRE_GPU();
  using otgpu::kernels::assignment_auction_grid_blocks;
  using otgpu::kernels::AuctionPath;
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  for (const bool f64 : {false, true}) {
    const int big = assignment_auction_grid_blocks(1, 4096, f64, AuctionPath::automatic);
    EXPECT_GE(big, 2);
    EXPECT_LE(big, sms);
    const int two = assignment_auction_grid_blocks(2, 4096, f64, AuctionPath::automatic);
    EXPECT_GE(two, 2);
    EXPECT_LE(2 * two, sms);
    EXPECT_EQ(assignment_auction_grid_blocks(1, 256, f64, AuctionPath::automatic), 0);
    EXPECT_EQ(assignment_auction_grid_blocks(sms, 4096, f64, AuctionPath::automatic), 0);
    EXPECT_EQ(assignment_auction_grid_blocks(1, 4096, f64, AuctionPath::block), 0);
    EXPECT_GE(assignment_auction_grid_blocks(3, 64, f64, AuctionPath::grid), 2);
    EXPECT_GE(assignment_auction_grid_blocks(8, 256, f64, AuctionPath::grid), 2);
  }
}

void check_async_path() {
  const std::int64_t K = 8, n = 256, d = 16;
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  otgpu::GpuContext ctx(0, stream);
  const auto& rt = ctx.impl();
  otgpu_test::DeviceBuffer<float> dx(K * n * d), dy(K * n * d);
  otgpu_test::DeviceBuffer<std::int64_t> dperm(K * n);
  otgpu_test::DeviceBuffer<double> dcost(K), dgap(K);
  AssignmentProblem dp;
  dp.x = TensorView::device(dx.data(), {K, n, d});
  dp.y = TensorView::device(dy.data(), {K, n, d});
  otgpu::DeviceAssignmentOutputs out;
  out.row_to_col = dperm.data();
  out.cost = dcost.data();
  out.gap = dgap.data();
  std::int64_t allocations = -1;
  for (unsigned seed = 1; seed <= 4; ++seed) {
    const auto x = otgpu_test::uniform(static_cast<std::size_t>(K * n * d), seed);
    const auto y = otgpu_test::uniform(static_cast<std::size_t>(K * n * d), seed + 100);
    const std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
    // Written on the context's stream right before the call: the solve must follow.
    ASSERT_EQ(cudaMemcpyAsync(dx.data(), xf.data(), xf.size() * 4, cudaMemcpyHostToDevice, stream),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(dy.data(), yf.data(), yf.size() * 4, cudaMemcpyHostToDevice, stream),
              cudaSuccess);
    otgpu::assignment_async(ctx, dp, {}, out);
    std::vector<std::int64_t> perm(static_cast<std::size_t>(K * n));
    std::vector<double> cost(K), gap(K);
    ASSERT_EQ(
        cudaMemcpyAsync(perm.data(), dperm.data(), perm.size() * 8, cudaMemcpyDeviceToHost, stream),
        cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(cost.data(), dcost.data(), K * 8, cudaMemcpyDeviceToHost, stream),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(gap.data(), dgap.data(), K * 8, cudaMemcpyDeviceToHost, stream),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    AssignmentProblem hp;
    hp.x = TensorView::host(xf.data(), {K, n, d});
    hp.y = TensorView::host(yf.data(), {K, n, d});
    const auto c = otgpu::assignment(hp, {Backend::cpu});
    for (std::int64_t b = 0; b < K; ++b) {
      const double ref = c.problems[static_cast<std::size_t>(b)].cost;
      EXPECT_NEAR(cost[static_cast<std::size_t>(b)], ref, 1e-6 * ref) << "seed " << seed;
      EXPECT_LE(gap[static_cast<std::size_t>(b)], 1e-6 * ref);
      std::vector<std::int64_t> seen(static_cast<std::size_t>(n), 0);
      for (std::int64_t i = 0; i < n; ++i) ++seen[static_cast<std::size_t>(perm[b * n + i])];
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), n) << "not a permutation";
    }
    if (seed == 1) allocations = rt.allocations();
    EXPECT_EQ(rt.allocations(), allocations) << "a call of a known size allocated";
  }
}

TEST(AssignmentGpu, AsyncPathIsStreamOrderedAndAllocatesOnce) {
  REQUIRE_GPU();
  check_async_path();
}

TEST(AssignmentGpu, AsyncGridPathIsStreamOrderedAndAllocatesOnce) {
  REQUIRE_GPU();
  const AuctionPathEnv env("grid");
  check_async_path();
}
#endif

}  // namespace
