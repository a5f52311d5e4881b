// The arithmetic of the tensor-core cost tile, proved on the CPU: the TF32 and bf16
// roundings (otgpu/detail/tf32.h) against an independent rounding in double, the
// 3xTF32 split, and the model of the kernel's dot product (mma_dot_model) inside the
// cost |x|^2 + |y|^2 - 2<x,y> of centred offset clouds against fp64. The bounds
// measured here are the tolerances of tests/gpu/test_sinkhorn_mma_gpu.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "otgpu/detail/tf32.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_host/planner.h"

namespace {

using otgpu::detail::bf16_rn;
using otgpu::detail::mma_dot_model;
using otgpu::detail::MmaArith;
using otgpu::detail::tf32_rna_emulated;
using otgpu::detail::tf32_split;

std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

/// Rounds a finite float to `p` significant bits in double arithmetic (an independent
/// route: ilogb/ldexp and std::round, half away from zero, or nearbyint, half to even),
/// with fp32's subnormal quantum kept at 2^(-126 - (p - 1)).
float round_sig(float x, int p, bool ties_even) {
  if (x == 0.f) return x;
  const int e = std::max(std::ilogb(x), -126);
  const double scaled = std::ldexp(static_cast<double>(x), p - 1 - e);  // exact
  const double r = ties_even ? std::nearbyint(scaled) : std::round(scaled);
  return static_cast<float>(std::ldexp(r, e - (p - 1)));  // exact, or overflow to inf
}

TEST(MmaEmulation, Tf32RoundingMatchesIndependentRounding) {
  // Ties: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 and goes away from zero.
  EXPECT_EQ(tf32_rna_emulated(1.f + 0x1p-11f), 1.f + 0x1p-10f);
  EXPECT_EQ(tf32_rna_emulated(-(1.f + 0x1p-11f)), -(1.f + 0x1p-10f));
  EXPECT_EQ(tf32_rna_emulated(1.f + 0x1p-11f - 0x1p-23f), 1.f);
  EXPECT_EQ(tf32_rna_emulated(1.f + 3 * 0x1p-11f), 1.f + 0x1p-9f);  // tie, away
  EXPECT_EQ(tf32_rna_emulated(2.f - 0x1p-23f), 2.f);                // carry into the exponent
  EXPECT_TRUE(std::isinf(tf32_rna_emulated(FLT_MAX)));
  EXPECT_EQ(otgpu::detail::tf32_rna_finite(-FLT_MAX), -INFINITY);  // the kernels' rounding
  EXPECT_TRUE(std::isnan(tf32_rna_emulated(NAN)));
  EXPECT_EQ(tf32_rna_emulated(-INFINITY), -INFINITY);
  EXPECT_EQ(bits(tf32_rna_emulated(-0.f)), bits(-0.f));
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> any;
  int checked = 0;
  for (int k = 0; k < 200000; ++k) {
    const float x = from_bits(any(rng));
    if (!std::isfinite(x)) continue;
    const float got = tf32_rna_emulated(x), want = round_sig(x, 11, false);
    ASSERT_EQ(bits(got), bits(want)) << "x = " << x;
    ASSERT_EQ(bits(got) & 0x1fffu, 0u);  // what mma.sync .tf32 reads: 13 low bits zero
    ASSERT_EQ(bits(otgpu::detail::tf32_rna_finite(x)), bits(want)) << "x = " << x;
    ++checked;
  }
  EXPECT_GT(checked, 190000);
}

TEST(MmaEmulation, Bf16RoundingMatchesIndependentRounding) {
  EXPECT_EQ(bf16_rn(1.f + 0x1p-8f), 1.f);                // tie to even (down)
  EXPECT_EQ(bf16_rn(1.f + 3 * 0x1p-8f), 1.f + 0x1p-6f);  // tie to even (up)
  std::mt19937 rng(8);
  std::uniform_int_distribution<std::uint32_t> any;
  for (int k = 0; k < 200000; ++k) {
    const float x = from_bits(any(rng));
    if (!std::isfinite(x)) continue;
    ASSERT_EQ(bits(bf16_rn(x)), bits(round_sig(x, 8, true))) << "x = " << x;
  }
}

TEST(MmaEmulation, SplitLeavesAtMost2ToMinus22) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int k = 0; k < 100000; ++k) {
    const float x = nd(rng) * std::ldexp(1.f, static_cast<int>(k % 40) - 20);
    const auto s = tf32_split(x);
    ASSERT_EQ(bits(s.big) & 0x1fffu, 0u);
    ASSERT_EQ(bits(s.small) & 0x1fffu, 0u);
    const double rest = static_cast<double>(x) - s.big - s.small;
    ASSERT_LE(std::fabs(rest), 0x1p-22 * std::fabs(x)) << x;
    ASSERT_LE(std::fabs(static_cast<double>(x) - s.big), 0x1p-11 * std::fabs(x)) << x;
  }
}

/// Largest |C_model - C_exact| / mean(C_exact) over all pairs of two offset clouds
/// (n x d and m x d, offset 1e4, the second shifted by 0.5): the fp32 data are centred
/// on the mean of y as the staging does (an exact fp32 difference of nearby values),
/// the model forms |x|^2 + |y|^2 - 2<x,y> in fp32 with its dot product, and the exact
/// cost is the fp64 sum of squared differences of the uncentred fp32 data.
struct CostError {
  double model = 0, simt = 0;  ///< the model's, and the fp32 difference form's
};

CostError cost_error(int d, MmaArith arith, bool centre, int n = 24, int m = 24) {
  std::mt19937 rng(100 + d);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<std::size_t>(n) * d), y(static_cast<std::size_t>(m) * d);
  for (float& v : x) v = 1e4f + nd(rng);
  for (float& v : y) v = 1e4f + 0.5f + nd(rng);
  std::vector<float> xc = x, yc = y;
  if (centre) {
    for (int k = 0; k < d; ++k) {
      double mean = 0;
      for (int j = 0; j < m; ++j) mean += y[static_cast<std::size_t>(j) * d + k];
      const float c = static_cast<float>(mean / m);
      for (int i = 0; i < n; ++i) xc[static_cast<std::size_t>(i) * d + k] -= c;
      for (int j = 0; j < m; ++j) yc[static_cast<std::size_t>(j) * d + k] -= c;
    }
  }
  std::vector<double> exact(static_cast<std::size_t>(n) * m);
  double mean_c = 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) {
      double c = 0;
      for (int k = 0; k < d; ++k) {
        const double diff = static_cast<double>(x[static_cast<std::size_t>(i) * d + k]) -
                            y[static_cast<std::size_t>(j) * d + k];
        c += diff * diff;
      }
      exact[static_cast<std::size_t>(i) * m + j] = c;
      mean_c += c;
    }
  mean_c /= static_cast<double>(n) * m;
  auto norm = [d](const float* v) {
    float s = 0.f;
    for (int k = 0; k < d; ++k) s = std::fma(v[k], v[k], s);
    return s;
  };
  CostError e;
  for (int i = 0; i < n; ++i) {
    const float* xi = xc.data() + static_cast<std::size_t>(i) * d;
    const float nx = norm(xi);
    for (int j = 0; j < m; ++j) {
      const float* yj = yc.data() + static_cast<std::size_t>(j) * d;
      // As the kernel: the small products apart for streamed rows (padded d > 64).
      const float dot = mma_dot_model(xi, yj, d, arith, (d + 3) / 4 * 4 > 64);
      const float c = std::fma(-2.f, dot, nx + norm(yj));  // the kernel's epilogue
      float simt = 0.f;
      for (int k = 0; k < d; ++k) {
        const float diff = xi[k] - yj[k];
        simt = std::fma(diff, diff, simt);
      }
      const double ex = exact[static_cast<std::size_t>(i) * m + j];
      e.model = std::max(e.model, std::fabs(c - ex) / mean_c);
      e.simt = std::max(e.simt, std::fabs(simt - ex) / mean_c);
    }
  }
  return e;
}

// 3xTF32 is fp32-level: within a small factor of the fp32 difference form of the SIMT
// kernels, below 1.5e-6 of the mean cost up to d = 100 and 6e-6 at d = 3072, where
// the fp32 sums of 3072 terms (the norms, and the SIMT form's sum alike) dominate.
// Measured on this data (max over the pairs, relative to mean C):
//   d       16      17      33      64      100     3072
//   3xTF32  3.7e-7  3.4e-7  4.1e-7  6.2e-7  7.6e-7  3.7e-6
//   SIMT    3.4e-7  4.3e-7  4.7e-7  5.2e-7  4.6e-7  3.7e-6
//   TF32    3.2e-4  4.9e-4  2.0e-4  1.0e-4  1.0e-4  1.1e-5
//   bf16    2.7e-3  3.0e-3  1.5e-3  9.6e-4  7.7e-4  9.4e-5
// Plain TF32 and bf16 are coarser (their per-product errors average out over large d).
// These bounds, with margin, are the GPU tests' tolerances: an error dC in the cost
// moves the potentials by about dC and the exponents by dC / eps, so 3xTF32 holds
// fp32-level potentials down to eps = 1e-4 mean(C) (dC / eps ~ 1e-2), while TF32 and
// bf16 need eps of order 1e-1 mean(C) or more for percent-level agreement.
TEST(MmaEmulation, ThreeTf32CostIsFp32LevelOnCentredOffsetClouds) {
  for (int d : {16, 17, 33, 64, 100, 3072}) {
    SCOPED_TRACE(d);
    const int n = d > 1000 ? 8 : 24;
    const CostError x3 = cost_error(d, MmaArith::x3tf32, true, n, n);
    const CostError t1 = cost_error(d, MmaArith::tf32, true, n, n);
    const CostError b1 = cost_error(d, MmaArith::bf16, true, n, n);
    EXPECT_LE(x3.model, d > 1000 ? 6e-6 : 1.5e-6);
    EXPECT_LE(x3.model, 2.5 * x3.simt + 4e-7);
    // The opt-ins: documented bounds, and coarser (the test tells them apart).
    EXPECT_LE(t1.model, 1e-3);
    EXPECT_GE(t1.model, 2.5 * x3.model);
    EXPECT_LE(b1.model, 5e-3);
    EXPECT_GE(b1.model, 4.0 * t1.model);
  }
}

/// The kernel's tile, replayed lane by lane (kernels/src/sinkhorn_online_mma.cu): 16
/// rows x 8 columns over d coordinates (zero past d), Y stored in swizzled rows of 32
/// floats (mma_quad_offset), X split once and stored in fragment order (TF32) or in
/// swizzled rows (bf16); each lane (g, t) takes its registers as the kernel does, the
/// registers are placed into A and B by the PTX fragment layouts of m16n8k8 .tf32
/// (a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]; b0 = B[t][g],
/// b1 = B[t+4][g]) and m16n8k16 .bf16 (pairs at k = 2t, 2t+8), and every mma adds its
/// exact sum to its fp32 accumulator with one rounding (3xTF32 per k-step: small*big,
/// big*small, big*big; with small_apart the first two into a second accumulator added
/// once at the end). Returns D[16][8].
std::vector<float> replay_tile(const std::vector<float>& x, const std::vector<float>& y, int d,
                               MmaArith arith, bool small_apart) {
  using otgpu::detail::mma_quad_offset;
  const int ld = (d + 31) / 32 * 32, groups = ld / 16;
  auto at = [d](const std::vector<float>& v, int r, int k) {
    return k < d ? v[static_cast<std::size_t>(r) * d + k] : 0.f;
  };
  // Y rows as the cp.async copies land them, then split in place (big) and to ysm.
  std::vector<float> yb(static_cast<std::size_t>(8) * ld), ys(yb.size());
  for (int r = 0; r < 8; ++r)
    for (int k = 0; k < ld; ++k) {
      const std::size_t o =
          static_cast<std::size_t>(r) * ld + mma_quad_offset(k / 4, r, true) + k % 4;
      const float v = at(y, r, k);
      yb[o] = arith == MmaArith::bf16 ? v : tf32_split(v).big;
      ys[o] = tf32_split(v).small;
    }
  std::vector<float> acc(16 * 8, 0.f), lo(16 * 8, 0.f);
  auto mma = [](std::vector<float>& c, const float(&A)[16][16], const float(&B)[16][8], int kk) {
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j) {
        double s = 0;
        for (int k = 0; k < kk; ++k) s += static_cast<double>(A[i][k]) * B[k][j];
        c[i * 8 + j] = static_cast<float>(c[i * 8 + j] + s);
      }
  };
  for (int G = 0; G < groups; ++G) {
    if (arith == MmaArith::bf16) {
      float A[16][16] = {}, B[16][8] = {};
      for (int g = 0; g < 8; ++g)
        for (int t = 0; t < 4; ++t) {
          const int k = 16 * G + 4 * t;  // the lane's quad of x rows g, g + 8 and y row g
          const int yo = g * ld + mma_quad_offset(4 * G + t, g, true);
          const float x0[4] = {at(x, g, k), at(x, g, k + 1), at(x, g, k + 2), at(x, g, k + 3)};
          const float x1[4] = {at(x, g + 8, k), at(x, g + 8, k + 1), at(x, g + 8, k + 2),
                               at(x, g + 8, k + 3)};
          for (int e = 0; e < 2; ++e) {
            A[g][2 * t + e] = bf16_rn(x0[e]);          // a0
            A[g + 8][2 * t + e] = bf16_rn(x1[e]);      // a1
            A[g][2 * t + 8 + e] = bf16_rn(x0[2 + e]);  // a2
            A[g + 8][2 * t + 8 + e] = bf16_rn(x1[2 + e]);
            B[2 * t + e][g] = bf16_rn(yb[static_cast<std::size_t>(yo) + e]);  // b0
            B[2 * t + 8 + e][g] = bf16_rn(yb[static_cast<std::size_t>(yo) + 2 + e]);
          }
        }
      mma(acc, A, B, 16);
      continue;
    }
    for (int st = 0; st < 2; ++st) {
      float Ab[16][16] = {}, As[16][16] = {}, Bb[16][8] = {}, Bs[16][8] = {};
      for (int g = 0; g < 8; ++g)
        for (int t = 0; t < 4; ++t) {
          // Fragment order: {x[g][k], x[g+8][k], x[g][k+1], x[g+8][k+1]}, k = 16G+4t+2st.
          const int k = 16 * G + 4 * t + 2 * st;
          const otgpu::detail::Tf32Split f[4] = {
              tf32_split(at(x, g, k)), tf32_split(at(x, g + 8, k)), tf32_split(at(x, g, k + 1)),
              tf32_split(at(x, g + 8, k + 1))};
          Ab[g][t] = f[0].big, Ab[g + 8][t] = f[1].big, Ab[g][t + 4] = f[2].big,
          Ab[g + 8][t + 4] = f[3].big;
          As[g][t] = f[0].small, As[g + 8][t] = f[1].small, As[g][t + 4] = f[2].small,
          As[g + 8][t + 4] = f[3].small;
          const std::size_t yo =
              static_cast<std::size_t>(g) * ld + mma_quad_offset(4 * G + t, g, true) + 2 * st;
          Bb[t][g] = yb[yo], Bb[t + 4][g] = yb[yo + 1];
          Bs[t][g] = ys[yo], Bs[t + 4][g] = ys[yo + 1];
        }
      if (arith == MmaArith::x3tf32) {
        mma(small_apart ? lo : acc, As, Bb, 8);
        mma(small_apart ? lo : acc, Ab, Bs, 8);
      }
      mma(acc, Ab, Bb, 8);
    }
  }
  if (small_apart && arith == MmaArith::x3tf32)
    for (std::size_t k = 0; k < acc.size(); ++k) acc[k] += lo[k];
  return acc;
}

/// The order before the fragment permutation: k-step s of 8 consecutive coordinates.
float consecutive_order_dot(const float* x, const float* y, int d) {
  float acc = 0.f;
  for (int k0 = 0; k0 < d; k0 += 8) {
    double sb = 0, bs = 0, bb = 0;
    for (int k = k0; k < std::min(k0 + 8, d); ++k) {
      const auto sx = tf32_split(x[k]), sy = tf32_split(y[k]);
      sb += static_cast<double>(sx.small) * sy.big;
      bs += static_cast<double>(sx.big) * sy.small;
      bb += static_cast<double>(sx.big) * sy.big;
    }
    acc = static_cast<float>(acc + sb);
    acc = static_cast<float>(acc + bs);
    acc = static_cast<float>(acc + bb);
  }
  return acc;
}

// The model (mma_dot_model) is the kernel's arithmetic bit for bit: the lane-by-lane
// replay of its shared-memory layout and fragments gives the same fp32 value for every
// pair, in the three arithmetics, at d a multiple of 32, of 16 and neither (zero-
// filled). The data spread over 2^-8..2^8 so that orders of summation differ in the
// last bit; the consecutive order of the previous kernel and the two accumulations of
// 3xTF32 (one accumulator for resident rows, the small products apart for streamed
// rows) are told apart (the test pins the order, not just the error bound).
TEST(MmaEmulation, LaneReplayOfTheKernelTileMatchesTheModelBitForBit) {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_int_distribution<int> ex(-8, 8);
  for (int d : {64, 48, 40, 100}) {
    SCOPED_TRACE(d);
    int differs_from_consecutive = 0, apart_differs = 0;
    // 64 tiles per d: swapping the order of the two small products changes ~0.3% of
    // the accumulations; over 8192 pairs the test sees it.
    for (int tile_no = 0; tile_no < 64; ++tile_no) {
      std::vector<float> x(static_cast<std::size_t>(16) * d), y(static_cast<std::size_t>(8) * d);
      for (float& v : x) v = std::ldexp(nd(rng), ex(rng));
      for (float& v : y) v = std::ldexp(nd(rng), ex(rng));
      for (MmaArith a : {MmaArith::x3tf32, MmaArith::tf32, MmaArith::bf16}) {
        for (bool apart : {false, true}) {
          const std::vector<float> tile = replay_tile(x, y, d, a, apart);
          for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 8; ++j) {
              const float* xi = x.data() + static_cast<std::size_t>(i) * d;
              const float* yj = y.data() + static_cast<std::size_t>(j) * d;
              const float model = mma_dot_model(xi, yj, d, a, apart);
              ASSERT_EQ(bits(tile[static_cast<std::size_t>(i) * 8 + j]), bits(model))
                  << "arith " << static_cast<int>(a) << " apart " << apart << " tile " << tile_no
                  << " pair " << i << "," << j;
              if (a == MmaArith::x3tf32 && bits(model) != bits(consecutive_order_dot(xi, yj, d)))
                ++differs_from_consecutive;
              if (a == MmaArith::x3tf32 && apart &&
                  bits(model) != bits(mma_dot_model(xi, yj, d, a, false)))
                ++apart_differs;
            }
        }
      }
    }
    EXPECT_GT(apart_differs, 0);  // the two accumulations are told apart
    EXPECT_GT(differs_from_consecutive, 0);
  }
}

// The Euclidean cost near x = y (otgpu/detail/tf32.h: kMmaNearRel, mma_euclid_sq_model,
// the kernels' euclid_tile_c2 / near_pairs_direct). Self-term-like clouds (centred as
// the staging does, offset 1e4): y_j = x_j (coincident), x_j + 1e-3 z (near: flagged),
// x_j + a z with |a z|^2 ~ 0.05 s (moderate: above the threshold, norm form kept) and
// the other points of the cloud (far). With the norm form alone a coincident pair
// costs ~sqrt(delta s) (~1e-3 |x| here); the replayed rule gives 0 exactly, near pairs
// the direct fp32 form (gamma_(d/32+5) of the cost), and the pairs the rule leaves to
// the norm form stay within (delta / (2 sqrt(tau))) sqrt(s) (delta = 6e-6, the 3xTF32
// bound above).
TEST(MmaEmulation, EuclideanNearPairsTakeTheDirectForm) {
  using otgpu::detail::kMmaNearRel;
  using otgpu::detail::mma_direct_sq_model;
  using otgpu::detail::mma_euclid_sq_model;
  using otgpu::detail::mma_near_pair;
  for (int d : {64, 1000, 3072}) {
    SCOPED_TRACE(d);
    const int n = 6;
    std::mt19937 rng(500 + d);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> x(static_cast<std::size_t>(n) * d);
    for (float& v : x) v = 1e4f + nd(rng);
    // y: n coincident copies, n near, n moderate (kinds 0, 1, 2 by j / n).
    const double mod = std::sqrt(0.05 * 2.0);  // |a z|^2 ~ 0.05 s at s ~ 2 d
    std::vector<float> y(static_cast<std::size_t>(3 * n) * d);
    for (int j = 0; j < 3 * n; ++j)
      for (int k = 0; k < d; ++k) {
        const float base = x[static_cast<std::size_t>(j % n) * d + k];
        const double step = j < n ? 0.0 : (j < 2 * n ? 1e-3 : mod);
        y[static_cast<std::size_t>(j) * d + k] =
            step == 0.0 ? base : static_cast<float>(base + step * nd(rng));
      }
    // Centre on the mean of y (the staging): exact fp32 differences of nearby values.
    for (int k = 0; k < d; ++k) {
      double mean = 0;
      for (int j = 0; j < 3 * n; ++j) mean += y[static_cast<std::size_t>(j) * d + k];
      const float c = static_cast<float>(mean / (3 * n));
      for (int i = 0; i < n; ++i) x[static_cast<std::size_t>(i) * d + k] -= c;
      for (int j = 0; j < 3 * n; ++j) y[static_cast<std::size_t>(j) * d + k] -= c;
    }
    auto norm = [d](const float* v) {
      float s = 0.f;
      for (int k = 0; k < d; ++k) s = std::fma(v[k], v[k], s);
      return s;
    };
    double coincident_norm_form = 0, near_norm_form_rel = 0;
    for (int i = 0; i < n; ++i) {
      const float* xi = x.data() + static_cast<std::size_t>(i) * d;
      const float nx = norm(xi);
      for (int j = 0; j < 3 * n; ++j) {
        const float* yj = y.data() + static_cast<std::size_t>(j) * d;
        const float ny = norm(yj);
        const float dot = mma_dot_model(xi, yj, d, MmaArith::x3tf32, true);  // streamed rows
        const float s = nx + ny;
        const float c2_norm = std::fma(-2.f, dot, s);
        const float c2 = mma_euclid_sq_model(xi, yj, d, nx, ny, dot);
        const double cost = std::sqrt(std::max(c2, 0.f));
        const double cost_norm = std::sqrt(std::max(c2_norm, 0.f));
        double exact2 = 0;
        for (int k = 0; k < d; ++k) {
          const double df = static_cast<double>(xi[k]) - yj[k];
          exact2 += df * df;
        }
        const double exact = std::sqrt(exact2);
        const bool same = j % n == i;
        const int kind = same ? j / n : 3;  // 3: a different point of the cloud
        const bool flagged = mma_near_pair(c2_norm, s);
        SCOPED_TRACE(::testing::Message() << "pair " << i << "," << j << " kind " << kind);
        if (kind == 0) {
          ASSERT_TRUE(flagged);
          EXPECT_EQ(cost, 0.0);
          EXPECT_EQ(mma_direct_sq_model(xi, yj, d), 0.f);
          // The residue of the cancellation; its sign depends on the orders of the norm
          // sums (the kernels' differ from this model's), its root is the cost it gives.
          coincident_norm_form = std::max(coincident_norm_form,
                                          std::sqrt(std::fabs(static_cast<double>(c2_norm)) / s));
        } else if (kind == 1) {
          ASSERT_TRUE(flagged);
          EXPECT_EQ(c2, mma_direct_sq_model(xi, yj, d));
          // The direct form's fp32 bound: gamma_(d/32 + 5) of c2, half of it in the root.
          EXPECT_LE(std::fabs(cost - exact), (d / 32 + 8) * 0x1p-24 * exact + 1e-30);
          near_norm_form_rel = std::max(near_norm_form_rel, std::fabs(cost_norm - exact) / exact);
        } else {
          // Moderate and far pairs: above the threshold, the norm form is kept and its
          // root's error stays within the bound the threshold was derived for.
          EXPECT_FALSE(flagged) << c2_norm / s;
          EXPECT_EQ(c2, c2_norm);
          EXPECT_LE(std::fabs(cost - exact),
                    6e-6 / (2.0 * std::sqrt(static_cast<double>(kMmaNearRel))) * std::sqrt(s));
        }
      }
    }
    // The fix matters: without it the coincident pairs cost up to ~1e-3 sqrt(s) (d = 64:
    // 7e-4, 1000: 1.2e-3, 3072: 2e-3 measured) and the near pairs are off by far more
    // than fp32 (the assertions above would fail).
    EXPECT_GT(coincident_norm_form, 1e-5);
    EXPECT_GT(near_norm_form_rel, 5e-2);  // 0.1 to 1.8 measured
  }
}

// Why the staging centres: without it, |x|^2 + |y|^2 ~ 2 d 1e8 cancels to C ~ 2 d and
// even exact products leave the fp32 rounding of the norms, ~1e8 x 2^-24 per term.
TEST(MmaEmulation, UncentredOffsetCloudsCancel) {
  const CostError e = cost_error(64, MmaArith::x3tf32, false);
  EXPECT_GT(e.model, 1e-2);
}

TEST(MmaEmulation, PrecisionOptionNamesAndValidation) {
  EXPECT_EQ(otgpu::parse_precision("fp32"), otgpu::Precision::fp32);
  EXPECT_EQ(otgpu::parse_precision("tf32"), otgpu::Precision::tf32);
  EXPECT_EQ(otgpu::parse_precision("bf16"), otgpu::Precision::bf16);
  EXPECT_THROW(otgpu::parse_precision("fp64"), otgpu::InvalidArgument);
  EXPECT_THROW(otgpu::parse_precision("half", "--precision"), otgpu::InvalidArgument);
  for (auto p : {otgpu::Precision::fp32, otgpu::Precision::tf32, otgpu::Precision::bf16,
                 otgpu::Precision::fp64})
    EXPECT_FALSE(otgpu::to_string(p).empty());
}

// The CPU reference ignores the option (fp64 whatever is asked) and reports fp64; an
// enum value outside the options is refused naming the argument.
TEST(MmaEmulation, CpuIgnoresPrecisionAndReportsFp64) {
  std::vector<double> x(20 * 3), y(16 * 3);
  std::mt19937 rng(3);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (double& v : x) v = nd(rng);
  for (double& v : y) v = nd(rng) + 0.25;
  otgpu::SinkhornProblem pb;
  pb.x = otgpu::TensorView::host(x.data(), {20, 3});
  pb.y = otgpu::TensorView::host(y.data(), {16, 3});
  otgpu::SinkhornOptions o;
  o.eps = 0.5;
  o.backend = otgpu::Backend::cpu;
  const otgpu::SinkhornResult r32 = otgpu::sinkhorn(pb, o);
  o.precision = otgpu::Precision::bf16;
  const otgpu::SinkhornResult r16 = otgpu::sinkhorn(pb, o);
  EXPECT_EQ(r32.precision, otgpu::Precision::fp64);
  EXPECT_FALSE(r32.tensor_cores);
  EXPECT_EQ(r16.precision, otgpu::Precision::fp64);
  EXPECT_EQ(r32.f, r16.f);
  o.precision = otgpu::Precision::fp64;
  try {
    (void)otgpu::sinkhorn(pb, o);
    ADD_FAILURE() << "precision fp64 accepted";
  } catch (const otgpu::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("precision"), std::string::npos) << e.what();
  }
  o.precision = static_cast<otgpu::Precision>(77);
  EXPECT_THROW((void)otgpu::sinkhorn(pb, o), otgpu::InvalidArgument);
}

// Which solves the planner puts on tensor cores (on the assumed H200): squared
// Euclidean online solves from d = 16 in the asked precision; d = 3072 plans (it was
// refused for its SIMT tile); the Euclidean cost only where the SIMT tile cannot fit,
// and then in 3xTF32; never the small or dense kernels.
TEST(MmaEmulation, PlannerRoutesTensorCores) {
  namespace pl = otgpu::planner;
  const pl::DeviceProps h200 = pl::h200_assumed();
  auto plan = [&](std::int64_t n, std::int64_t d, otgpu::CostKind cost, otgpu::Precision prec) {
    pl::Request r;
    r.n = r.m = n;
    r.d = d;
    r.cost = cost;
    r.precision = prec;
    return pl::make_plan(r, h200);
  };
  using otgpu::CostKind;
  using otgpu::Precision;
  const pl::Plan p64 = plan(65536, 64, CostKind::sqeuclidean, Precision::fp32);
  EXPECT_EQ(p64.kernel, pl::Kernel::online);
  EXPECT_TRUE(p64.tensor_cores);
  EXPECT_EQ(p64.precision, Precision::fp32);
  EXPECT_EQ(p64.f.rows_per_block, 64);
  EXPECT_EQ(p64.roofline.bound, "tensor");
  // 3 products x 2 FLOP x dp per pair, both half-steps.
  EXPECT_DOUBLE_EQ(p64.roofline.tensor_flops, 2.0 * 65536.0 * 65536.0 * 2 * 64 * 3);
  EXPECT_NE(pl::describe(p64).find("3xTF32"), std::string::npos);
  EXPECT_EQ(plan(65536, 64, CostKind::sqeuclidean, Precision::tf32).precision, Precision::tf32);
  EXPECT_EQ(plan(65536, 17, CostKind::sqeuclidean, Precision::bf16).precision, Precision::bf16);
  EXPECT_FALSE(plan(65536, 15, CostKind::sqeuclidean, Precision::tf32).tensor_cores);
  EXPECT_EQ(plan(65536, 15, CostKind::sqeuclidean, Precision::tf32).precision, Precision::fp32);
  EXPECT_FALSE(plan(65536, 64, CostKind::euclidean, Precision::tf32).tensor_cores);
  const pl::Plan big = plan(4096, 3072, CostKind::sqeuclidean, Precision::fp32);
  EXPECT_TRUE(big.tensor_cores);
  EXPECT_EQ(big.dp, 3072);
  const pl::Plan big_e = plan(4096, 3072, CostKind::euclidean, Precision::tf32);
  EXPECT_TRUE(big_e.tensor_cores);
  EXPECT_EQ(big_e.precision, Precision::fp32);
  // A batch the small kernel keeps (every SM busy with one problem per block) runs
  // SIMT fp32 whatever precision is asked.
  pl::Request small;
  small.B = 1024;
  small.n = small.m = 256;
  small.d = 32;
  small.precision = Precision::tf32;
  const pl::Plan ps = pl::make_plan(small, h200);
  EXPECT_EQ(ps.kernel, pl::Kernel::small);
  EXPECT_FALSE(ps.tensor_cores);
}

}  // namespace
