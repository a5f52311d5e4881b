// The seeded data the CPU and GPU suites start from: one generator per distribution,
// so that a seed names the same numbers in every file (and a failure printed with its
// seed replays).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace otgpu_test {

/// `count` values uniform in [lo, hi): std::mt19937_64 seeded with `seed`, drawn in
/// order through std::uniform_real_distribution<double>.
inline std::vector<double> uniform(std::size_t count, std::uint32_t seed, double lo = 0,
                                   double hi = 1) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(count);
  for (double& x : v) x = dist(rng);
  return v;
}

/// `count` values normal with the given mean and standard deviation:
/// std::mt19937_64 seeded with `seed`, drawn in order through
/// std::normal_distribution<double>(mean, sd).
inline std::vector<double> normal(std::size_t count, std::uint32_t seed, double mean = 0,
                                  double sd = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, sd);
  std::vector<double> v(count);
  for (double& x : v) x = dist(rng);
  return v;
}

}  // namespace otgpu_test
