// The column draw of the joint sampler with replacement (core/src/cpu_coupling.cpp,
// draw_column): the Gumbel logs it skips must never change the draw, so it is compared
// index for index with the plain scan over every column (written out here from the
// definition in otgpu/detail/coupling_math.h), on rows built to be hard for the
// pruning: near-equal scores, ties, zero weights, infinite and NaN costs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu_coupling.h"
#include "otgpu/detail/coupling_math.h"

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::int64_t plain_scan(const std::vector<double>& log_b, const std::vector<double>& g,
                        const std::vector<double>& c, double inv, std::uint64_t seed,
                        std::uint64_t problem, std::uint64_t t) {
  double best = -kInf;
  std::int64_t arg = -1;
  for (std::size_t j = 0; j < c.size(); ++j) {
    if (log_b[j] == -kInf) continue;
    const double v =
        log_b[j] + (g[j] - c[j]) * inv + otgpu::detail::stream_gumbel(seed, problem, t, j);
    if (v > best) {
      best = v;
      arg = static_cast<std::int64_t>(j);
    }
  }
  return arg;
}

TEST(CouplingDraws, GumbelUniformGivesTheStreamGumbelBits) {
  std::mt19937_64 rng(3);
  for (int n = 0; n < 200'000; ++n) {
    const std::uint64_t seed = rng(), problem = rng() % 1000, i = n % 7 == 0 ? rng() : rng() % 4096,
                        j = rng() % 100'000;
    const double want = otgpu::detail::stream_gumbel(seed, problem, i, j);
    const double got = -std::log(-std::log(otgpu::cpu::gumbel_uniform(seed, problem, i, j)));
    ASSERT_EQ(std::memcmp(&want, &got, sizeof want), 0) << seed << " " << i << " " << j;
  }
}

TEST(CouplingDraws, PrunedDrawIsThePlainScan) {
  std::mt19937_64 rng(20261129);
  std::int64_t draws = 0, nontrivial = 0;
  // (spread of the costs in units of eps, share of zero weights, special entries)
  for (const double spread : {1e-9, 1e-3, 0.5, 5.0, 50.0, 1e4}) {
    for (const std::int64_t m : {1, 2, 7, 64, 256, 301}) {
      for (int rep = 0; rep < 40; ++rep) {
        const double eps = 0.05 + 10.0 * std::uniform_real_distribution<double>(0, 1)(rng);
        const double inv = 1.0 / eps;
        std::uniform_real_distribution<double> cd(0.0, spread * eps), gd(-1.0, 1.0);
        std::vector<double> c(static_cast<std::size_t>(m)), g(c.size()), log_b(c.size());
        for (std::size_t j = 0; j < c.size(); ++j) {
          c[j] = 100.0 + cd(rng);
          g[j] = rep % 2 == 0 ? 0.0 : gd(rng) * spread * eps;
          log_b[j] = -std::log(static_cast<double>(m));
          const auto roll = rng() % 50;
          if (rep % 5 == 1 && roll < 10) log_b[j] = -kInf;
          if (rep % 5 == 2 && roll == 0) c[j] = kInf;
          if (rep % 5 == 3 && roll == 0) c[j] = std::numeric_limits<double>::quiet_NaN();
          if (rep % 5 == 4) c[j] = -1e17 * eps;  // every score 1e17: ties in v, first j wins
        }
        if (rep == 39) std::fill(log_b.begin(), log_b.end(), -kInf);
        std::vector<double> a(c.size()), thresh(c.size());
        const std::uint64_t seed = rng(), problem = rng() % 16;
        for (std::uint64_t t = 0; t < 8; ++t) {
          const std::int64_t want = plain_scan(log_b, g, c, inv, seed, problem, t);
          const std::int64_t got = otgpu::cpu::draw_column(
              log_b.data(), g.data(), c.data(), m, inv, seed, problem, t, a.data(), thresh.data());
          ASSERT_EQ(got, want) << "spread " << spread << " m " << m << " rep " << rep << " t " << t;
          ++draws;
          if (want > 0) ++nontrivial;
        }
      }
    }
  }
  EXPECT_GT(nontrivial, draws / 2);
}

}  // namespace
