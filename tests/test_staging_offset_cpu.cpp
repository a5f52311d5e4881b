// The rounding order of the CUDA staging, pinned on the CPU: every GPU path that
// builds costs from coordinates stages otgpu::detail::staged_coordinate(v, c) =
// float(v - c), the centre c (the mean of y) subtracted in double before the one
// rounding (otgpu/detail/staging.h; the kernels call the same function). Replays, in
// fp64 against fp64:
//   - each staged coordinate is the fp32 rounding of the centred value (within half
//     an ulp of it) at offsets 1e4 and 1e6, where rounding first is off by ~5e-4 / 3e-2;
//   - the data-check cases: NaN, +-inf, the fp32 range measured on the centred value,
//     a non-finite centre;
//   - the fp32 norm-form costs of the GEMM paths (coupling, assignment) and the fp32
//     projections of sliced on staged points stay at fp32 accuracy relative to the
//     cloud's spread; raw coordinates in the same formulas do not;
//   - Sinkhorn (the CPU reference) on the staged points gives the fp64 answer on the
//     raw points to within the GPU's tolerance at the origin; points rounded before
//     centring do not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "otgpu/detail/staging.h"
#include "otgpu/otgpu.h"
#include "sinkhorn_cpu_util.h"

namespace {

using otgpu::detail::staged_coordinate;
using otgpu_test::uniform_values;

/// A point cloud pair of one problem, row-major, with the centre the staging uses.
struct Clouds {
  std::int64_t n = 0, m = 0, d = 0;
  std::vector<double> x, y, c;  // x [n, d], y [m, d], c [d] = mean of y's rows
};

Clouds make_clouds(std::int64_t n, std::int64_t m, std::int64_t d, double offset,
                   std::uint32_t seed) {
  Clouds k{n,
           m,
           d,
           uniform_values(static_cast<std::size_t>(n * d), seed),
           uniform_values(static_cast<std::size_t>(m * d), seed + 1, 0.2, 1.2),
           {}};
  for (double& v : k.x) v += offset;
  for (double& v : k.y) v += offset;
  k.c.assign(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t j = 0; j < m; ++j)
    for (std::int64_t q = 0; q < d; ++q) k.c[q] += k.y[static_cast<std::size_t>(j * d + q)];
  for (double& v : k.c) v /= static_cast<double>(m);
  return k;
}

/// The cloud as the GPU holds it (back in double): staged_coordinate per element, or
/// (round_first) the old order, float(v) then the subtraction, rounded again.
std::vector<double> staged(const std::vector<double>& p, const std::vector<double>& c,
                           bool round_first = false) {
  std::vector<double> out(p.size());
  const std::size_t d = c.size();
  for (std::size_t e = 0; e < p.size(); ++e) {
    const double v = round_first ? static_cast<double>(static_cast<float>(p[e])) : p[e];
    out[e] = staged_coordinate(v, c[e % d]);
  }
  return out;
}

/// Largest |staged - (v - c)| in units of half an fp32 ulp of |v - c| (the fp32
/// rounding of the centred value is within 1 of it, and within 1 only).
double worst_half_ulps(const std::vector<double>& p, const std::vector<double>& s,
                       const std::vector<double>& c) {
  double worst = 0;
  for (std::size_t e = 0; e < p.size(); ++e) {
    const double exact = p[e] - c[e % c.size()];
    int exp = 0;
    (void)std::frexp(exact, &exp);  // |exact| in [2^(exp-1), 2^exp)
    const double half_ulp = std::ldexp(1.0, exp - 25);
    worst = std::max(worst, std::abs(s[e] - exact) / half_ulp);
  }
  return worst;
}

class StagingOffset : public ::testing::TestWithParam<double> {};

TEST_P(StagingOffset, EachCoordinateIsTheFp32RoundingOfTheCentredValue) {
  const double offset = GetParam();
  const Clouds k = make_clouds(300, 250, 3, offset, 11);
  for (const auto* p : {&k.x, &k.y}) {
    const std::vector<double> s = staged(*p, k.c);
    for (std::size_t e = 0; e < p->size(); ++e) {
      const double exact = (*p)[e] - k.c[e % k.c.size()];
      ASSERT_EQ(static_cast<float>(s[e]), static_cast<float>(exact)) << "element " << e;
    }
    EXPECT_LE(worst_half_ulps(*p, s, k.c), 1.0);
    // Rounding first loses half an ulp of the offset (2^-11 at 1e4, 2^-5 at 1e6):
    // thousands of half-ulps of the centred value. The replay tells the orders apart.
    EXPECT_GT(worst_half_ulps(*p, staged(*p, k.c, true), k.c), 1000.0);
  }
}

/// The GEMM paths' costs, fp32 norm form |x|^2 + |y|^2 - 2<x, y> (each term summed in
/// fp32, as the epilogue of the SGEMM does), against fp64 differences.
double worst_norm_form_error(const Clouds& k, const std::vector<double>& xs,
                             const std::vector<double>& ys) {
  double worst = 0, mean = 0;
  const auto d = static_cast<std::size_t>(k.d);
  for (std::int64_t i = 0; i < k.n; ++i) {
    for (std::int64_t j = 0; j < k.m; ++j) {
      float nx = 0, ny = 0, dot = 0;
      double exact = 0;
      for (std::size_t q = 0; q < d; ++q) {
        const auto a = static_cast<float>(xs[i * d + q]), b = static_cast<float>(ys[j * d + q]);
        nx += a * a;
        ny += b * b;
        dot += a * b;
        const double diff = k.x[i * d + q] - k.y[j * d + q];
        exact += diff * diff;
      }
      const float c32 = std::max(nx + ny - 2.0f * dot, 0.0f);
      worst = std::max(worst, std::abs(static_cast<double>(c32) - exact));
      mean += exact;
    }
  }
  mean /= static_cast<double>(k.n * k.m);
  return worst / mean;
}

TEST_P(StagingOffset, NormFormCostsOfStagedPointsKeepFp32Accuracy) {
  const double offset = GetParam();
  const Clouds k = make_clouds(64, 48, 8, offset, 21);
  // Centred: |x|^2 ~ d, so the cancellation costs a few fp32 ulps of the cost scale.
  EXPECT_LT(worst_norm_form_error(k, staged(k.x, k.c), staged(k.y, k.c)), 1e-5);
  // Raw coordinates (what the GEMM paths read before): |x|^2 ~ 1e8 d at 1e4, the
  // cancellation leaves nothing of costs of order 1.
  EXPECT_GT(worst_norm_form_error(k, k.x, k.y), 1.0);
}

/// Sliced projections <p, theta> in fp32 (sequential fp32 sums, as a GEMM row does):
/// the largest error of a difference of projections <x_i - y_j, theta>, which is all
/// the 1-D distances read, relative to the spread.
double worst_projection_error(const Clouds& k, const std::vector<double>& xs,
                              const std::vector<double>& ys) {
  const auto d = static_cast<std::size_t>(k.d);
  std::vector<double> theta = uniform_values(d, 7, -1, 1);
  double norm = 0;
  for (double t : theta) norm += t * t;
  for (double& t : theta) t /= std::sqrt(norm);
  auto project = [&](const std::vector<double>& p, std::size_t row) {
    float s = 0;
    for (std::size_t q = 0; q < d; ++q)
      s += static_cast<float>(p[row * d + q]) * static_cast<float>(theta[q]);
    return static_cast<double>(s);
  };
  double worst = 0;
  for (std::int64_t i = 0; i < k.n; ++i) {
    for (std::int64_t j = 0; j < k.m; ++j) {
      double exact = 0;
      for (std::size_t q = 0; q < d; ++q) exact += (k.x[i * d + q] - k.y[j * d + q]) * theta[q];
      const double got =
          project(xs, static_cast<std::size_t>(i)) - project(ys, static_cast<std::size_t>(j));
      worst = std::max(worst, std::abs(got - exact));
    }
  }
  return worst;  // the clouds' spread is 1
}

TEST_P(StagingOffset, SlicedProjectionsOfStagedPointsKeepFp32Accuracy) {
  const double offset = GetParam();
  const Clouds k = make_clouds(40, 30, 64, offset, 31);
  EXPECT_LT(worst_projection_error(k, staged(k.x, k.c), staged(k.y, k.c)), 1e-5);
  EXPECT_GT(worst_projection_error(k, k.x, k.y), 1e-4);
}

/// Plain updates for a fixed number of iterations on the CPU reference (fp64).
otgpu::SinkhornResult solve_cpu(const std::vector<double>& x, const std::vector<double>& y,
                                const Clouds& k) {
  otgpu::SinkhornProblem p;
  p.x = otgpu::TensorView::host(x.data(), {k.n, k.d});
  p.y = otgpu::TensorView::host(y.data(), {k.m, k.d});
  otgpu::SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.max_iter = 40;
  o.check_every = 0;
  o.eps_init = 0;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.tol = 1e-4;
  o.backend = otgpu::Backend::cpu;
  return otgpu::sinkhorn(p, o);
}

/// Largest |a - b| over the potentials, relative to the mean cost.
double worst_potential_gap(const otgpu::SinkhornResult& a, const otgpu::SinkhornResult& b,
                           double mean_cost) {
  double worst = 0;
  for (std::size_t i = 0; i < a.f.size(); ++i) worst = std::max(worst, std::abs(a.f[i] - b.f[i]));
  for (std::size_t j = 0; j < a.g.size(); ++j) worst = std::max(worst, std::abs(a.g[j] - b.g[j]));
  return worst / mean_cost;
}

TEST_P(StagingOffset, SinkhornOnStagedPointsMatchesTheFp64Answer) {
  const double offset = GetParam();
  const Clouds k = make_clouds(120, 100, 3, offset, 41);
  const otgpu::SinkhornResult exact = solve_cpu(k.x, k.y, k);
  const double mean_cost = exact.problems[0].eps / 0.05;
  const otgpu::SinkhornResult centred = solve_cpu(staged(k.x, k.c), staged(k.y, k.c), k);
  const otgpu::SinkhornResult rounded_first =
      solve_cpu(staged(k.x, k.c, true), staged(k.y, k.c, true), k);
  // The GPU tests' tolerance at the origin is 2e-4 of the mean cost for the
  // potentials and 3e-4 for OT_eps: the staging may use a small part of it.
  EXPECT_LT(worst_potential_gap(centred, exact, mean_cost), 1e-5);
  EXPECT_NEAR(centred.problems[0].ot_eps, exact.problems[0].ot_eps, 1e-5 * mean_cost);
  // Rounded before the centring, the inputs alone exceed the whole tolerance.
  EXPECT_GT(worst_potential_gap(rounded_first, exact, mean_cost), 2e-4);
}

INSTANTIATE_TEST_SUITE_P(Offsets, StagingOffset, ::testing::Values(1e4, 1e6),
                         [](const ::testing::TestParamInfo<double>& param_info) {
                           return param_info.param == 1e4 ? std::string("offset_1e4")
                                                          : std::string("offset_1e6");
                         });

TEST(StagedCoordinate, DataCheckCases) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // A non-finite source stays non-finite: the check reports the element itself.
  EXPECT_TRUE(std::isnan(staged_coordinate(nan, 0.5)));
  EXPECT_EQ(staged_coordinate(inf, 0.5), std::numeric_limits<float>::infinity());
  EXPECT_EQ(staged_coordinate(-inf, 0.5), -std::numeric_limits<float>::infinity());
  // The fp32 range is that of the centred value.
  EXPECT_EQ(staged_coordinate(1e300, 0.5), std::numeric_limits<float>::infinity());
  EXPECT_EQ(staged_coordinate(-1e39, 0.0), -std::numeric_limits<float>::infinity());
  const double far = 1e39 + 1e33;  // beyond fp32, but centred on 1e39 it is ~1e33
  EXPECT_EQ(staged_coordinate(far, 1e39), static_cast<float>(far - 1e39));
  EXPECT_TRUE(std::isfinite(staged_coordinate(far, 1e39)));
  EXPECT_EQ(staged_coordinate(3e38, -3e38), std::numeric_limits<float>::infinity());
  EXPECT_EQ(staged_coordinate(static_cast<double>(FLT_MAX), 0.0), FLT_MAX);
  EXPECT_EQ(staged_coordinate(-static_cast<double>(FLT_MAX), 0.0), -FLT_MAX);
  // Just past FLT_MAX: flagged, although round-to-nearest would give FLT_MAX.
  EXPECT_EQ(staged_coordinate(std::nextafter(static_cast<double>(FLT_MAX), inf), 0.0),
            std::numeric_limits<float>::infinity());
  // A non-finite centre (a bad y in the problem): other coordinates are staged as 0,
  // so the check names the bad y, unless they are out of fp32 range themselves.
  EXPECT_EQ(staged_coordinate(1e4, inf), 0.0f);
  EXPECT_EQ(staged_coordinate(-2.5, nan), 0.0f);
  EXPECT_EQ(staged_coordinate(1e39, nan), std::numeric_limits<float>::infinity());
  EXPECT_EQ(staged_coordinate(-1e39, -inf), -std::numeric_limits<float>::infinity());
  // An fp32 source: exact in double, so the only rounding is that of v - c.
  const float v = 12345.678f;
  EXPECT_EQ(staged_coordinate(static_cast<double>(v), 12345.5),
            static_cast<float>(static_cast<double>(v) - 12345.5));
  EXPECT_TRUE(otgpu::detail::finite_double(1.7976931348623157e308));
  EXPECT_FALSE(otgpu::detail::finite_double(inf));
  EXPECT_FALSE(otgpu::detail::finite_double(nan));
}

}  // namespace
