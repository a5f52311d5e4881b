// The arithmetic of the online half-step (otgpu/detail/online_lse.h), run on the CPU in
// fp32 exactly as the kernel orders it (FMA chains, tiles of 64 columns, chunks of K
// scores, tree sums) and compared with an fp64 log-sum-exp of the same data: the norm
// form |x|^2 + |y|^2 - 2<x,y> on centered points, the finite-sentinel LSE, the merge
// of column splits. ex2 is exp2 on the host (the device's ex2.approx adds ~2 ulp per
// term, far below the bounds here).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "otgpu/detail/online_lse.h"

namespace {

namespace ol = otgpu::detail::online;

constexpr int kTile = 64;  // kernels::geometry::kOnlineTileCols
/// Scores per rescale (kernels::geometry::online_chunk).
constexpr int chunk_of(int d) { return d <= 4 ? 16 : 8; }

struct Cloud {
  int n = 0;
  std::vector<float> p;  // [n, D] as the caller passes them (fp32)
};

template <int D>
Cloud make_cloud(int n, double offset, double spread, std::mt19937& rng) {
  std::normal_distribution<double> g(0.0, spread);
  Cloud c;
  c.n = n;
  c.p.resize(static_cast<std::size_t>(n) * D);
  for (auto& v : c.p) v = static_cast<float>(offset + g(rng));
  return c;
}

/// What staging does: subtract the mean of y (computed in double) in double, round to
/// fp32 (sinkhorn_stage.cu: mean_rows_kernel, subtract_center_kernel).
template <int D>
void center(Cloud& x, Cloud& y) {
  double mean[D] = {};
  for (int j = 0; j < y.n; ++j)
    for (int k = 0; k < D; ++k) mean[k] += y.p[static_cast<std::size_t>(j) * D + k];
  for (double& m : mean) m /= y.n;
  for (Cloud* c : {&x, &y})
    for (int i = 0; i < c->n; ++i)
      for (int k = 0; k < D; ++k) {
        float& v = c->p[static_cast<std::size_t>(i) * D + k];
        v = static_cast<float>(static_cast<double>(v) - mean[k]);
      }
}

template <int D>
double sqdist64(const float* a, const float* b) {
  double s = 0;
  for (int k = 0; k < D; ++k) {
    const double t = static_cast<double>(a[k]) - static_cast<double>(b[k]);
    s += t * t;
  }
  return s;
}

/// fp64 reference potential of row i: -eps LSE_j(log b_j + (g_j - C_ij)/eps) on the
/// uncentered points as given.
template <int D>
double ref_potential(const float* xi, const Cloud& y, const std::vector<float>& logb,
                     const std::vector<float>& g, double eps) {
  double mx = -std::numeric_limits<double>::infinity();
  std::vector<double> t(static_cast<std::size_t>(y.n));
  for (int j = 0; j < y.n; ++j) {
    if (logb[j] == -INFINITY) {  // a zero weight, whatever g_j
      t[j] = -std::numeric_limits<double>::infinity();
      continue;
    }
    t[j] =
        static_cast<double>(logb[j]) +
        (static_cast<double>(g[j]) - sqdist64<D>(xi, &y.p[static_cast<std::size_t>(j) * D])) / eps;
    mx = std::max(mx, t[j]);
  }
  if (mx == -std::numeric_limits<double>::infinity())
    return std::numeric_limits<double>::infinity();
  double s = 0;
  for (double v : t) s += std::exp(v - mx);
  return -eps * (mx + std::log(s));
}

/// The kernel's fp32 computation of row i's potential over columns [begin, end), as a
/// partial (max, sum) state with the row constant already subtracted from the max
/// (write_row), or merged to the potential by the caller.
template <int D, int K, bool kNormForm>
ol::Lse kernel_partial(const float* xi, const Cloud& y, const std::vector<float>& logb,
                       const std::vector<float>& g, float eps, int begin, int end) {
  const float scale = ol::kLog2e / eps;
  float x[D];
  float rc = 0.f;
  if (kNormForm) {
    rc = scale * ol::norm2<D>(xi);
    for (int k = 0; k < D; ++k) x[k] = (2.f * scale) * xi[k];
  } else {
    for (int k = 0; k < D; ++k) x[k] = xi[k];
  }
  ol::Lse acc = ol::lse_empty();
  for (int j0 = begin; j0 < end; j0 += kTile) {
    float ys[kTile][D], hs[kTile];
    for (int c = 0; c < kTile; ++c) {
      const int j = j0 + c;
      if (j < end) {
        for (int k = 0; k < D; ++k) ys[c][k] = y.p[static_cast<std::size_t>(j) * D + k];
        hs[c] = kNormForm ? ol::col_term_sq(logb[j], g[j], ol::norm2<D>(ys[c]), scale)
                          : ol::col_term(logb[j], g[j], scale);
      } else {
        for (int k = 0; k < D; ++k) ys[c][k] = 0.f;
        hs[c] = -INFINITY;
      }
    }
    for (int jj = 0; jj < kTile; jj += K) {
      float s[K];
      for (int q = 0; q < K; ++q) {
        s[q] = kNormForm ? ol::score_sq<D>(x, ys[jj + q], hs[jj + q])
                         : ol::fma32(-scale, ol::sqdist<D>(x, ys[jj + q]), hs[jj + q]);
      }
      ol::lse_push(acc, s);
    }
  }
  acc.max -= rc;
  return acc;
}

template <int D, int K, bool kNormForm>
double kernel_potential(const float* xi, const Cloud& y, const std::vector<float>& logb,
                        const std::vector<float>& g, float eps) {
  const ol::Lse acc = kernel_partial<D, K, kNormForm>(xi, y, logb, g, eps, 0, y.n);
  return ol::potential(ol::lse_value(acc), 1.f, eps);
}

struct Case {
  double max_err = 0;      // max_i |f_i - f_i^ref| / mean cost
  double max_err_eps = 0;  // the same in units of eps
};

/// Runs a half-step of n rows against m columns in fp32 (kernel order) and fp64.
template <int D, int K, bool kNormForm>
Case run_case(double offset, double eps_rel, bool centered, unsigned seed) {
  std::mt19937 rng(seed);
  const int n = 96, m = 200;  // m not a multiple of the tile: a padded last tile
  Cloud x = make_cloud<D>(n, offset, 1.0, rng);
  Cloud y = make_cloud<D>(m, offset, 1.0, rng);
  // A second cluster of x farther out: |x|^2 well above the mean cost for some rows.
  for (int i = 0; i < n / 4; ++i) x.p[static_cast<std::size_t>(i) * D] += 3.0f;
  double mean_cost = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j)
      mean_cost +=
          sqdist64<D>(&x.p[static_cast<std::size_t>(i) * D], &y.p[static_cast<std::size_t>(j) * D]);
  mean_cost /= static_cast<double>(n) * m;
  const double eps = eps_rel * mean_cost;
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  std::vector<float> logb(m), g(m);
  for (int j = 0; j < m; ++j) {
    logb[j] = static_cast<float>(std::log((1.0 + u(rng)) / m));
    g[j] = static_cast<float>(mean_cost * u(rng));
  }
  logb[7] = -INFINITY;  // a zero weight
  g[7] = INFINITY;      // next to an infinite potential: must not make NaN
  std::vector<double> ref(n);
  for (int i = 0; i < n; ++i)
    ref[i] = ref_potential<D>(&x.p[static_cast<std::size_t>(i) * D], y, logb, g, eps);
  Cloud xc = x, yc = y;
  if (centered) center<D>(xc, yc);
  Case c;
  for (int i = 0; i < n; ++i) {
    const double f = kernel_potential<D, K, kNormForm>(&xc.p[static_cast<std::size_t>(i) * D], yc,
                                                       logb, g, static_cast<float>(eps));
    EXPECT_TRUE(std::isfinite(ref[i])) << i;
    // NaN or inf counts as an infinite error (std::max would drop a NaN).
    const double e =
        std::isfinite(f) ? std::abs(f - ref[i]) : std::numeric_limits<double>::infinity();
    c.max_err = std::max(c.max_err, e / mean_cost);
    c.max_err_eps = std::max(c.max_err_eps, e / eps);
  }
  return c;
}

// The acceptance bound: potentials within 2e-6 of the mean cost (fp32 relative to the
// cost scale) and within 0.02 eps, at eps down to 1e-4 of the mean cost, for clouds at
// the origin and offset by 1e4 (then centered as staging does).
constexpr double kCostTol = 2e-6;
constexpr double kEpsTol = 0.02;

template <int D>
void expect_norm_form_accurate(double offset) {
  for (double eps_rel : {1.0, 1e-2, 1e-4}) {
    const Case c = run_case<D, chunk_of(D), true>(offset, eps_rel, true, 7u + D);
    std::printf("  norm form d=%d offset=%g eps=%g*mean: max |df| = %.2e mean cost = %.2e eps\n", D,
                offset, eps_rel, c.max_err, c.max_err_eps);
    EXPECT_LT(c.max_err, kCostTol) << "d=" << D << " offset=" << offset << " eps=" << eps_rel;
    EXPECT_LT(c.max_err_eps, kEpsTol) << "d=" << D << " offset=" << offset << " eps=" << eps_rel;
  }
}

}  // namespace

TEST(OnlineLseCpu, NormFormOnCenteredDataIsFp32Accurate) {
  expect_norm_form_accurate<1>(0.0);
  expect_norm_form_accurate<2>(0.0);
  expect_norm_form_accurate<16>(0.0);
  expect_norm_form_accurate<64>(0.0);
}

TEST(OnlineLseCpu, NormFormWithOffset1e4AfterCentering) {
  expect_norm_form_accurate<2>(1e4);
  expect_norm_form_accurate<16>(1e4);
  expect_norm_form_accurate<64>(1e4);
}

// The control: the same offset without centering loses everything in fp32 (|x|^2 ~ 1e8
// d against costs ~ 2d): the test above would catch a staging that forgot to center.
TEST(OnlineLseCpu, NormFormWithoutCenteringFailsTheBound) {
  const Case c = run_case<2, 16, true>(1e4, 1e-2, false, 9u);
  std::printf("  uncentered norm form d=2 offset=1e4: max |df| = %.2e mean cost\n", c.max_err);
  EXPECT_GT(c.max_err, 100 * kCostTol);
}

// The difference form (the Euclidean kernels' distance) meets the same bound.
TEST(OnlineLseCpu, DifferenceFormMeetsTheSameBound) {
  for (double eps_rel : {1.0, 1e-4}) {
    const Case c = run_case<16, 8, false>(1e4, eps_rel, true, 11u);
    EXPECT_LT(c.max_err, kCostTol) << eps_rel;
    EXPECT_LT(c.max_err_eps, kEpsTol) << eps_rel;
  }
}

TEST(OnlineLseCpu, SentinelStateAbsorbsInfiniteScoresWithoutNaN) {
  ol::Lse acc = ol::lse_empty();
  const float none[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  ol::lse_push(acc, none);
  EXPECT_EQ(acc.max, ol::kSentinel);
  EXPECT_EQ(acc.sum, 0.f);
  EXPECT_EQ(ol::lse_value(acc), -INFINITY);
  EXPECT_EQ(ol::potential(ol::lse_value(acc), 0.5f, 0.1f), INFINITY);  // a row with no mass
  const float some[4] = {-INFINITY, 3.f, -INFINITY, 1.f};
  ol::lse_push(acc, some);
  ol::lse_push(acc, none);
  EXPECT_FLOAT_EQ(ol::lse_value(acc), static_cast<float>(std::log2(8.0 + 2.0)));
  // A later chunk with a larger max rescales the earlier sum.
  const float big[4] = {10.f, -INFINITY, -INFINITY, -INFINITY};
  ol::lse_push(acc, big);
  EXPECT_FLOAT_EQ(ol::lse_value(acc), static_cast<float>(std::log2(1024.0 + 10.0)));
  EXPECT_FALSE(std::isnan(acc.sum));
}

TEST(OnlineLseCpu, TreeSumIsPairwise) {
  // 1 + 15 x 2^-24: a sequential fp32 sum from the front drops every small term (each
  // is half an ulp of 1); the tree adds them to each other first and keeps 14 of 15.
  float v[16];
  v[0] = 1.f;
  for (int q = 1; q < 16; ++q) v[q] = std::ldexp(1.f, -24);
  float seq = 0.f;
  for (float t : v) seq += t;
  EXPECT_EQ(seq, 1.f);
  EXPECT_EQ(ol::tree_sum(v), 1.f + 7 * std::ldexp(1.f, -23));
}

TEST(OnlineLseCpu, SplitPartialsMergeToTheWholeRow) {
  std::mt19937 rng(3);
  constexpr int D = 4;
  Cloud x = make_cloud<D>(8, 0.0, 1.0, rng);
  Cloud y = make_cloud<D>(5 * kTile + 17, 0.0, 1.0, rng);
  std::vector<float> logb(y.n, std::log(1.f / y.n)), g(y.n, 0.f);
  for (int j = 0; j < y.n; j += 3) g[j] = 0.7f;
  const float eps = 0.05f;
  for (int i = 0; i < x.n; ++i) {
    const float* xi = &x.p[static_cast<std::size_t>(i) * D];
    const ol::Lse whole = kernel_partial<D, 16, true>(xi, y, logb, g, eps, 0, y.n);
    // Splits of whole tiles, the last one short, plus an empty one (identity).
    ol::Lse merged = ol::lse_empty();
    const int cuts[] = {0, 2 * kTile, 3 * kTile, y.n, y.n};
    for (int z = 0; z + 1 < 5; ++z) {
      const ol::Lse part = cuts[z] < cuts[z + 1] ? kernel_partial<D, 16, true>(xi, y, logb, g, eps,
                                                                               cuts[z], cuts[z + 1])
                                                 : ol::lse_empty();
      merged = ol::lse_merge(merged, part);
    }
    EXPECT_NEAR(ol::lse_value(merged), ol::lse_value(whole),
                1e-5f * std::abs(ol::lse_value(whole)) + 1e-5f);
    const double ref = ref_potential<D>(xi, y, logb, g, eps);
    EXPECT_NEAR(ol::potential(ol::lse_value(merged), 1.f, eps), ref, 1e-5);
  }
}

TEST(OnlineLseCpu, EuclideanRootViaRsqrt) {
  EXPECT_LT(ol::euclid_from_sq(0.f), 1e-14f);
  EXPECT_FALSE(std::isnan(ol::euclid_from_sq(0.f)));
  for (float c2 : {1e-20f, 1e-6f, 0.5f, 2.f, 1e6f, 3e30f}) {
    EXPECT_NEAR(ol::euclid_from_sq(c2), std::sqrt(c2), 1e-6f * std::sqrt(c2)) << c2;
  }
}
