// The seeded data the CPU and GPU suites start from: one generator per distribution,
// so that a seed names the same numbers in every file (and a failure printed with its
// seed replays).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace otgpu_test {

/// `count` draws of `dist` from std::mt19937_64 seeded with `seed`, in order.
template <class Distribution>
std::vector<double> draws(std::size_t count, std::uint32_t seed, Distribution dist) {
  std::mt19937_64 rng(seed);
  std::vector<double> v(count);
  for (double& x : v) x = dist(rng);
  return v;
}

/// `count` values uniform in [lo, hi).
inline std::vector<double> uniform(std::size_t count, std::uint32_t seed, double lo = 0,
                                   double hi = 1) {
  return draws(count, seed, std::uniform_real_distribution<double>(lo, hi));
}

/// `count` values normal with mean `mean` and standard deviation `sd`.
inline std::vector<double> normal(std::size_t count, std::uint32_t seed, double mean = 0,
                                  double sd = 1) {
  return draws(count, seed, std::normal_distribution<double>(mean, sd));
}

}  // namespace otgpu_test
