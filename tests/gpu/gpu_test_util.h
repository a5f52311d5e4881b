// Helpers shared by the GPU suites: the clean skip without a device and the seeded
// uniform data every comparison with the CPU reference starts from.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "otgpu/sinkhorn.h"

/// Skips the test (not a failure) when no CUDA device is usable: CI has none.
#define REQUIRE_GPU()                                                      \
  do {                                                                     \
    if (!otgpu::cuda_available()) GTEST_SKIP() << "no usable CUDA device"; \
  } while (0)

namespace otgpu_test {

/// `count` values uniform in [lo, hi) from a seeded generator (printed by the tests
/// that use it, so a failure can be replayed).
inline std::vector<double> uniform(std::size_t count, std::uint32_t seed, double lo = 0,
                                   double hi = 1) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(count);
  for (double& x : v) x = dist(rng);
  return v;
}

}  // namespace otgpu_test
