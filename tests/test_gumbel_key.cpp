// The sampling key (otgpu/detail/math.h): gumbel(seed, problem, row, col) is the one
// host/device function every partner sampler draws with (cpu::sample_partners, the
// CUDA online_sample / online_sample_mma / dense_sample). The sharded CUDA solve calls
// those samplers on a shard's rows with row_offset = the shard's first global row, so
// its pairs equal the single-GPU ones only while gumbel(seed, problem, global row,
// col) stays what it is. Pinned here three ways: Philox4x32-10 against the published
// Random123 known-answer vectors, the counter/key layout against an independent
// re-derivation, and the variates of fixed keys against values recorded from the
// implementation the kernels were validated with.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <set>

#include "otgpu/detail/math.h"

namespace {

using otgpu::detail::gumbel;
using otgpu::detail::Philox4;
using otgpu::detail::philox4x32_10;

/// Philox4x32-10 from its definition (Salmon et al., SC'11), written independently of
/// math.h: 64-bit products instead of mulhilo32, the key bumped between rounds only.
Philox4 philox_reference(Philox4 c, std::uint32_t k0, std::uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const std::uint64_t p0 = 0xD2511F53ull * c.v[0], p1 = 0xCD9E8D57ull * c.v[2];
    const auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
  }
  return c;
}

/// The documented key: counter (col lo, col hi, row lo, problem lo), key (seed lo,
/// seed hi ^ row hi); u = (word 0 + 1/2) / 2^32, a standard Gumbel -log(-log u).
double gumbel_reference(std::uint64_t seed, std::uint64_t problem, std::uint64_t row,
                        std::uint64_t col) {
  const Philox4 ctr{{static_cast<std::uint32_t>(col), static_cast<std::uint32_t>(col >> 32),
                     static_cast<std::uint32_t>(row), static_cast<std::uint32_t>(problem)}};
  const Philox4 r = philox_reference(
      ctr, static_cast<std::uint32_t>(seed),
      static_cast<std::uint32_t>(seed >> 32) ^ static_cast<std::uint32_t>(row >> 32));
  const double u = (static_cast<double>(r.v[0]) + 0.5) / 4294967296.0;
  return -std::log(-std::log(u));
}

TEST(GumbelKey, PhiloxMatchesTheRandom123KnownAnswers) {
  struct Kat {
    Philox4 ctr;
    std::uint32_t k0, k1;
    Philox4 want;
  };
  const Kat kats[] = {
      {{{0u, 0u, 0u, 0u}}, 0u, 0u, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       0xffffffffu,
       0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       0xa4093822u,
       0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& k : kats) {
    const Philox4 got = philox4x32_10(k.ctr, k.k0, k.k1);
    const Philox4 ref = philox_reference(k.ctr, k.k0, k.k1);
    for (int w = 0; w < 4; ++w) {
      EXPECT_EQ(got.v[w], k.want.v[w]) << "word " << w;
      EXPECT_EQ(ref.v[w], k.want.v[w]) << "word " << w;
    }
  }
}

TEST(GumbelKey, LayoutOfProblemRowAndColumnIsUnchanged) {
  const std::uint64_t seeds[] = {0, 5, 0x123456789abcdefull};
  const std::uint64_t problems[] = {0, 1, 3, 65534};
  // Rows past 2^32 fold their high word into the key; columns carry 64 bits.
  const std::uint64_t rows[] = {0, 1, 700, 4095, (1ull << 32) + 7, (3ull << 40) + 11};
  const std::uint64_t cols[] = {0, 1, 123, 999, (1ull << 33) + 2};
  for (auto s : seeds)
    for (auto b : problems)
      for (auto i : rows)
        for (auto j : cols) {
          // Same formula, same libm call: equal to the last bit.
          EXPECT_EQ(gumbel(s, b, i, j), gumbel_reference(s, b, i, j))
              << "seed " << s << " problem " << b << " row " << i << " col " << j;
        }
}

TEST(GumbelKey, RecordedVariatesOfFixedKeys) {
  // Recorded from math.h before the sharded solve shared the single-GPU samplers
  // (commit 246475c); a change of the key derivation changes the pairs of every
  // sampler and breaks the CPU / single-GPU / sharded agreement.
  struct Rec {
    std::uint64_t seed, problem, row, col;
    double value;
  };
  const Rec recs[] = {
      {5, 0, 0, 0, 0x1.526fdc79a91dbp+0},
      {5, 0, 1, 0, 0x1.b49327eb66641p-5},
      {5, 0, 0, 1, -0x1.cc44b2b05935cp-5},
      {5, 1, 0, 0, -0x1.f6d6a14e6a039p-3},
      {5, 2, 700, 123, 0x1.37e2ae51985ecp+1},
      {0x123456789abcdefull, 3, (1ull << 32) + 7, 9, 0x1.6a4fa8ec29fa9p-3},
      {42, 0, 1000, 999, 0x1.73b6fd5d1c0d8p-1},
  };
  for (const Rec& r : recs) {
    // A few ulp of libm freedom; a different key moves the value by O(1).
    EXPECT_DOUBLE_EQ(gumbel(r.seed, r.problem, r.row, r.col), r.value)
        << "seed " << r.seed << " problem " << r.problem << " row " << r.row << " col " << r.col;
  }
}

TEST(GumbelKey, GlobalRowsKeepDistinctDraws) {
  // A shard keys row i as row_offset + i: rows that differ only above bit 32, or only in
  // the problem, must not repeat a draw (which the sharded solve would turn into
  // correlated partners across shards).
  std::set<double> seen;
  for (std::uint64_t b = 0; b < 3; ++b)
    for (std::uint64_t hi = 0; hi < 3; ++hi)
      for (std::uint64_t lo = 0; lo < 50; ++lo) seen.insert(gumbel(9, b, (hi << 32) + lo, 4));
  EXPECT_EQ(seen.size(), 3u * 3u * 50u);
}

}  // namespace
