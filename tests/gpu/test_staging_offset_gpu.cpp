// fp64 point clouds far from the origin (offsets 1e4 and 1e6) on every GPU path that
// builds costs from coordinates, against the fp64 CPU reference on the same fp64 data,
// within the tolerances the GPU suites ask at the origin. The staging centres each
// problem on the mean of its y in double and rounds float(v - c) once
// (otgpu/detail/staging.h, replayed on the CPU by tests/test_staging_offset_cpu.cpp);
// rounding before centring, or the norm-form GEMM on raw coordinates, misses these
// tolerances by orders of magnitude (1e-3 of the spread lost per coordinate at 1e4,
// 6e-2 at 1e6). Sinkhorn compares iteration for iteration (plain updates, no eps
// scaling, fixed max_iter); couplings on clouds whose plan has clear margins, so the
// GPU's pairs must be the CPU's; assignment costs; sliced values, per-direction terms
// and gradients. Skips without a GPU.
#include <gtest/gtest.h>

#include <ostream>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/otgpu.h"

namespace {

using otgpu::Backend;
using otgpu::CostKind;
using otgpu::TensorView;
using otgpu_test::uniform;

constexpr double kOffsets[] = {1e4, 1e6};

std::vector<double> shifted(std::vector<double> v, double offset) {
  for (double& x : v) x += offset;
  return v;
}

// ------------------------------------------------------------------- Sinkhorn --

struct SinkCase {
  std::string name;
  std::int64_t B, n, m, d;
  CostKind cost = CostKind::sqeuclidean;
  bool weights = false;
};
/// Names the case in ctest's listing (gtest prints a byte dump otherwise).
void PrintTo(const SinkCase& c, std::ostream* os) { *os << c.name; }

otgpu::SinkhornOptions fixed_iterations(Backend be) {
  otgpu::SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.max_iter = 30;
  o.check_every = 0;
  o.eps_init = 0;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.tol = 1e-4;
  o.backend = be;
  return o;
}

class SinkhornOffsetGpu : public ::testing::TestWithParam<SinkCase> {};

TEST_P(SinkhornOffsetGpu, Fp64CloudsMatchTheCpuAsAtTheOrigin) {
  REQUIRE_GPU();
  const SinkCase k = GetParam();
  for (double offset : kOffsets) {
    SCOPED_TRACE(testing::Message() << k.name << " offset " << offset);
    const auto x = shifted(uniform(static_cast<std::size_t>(k.B * k.n * k.d), 17), offset);
    const auto y =
        shifted(uniform(static_cast<std::size_t>(k.B * k.m * k.d), 18, 0.1, 1.1), offset);
    auto a = uniform(static_cast<std::size_t>(k.B * k.n), 19, 0.2, 1.0);
    auto b = uniform(static_cast<std::size_t>(k.B * k.m), 20, 0.2, 1.0);
    for (auto* w : {&a, &b}) {  // each problem's weights to mass 1
      const std::size_t len = w->size() / static_cast<std::size_t>(k.B);
      for (std::size_t p = 0; p < static_cast<std::size_t>(k.B); ++p) {
        const double s = std::accumulate(w->begin() + p * len, w->begin() + (p + 1) * len, 0.0);
        for (std::size_t i = 0; i < len; ++i) (*w)[p * len + i] /= s;
      }
    }
    otgpu::SinkhornProblem p;
    p.x = TensorView::host(x.data(), {k.B, k.n, k.d});
    p.y = TensorView::host(y.data(), {k.B, k.m, k.d});
    p.cost_kind = k.cost;
    if (k.weights) {
      p.a = TensorView::host(a.data(), {k.B, k.n});
      p.b = TensorView::host(b.data(), {k.B, k.m});
    }
    const auto cpu = otgpu::sinkhorn(p, fixed_iterations(Backend::cpu));
    const auto gpu = otgpu::sinkhorn(p, fixed_iterations(Backend::cuda));
    ASSERT_EQ(gpu.backend, Backend::cuda);
    ASSERT_EQ(gpu.f.size(), cpu.f.size());
    ASSERT_EQ(gpu.g.size(), cpu.g.size());
    double scale = 0;  // the largest mean cost of the batch
    for (const auto& r : cpu.problems) scale = std::max(scale, r.eps / 0.05);
    // The origin's tolerance (test_sinkhorn_gpu.cpp): fp32 round-off of scores of size
    // C / eps, amplified mildly by the iterations.
    auto expect_close = [&](const std::vector<double>& gv, const std::vector<double>& cv,
                            const char* what) {
      double worst = 0;
      std::size_t at = 0;
      for (std::size_t i = 0; i < gv.size(); ++i) {
        const double err = std::abs(gv[i] - cv[i]) / (2e-4 * scale + 2e-5 * std::abs(cv[i]));
        if (err > worst) {
          worst = err;
          at = i;
        }
      }
      EXPECT_LE(worst, 1.0) << what << "[" << at << "]: gpu " << gv[at] << " cpu " << cv[at];
    };
    expect_close(gpu.f, cpu.f, "f");
    expect_close(gpu.g, cpu.g, "g");
    for (std::size_t q = 0; q < cpu.problems.size(); ++q) {
      const auto& c = cpu.problems[q];
      const auto& g = gpu.problems[q];
      EXPECT_NEAR(g.eps, c.eps, 1e-6 * c.eps) << "problem " << q;
      EXPECT_EQ(g.iterations, c.iterations) << "problem " << q;
      EXPECT_NEAR(g.ot_eps, c.ot_eps, 3e-4 * scale + 1e-4 * std::abs(c.ot_eps)) << "problem " << q;
      EXPECT_NEAR(g.transport_cost, c.transport_cost, 3e-4 * scale + 1e-4 * c.transport_cost)
          << "problem " << q;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Paths, SinkhornOffsetGpu,
    ::testing::Values(SinkCase{"online_d2", 1, 700, 600, 2},
                      SinkCase{"online_d16_weighted", 1, 500, 400, 16, CostKind::sqeuclidean, true},
                      SinkCase{"online_d64", 1, 300, 350, 64},
                      SinkCase{"small_kernel_d8", 4, 100, 120, 8},
                      SinkCase{"euclidean_d3", 2, 300, 200, 3, CostKind::euclidean}),
    [](const ::testing::TestParamInfo<SinkCase>& param_info) { return param_info.param.name; });

// ------------------------------------------------------------------ couplings --

/// K problems of bs points on a grid of spacing 1 in d = 2 (the nearest other point of
/// a y is at distance >= 0.9), x = offset + grid, y = a permutation of x plus noise of
/// at most 0.05: the optimal coupling is that permutation with a cost margin of about
/// 0.8 per pair, 80 eps at eps = 0.01, so exact and entropic pairs are unambiguous.
struct GridClouds {
  std::int64_t K = 2, bs = 36, d = 2;
  std::vector<double> x, y;
  std::vector<std::int64_t> partner;  ///< [K, bs]: y row of x row i
};

GridClouds grid_clouds(double offset) {
  GridClouds g;
  const auto K = static_cast<std::size_t>(g.K), bs = static_cast<std::size_t>(g.bs);
  g.x.resize(K * bs * 2);
  g.y.resize(K * bs * 2);
  g.partner.resize(K * bs);
  std::mt19937_64 rng(91);
  std::uniform_real_distribution<double> noise(-0.025, 0.025);
  for (std::size_t k = 0; k < K; ++k) {
    std::vector<std::size_t> perm(bs);
    std::iota(perm.begin(), perm.end(), std::size_t{0});
    std::shuffle(perm.begin(), perm.end(), rng);
    for (std::size_t i = 0; i < bs; ++i) {
      g.x[(k * bs + i) * 2] = offset + static_cast<double>(i % 6);
      g.x[(k * bs + i) * 2 + 1] = offset + static_cast<double>(i / 6);
    }
    for (std::size_t i = 0; i < bs; ++i) {
      const std::size_t j = perm[i];  // y row j is x row i, moved a little
      g.partner[k * bs + i] = static_cast<std::int64_t>(j);
      for (std::size_t q = 0; q < 2; ++q)
        g.y[(k * bs + j) * 2 + q] = g.x[(k * bs + i) * 2 + q] + noise(rng);
    }
  }
  return g;
}

TEST(CouplingOffsetGpu, PairsAreTheCpusOnCloudsWithClearMargins) {
  REQUIRE_GPU();
  for (double offset : kOffsets) {
    const GridClouds g = grid_clouds(offset);
    const auto x0 = TensorView::host(g.x.data(), {g.K, g.bs, g.d});
    const auto x1 = TensorView::host(g.y.data(), {g.K, g.bs, g.d});
    for (auto method : {otgpu::CouplingMethod::exact, otgpu::CouplingMethod::sinkhorn}) {
      SCOPED_TRACE(testing::Message()
                   << "offset " << offset << " method " << otgpu::to_string(method));
      otgpu::CouplingOptions o;
      o.method = method;
      o.pairs = otgpu::CouplingPairs::per_row;
      o.eps = 0.01;
      o.eps_relative = false;
      o.seed = 3;
      o.backend = Backend::cpu;
      const auto cpu = otgpu::couple(x0, x1, o);
      o.backend = Backend::cuda;
      const auto gpu = otgpu::couple(x0, x1, o);
      ASSERT_EQ(gpu.backend, Backend::cuda);
      ASSERT_EQ(gpu.i.size(), cpu.i.size());
      ASSERT_EQ(gpu.i.size(), g.partner.size());
      EXPECT_EQ(gpu.i, cpu.i);
      EXPECT_EQ(gpu.j, cpu.j);
      for (std::size_t t = 0; t < gpu.i.size(); ++t) {
        const std::size_t k = t / static_cast<std::size_t>(g.bs);
        const auto row = static_cast<std::size_t>(gpu.i[t]) + k * static_cast<std::size_t>(g.bs);
        EXPECT_EQ(gpu.j[t], g.partner[row]) << "pair " << t;
      }
      for (std::size_t k = 0; k < gpu.problems.size(); ++k) {
        // Mean matched cost ~ 1e-3 (noise only): the GPU's fp32 costs of centred points
        // are good to ~1e-7 of the cloud's scale.
        EXPECT_NEAR(gpu.problems[k].pair_cost, cpu.problems[k].pair_cost, 1e-5) << "problem " << k;
      }
    }
  }
}

// ----------------------------------------------------------------- assignment --

TEST(AssignmentOffsetGpu, CostsMatchTheCpu) {
  REQUIRE_GPU();
  const std::int64_t K = 2, n = 150, m = 150, d = 3;
  for (double offset : kOffsets) {
    for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean}) {
      SCOPED_TRACE(testing::Message()
                   << "offset " << offset << " kind "
                   << (kind == CostKind::euclidean ? "euclidean" : "sqeuclidean"));
      const auto x = shifted(uniform(static_cast<std::size_t>(K * n * d), 3, -1, 1), offset);
      const auto y = shifted(uniform(static_cast<std::size_t>(K * m * d), 4, -1, 1), offset);
      otgpu::AssignmentProblem p;
      p.cost_kind = kind;
      p.x = TensorView::host(x.data(), {K, n, d});
      p.y = TensorView::host(y.data(), {K, m, d});
      const auto cpu = otgpu::assignment(p, {Backend::cpu});
      const auto gpu = otgpu::assignment(p, {Backend::cuda});
      ASSERT_EQ(gpu.backend, Backend::cuda);
      for (std::int64_t b = 0; b < K; ++b) {
        // The GPU's matching priced in fp64 (the CPU's own formula: differences).
        double on_fp64 = 0;
        for (std::int64_t i = 0; i < n; ++i) {
          const std::int64_t j = gpu.row_to_col[static_cast<std::size_t>(b * n + i)];
          ASSERT_GE(j, 0);
          double s = 0;
          for (std::int64_t q = 0; q < d; ++q) {
            const double diff = x[static_cast<std::size_t>((b * n + i) * d + q)] -
                                y[static_cast<std::size_t>((b * m + j) * d + q)];
            s += diff * diff;
          }
          on_fp64 += kind == CostKind::euclidean ? std::sqrt(s) : s;
        }
        const double ref = cpu.problems[static_cast<std::size_t>(b)].cost;
        // The origin's tolerance (test_assignment_gpu.cpp): 1e-6 relative.
        EXPECT_NEAR(on_fp64, ref, 1e-6 * ref) << "problem " << b;
        EXPECT_NEAR(gpu.problems[static_cast<std::size_t>(b)].cost, ref, 1e-6 * ref)
            << "problem " << b;
      }
    }
  }
}

// --------------------------------------------------------------------- sliced --

double rel_l2(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    num += (a[k] - b[k]) * (a[k] - b[k]);
    den += b[k] * b[k];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(SlicedOffsetGpu, ValuesTermsAndGradientsMatchTheCpu) {
  REQUIRE_GPU();
  const std::int64_t B = 2, n = 1000, m = 800, d = 8;
  for (double offset : kOffsets) {
    SCOPED_TRACE(testing::Message() << "offset " << offset);
    const auto x = shifted(uniform(static_cast<std::size_t>(B * n * d), 1), offset);
    const auto y = shifted(uniform(static_cast<std::size_t>(B * m * d), 2, 0.1, 1.1), offset);
    otgpu::SlicedProblem p;
    p.x = TensorView::host(x.data(), {B, n, d});
    p.y = TensorView::host(y.data(), {B, m, d});
    otgpu::SlicedOptions o;
    o.projections = 32;
    o.p = 2.0;
    o.seed = 42;
    o.gradients = true;
    o.backend = Backend::cpu;
    const auto cpu = otgpu::sliced_wasserstein(p, o);
    o.backend = Backend::cuda;
    const auto gpu = otgpu::sliced_wasserstein(p, o);
    ASSERT_EQ(gpu.backend, Backend::cuda);
    ASSERT_EQ(gpu.per_direction.size(), cpu.per_direction.size());
    // The origin's tolerances (test_sliced_gpu.cpp).
    for (std::size_t k = 0; k < cpu.per_direction.size(); ++k) {
      EXPECT_NEAR(gpu.per_direction[k], cpu.per_direction[k], 2e-4 * cpu.per_direction[k] + 1e-9)
          << "term " << k;
    }
    for (std::size_t k = 0; k < cpu.value.size(); ++k) {
      EXPECT_NEAR(gpu.value[k], cpu.value[k], 1e-4 * cpu.value[k] + 1e-9) << "problem " << k;
    }
    EXPECT_LT(rel_l2(gpu.grad_x, cpu.grad_x), 2e-3);
    EXPECT_LT(rel_l2(gpu.grad_y, cpu.grad_y), 2e-3);
  }
}

}  // namespace
