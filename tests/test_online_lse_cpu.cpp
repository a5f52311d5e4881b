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
/// (write_row), or merged to the potential by the caller. Like the kernel's tile loader,
/// columns are masked against the row's column count y.n, not against `end`: a split
/// range that is not a whole number of tiles would count the straddling columns twice
/// here as on the device. An empty range gives the kernel's identity partial
/// (sentinel - rc, 0).
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
      if (j < y.n) {
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
/// eps = eps_rel x the mean cost, or eps_rel x max C_ij with eps_of_max (the GPU's
/// resolvable-eps floor is stated against max |C|).
template <int D, int K, bool kNormForm>
Case run_case(double offset, double eps_rel, bool centered, unsigned seed,
              bool eps_of_max = false) {
  std::mt19937 rng(seed);
  const int n = 96, m = 200;  // m not a multiple of the tile: a padded last tile
  Cloud x = make_cloud<D>(n, offset, 1.0, rng);
  Cloud y = make_cloud<D>(m, offset, 1.0, rng);
  // A second cluster of x farther out: |x|^2 well above the mean cost for some rows.
  for (int i = 0; i < n / 4; ++i) x.p[static_cast<std::size_t>(i) * D] += 3.0f;
  double mean_cost = 0, max_cost = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) {
      const double c =
          sqdist64<D>(&x.p[static_cast<std::size_t>(i) * D], &y.p[static_cast<std::size_t>(j) * D]);
      mean_cost += c;
      max_cost = std::max(max_cost, c);
    }
  mean_cost /= static_cast<double>(n) * m;
  const double eps = eps_rel * (eps_of_max ? max_cost : mean_cost);
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

// ---- review of issue 10's kernels: splits, masks, tails, the one-pass weighted mean ----

namespace {

/// Column range of split z: kernels/src/sinkhorn_online.cu split_range with
/// geometry::online_split_span (whole tiles per split; the trailing splits may be empty,
/// begin >= n_cols, and then run no tile).
void split_range(int n_cols, int splits, int z, int& begin, int& end) {
  if (splits <= 1) {
    begin = 0;
    end = n_cols;
    return;
  }
  const int tiles = (n_cols + kTile - 1) / kTile;
  const int span = (tiles + splits - 1) / splits * kTile;
  begin = z * span;
  end = std::min(begin + span, n_cols);
}

/// The split half-step as launched: one partial per split (write_row), merged from the
/// empty state in split order (merge_splits_kernel), then the potential.
template <int D, int K>
float kernel_split_potential(const float* xi, const Cloud& y, const std::vector<float>& logb,
                             const std::vector<float>& g, float eps, int splits, float lambda,
                             int* empty_splits = nullptr) {
  ol::Lse merged = ol::lse_empty();
  for (int z = 0; z < splits; ++z) {
    int begin = 0, end = 0;
    split_range(y.n, splits, z, begin, end);
    const ol::Lse part = kernel_partial<D, K, true>(xi, y, logb, g, eps, begin, end);
    if (begin >= end) {
      // The identity partial: no mass, and a max no real partial can fall below.
      EXPECT_EQ(part.sum, 0.f);
      EXPECT_LE(part.max, ol::kSentinel);
      if (empty_splits != nullptr) ++*empty_splits;
    }
    merged = ol::lse_merge(merged, part);
  }
  return ol::potential(ol::lse_value(merged), lambda, eps);
}

/// fp64 potential of row i over the given (already centered) points, for comparisons
/// of the kernel arithmetic alone.
template <int D>
double ref_centered(const float* xi, const Cloud& y, const std::vector<float>& logb,
                    const std::vector<float>& g, double eps) {
  return ref_potential<D>(xi, y, logb, g, eps);
}

struct SplitData {
  Cloud x, y;
  std::vector<float> logb, g;
  double mean_cost = 0;
};

/// Centered clouds (rows partly offset, so the row constant scale |x|^2 is large) and
/// random weights and potentials for m columns.
template <int D>
SplitData split_data(int n, int m, unsigned seed) {
  std::mt19937 rng(seed);
  SplitData s;
  s.x = make_cloud<D>(n, 0.0, 1.0, rng);
  s.y = make_cloud<D>(m, 0.0, 1.0, rng);
  for (int i = 0; i < n / 2; ++i) s.x.p[static_cast<std::size_t>(i) * D] += 6.0f;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j)
      s.mean_cost += sqdist64<D>(&s.x.p[static_cast<std::size_t>(i) * D],
                                 &s.y.p[static_cast<std::size_t>(j) * D]);
  s.mean_cost /= static_cast<double>(n) * m;
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  s.logb.resize(static_cast<std::size_t>(m));
  s.g.resize(static_cast<std::size_t>(m));
  for (int j = 0; j < m; ++j) {
    s.logb[j] = static_cast<float>(std::log((1.0 + u(rng)) / m));
    s.g[j] = static_cast<float>(s.mean_cost * u(rng));
  }
  return s;
}

}  // namespace

// Every column count against every split count the kernel accepts, including splits
// past the last tile (empty: the identity partial sentinel - rc) and a short last tile:
// the merged potential is the whole row's, within the accuracy bound of the unsplit form.
TEST(OnlineLseCpu, KernelSplitRuleWithEmptySplitsMatchesTheWholeRow) {
  constexpr int D = 2;
  int empty = 0;
  for (int m : {1, 63, 64, 65, 200, 5 * kTile + 17}) {
    const SplitData s = split_data<D>(6, m, 100u + static_cast<unsigned>(m));
    const double eps = 1e-2 * s.mean_cost;
    for (int splits : {1, 2, 3, 5, 8, 16}) {
      for (int i = 0; i < s.x.n; ++i) {
        const float* xi = &s.x.p[static_cast<std::size_t>(i) * D];
        const double ref = ref_centered<D>(xi, s.y, s.logb, s.g, eps);
        const float f = kernel_split_potential<D, 16>(xi, s.y, s.logb, s.g, static_cast<float>(eps),
                                                      splits, 1.f, &empty);
        ASSERT_TRUE(std::isfinite(f)) << "m=" << m << " splits=" << splits << " row " << i;
        EXPECT_LT(std::abs(f - ref), kCostTol * s.mean_cost + kEpsTol * eps)
            << "m=" << m << " splits=" << splits << " row " << i;
      }
    }
  }
  EXPECT_GT(empty, 0);  // the identity partial was exercised
}

// A split whose columns all have zero weight (one next to a +inf potential) writes the
// identity partial; the merge then equals the row over the other splits. A row whose
// columns all have zero weight gets +inf, with or without splits and for lambda < 1:
// the finite sentinel (-1e30, i.e. ~7e29 eps) must never come out as a potential.
TEST(OnlineLseCpu, MaskedSplitsAndMasslessRowsNeverLeakTheSentinel) {
  constexpr int D = 4;
  const int m = 5 * kTile + 17;  // 6 tiles: 3 splits of 2 tiles, the last one short
  SplitData s = split_data<D>(8, m, 21u);
  const double eps = 1e-3 * s.mean_cost;
  for (int j = 2 * kTile; j < 4 * kTile; ++j) {
    s.logb[j] = -INFINITY;
    if (j % 2 == 0) s.g[j] = INFINITY;
  }
  for (int i = 0; i < s.x.n; ++i) {
    const float* xi = &s.x.p[static_cast<std::size_t>(i) * D];
    const double ref = ref_centered<D>(xi, s.y, s.logb, s.g, eps);
    for (int splits : {1, 3, 4}) {
      const float f =
          kernel_split_potential<D, 16>(xi, s.y, s.logb, s.g, static_cast<float>(eps), splits, 1.f);
      ASSERT_TRUE(std::isfinite(f)) << splits;
      EXPECT_LT(std::abs(f - ref), kCostTol * s.mean_cost + kEpsTol * eps) << splits << " " << i;
    }
  }
  std::fill(s.logb.begin(), s.logb.end(), -INFINITY);
  for (int i = 0; i < s.x.n; ++i) {
    const float* xi = &s.x.p[static_cast<std::size_t>(i) * D];
    for (int splits : {1, 2, 7}) {
      for (float lambda : {1.f, 0.5f}) {
        const float f = kernel_split_potential<D, 16>(xi, s.y, s.logb, s.g, static_cast<float>(eps),
                                                      splits, lambda);
        EXPECT_EQ(f, INFINITY) << "splits=" << splits << " lambda=" << lambda << " row " << i;
      }
    }
  }
}

// The merge of partials is the LSE of the union whatever the order and whichever side is
// empty; identity partials carrying different row constants (sentinel - rc) change nothing.
TEST(OnlineLseCpu, MergeTreatsIdentityPartialsAsEmpty) {
  const ol::Lse real{3.f, 1.5f};
  for (float rc : {0.f, 1e4f, 1e12f}) {
    const ol::Lse empty{ol::kSentinel - rc, 0.f};
    for (const ol::Lse& r : {ol::lse_merge(real, empty), ol::lse_merge(empty, real),
                             ol::lse_merge(ol::lse_merge(ol::lse_empty(), empty), real)}) {
      EXPECT_EQ(r.max, real.max) << rc;
      EXPECT_EQ(r.sum, real.sum) << rc;
    }
    const ol::Lse none = ol::lse_merge(ol::lse_merge(ol::lse_empty(), empty), empty);
    EXPECT_EQ(none.sum, 0.f);
    EXPECT_EQ(ol::lse_value(none), -INFINITY);
  }
}

// At the GPU's smallest accepted eps (3.6e-6 max|C|, detail::min_resolvable_eps at 5%
// of a plan entry), on clouds offset by 1e4 and centered, the folded column term
// h_j = log2(e) log b_j + scale (g_j - |y_j|^2) and the scores stay finite and the
// potentials stay within the floor's own 5% of eps.
TEST(OnlineLseCpu, FoldedColumnTermAtTheEpsFloor) {
  for (double offset : {0.0, 1e4}) {
    const Case c = run_case<2, 16, true>(offset, 3.6e-6, true, 31u, /*eps_of_max=*/true);
    std::printf("  eps floor d=2 offset=%g: max |df| = %.2e mean cost = %.2e eps\n", offset,
                c.max_err, c.max_err_eps);
    EXPECT_LT(c.max_err_eps, 0.05) << offset;
    const Case c16 = run_case<16, 8, true>(offset, 3.6e-6, true, 32u, /*eps_of_max=*/true);
    EXPECT_LT(c16.max_err_eps, 0.05) << offset;
  }
}

namespace {

/// online_weighted_mean_fixed_kernel for one row, in its order: chunks of 8 columns of a
/// 64-column tile, one running max for the LSE and the weighted sum (rescaled once per
/// chunk), the balanced potential from the same state. Mode 0: mean of y_j; mode 1
/// (Euclidean only): mean of (x_i - y_j)/|x_i - y_j|, 0 for x_i = y_j.
template <int D, bool kEuclid>
void kernel_weighted_mean(const float* xi, const Cloud& y, const std::vector<float>& logb,
                          const std::vector<float>& g, float eps, int mode, float* mean,
                          float& pot) {
  constexpr int K = 8;
  const float scale = ol::kLog2e / eps;
  float x[D], rc = 0.f;
  if (kEuclid) {
    for (int k = 0; k < D; ++k) x[k] = xi[k];
  } else {
    rc = scale * ol::norm2<D>(xi);
    for (int k = 0; k < D; ++k) x[k] = (2.f * scale) * xi[k];
  }
  float acc[D] = {};
  ol::Lse st = ol::lse_empty();
  for (int j0 = 0; j0 < y.n; j0 += kTile) {
    float ys[kTile][D], hs[kTile];
    for (int c = 0; c < kTile; ++c) {
      const int j = j0 + c;
      if (j < y.n) {
        for (int k = 0; k < D; ++k) ys[c][k] = y.p[static_cast<std::size_t>(j) * D + k];
        hs[c] = kEuclid ? ol::col_term(logb[j], g[j], scale)
                        : ol::col_term_sq(logb[j], g[j], ol::norm2<D>(ys[c]), scale);
      } else {
        for (int k = 0; k < D; ++k) ys[c][k] = 0.f;
        hs[c] = -INFINITY;
      }
    }
    for (int jj = 0; jj < kTile; jj += K) {
      float s[K], inv[K];
      for (int q = 0; q < K; ++q) {
        const float* yc = ys[jj + q];
        if (kEuclid) {
          const float c2 = ol::sqdist<D>(x, yc);
          const float c2m = std::max(c2, 1e-30f);
          const float r = ol::rsqrt(c2m);
          s[q] = ol::fma32(-scale, c2m * r, hs[jj + q]);
          inv[q] = c2 > 0.f ? r : 0.f;
        } else {
          s[q] = ol::score_sq<D>(x, yc, hs[jj + q]);
          inv[q] = 1.f;
        }
      }
      float m = st.max;
      for (int q = 0; q < K; ++q) m = std::max(m, s[q]);
      const float f = ol::ex2(st.max - m);
      for (int k = 0; k < D; ++k) acc[k] *= f;
      float e[K];
      for (int q = 0; q < K; ++q) {
        e[q] = ol::ex2(s[q] - m);
        const float* yc = ys[jj + q];
        if (kEuclid && mode == 1) {
          const float w = e[q] * inv[q];
          for (int k = 0; k < D; ++k) acc[k] = ol::fma32(w, x[k] - yc[k], acc[k]);
        } else {
          for (int k = 0; k < D; ++k) acc[k] = ol::fma32(e[q], yc[k], acc[k]);
        }
      }
      st.sum = ol::fma32(st.sum, f, ol::tree_sum(e));
      st.max = m;
    }
  }
  const float inv_sum = st.sum > 0.f ? 1.f / st.sum : 0.f;
  for (int k = 0; k < D; ++k) mean[k] = acc[k] * inv_sum;
  pot = ol::potential(ol::lse_value(st) - rc, 1.f, eps);
}

/// fp64 softmax-weighted mean of row i (mode as above); w_j = b_j exp((g_j - c_ij)/eps).
template <int D>
void ref_weighted_mean(const float* xi, const Cloud& y, const std::vector<float>& logb,
                       const std::vector<float>& g, double eps, bool euclid, int mode,
                       double* mean) {
  std::vector<double> t(static_cast<std::size_t>(y.n), -std::numeric_limits<double>::infinity());
  double mx = -std::numeric_limits<double>::infinity();
  for (int j = 0; j < y.n; ++j) {
    if (logb[j] == -INFINITY) continue;
    const double c2 = sqdist64<D>(xi, &y.p[static_cast<std::size_t>(j) * D]);
    t[j] = logb[j] + (static_cast<double>(g[j]) - (euclid ? std::sqrt(c2) : c2)) / eps;
    mx = std::max(mx, t[j]);
  }
  double sum = 0;
  for (int k = 0; k < D; ++k) mean[k] = 0;
  if (mx == -std::numeric_limits<double>::infinity()) return;
  for (int j = 0; j < y.n; ++j) {
    const double w = std::exp(t[j] - mx);
    sum += w;
    const float* yj = &y.p[static_cast<std::size_t>(j) * D];
    const double dist = std::sqrt(sqdist64<D>(xi, yj));
    for (int k = 0; k < D; ++k) {
      const double v = mode == 0  ? static_cast<double>(yj[k])
                       : dist > 0 ? (static_cast<double>(xi[k]) - yj[k]) / dist
                                  : 0.0;
      mean[k] += w * v;
    }
  }
  for (int k = 0; k < D; ++k) mean[k] /= sum;
}

template <int D, bool kEuclid>
void expect_weighted_mean_accurate(int mode) {
  const int m = 3 * kTile + 11;  // a short last tile
  SplitData s = split_data<D>(12, m, 41u + D + (kEuclid ? 100u : 0u) + 7u * mode);
  // The first 70 columns carry no mass: the first tile and a chunk of the second leave
  // the state at the sentinel, the first real chunk rescales the (zero) sums by 0.
  for (int j = 0; j < 70; ++j) s.logb[j] = -INFINITY;
  // Row 0 sits on column 100: its Euclidean direction there is 0, not NaN.
  for (int k = 0; k < D; ++k) s.x.p[k] = s.y.p[static_cast<std::size_t>(100) * D + k];
  const double eps = 2e-2 * s.mean_cost;
  for (int i = 0; i < s.x.n; ++i) {
    const float* xi = &s.x.p[static_cast<std::size_t>(i) * D];
    float mean[D], pot = 0.f;
    kernel_weighted_mean<D, kEuclid>(xi, s.y, s.logb, s.g, static_cast<float>(eps), mode, mean,
                                     pot);
    double ref[D];
    ref_weighted_mean<D>(xi, s.y, s.logb, s.g, eps, kEuclid, mode, ref);
    // The weights' relative error is the score error in units of eps (~1e-4 here), on
    // values of size ~1 (centered unit clouds, unit directions).
    for (int k = 0; k < D; ++k) {
      EXPECT_NEAR(mean[k], ref[k], 2e-4 * (1.0 + std::abs(ref[k])))
          << "d=" << D << " euclid=" << kEuclid << " mode=" << mode << " row " << i << " k " << k;
    }
    // The potential it writes beside the mean is the balanced half-step's.
    if (!kEuclid) {
      const double fref = ref_centered<D>(xi, s.y, s.logb, s.g, eps);
      EXPECT_LT(std::abs(pot - fref), kCostTol * s.mean_cost + kEpsTol * eps) << "row " << i;
    } else {
      EXPECT_TRUE(std::isfinite(pot)) << "row " << i;
    }
  }
  // No column with mass: the mean is 0 (not NaN) and the potential +inf.
  std::fill(s.logb.begin(), s.logb.end(), -INFINITY);
  float mean[D], pot = 0.f;
  kernel_weighted_mean<D, kEuclid>(s.x.p.data(), s.y, s.logb, s.g, static_cast<float>(eps), mode,
                                   mean, pot);
  for (int k = 0; k < D; ++k) EXPECT_EQ(mean[k], 0.f);
  EXPECT_EQ(pot, INFINITY);
}

}  // namespace

TEST(OnlineLseCpu, OnePassWeightedMeanMatchesFp64) {
  expect_weighted_mean_accurate<1, false>(0);
  expect_weighted_mean_accurate<2, false>(0);
  expect_weighted_mean_accurate<16, false>(0);
  expect_weighted_mean_accurate<2, true>(0);
  expect_weighted_mean_accurate<2, true>(1);
  expect_weighted_mean_accurate<8, true>(1);
}
