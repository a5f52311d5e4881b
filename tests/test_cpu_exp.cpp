// The CPU reference's deterministic exp (core/src/cpu_exp.h): accuracy against the
// x87 long double expl over millions of arguments and the edges of the double range,
// every instruction-set build against the scalar function bit for bit, and the LSE
// sums against their documented order and a long double sum.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu_exp.h"

namespace {

using otgpu::cpu::exp_det;
using otgpu::cpu::ExpIsa;
using otgpu::cpu::ExpSums;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr ExpIsa kIsas[] = {ExpIsa::sse2, ExpIsa::avx2, ExpIsa::avx512};

/// |y - e^x| in units of the last place of the double nearest e^x (subnormal
/// results: units of 2^-1074), e^x from expl (64-bit significand).
double ulp_error(double x, double y) {
  const long double ref = expl(static_cast<long double>(x));
  const double nearest = static_cast<double>(ref);
  if (std::isinf(nearest)) return std::isinf(y) ? 0.0 : kInf;
  int e = 0;
  std::frexp(nearest, &e);
  const long double ulp =
      nearest == 0 || e - 53 < -1074 ? std::ldexp(1.0L, -1074) : std::ldexp(1.0L, e - 53);
  return static_cast<double>(fabsl(static_cast<long double>(y) - ref) / ulp);
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

std::vector<double> arguments() {
  std::vector<double> xs;
  std::mt19937_64 g(20261129);
  // The LSE's range (after the max is subtracted) densely, then the whole range.
  std::uniform_real_distribution<double> lse(-60.0, 0.0), all(-746.0, 710.0), tiny(-1e-3, 1e-3);
  for (int k = 0; k < 1500000; ++k) xs.push_back(lse(g));
  for (int k = 0; k < 400000; ++k) xs.push_back(all(g));
  for (int k = 0; k < 100000; ++k) xs.push_back(tiny(g));
  // Near the reduction's break points (multiples of ln2/128, where k changes and |r| is
  // largest) and the fast path's and the range's limits.
  const double l128 = 0.693147180559945309417 / 128;
  for (int k = -60000; k <= 1000; k += 7) {
    const double x = k * l128;
    xs.push_back(x);
    xs.push_back(std::nextafter(x, -kInf));
    xs.push_back(std::nextafter(x, kInf));
  }
  for (double edge :
       {0.0, -0.0, 1e-300, -1e-300, 5e-324, -5e-324, -707.0, 709.0, -708.39641853226408, -708.4,
        -744.44007192138121, -745.13321910194110, -745.1332191019412, -745.14, 709.78271289338397,
        709.78271289338400, 709.8, -1000.0, 1000.0}) {
    for (double x = edge, k = 0; k < 20; ++k, x = std::nextafter(x, -kInf)) xs.push_back(x);
    for (double x = edge, k = 0; k < 20; ++k, x = std::nextafter(x, kInf)) xs.push_back(x);
  }
  return xs;
}

TEST(CpuExp, WithinOneUlpOfLongDouble) {
  const std::vector<double> xs = arguments();
  // Normal results; subnormal ones (x < -708.4) round y a second time, into fewer bits.
  double worst = 0, worst_x = 0, worst_sub = 0, worst_sub_x = 0;
  for (double x : xs) {
    const double err = ulp_error(x, exp_det(x));
    const bool subnormal = x < -708.39641853226408;
    double& w = subnormal ? worst_sub : worst;
    if (!(err <= w)) {
      w = err;
      (subnormal ? worst_sub_x : worst_x) = x;
    }
  }
  // Tang's method with a head + tail table gives ~0.51 ulp; 1 ulp is the contract.
  EXPECT_LT(worst, 0.52) << "at x = " << worst_x << " (the method's bound is ~0.51 ulp)";
  EXPECT_LE(worst_sub, 1.0) << "at x = " << worst_sub_x;
  std::printf("largest error: %.4f ulp (normal results), %.4f ulp (subnormal)\n", worst, worst_sub);
}

TEST(CpuExp, SpecialValues) {
  EXPECT_TRUE(std::isnan(exp_det(std::numeric_limits<double>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(exp_det(-std::numeric_limits<double>::quiet_NaN())));
  EXPECT_EQ(exp_det(-kInf), 0.0);
  EXPECT_EQ(exp_det(kInf), kInf);
  EXPECT_EQ(exp_det(0.0), 1.0);
  EXPECT_EQ(exp_det(-0.0), 1.0);
  EXPECT_EQ(exp_det(-746.0), 0.0);
  EXPECT_EQ(exp_det(-745.0), std::exp(-745.0));  // a subnormal, correctly rounded
  EXPECT_EQ(exp_det(709.79), kInf);
  EXPECT_EQ(exp_det(709.78), std::exp(709.78));
  EXPECT_GE(exp_det(-1e-300), 1.0 - 0x1p-53);
}

TEST(CpuExp, EveryBuildGivesTheScalarBits) {
  // Lengths off every vector width, shifts that move lanes out of the fast path.
  std::vector<double> xs = arguments();
  xs.resize(200003);
  xs.push_back(std::numeric_limits<double>::quiet_NaN());
  xs.push_back(-kInf);
  xs.push_back(kInf);
  xs.push_back(-746.5);
  xs.push_back(-745.5);
  xs.push_back(709.5);
  for (double shift : {0.0, 3.25, -2.0}) {
    std::vector<double> want(xs.size());
    for (std::size_t j = 0; j < xs.size(); ++j) want[j] = exp_det(xs[j] - shift);
    for (ExpIsa isa : kIsas) {
      if (!otgpu::cpu::exp_isa_supported(isa)) {
        std::printf("instruction set %d not supported here: not checked\n", static_cast<int>(isa));
        continue;
      }
      std::vector<double> got(xs.size());
      otgpu::cpu::exp_shifted_isa(isa, xs.data(), static_cast<std::int64_t>(xs.size()), shift,
                                  got.data());
      for (std::size_t j = 0; j < xs.size(); ++j) {
        ASSERT_TRUE(same_bits(got[j], want[j]))
            << "isa " << static_cast<int>(isa) << " x = " << xs[j] << " shift " << shift << ": "
            << got[j] << " vs " << want[j];
      }
    }
  }
}

TEST(CpuExp, LseSumsFollowTheirOrderInEveryBuild) {
  std::mt19937_64 g(7);
  std::normal_distribution<double> nd(0.0, 25.0);
  std::uniform_real_distribution<double> cost(0.0, 4.0);
  for (std::int64_t len : {1, 5, 8, 13, 64, 1000, 4099}) {
    std::vector<double> s(static_cast<std::size_t>(len)), c(s.size());
    for (std::size_t j = 0; j < s.size(); ++j) {
      s[j] = nd(g);
      c[j] = cost(g);
      if (j % 11 == 3) {
        s[j] = -kInf;  // a zero weight
        c[j] = kInf;   // a forbidden pair
      }
    }
    double mx = -kInf;
    for (double v : s) mx = std::max(mx, v);
    const double cut = -60.0;
    // The documented order with the scalar exp, and a long double reference.
    double a[8] = {}, w[8] = {};
    long double ref = 0, wref = 0;
    for (std::size_t j = 0; j < s.size(); ++j) {
      const double t = s[j] - mx;
      if (!(t >= cut)) continue;
      a[j % 8] += exp_det(t);
      w[j % 8] += exp_det(t) * c[j];
      ref += expl(static_cast<long double>(t));
      wref += expl(static_cast<long double>(t)) * c[j];
    }
    const double want = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    const double wwant = ((w[0] + w[1]) + (w[2] + w[3])) + ((w[4] + w[5]) + (w[6] + w[7]));
    EXPECT_NEAR(want, static_cast<double>(ref), 1e-14 * static_cast<double>(ref));
    EXPECT_NEAR(wwant, static_cast<double>(wref), 1e-14 * static_cast<double>(wref));
    for (ExpIsa isa : kIsas) {
      if (!otgpu::cpu::exp_isa_supported(isa)) continue;
      const ExpSums got = otgpu::cpu::exp_sums_isa(isa, s.data(), c.data(), len, mx, cut);
      EXPECT_TRUE(same_bits(got.sum, want)) << "isa " << static_cast<int>(isa) << " len " << len;
      EXPECT_TRUE(same_bits(got.weighted, wwant))
          << "isa " << static_cast<int>(isa) << " len " << len;
      const ExpSums plain = otgpu::cpu::exp_sums_isa(isa, s.data(), nullptr, len, mx, cut);
      EXPECT_TRUE(same_bits(plain.sum, want));
      EXPECT_EQ(plain.weighted, 0.0);
    }
  }
}

}  // namespace

namespace {

TEST(CpuExp, LseScoresInEveryBuildAreThePlainFormula) {
  std::mt19937_64 g(11);
  std::normal_distribution<double> nd(0.0, 3.0);
  for (std::int64_t len : {0, 1, 7, 8, 9, 63, 1001}) {
    const auto n = static_cast<std::size_t>(len);
    std::vector<double> c(n), lw(n), pot(n);
    for (std::size_t j = 0; j < n; ++j) {
      c[j] = std::fabs(nd(g));
      lw[j] = j % 5 == 2 ? -kInf : nd(g);
      pot[j] = nd(g);
    }
    const double inv = 1.0 / 0.037;
    std::vector<double> want(n);
    double mx = -kInf;
    for (std::size_t j = 0; j < n; ++j) {
      want[j] = lw[j] + (pot[j] - c[j]) * inv;
      mx = std::max(mx, want[j]);
    }
    for (int poison = 0; poison < 2; ++poison) {
      if (poison && len > 0) lw[n - 1] = std::numeric_limits<double>::quiet_NaN();
      for (ExpIsa isa : kIsas) {
        if (!otgpu::cpu::exp_isa_supported(isa)) continue;
        std::vector<double> s(n);
        bool nan = false;
        const double got = otgpu::cpu::lse_scores_isa(isa, c.data(), lw.data(), pot.data(), len,
                                                      inv, s.data(), nan);
        EXPECT_EQ(nan, poison && len > 0) << "isa " << static_cast<int>(isa) << " len " << len;
        if (poison) continue;
        EXPECT_TRUE(same_bits(got, mx)) << "isa " << static_cast<int>(isa) << " len " << len;
        for (std::size_t j = 0; j < n; ++j) ASSERT_TRUE(same_bits(s[j], want[j]));
      }
    }
  }
}

}  // namespace

namespace {

using otgpu::cpu::expm1_det;
using otgpu::cpu::kExpm1Cut;

/// |y - expm1(t)| / |expm1(t)| in units of u = 2^-53, expm1(t) from expm1l.
double expm1_rel_error_u(double t, double y) {
  const long double ref = expm1l(static_cast<long double>(t));
  if (std::isinf(static_cast<double>(ref))) return std::isinf(y) && y > 0 ? 0.0 : kInf;
  return static_cast<double>(fabsl(static_cast<long double>(y) - ref) / fabsl(ref) *
                             std::ldexp(1.0L, 53));
}

TEST(CpuExpm1, WithinItsBoundOfLongDoubleOverAMillionArguments) {
  // Above the cut: the bound of cpu_exp.h, 1.02 e^t / |e^t - 1| + 1 in units of u
  // (<= 2.02 for t <= -0.7, <= 3.03 for t >= 0.7). Below it: std::expm1's own bits.
  std::mt19937_64 rng(20261129);
  std::uniform_real_distribution<double> near(-8.0, 8.0), mag(std::log(1e-300), std::log(709.7));
  std::uniform_int_distribution<int> coin(0, 3);
  std::vector<double> ts;
  for (int i = 0; i < 1'000'000; ++i) {
    const int kind = coin(rng);
    double t = kind < 2 ? near(rng) : std::exp(mag(rng));
    if (kind == 3) t = -t;
    ts.push_back(t);
  }
  for (const double c : {kExpm1Cut, -kExpm1Cut, std::nextafter(kExpm1Cut, 0.0),
                         std::nextafter(-kExpm1Cut, 0.0), 709.7, -709.7, -745.0, -800.0})
    ts.push_back(c);
  std::vector<double> out(ts.size());
  expm1_det(ts.data(), static_cast<std::int64_t>(ts.size()), out.data());
  double worst_pos = 0, worst_neg = 0;
  std::int64_t fast = 0;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const double t = ts[i], y = out[i];
    if (std::fabs(t) < kExpm1Cut) {
      ASSERT_TRUE(same_bits(y, std::expm1(t))) << "t = " << t;
      continue;
    }
    ++fast;
    const double bound = 1.02 * std::exp(t) / std::fabs(std::expm1(t)) + 1.0;
    const double err = expm1_rel_error_u(t, y);
    ASSERT_LE(err, bound) << "t = " << t << " y = " << y;
    (t > 0 ? worst_pos : worst_neg) = std::max(t > 0 ? worst_pos : worst_neg, err);
  }
  EXPECT_GT(fast, 400'000);
  std::printf("expm1_det above the cut: worst %.3f u (t > 0), %.3f u (t < 0)\n", worst_pos,
              worst_neg);
  EXPECT_LE(worst_pos, 3.03);
  EXPECT_LE(worst_neg, 2.02);
}

TEST(CpuExpm1, SpecialValuesAndAliasing) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> t = {0.0, -0.0, 1e-300, -1e-20, kInf, -kInf, nan, 710.0, 0.7, -0.7};
  std::vector<double> y(t.size());
  expm1_det(t.data(), static_cast<std::int64_t>(t.size()), y.data());
  EXPECT_TRUE(same_bits(y[0], 0.0));
  EXPECT_TRUE(same_bits(y[1], -0.0));
  EXPECT_EQ(y[2], 1e-300);
  EXPECT_EQ(y[3], -1e-20);
  EXPECT_EQ(y[4], kInf);
  EXPECT_EQ(y[5], -1.0);
  EXPECT_TRUE(std::isnan(y[6]));
  EXPECT_EQ(y[7], kInf);
  EXPECT_EQ(y[8], exp_det(0.7) - 1.0);
  EXPECT_EQ(y[9], exp_det(-0.7) - 1.0);
  // In place, over more than one internal block of 256: the same bits as out of place.
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> d(-3.0, 3.0);
  std::vector<double> a(1000), b(1000);
  for (double& x : a) x = d(rng);
  expm1_det(a.data(), 1000, b.data());
  expm1_det(a.data(), 1000, a.data());
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(same_bits(a[i], b[i])) << i;
}

TEST(CpuExpm1, EveryBuildGivesTheSameBits) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> d(-40.0, 40.0);
  for (const std::int64_t len : {1, 7, 8, 255, 256, 257, 1001}) {
    std::vector<double> t(static_cast<std::size_t>(len));
    for (double& x : t) x = d(rng);
    std::vector<double> ref(t.size()), y(t.size());
    otgpu::cpu::expm1_det_isa(ExpIsa::sse2, t.data(), len, ref.data());
    for (std::size_t i = 0; i < t.size(); ++i) {
      const double want = std::fabs(t[i]) >= kExpm1Cut ? exp_det(t[i]) - 1.0 : std::expm1(t[i]);
      ASSERT_TRUE(same_bits(ref[i], want)) << "t = " << t[i];
    }
    for (const ExpIsa isa : kIsas) {
      if (!otgpu::cpu::exp_isa_supported(isa)) continue;
      otgpu::cpu::expm1_det_isa(isa, t.data(), len, y.data());
      for (std::size_t i = 0; i < t.size(); ++i)
        ASSERT_TRUE(same_bits(y[i], ref[i])) << "isa " << static_cast<int>(isa) << " t = " << t[i];
    }
  }
}

}  // namespace
