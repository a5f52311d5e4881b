// Review of the coupling kernels (kernels/src/coupling.cu). On the CPU (always run): a
// replay of the Gumbel-top-k radix select and its ordered compaction with the kernels'
// own rules (otgpu_kernels/coupling_rules.h) against a plain sort, on keys full of ties,
// NaN, infinities and signed zeros, tiles of several sizes; the kernels' keys, row
// uniforms and column scores on the CPU Sinkhorn's potentials reproduce the CPU
// couple()'s pairs (same Philox streams). On a GPU (skips without
// one): the shapes at the edges of the kernels' index arithmetic (one row, every
// entry taken, a plan over several tiles of 4096 entries, K > 1), each checked against
// what must hold whatever the draws: distinct increasing pairs, every entry exactly
// once when all are asked, indices in range, and the reported mean pair cost against
// the pairs' fp64 costs recomputed here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "cpu_coupling.h"
#include "gpu_test_util.h"
#include "otgpu/coupling.h"
#include "otgpu/detail/coupling_math.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_kernels/coupling_rules.h"

namespace {

using otgpu::CouplingOptions;
using otgpu::CouplingPairs;
using otgpu::TensorView;
namespace topk = otgpu::kernels::topk;

/// The selection of topk_pairs (kernels/src/coupling.cu) replayed on the host: four
/// histogram passes of 8 bits, then per tile the keys above the threshold and the ties
/// at it, the exclusive scans and the ordered writes. Returns the linear indices written
/// to slots 0..P-1 (-1 for a slot nothing wrote).
std::vector<std::int64_t> replay_select(const std::vector<float>& keys, std::int64_t P,
                                        std::int64_t tile) {
  const auto nm = static_cast<std::int64_t>(keys.size());
  std::vector<std::uint32_t> u(keys.size());
  for (std::size_t e = 0; e < keys.size(); ++e) u[e] = topk::ordered_bits(keys[e]);
  std::uint32_t prefix = 0, remaining = static_cast<std::uint32_t>(P);
  for (int shift = 24; shift >= 0; shift -= 8) {
    const std::uint32_t high = shift >= 24 ? 0u : (0xffffffffu << (shift + 8));
    std::uint32_t hist[256] = {};
    for (std::uint32_t x : u) {
      if ((x & high) == (prefix & high)) ++hist[(x >> shift) & 255u];
    }
    std::uint32_t above = 0;
    const int bin = topk::pick_bin(hist, remaining, above);
    prefix |= static_cast<std::uint32_t>(bin) << shift;
    remaining -= above;
  }
  const std::uint32_t thr = prefix;
  const std::int64_t need = remaining;
  const std::int64_t tiles = (nm + tile - 1) / tile;
  std::vector<std::int64_t> eq_off(static_cast<std::size_t>(tiles)),
      sel_off(static_cast<std::size_t>(tiles));
  std::int64_t before_eq = 0, before_sel = 0;
  for (std::int64_t t = 0; t < tiles; ++t) {
    std::int64_t gt = 0, eq = 0;
    for (std::int64_t e = t * tile; e < std::min(nm, (t + 1) * tile); ++e) {
      gt += u[static_cast<std::size_t>(e)] > thr;
      eq += u[static_cast<std::size_t>(e)] == thr;
    }
    eq_off[static_cast<std::size_t>(t)] = before_eq;
    sel_off[static_cast<std::size_t>(t)] = before_sel;
    before_sel += gt + topk::ties_taken(need, before_eq, eq);
    before_eq += eq;
  }
  std::vector<std::int64_t> out(static_cast<std::size_t>(P), -1);
  for (std::int64_t t = 0; t < tiles; ++t) {
    std::int64_t s_eq = eq_off[static_cast<std::size_t>(t)];
    std::int64_t pos = sel_off[static_cast<std::size_t>(t)];
    for (std::int64_t e = t * tile; e < std::min(nm, (t + 1) * tile); ++e) {
      const std::uint32_t x = u[static_cast<std::size_t>(e)];
      const bool is_eq = x == thr;
      const bool chosen = x > thr || (is_eq && s_eq < need);
      s_eq += is_eq;
      if (!chosen) continue;
      EXPECT_LT(pos, P) << "a write past the P slots (the kernel drops it)";
      if (pos < P) out[static_cast<std::size_t>(pos)] = e;
      ++pos;
    }
  }
  return out;
}

/// The P largest keys by a plain sort (NaN below every number, ties and -0 / +0 to the
/// smaller index), in increasing index.
std::vector<std::int64_t> reference_select(const std::vector<float>& keys, std::int64_t P) {
  std::vector<std::int64_t> idx(keys.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto rank = [&](std::int64_t e) {
    const float k = keys[static_cast<std::size_t>(e)];
    return std::isnan(k) ? -std::numeric_limits<double>::infinity() : static_cast<double>(k);
  };
  std::stable_sort(idx.begin(), idx.end(), [&](std::int64_t a, std::int64_t b) {
    const float ka = keys[static_cast<std::size_t>(a)], kb = keys[static_cast<std::size_t>(b)];
    if (std::isnan(ka) != std::isnan(kb)) return std::isnan(kb);  // numbers before NaN
    return rank(a) > rank(b);
  });
  idx.resize(static_cast<std::size_t>(P));
  std::sort(idx.begin(), idx.end());
  return idx;
}

TEST(TopKReview, ReplayedSelectTakesTheLargestKeysTiesToTheSmallerIndex) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::mt19937 rng(17);
  for (const std::int64_t nm : {1, 2, 5, 37, 300, 1000}) {
    for (const int levels : {1, 3, 50, 0}) {  // 0: continuous keys
      std::vector<float> keys(static_cast<std::size_t>(nm));
      std::uniform_int_distribution<int> level(0, std::max(levels, 1) - 1);
      std::normal_distribution<float> normal(0.f, 3.f);
      for (float& k : keys) k = levels == 0 ? normal(rng) : static_cast<float>(level(rng)) - 1.f;
      if (nm >= 37) {  // the special values, scattered
        keys[3] = nan;
        keys[5] = -nan;
        keys[8] = inf;
        keys[13] = -inf;
        keys[21] = -0.f;
        keys[22] = 0.f;
        keys[30] = -0.f;
        keys[34] = inf;
      }
      for (const std::int64_t P : {std::int64_t{1}, nm / 3 + 1, nm / 2 + 1, nm - 1, nm}) {
        if (P < 1) continue;
        for (const std::int64_t tile : {1, 3, 7, 64, 4096}) {
          SCOPED_TRACE(testing::Message()
                       << "nm=" << nm << " levels=" << levels << " P=" << P << " tile=" << tile);
          EXPECT_EQ(replay_select(keys, P, tile), reference_select(keys, P));
        }
      }
    }
  }
}

TEST(TopKReview, KeyBitsOrderNumbersAndPutNaNLast) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> ascending{-inf, -3e38f, -1.f, -1e-40f, 0.f, 1e-40f, 1.f, 3e38f, inf};
  for (std::size_t a = 0; a + 1 < ascending.size(); ++a) {
    EXPECT_LT(topk::ordered_bits(ascending[a]), topk::ordered_bits(ascending[a + 1])) << a;
  }
  EXPECT_EQ(topk::ordered_bits(-0.f), topk::ordered_bits(0.f));
  EXPECT_LT(topk::ordered_bits(nan), topk::ordered_bits(-inf));
  EXPECT_LT(topk::ordered_bits(-nan), topk::ordered_bits(-inf));
}

TEST(TopKReview, PickBinAndTiesTaken) {
  std::uint32_t hist[256] = {};
  hist[255] = 2;
  hist[200] = 3;
  hist[7] = 5;
  std::uint32_t above = 0;
  EXPECT_EQ(topk::pick_bin(hist, 1, above), 255);
  EXPECT_EQ(above, 0u);
  EXPECT_EQ(topk::pick_bin(hist, 3, above), 200);
  EXPECT_EQ(above, 2u);
  EXPECT_EQ(topk::pick_bin(hist, 5, above), 200);
  EXPECT_EQ(topk::pick_bin(hist, 6, above), 7);
  EXPECT_EQ(above, 5u);
  EXPECT_EQ(topk::ties_taken(4, 0, 3), 3);
  EXPECT_EQ(topk::ties_taken(4, 3, 3), 1);
  EXPECT_EQ(topk::ties_taken(4, 4, 3), 0);
  EXPECT_EQ(topk::ties_taken(4, 9, 3), 0);
}

// The kernels' key (topk::key_value, fp32) on the CPU's potentials selects the pairs the
// CPU's couple() draws without replacement: the same Gumbel stream (key_seed, k, i, j)
// in the same argument order, the same score. The selections are compared only where
// the P-th and the (P+1)-th keys are apart by more than fp32 round-off.
TEST(TopKReview, KernelKeysSelectTheCpuPairs) {
  const std::int64_t K = 3, n = 6, m = 7, d = 2, P = 5;
  const auto x = otgpu_test::uniform(static_cast<std::size_t>(K * n * d), 81, -1, 1);
  const auto y = otgpu_test::uniform(static_cast<std::size_t>(K * m * d), 82, -1, 1);
  const auto xv = TensorView::host(x.data(), {K, n, d});
  const auto yv = TensorView::host(y.data(), {K, m, d});
  CouplingOptions o;
  o.eps = 0.3;
  o.num_pairs = P;
  o.seed = 1234567891234ull;
  o.backend = otgpu::Backend::cpu;
  const auto pairs = otgpu::couple(xv, yv, o);
  otgpu::SinkhornOptions so = otgpu::detail::coupling_sinkhorn_options(o);
  so.backend = otgpu::Backend::cpu;
  const auto sol = otgpu::sinkhorn(otgpu::detail::coupling_problem(xv, yv, o), so);
  const std::uint64_t key_seed = otgpu::detail::stream_seed(o.seed, otgpu::detail::kStreamTopK);
  int compared = 0;
  for (std::int64_t k = 0; k < K; ++k) {
    const double inv = 1.0 / sol.problems[static_cast<std::size_t>(k)].eps;
    std::vector<float> keys(static_cast<std::size_t>(n * m));
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < m; ++j) {
        double c = 0;
        for (std::int64_t t = 0; t < d; ++t) {
          const double a = x[static_cast<std::size_t>((k * n + i) * d + t)] -
                           y[static_cast<std::size_t>((k * m + j) * d + t)];
          c += a * a;
        }
        keys[static_cast<std::size_t>(i * m + j)] =
            topk::key_value(static_cast<float>(sol.f[static_cast<std::size_t>(k * n + i)]),
                            static_cast<float>(sol.g[static_cast<std::size_t>(k * m + j)]),
                            static_cast<float>(c), inv, key_seed, k, i, j);
      }
    }
    std::vector<float> sorted = keys;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    if (sorted[P - 1] - sorted[P] < 1e-3f * (1.f + std::abs(sorted[P]))) continue;
    ++compared;
    const auto want = reference_select(keys, P);
    for (std::int64_t t = 0; t < P; ++t) {
      EXPECT_EQ(pairs.i[static_cast<std::size_t>(k * P + t)] * m +
                    pairs.j[static_cast<std::size_t>(k * P + t)],
                want[static_cast<std::size_t>(t)])
          << "problem " << k << " pair " << t;
    }
  }
  EXPECT_GE(compared, 2) << "the seeds give near-ties: pick others";
}

// The kernels' row uniform and column score (draws::, with replacement) on the CPU's
// potentials reproduce the CPU's couple() draws: the row by inverse CDF of the fp64 row
// masses at the uniform, the column as the argmax of the score (where the best and the
// second score, or the uniform and a CDF step, are apart by more than round-off).
TEST(TopKReview, KernelDrawsWithReplacementFollowTheCpuStreams) {
  const std::int64_t K = 2, n = 6, m = 7, d = 2, P = 40;
  const auto x = otgpu_test::uniform(static_cast<std::size_t>(K * n * d), 83, -1, 1);
  const auto y = otgpu_test::uniform(static_cast<std::size_t>(K * m * d), 84, -1, 1);
  const auto xv = TensorView::host(x.data(), {K, n, d});
  const auto yv = TensorView::host(y.data(), {K, m, d});
  CouplingOptions o;
  o.eps = 0.3;
  o.num_pairs = P;
  o.replacement = true;
  o.seed = 987654321987ull;
  o.backend = otgpu::Backend::cpu;
  const auto pairs = otgpu::couple(xv, yv, o);
  otgpu::SinkhornOptions so = otgpu::detail::coupling_sinkhorn_options(o);
  so.backend = otgpu::Backend::cpu;
  const auto sol = otgpu::sinkhorn(otgpu::detail::coupling_problem(xv, yv, o), so);
  const std::uint64_t col_seed =
      otgpu::detail::stream_seed(o.seed, otgpu::detail::kStreamJointColumn);
  int rows_compared = 0, cols_compared = 0;
  for (std::int64_t k = 0; k < K; ++k) {
    const double inv = 1.0 / sol.problems[static_cast<std::size_t>(k)].eps;
    auto cost = [&](std::int64_t i, std::int64_t j) {
      double c = 0;
      for (std::int64_t t = 0; t < d; ++t) {
        const double a = x[static_cast<std::size_t>((k * n + i) * d + t)] -
                         y[static_cast<std::size_t>((k * m + j) * d + t)];
        c += a * a;
      }
      return c;
    };
    auto f = [&](std::int64_t i) { return sol.f[static_cast<std::size_t>(k * n + i)]; };
    auto g = [&](std::int64_t j) { return sol.g[static_cast<std::size_t>(k * m + j)]; };
    // Row masses r_i / r_max and their inclusive CDF (fp64).
    std::vector<double> log_r(static_cast<std::size_t>(n)), cdf(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) {
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (std::int64_t j = 0; j < m; ++j) mx = std::max(mx, (g(j) - cost(i, j)) * inv);
      for (std::int64_t j = 0; j < m; ++j) sum += std::exp((g(j) - cost(i, j)) * inv - mx);
      log_r[static_cast<std::size_t>(i)] = f(i) * inv + mx + std::log(sum);
    }
    const double top = *std::max_element(log_r.begin(), log_r.end());
    double acc = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      acc += std::exp(log_r[static_cast<std::size_t>(i)] - top);
      cdf[static_cast<std::size_t>(i)] = acc;
    }
    for (std::int64_t t = 0; t < P; ++t) {
      const std::int64_t ci = pairs.i[static_cast<std::size_t>(k * P + t)];
      const std::int64_t cj = pairs.j[static_cast<std::size_t>(k * P + t)];
      const double u = otgpu::kernels::draws::row_uniform(o.seed, k, t) * acc;
      const auto at = std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
      bool clear = true;
      for (double step : cdf) clear = clear && std::abs(step - u) > 1e-9 * acc;
      if (clear) {
        ++rows_compared;
        EXPECT_EQ(ci, std::min<std::int64_t>(at, n - 1)) << "problem " << k << " draw " << t;
      }
      std::vector<double> score(static_cast<std::size_t>(m));
      for (std::int64_t j = 0; j < m; ++j) {
        score[static_cast<std::size_t>(j)] = otgpu::kernels::draws::column_score(
            static_cast<float>(g(j)), static_cast<float>(cost(ci, j)), inv, col_seed, k, t, j);
      }
      const auto best = std::max_element(score.begin(), score.end()) - score.begin();
      std::vector<double> sorted = score;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      if (sorted[0] - sorted[1] > 1e-4 * (1 + std::abs(sorted[0]))) {
        ++cols_compared;
        EXPECT_EQ(cj, best) << "problem " << k << " draw " << t;
      }
    }
  }
  EXPECT_GE(rows_compared, 60);
  EXPECT_GE(cols_compared, 60);
}

// ---- on a GPU ----

struct Clouds {
  std::vector<double> x, y;
  std::int64_t K, n, m, d;
  TensorView xv() const { return TensorView::host(x.data(), {K, n, d}); }
  TensorView yv() const { return TensorView::host(y.data(), {K, m, d}); }
  double cost(std::int64_t k, std::int64_t i, std::int64_t j) const {
    double s = 0;
    for (std::int64_t c = 0; c < d; ++c) {
      const double a = x[static_cast<std::size_t>((k * n + i) * d + c)] -
                       y[static_cast<std::size_t>((k * m + j) * d + c)];
      s += a * a;
    }
    return s;
  }
};

Clouds clouds(std::int64_t K, std::int64_t n, std::int64_t m, std::int64_t d, unsigned seed) {
  return {otgpu_test::uniform(static_cast<std::size_t>(K * n * d), seed, -1, 1),
          otgpu_test::uniform(static_cast<std::size_t>(K * m * d), seed + 1, -1, 1),
          K,
          n,
          m,
          d};
}

/// Pairs in range, (for draws without replacement) distinct and increasing, every entry
/// once when all are asked; the reported mean pair cost equal to the pairs' fp64 cost.
void check_pairs(const Clouds& c, const CouplingOptions& o, const otgpu::CouplingResult& r) {
  ASSERT_EQ(r.batch, c.K);
  for (std::int64_t k = 0; k < c.K; ++k) {
    SCOPED_TRACE(testing::Message() << "problem " << k);
    double sum = 0;
    std::int64_t prev = -1;
    for (std::int64_t t = 0; t < r.pairs; ++t) {
      const std::int64_t i = r.i[static_cast<std::size_t>(k * r.pairs + t)];
      const std::int64_t j = r.j[static_cast<std::size_t>(k * r.pairs + t)];
      ASSERT_GE(i, 0);
      ASSERT_LT(i, c.n);
      ASSERT_GE(j, 0);
      ASSERT_LT(j, c.m);
      if (o.pairs == CouplingPairs::per_row) {
        EXPECT_EQ(i, t);
      }
      if (o.pairs == CouplingPairs::joint && !o.replacement) {
        EXPECT_GT(i * c.m + j, prev);  // increasing, so distinct
        prev = i * c.m + j;
      }
      sum += c.cost(k, i, j);
    }
    if (o.pairs == CouplingPairs::joint && !o.replacement && r.pairs == c.n * c.m) {
      EXPECT_EQ(prev, c.n * c.m - 1);  // n m increasing entries below n m: all of them
    }
    const double mean = sum / static_cast<double>(r.pairs);
    EXPECT_NEAR(r.problems[static_cast<std::size_t>(k)].pair_cost, mean, 1e-5 * (mean + 1e-3));
  }
}

CouplingOptions gpu_options(std::int64_t pairs, bool replacement, CouplingPairs how) {
  CouplingOptions o;
  o.eps = 0.2;
  o.num_pairs = pairs;
  o.replacement = replacement;
  o.pairs = how;
  o.seed = 11;
  o.backend = otgpu::Backend::cuda;
  return o;
}

TEST(CouplingReviewGpu, EveryEntryWhenAllAreAskedOneTileAndSeveral) {
  REQUIRE_GPU();
  // 35 entries (one tile), 4270 (two tiles of 4096, the second partial), K = 3.
  for (const auto& c : {clouds(1, 7, 5, 3, 1), clouds(3, 70, 61, 4, 2)}) {
    const auto o = gpu_options(c.n * c.m, false, CouplingPairs::joint);
    const auto r = otgpu::couple(c.xv(), c.yv(), o);
    ASSERT_EQ(r.pairs, c.n * c.m);
    check_pairs(c, o, r);
  }
}

TEST(CouplingReviewGpu, OneRowOnePairAndThePartialTile) {
  REQUIRE_GPU();
  const auto one_row = clouds(2, 1, 9, 2, 3);
  for (const std::int64_t P : {std::int64_t{1}, std::int64_t{4}, std::int64_t{9}}) {
    const auto o = gpu_options(P, false, CouplingPairs::joint);
    check_pairs(one_row, o, otgpu::couple(one_row.xv(), one_row.yv(), o));
  }
  // 97 x 53 = 5141 entries: one full tile and a partial one; the pairs straddle them.
  const auto c = clouds(2, 97, 53, 3, 4);
  for (const std::int64_t P : {std::int64_t{1}, std::int64_t{97}, std::int64_t{4097}}) {
    const auto o = gpu_options(P, false, CouplingPairs::joint);
    check_pairs(c, o, otgpu::couple(c.xv(), c.yv(), o));
  }
}

TEST(CouplingReviewGpu, DrawsWithReplacementAndPerRowStayInRange) {
  REQUIRE_GPU();
  // n = 1 (the inverse CDF has one row), m = 33 (a warp and one lane per draw), K = 3,
  // and a bs0 larger than one block of draw_rows (257 rows).
  for (const auto& c : {clouds(3, 1, 33, 2, 5), clouds(2, 257, 33, 3, 6)}) {
    for (const bool per_row : {false, true}) {
      const auto o = gpu_options(per_row ? 0 : 1000, true,
                                 per_row ? CouplingPairs::per_row : CouplingPairs::joint);
      check_pairs(c, o, otgpu::couple(c.xv(), c.yv(), o));
    }
  }
}

}  // namespace
