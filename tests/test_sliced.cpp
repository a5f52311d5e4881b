// CPU tests of exact 1-D OT and sliced Wasserstein: closed forms, independent
// reference implementations written here, finite differences and bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "otgpu/detail/quantile_merge.h"
#include "otgpu/error.h"
#include "otgpu/sliced.h"
#include "seeded_data.h"

namespace {

using otgpu::Backend;
using otgpu::SlicedOptions;
using otgpu::SlicedProblem;
using otgpu::TensorView;
using otgpu_test::normal;
using otgpu_test::uniform;

/// Independent 1-D reference: north-west corner rule on sorted data with remaining
/// masses (not cumulative breakpoints, unlike the library).
double nw_corner(std::vector<double> x, std::vector<double> a, std::vector<double> y,
                 std::vector<double> b, double p) {
  const std::size_t n = x.size(), m = y.size();
  if (a.empty()) a.assign(n, 1.0);
  if (b.empty()) b.assign(m, 1.0);
  std::vector<std::size_t> ix(n), iy(m);
  std::iota(ix.begin(), ix.end(), 0u);
  std::iota(iy.begin(), iy.end(), 0u);
  std::sort(ix.begin(), ix.end(), [&](std::size_t i, std::size_t j) { return x[i] < x[j]; });
  std::sort(iy.begin(), iy.end(), [&](std::size_t i, std::size_t j) { return y[i] < y[j]; });
  const double sa = std::accumulate(a.begin(), a.end(), 0.0);
  const double sb = std::accumulate(b.begin(), b.end(), 0.0);
  std::size_t i = 0, j = 0;
  double ra = a[ix[0]] / sa, rb = b[iy[0]] / sb, cost = 0;
  while (i < n && j < m) {
    const double t = std::min(ra, rb);
    cost += t * std::pow(std::abs(x[ix[i]] - y[iy[j]]), p);
    ra -= t;
    rb -= t;
    if (ra <= 1e-15) {
      if (++i < n) ra = a[ix[i]] / sa;
    }
    if (rb <= 1e-15) {
      if (++j < m) rb = b[iy[j]] / sb;
    }
  }
  return cost;
}

/// W_1 = integral of |F - G| over the real line (an independent formula for p = 1).
double w1_cdf(const std::vector<double>& x, std::vector<double> a, const std::vector<double>& y,
              std::vector<double> b) {
  if (a.empty()) a.assign(x.size(), 1.0);
  if (b.empty()) b.assign(y.size(), 1.0);
  const double sa = std::accumulate(a.begin(), a.end(), 0.0);
  const double sb = std::accumulate(b.begin(), b.end(), 0.0);
  std::vector<double> pts = x;
  pts.insert(pts.end(), y.begin(), y.end());
  std::sort(pts.begin(), pts.end());
  double w = 0;
  for (std::size_t k = 0; k + 1 < pts.size(); ++k) {
    double F = 0, G = 0;
    for (std::size_t i = 0; i < x.size(); ++i) F += x[i] <= pts[k] ? a[i] / sa : 0.0;
    for (std::size_t j = 0; j < y.size(); ++j) G += y[j] <= pts[k] ? b[j] / sb : 0.0;
    w += std::abs(F - G) * (pts[k + 1] - pts[k]);
  }
  return w;
}

TensorView v1(const std::vector<double>& v) {
  return TensorView::host(v.data(), {static_cast<std::int64_t>(v.size())});
}

double w1d(const std::vector<double>& x, const std::vector<double>& y, double p,
           const std::vector<double>& a = {}, const std::vector<double>& b = {}) {
  const auto r = otgpu::wasserstein_1d(v1(x), v1(y), a.empty() ? TensorView{} : v1(a),
                                       b.empty() ? TensorView{} : v1(b), p, Backend::cpu);
  EXPECT_EQ(r.size(), 1u);
  return r.at(0);
}

SlicedOptions cpu_options(int L, double p = 2.0, std::uint64_t seed = 0) {
  SlicedOptions o;
  o.projections = L;
  o.p = p;
  o.seed = seed;
  o.backend = Backend::cpu;
  return o;
}

// ---- exact 1-D ----

TEST(Wasserstein1D, UniformEqualSizesIsSortedMatching) {
  for (double p : {1.0, 1.5, 2.0, 3.0}) {
    for (std::size_t n : {1u, 2u, 7u, 64u, 257u}) {
      auto x = uniform(n, 11u + static_cast<unsigned>(n));
      auto y = normal(n, 97u + static_cast<unsigned>(n));
      std::vector<double> xs = x, ys = y;
      std::sort(xs.begin(), xs.end());
      std::sort(ys.begin(), ys.end());
      double expect = 0;
      for (std::size_t i = 0; i < n; ++i) expect += std::pow(std::abs(xs[i] - ys[i]), p);
      expect /= static_cast<double>(n);
      EXPECT_NEAR(w1d(x, y, p), expect, 1e-12 * (1 + expect)) << "p=" << p << " n=" << n;
    }
  }
}

TEST(Wasserstein1D, WeightedUnequalSizesMatchesNorthWestCorner) {
  for (double p : {1.0, 2.0, 2.5}) {
    for (auto [n, m] :
         {std::pair<std::size_t, std::size_t>{1, 1}, {1, 9}, {9, 1}, {13, 31}, {100, 37}}) {
      auto x = normal(n, 3u + static_cast<unsigned>(n));
      auto y = uniform(m, 5u + static_cast<unsigned>(m), -1, 2);
      auto a = uniform(n, 7u, 0.1, 2.0);
      auto b = uniform(m, 8u, 0.1, 3.0);  // different total mass: normalized
      const double got = w1d(x, y, p, a, b);
      EXPECT_NEAR(got, nw_corner(x, a, y, b, p), 1e-12 * (1 + got))
          << "p=" << p << " n=" << n << " m=" << m;
      if (p == 1.0) {
        EXPECT_NEAR(got, w1_cdf(x, a, y, b), 1e-12 * (1 + got));
      }
    }
  }
}

TEST(Wasserstein1D, ZeroWeightsAndTiesAreHandled) {
  std::vector<double> x = {0.0, 0.0, 1.0, 1.0, 3.0};
  std::vector<double> a = {0.5, 0.0, 1.0, 0.0, 0.5};
  std::vector<double> y = {2.0, 2.0, -1.0};
  std::vector<double> b = {1.0, 1.0, 0.0};
  for (double p : {1.0, 2.0}) {
    EXPECT_NEAR(w1d(x, y, p, a, b), nw_corner(x, a, y, b, p), 1e-14);
  }
  EXPECT_NEAR(w1d(x, y, 1.0, a, b), w1_cdf(x, a, y, b), 1e-14);
}

TEST(Wasserstein1D, ClosedForms) {
  auto x = normal(50, 1);
  // A shift moves every quantile by c: W_p^p = |c|^p.
  for (double c : {-0.75, 0.3, 2.0}) {
    std::vector<double> y = x;
    for (auto& v : y) v += c;
    for (double p : {1.0, 2.0, 3.0}) EXPECT_NEAR(w1d(x, y, p), std::pow(std::abs(c), p), 1e-12);
  }
  // Grids on [0, 1] and [0, s]: quantiles scale, W_p^p = |1 - s|^p mean(t_i^p).
  const std::size_t n = 101;
  std::vector<double> u(n), w(n);
  const double s = 2.5;
  for (std::size_t i = 0; i < n; ++i) {
    u[i] = static_cast<double>(i) / static_cast<double>(n - 1);
    w[n - 1 - i] = s * u[i];  // reversed order: the sort must undo it
  }
  for (double p : {1.0, 2.0}) {
    double expect = 0;
    for (double t : u) expect += std::pow(t, p);
    expect *= std::pow(s - 1.0, p) / static_cast<double>(n);
    EXPECT_NEAR(w1d(u, w, p), expect, 1e-12);
  }
  // One point against many: everything moves to the single point.
  std::vector<double> one = {0.25};
  auto ys = uniform(17, 4);
  auto bs = uniform(17, 6, 0.5, 1.5);
  const double sb = std::accumulate(bs.begin(), bs.end(), 0.0);
  double expect = 0;
  for (std::size_t j = 0; j < ys.size(); ++j)
    expect += bs[j] / sb * std::pow(std::abs(0.25 - ys[j]), 3.0);
  EXPECT_NEAR(w1d(one, ys, 3.0, {}, bs), expect, 1e-13);
}

TEST(Wasserstein1D, FloatAndStridedViews) {
  // x as float, and y read with stride 2 out of an interleaved buffer.
  auto xd = normal(40, 21);
  std::vector<float> xf(xd.begin(), xd.end());
  auto yd = normal(30, 22);
  std::vector<double> inter(60, 1e300);  // odd slots must never be read
  for (std::size_t j = 0; j < 30; ++j) inter[2 * j] = yd[j];
  TensorView yv = TensorView::host(inter.data(), {30});
  yv.strides[0] = 2;
  const auto r =
      otgpu::wasserstein_1d(TensorView::host(xf.data(), {40}), yv, {}, {}, 2.0, Backend::cpu);
  std::vector<double> xr(xf.begin(), xf.end());
  EXPECT_NEAR(r.at(0), nw_corner(xr, {}, yd, {}, 2.0), 1e-12);
}

TEST(Wasserstein1D, BatchedWithSharedAndBatchedWeights) {
  const std::int64_t B = 3, n = 12, m = 7;
  auto x = normal(B * n, 31);
  auto y = normal(B * m, 32);
  auto a = uniform(B * n, 33, 0.0, 1.0);
  auto b = uniform(m, 34, 0.2, 1.0);
  const auto r = otgpu::wasserstein_1d(
      TensorView::host(x.data(), {B, n}), TensorView::host(y.data(), {B, m}),
      TensorView::host(a.data(), {B, n}), TensorView::host(b.data(), {m}), 2.0, Backend::cpu);
  ASSERT_EQ(r.size(), static_cast<std::size_t>(B));
  for (std::int64_t k = 0; k < B; ++k) {
    std::vector<double> xk(x.begin() + k * n, x.begin() + (k + 1) * n);
    std::vector<double> yk(y.begin() + k * m, y.begin() + (k + 1) * m);
    std::vector<double> ak(a.begin() + k * n, a.begin() + (k + 1) * n);
    EXPECT_NEAR(r[static_cast<std::size_t>(k)], nw_corner(xk, ak, yk, b, 2.0), 1e-12);
  }
}

TEST(MonotoneCoupling1D, MarginalsSizeAndCost) {
  for (auto [n, m] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {5, 3}, {40, 41}, {64, 10}}) {
    auto x = normal(static_cast<std::size_t>(n), 41);
    auto y = normal(static_cast<std::size_t>(m), 42);
    auto a = uniform(static_cast<std::size_t>(n), 43, 0.0, 2.0);
    a[0] = 0.0;  // zero-weight point: it must receive nothing
    if (n == 1) a[0] = 1.0;
    auto b = uniform(static_cast<std::size_t>(m), 44, 0.1, 1.0);
    const auto cs = otgpu::monotone_coupling_1d(v1(x), v1(y), v1(a), v1(b), 2.0);
    ASSERT_EQ(cs.size(), 1u);
    const auto& c = cs[0];
    EXPECT_LE(static_cast<std::int64_t>(c.entries.size()), n + m - 1);
    const double sa = std::accumulate(a.begin(), a.end(), 0.0);
    const double sb = std::accumulate(b.begin(), b.end(), 0.0);
    std::vector<double> ra(static_cast<std::size_t>(n), 0.0), rb(static_cast<std::size_t>(m), 0.0);
    double cost = 0;
    for (const auto& e : c.entries) {
      ASSERT_GE(e.i, 0);
      ASSERT_LT(e.i, n);
      ASSERT_GE(e.j, 0);
      ASSERT_LT(e.j, m);
      EXPECT_GT(e.mass, 0.0);
      ra[static_cast<std::size_t>(e.i)] += e.mass;
      rb[static_cast<std::size_t>(e.j)] += e.mass;
      cost += e.mass *
              std::pow(x[static_cast<std::size_t>(e.i)] - y[static_cast<std::size_t>(e.j)], 2.0);
    }
    for (std::size_t i = 0; i < ra.size(); ++i) EXPECT_NEAR(ra[i], a[i] / sa, 1e-14);
    for (std::size_t j = 0; j < rb.size(); ++j) EXPECT_NEAR(rb[j], b[j] / sb, 1e-14);
    EXPECT_NEAR(c.cost, cost, 1e-13);
    EXPECT_NEAR(c.cost, nw_corner(x, a, y, b, 2.0), 1e-12);
    // Monotone: sorted by x, partners never go backwards in y.
    std::vector<otgpu::CouplingEntry> es = c.entries;
    std::stable_sort(es.begin(), es.end(), [&](const auto& e1, const auto& e2) {
      return x[static_cast<std::size_t>(e1.i)] < x[static_cast<std::size_t>(e2.i)];
    });
    for (std::size_t k = 1; k < es.size(); ++k) {
      EXPECT_LE(y[static_cast<std::size_t>(es[k - 1].j)], y[static_cast<std::size_t>(es[k].j)]);
    }
  }
}

// The GPU splits one merge over the threads of a block: thread t starts at step
// t*K from the merge-path split. Checked here on the host: every chunking visits
// exactly the pieces of the sequential walk, in order.
TEST(QuantileMerge, ChunkedWalkFromMergePathSplitsEqualsSequentialWalk) {
  struct Piece {
    std::int64_t i, j;
    double mass;
    bool operator==(const Piece& o) const { return i == o.i && j == o.j && mass == o.mass; }
  };
  auto prefix_of = [](std::vector<double> w) {
    for (std::size_t k = 1; k < w.size(); ++k) w[k] += w[k - 1];
    return w;
  };
  auto check = [&](const auto& ca, std::int64_t n, const auto& cb, std::int64_t m) {
    std::vector<Piece> seq;
    otgpu::detail::quantile_merge_walk(ca, n, cb, m, 0, 0, n + m - 1,
                                       [&](std::int64_t i, std::int64_t j, double w) {
                                         seq.push_back({i, j, w});
                                       });
    ASSERT_LE(static_cast<std::int64_t>(seq.size()), n + m - 1);
    double total = 0;
    for (const auto& pc : seq) {
      ASSERT_GE(pc.mass, 0.0);
      total += pc.mass;
    }
    EXPECT_NEAR(total, 1.0, 1e-12);
    const std::int64_t steps = n + m - 1;
    for (std::int64_t K :
         {std::int64_t{1}, std::int64_t{2}, std::int64_t{3}, std::int64_t{7}, steps}) {
      std::vector<Piece> chunked;
      for (std::int64_t k0 = 0; k0 < steps; k0 += K) {
        const std::int64_t i0 = otgpu::detail::merge_path_split(ca, n, cb, m, k0);
        ASSERT_GE(i0, 0);
        ASSERT_LE(i0, n);
        ASSERT_LE(k0 - i0, m);
        otgpu::detail::quantile_merge_walk(ca, n, cb, m, i0, k0 - i0, std::min(K, steps - k0),
                                           [&](std::int64_t i, std::int64_t j, double w) {
                                             chunked.push_back({i, j, w});
                                           });
      }
      ASSERT_EQ(chunked.size(), seq.size()) << "K=" << K << " n=" << n << " m=" << m;
      for (std::size_t q = 0; q < seq.size(); ++q) EXPECT_TRUE(chunked[q] == seq[q]) << q;
    }
  };
  for (auto [n, m] : {std::pair<std::int64_t, std::int64_t>{1, 1},
                      {1, 5},
                      {5, 1},
                      {4, 6},
                      {6, 4},
                      {12, 8},
                      {8, 12},
                      {13, 13},
                      {31, 17}}) {
    // Uniform on both sides: many exactly tied breakpoints (k/4 == 2k/8...).
    check(otgpu::detail::UniformCumulative{n}, n, otgpu::detail::UniformCumulative{m}, m);
    // Weighted with zero weights and ties against the other side's breakpoints.
    std::vector<double> wa(static_cast<std::size_t>(n)), wb(static_cast<std::size_t>(m));
    for (std::int64_t i = 0; i < n; ++i)
      wa[static_cast<std::size_t>(i)] = static_cast<double>((i * 7) % 3);
    for (std::int64_t j = 0; j < m; ++j)
      wb[static_cast<std::size_t>(j)] = static_cast<double>((j * 5) % 4);
    wa[0] += 1.0;  // positive mass
    wb[static_cast<std::size_t>(m - 1)] += 1.0;
    const auto pa = prefix_of(wa), pb = prefix_of(wb);
    const otgpu::detail::PrefixCumulative ca{pa.data(), pa.back()}, cb{pb.data(), pb.back()};
    check(ca, n, cb, m);
    check(ca, n, otgpu::detail::UniformCumulative{m}, m);
    check(otgpu::detail::UniformCumulative{n}, n, cb, m);
  }
}

// ---- sliced ----

TEST(Sliced, OneDimensionEqualsExactWassersteinForAnyDirections) {
  auto x = normal(33, 51);
  auto y = uniform(20, 52, -2, 2);
  auto a = uniform(33, 53, 0.1, 1);
  SlicedProblem pr;
  pr.x = TensorView::host(x.data(), {33, 1});
  pr.y = TensorView::host(y.data(), {20, 1});
  pr.a = v1(a);
  for (double p : {1.0, 2.0, 3.0}) {
    const double exact = w1d(x, y, p, a);
    for (std::uint64_t seed : {0u, 1u, 99u}) {
      auto o = cpu_options(17, p, seed);
      const auto r = otgpu::sliced_wasserstein(pr, o);
      EXPECT_NEAR(r.value_pp.at(0), exact, 1e-12);
      EXPECT_NEAR(r.value.at(0), std::pow(exact, 1 / p), 1e-12);
    }
    // Explicit directions of either sign and any length.
    std::vector<double> dirs = {-3.0, 0.5, 2.0};
    auto o = cpu_options(1, p);
    o.directions = TensorView::host(dirs.data(), {1, 3});
    EXPECT_NEAR(otgpu::sliced_wasserstein(pr, o).value_pp.at(0), exact, 1e-12);
  }
}

TEST(Sliced, TranslationClosedFormAndMonteCarloRate) {
  // y = x + c: every projection is a shift by <theta, c>, so SW_2^2 = E<theta, c>^2
  // = |c|^2 / d exactly in expectation; the Monte-Carlo error decays like 1/sqrt(L).
  const std::int64_t n = 32, d = 6;
  auto x = normal(n * d, 61);
  std::vector<double> c = {0.5, -1.0, 0.25, 2.0, 0.0, -0.75};
  std::vector<double> y = x;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < d; ++k)
      y[static_cast<std::size_t>(i * d + k)] += c[static_cast<std::size_t>(k)];
  double c2 = 0;
  for (double v : c) c2 += v * v;
  const double truth = c2 / static_cast<double>(d);
  SlicedProblem pr;
  pr.x = TensorView::host(x.data(), {n, d});
  pr.y = TensorView::host(y.data(), {n, d});
  auto rms_error = [&](int L) {
    double s = 0;
    const int seeds = 24;
    for (int k = 0; k < seeds; ++k) {
      const auto r =
          otgpu::sliced_wasserstein(pr, cpu_options(L, 2.0, 1000u + static_cast<unsigned>(k)));
      // Each term is exactly <theta_l, c>^2.
      s += std::pow(r.value_pp[0] - truth, 2);
    }
    return std::sqrt(s / seeds);
  };
  const double e16 = rms_error(16), e256 = rms_error(256), e4096 = rms_error(4096);
  // Expected ratios 4 and 4; allow generous sampling noise.
  EXPECT_GT(e16 / e256, 2.0) << e16 << " " << e256;
  EXPECT_GT(e256 / e4096, 2.0) << e256 << " " << e4096;
  EXPECT_LT(e4096, 0.05 * truth);
}

TEST(Sliced, ExactRotationInvarianceWithRotatedDirections) {
  // SW(Rx, Ry; R theta) == SW(x, y; theta) for an orthogonal R; with random
  // directions the two agree statistically.
  const std::int64_t n = 40, m = 25, d = 3, L = 32;
  auto x = normal(n * d, 71);
  auto y = uniform(m * d, 72);
  const double ang = 0.7;
  // Rotation about the axis (1, 1, 1)/sqrt(3) (Rodrigues).
  const double cs = std::cos(ang), sn = std::sin(ang), t = 1 - cs, u = 1 / std::sqrt(3.0);
  const double R[3][3] = {{cs + u * u * t, u * u * t - u * sn, u * u * t + u * sn},
                          {u * u * t + u * sn, cs + u * u * t, u * u * t - u * sn},
                          {u * u * t - u * sn, u * u * t + u * sn, cs + u * u * t}};
  auto rotate_rows = [&](const std::vector<double>& p, std::int64_t rows) {
    std::vector<double> q(p.size());
    for (std::int64_t i = 0; i < rows; ++i)
      for (int r = 0; r < 3; ++r) {
        double s = 0;
        for (int k = 0; k < 3; ++k) s += R[r][k] * p[static_cast<std::size_t>(i * 3 + k)];
        q[static_cast<std::size_t>(i * 3 + r)] = s;
      }
    return q;
  };
  const auto theta = otgpu::sliced_directions(d, L, 5);  // [d, L]
  std::vector<double> rtheta(theta.size());
  for (std::int64_t l = 0; l < L; ++l)
    for (int r = 0; r < 3; ++r) {
      double s = 0;
      for (int k = 0; k < 3; ++k) s += R[r][k] * theta[static_cast<std::size_t>(k * L + l)];
      rtheta[static_cast<std::size_t>(r * L + l)] = s;
    }
  auto rx = rotate_rows(x, n), ry = rotate_rows(y, m);
  SlicedProblem p0, p1;
  p0.x = TensorView::host(x.data(), {n, d});
  p0.y = TensorView::host(y.data(), {m, d});
  p1.x = TensorView::host(rx.data(), {n, d});
  p1.y = TensorView::host(ry.data(), {m, d});
  auto o0 = cpu_options(L), o1 = cpu_options(L);
  o0.directions = TensorView::host(theta.data(), {d, L});
  o1.directions = TensorView::host(rtheta.data(), {d, L});
  const auto r0 = otgpu::sliced_wasserstein(p0, o0), r1 = otgpu::sliced_wasserstein(p1, o1);
  EXPECT_NEAR(r0.value[0], r1.value[0], 1e-12);
  for (std::size_t l = 0; l < static_cast<std::size_t>(L); ++l) {
    EXPECT_NEAR(r0.per_direction[l], r1.per_direction[l], 1e-12);
  }
  // Random directions: same distribution, so the values agree within MC noise.
  const auto s0 = otgpu::sliced_wasserstein(p0, cpu_options(4096, 2.0, 1));
  const auto s1 = otgpu::sliced_wasserstein(p1, cpu_options(4096, 2.0, 2));
  EXPECT_NEAR(s0.value_pp[0], s1.value_pp[0], 0.05 * s0.value_pp[0]);
}

TEST(Sliced, DirectionsAreSeededUnitAndIsotropic) {
  const std::int64_t d = 4;
  const int L = 20000;
  const auto t1 = otgpu::sliced_directions(d, L, 123);
  const auto t2 = otgpu::sliced_directions(d, L, 123);
  const auto t3 = otgpu::sliced_directions(d, L, 124);
  EXPECT_EQ(t1, t2);
  std::size_t differ = 0;
  for (std::size_t k = 0; k < t1.size(); ++k) differ += t1[k] != t3[k];
  EXPECT_EQ(differ, t1.size());
  // Unit columns; E[theta] = 0 and E[theta theta^T] = I / d.
  double cov[4][4] = {};
  double mean[4] = {};
  for (int l = 0; l < L; ++l) {
    double sq = 0;
    for (int k = 0; k < d; ++k) {
      const double v = t1[static_cast<std::size_t>(k * L + l)];
      sq += v * v;
      mean[k] += v / L;
      for (int q = 0; q < d; ++q) cov[k][q] += v * t1[static_cast<std::size_t>(q * L + l)] / L;
    }
    ASSERT_NEAR(sq, 1.0, 1e-14);
  }
  for (int k = 0; k < d; ++k) {
    EXPECT_NEAR(mean[k], 0.0, 0.02);
    for (int q = 0; q < d; ++q) EXPECT_NEAR(cov[k][q], k == q ? 0.25 : 0.0, 0.01);
  }
  // The solver uses exactly these directions.
  auto x = normal(30 * d, 1), y = normal(20 * d, 2);
  SlicedProblem pr;
  pr.x = TensorView::host(x.data(), {30, d});
  pr.y = TensorView::host(y.data(), {20, d});
  const std::vector<double> few = otgpu::sliced_directions(d, 8, 77);
  auto oe = cpu_options(8);
  oe.directions = TensorView::host(few.data(), {d, 8});
  const auto a = otgpu::sliced_wasserstein(pr, cpu_options(8, 2.0, 77));
  const auto b = otgpu::sliced_wasserstein(pr, oe);
  const auto c = otgpu::sliced_wasserstein(pr, cpu_options(8, 2.0, 78));
  for (std::size_t l = 0; l < 8; ++l) {
    // Given directions are normalized again: equal to rounding.
    EXPECT_NEAR(a.per_direction[l], b.per_direction[l], 1e-13);
    EXPECT_GT(std::abs(a.per_direction[l] - c.per_direction[l]), 1e-9);
  }
}

TEST(Sliced, PerDirectionTermsAreExactOneDimensionalCosts) {
  const std::int64_t n = 23, m = 31, d = 5;
  const int L = 6;
  auto x = normal(n * d, 81), y = uniform(m * d, 82);
  auto a = uniform(n, 83, 0.0, 1.0), b = uniform(m, 84, 0.3, 1.0);
  SlicedProblem pr;
  pr.x = TensorView::host(x.data(), {n, d});
  pr.y = TensorView::host(y.data(), {m, d});
  pr.a = v1(a);
  pr.b = v1(b);
  for (double p : {1.0, 2.0, 3.5}) {
    const auto r = otgpu::sliced_wasserstein(pr, cpu_options(L, p, 9));
    const auto th = otgpu::sliced_directions(d, L, 9);
    double mean = 0, mx = 0;
    for (int l = 0; l < L; ++l) {
      std::vector<double> u(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(m));
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t k = 0; k < d; ++k)
          u[static_cast<std::size_t>(i)] +=
              x[static_cast<std::size_t>(i * d + k)] * th[static_cast<std::size_t>(k * L + l)];
      for (std::int64_t j = 0; j < m; ++j)
        for (std::int64_t k = 0; k < d; ++k)
          v[static_cast<std::size_t>(j)] +=
              y[static_cast<std::size_t>(j * d + k)] * th[static_cast<std::size_t>(k * L + l)];
      const double w = nw_corner(u, a, v, b, p);
      EXPECT_NEAR(r.per_direction[static_cast<std::size_t>(l)], w, 1e-11 * (1 + w));
      mean += w / L;
      mx = std::max(mx, w);
    }
    EXPECT_NEAR(r.value_pp[0], mean, 1e-11 * (1 + mean));
    EXPECT_NEAR(r.value[0], std::pow(mean, 1 / p), 1e-11);
    auto om = cpu_options(L, p, 9);
    om.max_sliced = true;
    const auto rm = otgpu::sliced_wasserstein(pr, om);
    EXPECT_NEAR(rm.value_pp[0], mx, 1e-11 * (1 + mx));
  }
}

/// Central finite differences of SW_p^p w.r.t. every coordinate of x and y.
void check_gradients(bool max_sliced, double p) {
  const std::int64_t n = 9, m = 6, d = 3;
  const int L = 5;
  auto x = normal(n * d, 91), y = normal(m * d, 92);
  auto a = uniform(n, 93, 0.2, 1.0), b = uniform(m, 94, 0.2, 1.0);
  const auto th = otgpu::sliced_directions(d, L, 3);
  auto eval = [&](const std::vector<double>& xx, const std::vector<double>& yy, bool grads) {
    SlicedProblem pr;
    pr.x = TensorView::host(xx.data(), {n, d});
    pr.y = TensorView::host(yy.data(), {m, d});
    pr.a = v1(a);
    pr.b = v1(b);
    auto o = cpu_options(L, p);
    o.directions = TensorView::host(th.data(), {d, L});
    o.max_sliced = max_sliced;
    o.gradients = grads;
    return otgpu::sliced_wasserstein(pr, o);
  };
  const auto r = eval(x, y, true);
  ASSERT_EQ(r.grad_x.size(), static_cast<std::size_t>(n * d));
  ASSERT_EQ(r.grad_y.size(), static_cast<std::size_t>(m * d));
  const double h = 1e-6;
  for (std::size_t k = 0; k < x.size(); ++k) {
    auto xp = x, xm = x;
    xp[k] += h;
    xm[k] -= h;
    const double fd = (eval(xp, y, false).value_pp[0] - eval(xm, y, false).value_pp[0]) / (2 * h);
    EXPECT_NEAR(r.grad_x[k], fd, 1e-6 * (1 + std::abs(fd))) << "x coordinate " << k;
  }
  for (std::size_t k = 0; k < y.size(); ++k) {
    auto yp = y, ym = y;
    yp[k] += h;
    ym[k] -= h;
    const double fd = (eval(x, yp, false).value_pp[0] - eval(x, ym, false).value_pp[0]) / (2 * h);
    EXPECT_NEAR(r.grad_y[k], fd, 1e-6 * (1 + std::abs(fd))) << "y coordinate " << k;
  }
}

TEST(Sliced, GradientsMatchFiniteDifferences) { check_gradients(false, 2.0); }
TEST(Sliced, GradientsMatchFiniteDifferencesP3) { check_gradients(false, 3.0); }
TEST(Sliced, MaxSlicedGradientsMatchFiniteDifferences) { check_gradients(true, 2.0); }

TEST(Sliced, GradientOfUniformEqualSizesIsClosedForm) {
  // Uniform n = m, p = 2: grad_x_i = (2/(nL)) sum_l theta_l (u_il - v_{sigma_l(i)}).
  // For y = x + c every matched partner is the shifted twin: grad = -2 E[theta theta^T] c / n.
  const std::int64_t n = 16, d = 2;
  const int L = 8;
  auto x = normal(n * d, 101);
  std::vector<double> c = {0.3, -0.2};
  auto y = x;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < d; ++k)
      y[static_cast<std::size_t>(i * d + k)] += c[static_cast<std::size_t>(k)];
  SlicedProblem pr;
  pr.x = TensorView::host(x.data(), {n, d});
  pr.y = TensorView::host(y.data(), {n, d});
  auto o = cpu_options(L, 2.0, 4);
  o.gradients = true;
  const auto r = otgpu::sliced_wasserstein(pr, o);
  const auto th = otgpu::sliced_directions(d, L, 4);
  for (std::int64_t k = 0; k < d; ++k) {
    double g = 0;
    for (int l = 0; l < L; ++l) {
      double tc = 0;
      for (std::int64_t q = 0; q < d; ++q)
        tc += th[static_cast<std::size_t>(q * L + l)] * c[static_cast<std::size_t>(q)];
      g += -2.0 * th[static_cast<std::size_t>(k * L + l)] * tc / static_cast<double>(n * L);
    }
    for (std::int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(r.grad_x[static_cast<std::size_t>(i * d + k)], g, 1e-13);
      EXPECT_NEAR(r.grad_y[static_cast<std::size_t>(i * d + k)], -g, 1e-13);
    }
  }
}

TEST(Sliced, BatchedEqualsOneByOne) {
  const std::int64_t B = 4, n = 19, m = 11, d = 7;
  const int L = 9;
  auto x = normal(B * n * d, 111);
  auto y = uniform(B * m * d, 112);
  auto a = uniform(B * n, 113, 0.0, 1.0);
  auto b = uniform(m, 114, 0.5, 1.0);
  std::vector<float> xf(x.begin(), x.end());  // mixed dtypes in one problem
  SlicedProblem pr;
  pr.x = TensorView::host(xf.data(), {B, n, d});
  pr.y = TensorView::host(y.data(), {B, m, d});
  pr.a = TensorView::host(a.data(), {B, n});
  pr.b = v1(b);
  auto o = cpu_options(L, 2.0, 17);
  o.gradients = true;
  const auto r = otgpu::sliced_wasserstein(pr, o);
  ASSERT_EQ(r.value.size(), static_cast<std::size_t>(B));
  for (std::int64_t k = 0; k < B; ++k) {
    SlicedProblem pk;
    pk.x = TensorView::host(xf.data() + k * n * d, {n, d});
    pk.y = TensorView::host(y.data() + k * m * d, {m, d});
    pk.a = TensorView::host(a.data() + k * n, {n});
    pk.b = v1(b);
    const auto rk = otgpu::sliced_wasserstein(pk, o);
    EXPECT_DOUBLE_EQ(r.value[static_cast<std::size_t>(k)], rk.value[0]);
    for (std::int64_t q = 0; q < n * d; ++q) {
      EXPECT_DOUBLE_EQ(r.grad_x[static_cast<std::size_t>(k * n * d + q)],
                       rk.grad_x[static_cast<std::size_t>(q)]);
    }
    for (std::int64_t q = 0; q < m * d; ++q) {
      EXPECT_DOUBLE_EQ(r.grad_y[static_cast<std::size_t>(k * m * d + q)],
                       rk.grad_y[static_cast<std::size_t>(q)]);
    }
  }
  // Thread count does not change the result.
  auto o1 = o;
  o1.cpu_threads = 1;
  const auto r1 = otgpu::sliced_wasserstein(pr, o1);
  EXPECT_EQ(r1.per_direction, r.per_direction);
}

// ---- bad inputs ----

template <class E>
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST(Sliced, BadInputsAreRejectedWithNamedValues) {
  const std::int64_t n = 5, m = 4, d = 3;
  auto x = normal(n * d, 1), y = normal(m * d, 2);
  auto good = [&] {
    SlicedProblem pr;
    pr.x = TensorView::host(x.data(), {n, d});
    pr.y = TensorView::host(y.data(), {m, d});
    return pr;
  };
  auto o = cpu_options(8);
  {
    auto ob = o;
    ob.p = 0.5;
    expect_error<otgpu::InvalidArgument>([&] { otgpu::sliced_wasserstein(good(), ob); },
                                         {"p", "0.5"});
    ob.p = std::nan("");
    expect_error<otgpu::InvalidArgument>([&] { otgpu::sliced_wasserstein(good(), ob); },
                                         {"p", "nan"});
  }
  {
    auto ob = o;
    ob.projections = 0;
    expect_error<otgpu::InvalidArgument>([&] { otgpu::sliced_wasserstein(good(), ob); },
                                         {"projections", "0"});
  }
  {
    auto xb = x;
    xb[7] = std::nan("");
    SlicedProblem pr = good();
    pr.x = TensorView::host(xb.data(), {n, d});
    expect_error<otgpu::NonFiniteInput>([&] { otgpu::sliced_wasserstein(pr, o); },
                                        {"x", "nan", "[2, 1]"});
  }
  {
    SlicedProblem pr = good();
    pr.y = TensorView::host(y.data(), {m / 2, 2 * d});
    expect_error<otgpu::ShapeError>([&] { otgpu::sliced_wasserstein(pr, o); }, {"y", "[2, 6]"});
    pr = good();
    pr.y = TensorView::host(y.data(), {1, m, d});
    expect_error<otgpu::ShapeError>([&] { otgpu::sliced_wasserstein(pr, o); }, {"y", "rank"});
  }
  {
    std::vector<double> dirs(static_cast<std::size_t>((d + 1) * 2), 1.0);
    auto ob = o;
    ob.directions = TensorView::host(dirs.data(), {d + 1, 2});
    expect_error<otgpu::ShapeError>([&] { otgpu::sliced_wasserstein(good(), ob); },
                                    {"directions", "[4, 2]"});
    std::vector<double> zero = {1.0, 0.0, 0.0, 0.0, 1.0, 0.0};  // column 1 is zero
    ob.directions = TensorView::host(zero.data(), {d, 2});
    expect_error<otgpu::InvalidArgument>([&] { otgpu::sliced_wasserstein(good(), ob); },
                                         {"directions", "column 1", "zero norm"});
  }
  {
    std::vector<double> a = {0.2, 0.3, -0.1, 0.4, 0.2};
    SlicedProblem pr = good();
    pr.a = v1(a);
    expect_error<otgpu::NonFiniteInput>([&] { otgpu::sliced_wasserstein(pr, o); },
                                        {"a", "negative", "-0.1", "[2]"});
    std::vector<double> zeros(static_cast<std::size_t>(m), 0.0);
    pr = good();
    pr.b = v1(zeros);
    expect_error<otgpu::InvalidArgument>([&] { otgpu::sliced_wasserstein(pr, o); }, {"b", "mass"});
    std::vector<double> short_a(3, 1.0);
    pr = good();
    pr.a = v1(short_a);
    expect_error<otgpu::ShapeError>([&] { otgpu::sliced_wasserstein(pr, o); }, {"a", "[3]"});
  }
  expect_error<otgpu::InvalidArgument>(
      [&] { otgpu::wasserstein_1d(v1(x), v1(y), {}, {}, 0.9, Backend::cpu); },
      {"wasserstein_1d", "p", "0.9"});
  expect_error<otgpu::ShapeError>(
      [&] {
        otgpu::wasserstein_1d(TensorView::host(x.data(), {n, d}), v1(y), {}, {}, 1.0, Backend::cpu);
      },
      {"wasserstein_1d", "y"});
  expect_error<otgpu::InvalidArgument>([&] { otgpu::sliced_directions(3, 0, 1); },
                                       {"projections", "0"});
}

}  // namespace
