// The CUDA coupling path against the CPU reference: pairs drawn on the GPU follow the
// plan (chi-square against a dense plan solved here), draws without replacement are
// distinct and ordered, mean pair costs and OT_eps agree with the fp64 CPU (the pairs
// themselves may differ at fp32 near-ties), the stream-ordered call gives the
// synchronous call's pairs and allocates nothing after the first call of a size.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/coupling.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu/minibatch.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace {

using otgpu::CouplingMethod;
using otgpu::CouplingOptions;
using otgpu::CouplingPairs;
using otgpu::TensorView;

/// P / sum(P) of the uniform-weight entropic plan by plain Sinkhorn (fp64, here).
std::vector<double> dense_plan(const std::vector<double>& x, const std::vector<double>& y, int n,
                               int m, int d, double eps_rel) {
  std::vector<double> C(static_cast<std::size_t>(n * m));
  double mean = 0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < m; ++j) {
      double s = 0;
      for (int c = 0; c < d; ++c)
        s += (x[i * d + c] - y[j * d + c]) * (x[i * d + c] - y[j * d + c]);
      mean += C[i * m + j] = s;
    }
  }
  const double eps = eps_rel * mean / (n * m);
  std::vector<double> u(n, 1.0), v(m, 1.0);
  for (int it = 0; it < 20000; ++it) {
    for (int i = 0; i < n; ++i) {
      double s = 0;
      for (int j = 0; j < m; ++j) s += std::exp(-C[i * m + j] / eps) * v[j];
      u[i] = 1.0 / n / s;
    }
    for (int j = 0; j < m; ++j) {
      double s = 0;
      for (int i = 0; i < n; ++i) s += std::exp(-C[i * m + j] / eps) * u[i];
      v[j] = 1.0 / m / s;
    }
  }
  std::vector<double> P(C.size());
  double total = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) total += P[i * m + j] = u[i] * std::exp(-C[i * m + j] / eps) * v[j];
  for (auto& p : P) p /= total;
  return P;
}

TEST(CouplingGpu, JointDrawsFollowThePlan) {
  REQUIRE_GPU();
  const auto x = otgpu_test::uniform(12, 1, -1, 1), y = otgpu_test::uniform(10, 2, -1, 2);
  const auto P = dense_plan(x, y, 6, 5, 2, 0.5);
  CouplingOptions o;
  o.eps = 0.5;
  o.backend = otgpu::Backend::cuda;
  o.replacement = true;
  o.num_pairs = 30000;
  o.sinkhorn.tol = 1e-5;
  const auto r =
      otgpu::couple(TensorView::host(x.data(), {6, 2}), TensorView::host(y.data(), {5, 2}), o);
  ASSERT_EQ(r.backend, otgpu::Backend::cuda);
  std::vector<double> counts(P.size(), 0);
  for (std::size_t t = 0; t < r.i.size(); ++t) {
    ASSERT_GE(r.i[t], 0);
    ASSERT_LT(r.i[t], 6);
    ASSERT_GE(r.j[t], 0);
    ASSERT_LT(r.j[t], 5);
    counts[static_cast<std::size_t>(r.i[t] * 5 + r.j[t])] += 1;
  }
  double chi = 0;
  for (std::size_t e = 0; e < P.size(); ++e) {
    const double expect = P[e] * 30000;
    chi += (counts[e] - expect) * (counts[e] - expect) / expect;
  }
  EXPECT_LT(chi, 70.0) << "chi-square with 29 degrees of freedom";
}

TEST(CouplingGpu, WithoutReplacementDistinctOrderedAndCostsMatchTheCpu) {
  REQUIRE_GPU();
  const int K = 4, n = 64, m = 48, d = 5;
  const auto x = otgpu_test::uniform(K * n * d, 3), y = otgpu_test::uniform(K * m * d, 4, 0.2, 1.2);
  const auto xv = TensorView::host(x.data(), {K, n, d});
  const auto yv = TensorView::host(y.data(), {K, m, d});
  for (auto mode : {0, 1, 2}) {  // without replacement, with, one per row
    CouplingOptions o;
    o.eps = 0.1;
    o.num_pairs = 200;
    o.replacement = mode == 1;
    o.pairs = mode == 2 ? CouplingPairs::per_row : CouplingPairs::joint;
    o.seed = 5;
    o.backend = otgpu::Backend::cuda;
    const auto g = otgpu::couple(xv, yv, o);
    o.backend = otgpu::Backend::cpu;
    const auto c = otgpu::couple(xv, yv, o);
    ASSERT_EQ(g.pairs, c.pairs);
    // Different draws of the same plan: the mean pair costs over the K minibatches agree
    // to sampling noise (about 4% relative per side for 800 joint pairs, 6% for the 256
    // per-row pairs; the bounds are 3 standard deviations of the difference).
    double g_cost = 0, c_cost = 0;
    for (int k = 0; k < K; ++k) {
      g_cost += g.problems[k].pair_cost / K;
      c_cost += c.problems[k].pair_cost / K;
    }
    EXPECT_NEAR(g_cost, c_cost, (mode == 2 ? 0.25 : 0.15) * c_cost) << "mode " << mode;
    for (int k = 0; k < K; ++k) {
      EXPECT_NEAR(g.problems[k].ot, c.problems[k].ot, 1e-3 * std::abs(c.problems[k].ot));
      EXPECT_NEAR(g.problems[k].eps, c.problems[k].eps, 1e-5 * c.problems[k].eps);
      if (mode != 0) continue;
      std::set<std::int64_t> seen;
      std::int64_t prev = -1;
      for (std::int64_t t = 0; t < g.pairs; ++t) {
        const std::int64_t e = g.i[k * g.pairs + t] * m + g.j[k * g.pairs + t];
        EXPECT_GT(e, prev);
        prev = e;
        seen.insert(e);
      }
      EXPECT_EQ(seen.size(), static_cast<std::size_t>(g.pairs));
      // Same keys on both backends: most selected entries coincide (fp32 near-ties at
      // the threshold may swap a few).
      std::set<std::int64_t> cpu;
      for (std::int64_t t = 0; t < c.pairs; ++t)
        cpu.insert(c.i[k * c.pairs + t] * m + c.j[k * c.pairs + t]);
      int common = 0;
      for (auto e : seen) common += static_cast<int>(cpu.count(e));
      EXPECT_GE(common, 180);
    }
  }
}

TEST(CouplingGpu, TopKOverManyTilesMatchesTheCpu) {
  // 200 x 200 entries: ten tiles of the ordered compaction; 1000 distinct pairs, and
  // every entry (P = n m) as the limit case.
  REQUIRE_GPU();
  const int K = 3, n = 200, d = 3;
  const auto x = otgpu_test::uniform(K * n * d, 11), y = otgpu_test::uniform(K * n * d, 12);
  const auto xv = TensorView::host(x.data(), {K, n, d});
  const auto yv = TensorView::host(y.data(), {K, n, d});
  for (std::int64_t P : {1000, n * n}) {
    CouplingOptions o;
    o.eps = 0.2;
    o.num_pairs = P;
    o.seed = 9;
    o.backend = otgpu::Backend::cuda;
    const auto g = otgpu::couple(xv, yv, o);
    o.backend = otgpu::Backend::cpu;
    const auto c = otgpu::couple(xv, yv, o);
    for (int k = 0; k < K; ++k) {
      std::set<std::int64_t> gpu, cpu;
      std::int64_t prev = -1;
      for (std::int64_t t = 0; t < P; ++t) {
        const std::int64_t e = g.i[k * P + t] * n + g.j[k * P + t];
        EXPECT_GT(e, prev) << "problem " << k << " pair " << t;
        prev = e;
        gpu.insert(e);
        cpu.insert(c.i[k * P + t] * n + c.j[k * P + t]);
      }
      EXPECT_EQ(gpu.size(), static_cast<std::size_t>(P));
      std::int64_t common = 0;
      for (auto e : gpu) common += static_cast<std::int64_t>(cpu.count(e));
      EXPECT_GE(common, P * 95 / 100);
    }
  }
}

TEST(CouplingGpu, ExactMatchesTheCpu) {
  REQUIRE_GPU();
  const int K = 3, n = 50, d = 4;
  const auto x = otgpu_test::uniform(K * n * d, 7), y = otgpu_test::uniform(K * n * d, 8);
  CouplingOptions o;
  o.method = CouplingMethod::exact;
  o.backend = otgpu::Backend::cuda;
  otgpu::CouplingResult g;
  try {
    g = otgpu::couple(TensorView::host(x.data(), {K, n, d}), TensorView::host(y.data(), {K, n, d}),
                      o);
  } catch (const otgpu::DeviceUnavailable& e) {
    GTEST_SKIP() << "no CUDA assignment in this build: " << e.what();
  }
  o.backend = otgpu::Backend::cpu;
  const auto c = otgpu::couple(TensorView::host(x.data(), {K, n, d}),
                               TensorView::host(y.data(), {K, n, d}), o);
  for (int k = 0; k < K; ++k) {
    EXPECT_NEAR(g.problems[k].pair_cost, c.problems[k].pair_cost, 1e-6 * c.problems[k].pair_cost);
  }
}

TEST(MinibatchGpu, EstimateAndGradientsMatchTheCpu) {
  // Same minibatches (keyed by the seed on the host), solved by the fp32 GPU and the
  // fp64 CPU: the means and the gradients agree to the GPU's tolerance.
  REQUIRE_GPU();
  const int N = 300, M = 250, d = 3;
  const auto x = otgpu_test::uniform(N * d, 21), y = otgpu_test::uniform(M * d, 22, 0.3, 1.3);
  for (bool debiased : {false, true}) {
    otgpu::MinibatchOptions o;
    o.k = 8;
    o.bs = 32;
    o.eps = 0.1;
    o.debiased = debiased;
    o.seed = 4;
    o.backend = otgpu::Backend::cuda;
    const auto g = otgpu::minibatch_ot(TensorView::host(x.data(), {N, d}),
                                       TensorView::host(y.data(), {M, d}), o);
    o.backend = otgpu::Backend::cpu;
    const auto c = otgpu::minibatch_ot(TensorView::host(x.data(), {N, d}),
                                       TensorView::host(y.data(), {M, d}), o);
    ASSERT_EQ(g.backend, otgpu::Backend::cuda);
    EXPECT_EQ(g.rows_x, c.rows_x);
    EXPECT_NEAR(g.mean, c.mean, 2e-3 * std::abs(c.mean) + 2e-4) << "debiased " << debiased;
    double num = 0, den = 0;
    for (std::size_t e = 0; e < c.grad_x.size(); ++e) {
      num += (g.grad_x[e] - c.grad_x[e]) * (g.grad_x[e] - c.grad_x[e]);
      den += c.grad_x[e] * c.grad_x[e];
    }
    EXPECT_LT(std::sqrt(num / den), 1e-2) << "debiased " << debiased;
  }
}

#ifdef OTGPU_WITH_CUDA
TEST(CouplingGpu, AsyncGivesTheSyncPairsAndAllocatesOnce) {
  REQUIRE_GPU();
  const int K = 8, n = 128, m = 128, d = 16, P = 128;
  const auto x = otgpu_test::uniform(K * n * d, 9), y = otgpu_test::uniform(K * m * d, 10);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
  otgpu_test::DeviceBuffer<float> dx(xf), dy(yf);
  otgpu_test::DeviceBuffer<std::int64_t> di(K * P), dj(K * P);
  const auto xv = TensorView::device(dx.data(), {K, n, d});
  const auto yv = TensorView::device(dy.data(), {K, m, d});
  otgpu::GpuContext ctx(0);
  for (bool repl : {false, true}) {
    CouplingOptions o;
    o.replacement = repl;
    o.num_pairs = P;
    o.seed = 3;
    const auto sync = otgpu::couple(ctx, xv, yv, o);
    otgpu::couple_async(ctx, xv, yv, o, di.data(), dj.data());
    const std::int64_t before = ctx.allocations();
    otgpu::couple_async(ctx, xv, yv, o, di.data(), dj.data());
    EXPECT_EQ(ctx.allocations(), before) << "no allocation after the first call of a size";
    ctx.synchronize();
    EXPECT_EQ(di.to_host(), sync.i);
    EXPECT_EQ(dj.to_host(), sync.j);
  }
}
#endif

}  // namespace
