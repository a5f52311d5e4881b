// The derived outputs of a SinkhornOptions::devices result (logical shards {0, 0, 0}
// on one device): each shard maps, differentiates and samples its own rows from its
// kept state, and the concatenation in row order equals the single-GPU solve's derived
// outputs to fp32 round-off (sampled partners keyed by the global row: the same
// draws). Points and a cost matrix, uniform and weighted a, a batch of two problems.
// Refusals: other views of the problem, and the one-device GpuContext overloads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu {
namespace {

struct Data {
  std::vector<double> x, y, a, b, c;
  SinkhornProblem problem;
};

/// B problems of n x m (d coordinates; d = 0: a cost matrix |x_i - y_j|^1.5 of 2-D
/// points), weighted or uniform. m > 512 keeps the single-GPU solve off its one-block
/// small kernel; n = 3k + 1 splits unevenly over 3 shards.
Data make_data(std::int64_t B, std::int64_t n, std::int64_t m, std::int64_t d, bool weighted,
               std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unif(0.2, 1.0);
  Data D;
  const std::int64_t dd = d == 0 ? 2 : d;
  std::vector<double> x(static_cast<std::size_t>(B * n * dd)),
      y(static_cast<std::size_t>(B * m * dd));
  for (auto& v : x) v = normal(gen);
  for (auto& v : y) v = normal(gen) + 0.5;
  SinkhornProblem& p = D.problem;
  if (d == 0) {
    D.c.resize(static_cast<std::size_t>(B * n * m));
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < m; ++j) {
          double s = 0;
          for (std::int64_t t = 0; t < dd; ++t) {
            const double u = x[static_cast<std::size_t>((b * n + i) * dd + t)] -
                             y[static_cast<std::size_t>((b * m + j) * dd + t)];
            s += u * u;
          }
          D.c[static_cast<std::size_t>((b * n + i) * m + j)] = std::pow(s, 0.75);
        }
    p.cost_kind = CostKind::matrix;
    p.cost =
        B == 1 ? TensorView::host(D.c.data(), {n, m}) : TensorView::host(D.c.data(), {B, n, m});
  } else {
    D.x = x;
    D.y = y;
    p.x = B == 1 ? TensorView::host(D.x.data(), {n, d}) : TensorView::host(D.x.data(), {B, n, d});
    p.y = B == 1 ? TensorView::host(D.y.data(), {m, d}) : TensorView::host(D.y.data(), {B, m, d});
  }
  if (weighted) {
    D.a.resize(static_cast<std::size_t>(n));
    D.b.resize(static_cast<std::size_t>(m));
    double sa = 0, sb = 0;
    for (auto& v : D.a) sa += (v = unif(gen));
    for (auto& v : D.b) sb += (v = unif(gen));
    for (auto& v : D.a) v /= sa;
    for (auto& v : D.b) v /= sb;
    p.a = TensorView::host(D.a.data(), {n});
    p.b = TensorView::host(D.b.data(), {m});
  }
  return D;
}

SinkhornOptions options() {
  SinkhornOptions o;
  o.backend = Backend::cuda;
  o.eps = 0.05;
  o.eps_relative = true;
  o.tol = 1e-4;
  o.max_iter = 4000;
  return o;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

/// The devices {0, 0, 0} result's derived outputs against the single-GPU solve's.
void expect_same_derived(const Data& D, bool points) {
  const SinkhornResult ref = sinkhorn(D.problem, options());
  SinkhornOptions o = options();
  o.devices = {0, 0, 0};
  const SinkhornResult r = sinkhorn(D.problem, o);
  ASSERT_NE(r.state, nullptr) << "a devices result keeps its shards' state";
  EXPECT_EQ(r.problems.size(), ref.problems.size());
  if (points) {
    const auto map_ref = barycentric_map(D.problem, ref);
    const auto grad_ref = gradient_x(D.problem, ref);
    const auto map = barycentric_map(D.problem, r);
    const auto grad = gradient_x(D.problem, r);
    EXPECT_LE(max_diff(map, map_ref), 1e-3 * (1 + max_abs(map_ref)));
    EXPECT_LE(max_diff(grad, grad_ref), 1e-3 * (1 + max_abs(grad_ref)));
  } else {
    EXPECT_THROW((void)barycentric_map(D.problem, r), InvalidArgument);  // needs points
  }
  for (const std::uint64_t seed : {5ull, 11ull}) {
    const auto pairs_ref = sample_partners(D.problem, ref, seed);
    const auto pairs = sample_partners(D.problem, r, seed);
    ASSERT_EQ(pairs.size(), pairs_ref.size());
    // Keyed by the global row: the same draws; a near-tie may flip on round-off.
    std::size_t same = 0;
    for (std::size_t i = 0; i < pairs.size(); ++i) same += pairs[i] == pairs_ref[i];
    EXPECT_GE(static_cast<double>(same), 0.98 * static_cast<double>(pairs.size())) << seed;
    // Deterministic for a seed: the shards' kept state is read, not changed.
    EXPECT_EQ(sample_partners(D.problem, r, seed), pairs);
  }
}

TEST(SinkhornDevicesDerivedGpu, PointsUniformMatchTheSingleGpu) {
  REQUIRE_GPU();
  expect_same_derived(make_data(1, 701, 613, 3, false, 41), true);
}

TEST(SinkhornDevicesDerivedGpu, PointsWeightedMatchTheSingleGpu) {
  REQUIRE_GPU();
  expect_same_derived(make_data(1, 655, 601, 4, true, 42), true);
}

TEST(SinkhornDevicesDerivedGpu, CostMatrixMatchesTheSingleGpu) {
  REQUIRE_GPU();
  expect_same_derived(make_data(1, 533, 521, 0, true, 43), false);
}

TEST(SinkhornDevicesDerivedGpu, BatchConcatenatesPerProblem) {
  REQUIRE_GPU();
  expect_same_derived(make_data(2, 301, 530, 2, false, 44), true);
}

TEST(SinkhornDevicesDerivedGpu, OtherViewsAndContextsAreRefused) {
  REQUIRE_GPU();
  Data D = make_data(1, 301, 530, 2, false, 45);
  SinkhornOptions o = options();
  o.devices = {0, 0};
  const SinkhornResult r = sinkhorn(D.problem, o);
  std::vector<double> x_copy = D.x;  // the same values in other memory: other views
  SinkhornProblem other = D.problem;
  other.x = TensorView::host(x_copy.data(), {301, 2});
  try {
    (void)barycentric_map(other, r);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("other views"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)sample_partners(other, r, 1), InvalidArgument);
  GpuContext ctx(0);
  EXPECT_THROW((void)gradient_x(ctx, D.problem, r), InvalidArgument);
  // Released with the result: a copy without the state restages on one device.
  SinkhornResult bare = r;
  bare.state.reset();
  EXPECT_LE(max_diff(barycentric_map(D.problem, bare), barycentric_map(D.problem, r)),
            1e-3 * (1 + max_abs(barycentric_map(D.problem, r))));
}

}  // namespace
}  // namespace otgpu
