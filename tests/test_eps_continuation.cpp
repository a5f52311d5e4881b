// The per-problem continuation steps the CUDA driver runs on the device
// (otgpu/detail/eps_continuation.h), fed residual histories on the host and compared
// with the schedule written out by hand from the documented rule.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "otgpu/detail/eps_continuation.h"

namespace {

using otgpu::detail::eps_continuation_max_iters;
using otgpu::detail::eps_continuation_start;
using otgpu::detail::eps_level_step;
using otgpu::detail::EpsLevel;

/// Runs a problem through its levels with residual(level, iteration at level) and
/// returns the eps_t of every iteration (the level it ran at).
template <class Residual>
std::vector<double> run(double eps, double start, double decay, Residual residual, int cap) {
  EpsLevel s{start, 0};
  std::vector<double> trace;
  int level = 0;
  while (s.eps_t > eps && static_cast<int>(trace.size()) < cap) {
    trace.push_back(s.eps_t);
    if (eps_level_step(s, eps, decay, residual(level, s.iters + 1))) ++level;
  }
  return trace;
}

TEST(EpsContinuation, StartFollowsTheSharedRule) {
  // Scaling only when eps < 3e-3 x spread; from 1024 eps, capped at 2 x spread.
  EXPECT_EQ(eps_continuation_start(1e-3, 1.0), 1.024);
  EXPECT_EQ(eps_continuation_start(1e-2, 1.0), 0.0);       // 1e-2 >= 3e-3 x 1
  EXPECT_EQ(eps_continuation_start(2.9e-3, 1.0), 2.0);     // 2.97 capped at 2 x spread
  EXPECT_EQ(eps_continuation_start(1e-6, 1.0), 1.024e-3);  // far below the cap
  EXPECT_EQ(eps_continuation_start(1e-3, 0.0), 0.0);       // constant costs: nothing to scale
  EXPECT_EQ(eps_continuation_start(1e306, std::numeric_limits<double>::infinity()), 0.0);
}

TEST(EpsContinuation, LevelEndsAtLooseResidual) {
  // Level k reaches the loose residual 1e-2 after k + 2 iterations.
  const auto trace = run(
      1e-3, 8e-3, 0.5, [](int level, int it) { return it >= level + 2 ? 5e-3 : 0.5; }, 1000);
  // Levels 8e-3 (2 iterations), 4e-3 (3), 2e-3 (4), then eps.
  const std::vector<double> want = {8e-3, 8e-3, 4e-3, 4e-3, 4e-3, 2e-3, 2e-3, 2e-3, 2e-3};
  EXPECT_EQ(trace, want);
}

TEST(EpsContinuation, LevelEndsAfterMaxItersOrNaN) {
  const int cap = otgpu::detail::kEpsLevelMaxIters;
  const auto stuck = run(
      1e-3, 4e-3, 0.5, [](int, int) { return 1.0; }, 10000);
  ASSERT_EQ(static_cast<int>(stuck.size()), 2 * cap);
  EXPECT_EQ(stuck[cap - 1], 4e-3);
  EXPECT_EQ(stuck[cap], 2e-3);
  const auto nan = run(
      1e-3, 4e-3, 0.5, [](int, int) { return std::numeric_limits<double>::quiet_NaN(); }, 100);
  EXPECT_EQ(nan.size(), 2u);  // a non-finite level residual ends the level at once
}

TEST(EpsContinuation, LastLevelLandsOnEpsExactly) {
  // 1024 eps does not reach eps by halving in whole steps when decay = 0.3: the last
  // step is clamped to eps, never below.
  EpsLevel s{1024.0 * 1e-3, 0};
  int moves = 0;
  while (s.eps_t > 1e-3) {
    ASSERT_TRUE(eps_level_step(s, 1e-3, 0.3, 0.0));
    ++moves;
    ASSERT_GE(s.eps_t, 1e-3);
  }
  EXPECT_EQ(s.eps_t, 1e-3);
  EXPECT_EQ(moves, 6);  // 1024 x 0.3^5 = 2.49 > 1, x 0.3^6 = 0.75 < 1
}

TEST(EpsContinuation, PhaseBoundCoversEveryHistory) {
  // The longest history: every level runs kEpsLevelMaxIters from the largest start.
  for (double decay : {0.5, 0.3, 0.9}) {
    SCOPED_TRACE(decay);
    const auto trace = run(
        1e-3, 1.024, decay, [](int, int) { return 1.0; }, 1 << 20);
    EXPECT_LE(static_cast<int>(trace.size()), eps_continuation_max_iters(decay));
    EXPECT_GT(static_cast<int>(trace.size()),
              eps_continuation_max_iters(decay) - 2 * otgpu::detail::kEpsLevelMaxIters);
  }
  EXPECT_EQ(eps_continuation_max_iters(0.5), 11 * otgpu::detail::kEpsLevelMaxIters);
  EXPECT_EQ(eps_continuation_max_iters(1.0), 0);
}

TEST(EpsContinuation, PhaseBoundOfADecayNearOneFitsAnInt) {
  // Validation accepts any decay in (0, 1): 1 - 1e-12 has ~7e12 levels. The bound
  // saturates at the largest multiple of kEpsLevelMaxIters an int holds (max_iter caps
  // the phase) instead of overflowing int after a loop of 7e12 steps.
  const int k = otgpu::detail::kEpsLevelMaxIters;
  for (double decay : {1.0 - 1e-6, 1.0 - 1e-9, 1.0 - 1e-12, 0.99999999999999989}) {
    SCOPED_TRACE(decay);
    const int bound = eps_continuation_max_iters(decay);
    EXPECT_GT(bound, 0);
    EXPECT_EQ(bound % k, 0);
    EXPECT_LE(static_cast<long long>(bound), 2147483647LL);
  }
  EXPECT_EQ(eps_continuation_max_iters(1.0 - 1e-12), (2147483647 / k) * k);
  // Still exact where the levels can be counted: 1024 x 0.999^k > 1 for k = 0..6928.
  EXPECT_EQ(eps_continuation_max_iters(0.999), (6929 + 1) * k);
}

TEST(EpsContinuation, RetiresOnlyAtEpsAndAtCheckIterations) {
  using otgpu::detail::eps_continuation_check;
  using otgpu::detail::kEpsContinue;
  using otgpu::detail::kEpsNextLevel;
  using otgpu::detail::kEpsRetire;
  const double eps = 1e-3, tol = 1e-4;
  EpsLevel s{2e-3, 0};
  // Above eps a residual below tol ends the level, never the solve.
  EXPECT_EQ(eps_continuation_check(s, eps, 0.5, 1e-9, tol, 10, 10), kEpsNextLevel);
  EXPECT_EQ(s.eps_t, eps);
  // At eps: converged residuals retire only at multiples of check_every.
  EXPECT_EQ(eps_continuation_check(s, eps, 0.5, 1e-5, tol, 10, 13), kEpsContinue);
  EXPECT_EQ(eps_continuation_check(s, eps, 0.5, 1e-3, tol, 10, 20), kEpsContinue);
  EXPECT_EQ(eps_continuation_check(s, eps, 0.5, 1e-5, tol, 10, 30), kEpsRetire);
  EXPECT_EQ(eps_continuation_check(s, eps, 0.5, 1e-5, tol, 0, 30), kEpsContinue);  // no checks
  EXPECT_EQ(s.iters, 0);  // iterations at eps are not level iterations
  // A whole history: the levels 4e-3 and 2e-3 end at the loose 1e-2 (iterations 2 and
  // 5), then at eps the first check (iteration 10) retires it.
  EpsLevel h{4e-3, 0};
  std::vector<int> actions;
  const double res[] = {0.5,  5e-3, 0.3,  0.2,  8e-3, 0.1,  0.01, 1e-3, 2e-4, 5e-5,
                        5e-5, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5, 5e-5};
  int retired_at = 0;
  for (int it = 1; it <= 20 && retired_at == 0; ++it) {
    const int a = eps_continuation_check(h, eps, 0.5, res[it - 1], tol, 10, it);
    if (a == kEpsNextLevel) actions.push_back(it);
    if (a == kEpsRetire) retired_at = it;
  }
  EXPECT_EQ(actions, (std::vector<int>{2, 5}));
  EXPECT_EQ(retired_at, 10);
}

}  // namespace
