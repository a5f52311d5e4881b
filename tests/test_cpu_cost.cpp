// The CPU cost kernels of the assignment reference (core/src/cpu_cost.h): the packed
// inner-product kernel against a plain triple loop (edge tiles, several k blocks,
// thread counts), the Gram-form cost against the direct form within the bound it
// returns, and the assignment on Gram-form costs against the one on the direct form.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "cpu_cost.h"
#include "otgpu/assignment.h"

namespace {

using otgpu::CostKind;
using otgpu::cpu::StagedPoints;

std::vector<double> normal(std::size_t count, unsigned seed, double mean = 0, double sd = 1) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd(mean, sd);
  std::vector<double> v(count);
  for (auto& e : v) e = nd(g);
  return v;
}

/// Sets OTGPU_CPU_COST for one scope.
struct CostFormEnv {
  explicit CostFormEnv(const char* value) { setenv("OTGPU_CPU_COST", value, 1); }
  ~CostFormEnv() { unsetenv("OTGPU_CPU_COST"); }
  CostFormEnv(const CostFormEnv&) = delete;
  CostFormEnv& operator=(const CostFormEnv&) = delete;
};

TEST(CpuCost, GramKernelMatchesATripleLoop) {
  // Sizes off every tile and panel multiple (MR in {4, 6, 8}, NR in {4, 8, 16}), d over
  // more than one k block of 256 and m over more than one column chunk of 256.
  struct Size {
    std::int64_t n, m, d;
  };
  for (const Size s : {Size{1, 1, 1}, Size{7, 5, 3}, Size{13, 37, 300}, Size{50, 270, 517}}) {
    const auto x = normal(static_cast<std::size_t>(s.n * s.d), 1);
    const auto y = normal(static_cast<std::size_t>(s.m * s.d), 2);
    for (int threads : {1, 3}) {
      std::vector<double> out(static_cast<std::size_t>(s.n * s.m), -1.0);
      otgpu::cpu::gram_nt(x.data(), y.data(), s.n, s.m, s.d, out.data(), threads);
      for (std::int64_t i = 0; i < s.n; ++i) {
        for (std::int64_t j = 0; j < s.m; ++j) {
          double ref = 0, mag = 0;
          for (std::int64_t k = 0; k < s.d; ++k) {
            ref +=
                x[static_cast<std::size_t>(i * s.d + k)] * y[static_cast<std::size_t>(j * s.d + k)];
            mag += std::abs(x[static_cast<std::size_t>(i * s.d + k)] *
                            y[static_cast<std::size_t>(j * s.d + k)]);
          }
          ASSERT_NEAR(out[static_cast<std::size_t>(i * s.m + j)], ref, 1e-14 * mag + 1e-300)
              << s.n << "x" << s.m << "x" << s.d << " threads " << threads << " at " << i << ","
              << j;
        }
      }
    }
  }
}

TEST(CpuCost, GramFormIsWithinItsBoundOfTheDirectForm) {
  // Far from the origin (x, y ~ N(50, 1)): without the shift, |x|^2 ~ d 2500 would
  // cancel to the cost ~ 2 d and lose ~4 digits.
  for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean, CostKind::neg_dot}) {
    for (std::int64_t d : {16, 700}) {
      StagedPoints p;
      p.n = 33;
      p.m = 29;
      p.d = d;
      p.kind = kind;
      p.x = normal(static_cast<std::size_t>(p.n * d), 3, 50.0);
      p.y = normal(static_cast<std::size_t>(p.m * d), 4, 50.0);
      std::vector<double> direct(static_cast<std::size_t>(p.n * p.m)), gram(direct.size());
      otgpu::cpu::cost_direct(p, direct.data(), 2);
      const double delta = otgpu::cpu::cost_gram(p, gram.data(), 2);
      double worst = 0, top = 0;
      for (std::int64_t i = 0; i < p.n; ++i) {
        for (std::int64_t j = 0; j < p.m; ++j) {
          const double dc = direct[static_cast<std::size_t>(i * p.m + j)];
          EXPECT_EQ(dc, otgpu::cpu::pair_cost(p, i, j));
          worst = std::max(worst, std::abs(gram[static_cast<std::size_t>(i * p.m + j)] - dc));
          top = std::max(top, std::abs(dc));
        }
      }
      EXPECT_LE(worst, delta) << "kind " << static_cast<int>(kind) << " d " << d;
      // The bound is not vacuous: far below the costs themselves (euclidean's is the
      // square root of the squared cost's bound, which is loose near 0).
      EXPECT_LT(delta, (kind == CostKind::euclidean ? 1e-5 : 1e-9) * top)
          << "kind " << static_cast<int>(kind) << " d " << d;
    }
  }
}

TEST(CpuCost, AssignmentOnTheGramFormEqualsTheDirectForm) {
  // Square, wide and tall problems, a batch of two; the Gram form's report (cost,
  // potentials, certificate) is that of the direct form to round-off.
  struct Shape {
    std::int64_t n, m;
  };
  const std::int64_t K = 2, d = 96;
  for (const Shape s : {Shape{40, 40}, Shape{30, 45}, Shape{45, 30}}) {
    const auto x = normal(static_cast<std::size_t>(K * s.n * d), 5, 3.0);
    const auto y = normal(static_cast<std::size_t>(K * s.m * d), 6, 3.5);
    for (CostKind kind : {CostKind::sqeuclidean, CostKind::euclidean, CostKind::neg_dot}) {
      otgpu::AssignmentProblem p;
      p.cost_kind = kind;
      p.x = otgpu::TensorView::contiguous(x.data(), otgpu::DType::f64, otgpu::MemorySpace::host,
                                          {K, s.n, d});
      p.y = otgpu::TensorView::contiguous(y.data(), otgpu::DType::f64, otgpu::MemorySpace::host,
                                          {K, s.m, d});
      otgpu::AssignmentOptions o;
      o.backend = otgpu::Backend::cpu;
      otgpu::AssignmentResult direct, gram;
      {
        const CostFormEnv env("direct");
        direct = otgpu::assignment(p, o);
      }
      {
        const CostFormEnv env("gram");
        gram = otgpu::assignment(p, o);
      }
      for (std::int64_t b = 0; b < K; ++b) {
        const auto& rd = direct.problems[static_cast<std::size_t>(b)];
        const auto& rg = gram.problems[static_cast<std::size_t>(b)];
        const double scale = std::max(1.0, std::abs(rd.cost));
        EXPECT_NEAR(rg.cost, rd.cost, 1e-12 * scale) << s.n << "x" << s.m;
        EXPECT_LE(std::abs(rg.gap), 1e-12 * scale);
        EXPECT_LE(rg.max_violation, 1e-12 * scale);
      }
      // Generic random points: the optimum is unique, so the matchings agree.
      EXPECT_EQ(gram.row_to_col, direct.row_to_col) << s.n << "x" << s.m;
    }
  }
}

TEST(CpuCost, StridedAndShiftedPointViewsEqualContiguous) {
  // x stored coordinate-major ([d, n] memory read as [n, d] with strides {1, n}) and y
  // as every other row of a larger buffer: the staging's strided path against its
  // contiguous runs, on both cost forms.
  const std::int64_t n = 24, m = 24, d = 40;
  const auto x = normal(static_cast<std::size_t>(n * d), 7);
  const auto y = normal(static_cast<std::size_t>(m * d), 8);
  std::vector<double> xt(x.size()), y2(2 * y.size(), 1e300);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < d; ++k) {
      xt[static_cast<std::size_t>(k * n + i)] = x[static_cast<std::size_t>(i * d + k)];
    }
  }
  for (std::int64_t j = 0; j < m; ++j) {
    std::copy(y.begin() + j * d, y.begin() + (j + 1) * d, y2.begin() + 2 * j * d);
  }
  otgpu::AssignmentProblem dense, strided;
  dense.x = otgpu::TensorView::host(x.data(), {n, d});
  dense.y = otgpu::TensorView::host(y.data(), {m, d});
  strided.x = otgpu::TensorView::host(xt.data(), {n, d});
  strided.x.strides[0] = 1;
  strided.x.strides[1] = n;
  strided.y = otgpu::TensorView::host(y2.data(), {m, d});
  strided.y.strides[0] = 2 * d;
  otgpu::AssignmentOptions o;
  o.backend = otgpu::Backend::cpu;
  for (const char* form : {"direct", "gram"}) {
    const CostFormEnv env(form);
    const auto a = otgpu::assignment(dense, o), b = otgpu::assignment(strided, o);
    EXPECT_EQ(a.row_to_col, b.row_to_col) << form;
    EXPECT_EQ(a.problems[0].cost, b.problems[0].cost) << form;
    EXPECT_EQ(a.u, b.u) << form;
  }
}

TEST(CpuCost, UnknownCostFormIsRejected) {
  const CostFormEnv env("blas");
  try {
    (void)otgpu::cpu::choose_cost_form(CostKind::sqeuclidean, 64);
    ADD_FAILURE() << "no exception";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("OTGPU_CPU_COST"), std::string::npos) << e.what();
  }
}

}  // namespace
