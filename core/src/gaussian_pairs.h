// A validated batch of Gaussian pairs, packed into contiguous float64 host arrays:
// the one input form of both Gaussian OT backends. Internal (not installed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace otgpu::detail {

/// Each of the four tensors holds either one block (shared by every pair) or `batch`
/// blocks; the covariances are symmetrized and checked PSD by the validation.
struct GaussianPairs {
  std::int64_t batch = 0;
  std::int64_t d = 0;
  std::vector<double> m1, m2;  ///< [count, d]
  std::vector<double> s1, s2;  ///< [count, d, d] row-major (== column-major: symmetric)

  std::int64_t count_m1() const { return count(m1, d); }
  std::int64_t count_m2() const { return count(m2, d); }
  std::int64_t count_s1() const { return count(s1, d * d); }
  std::int64_t count_s2() const { return count(s2, d * d); }

  /// Block index of pair b in a tensor with `n` blocks (1 = shared).
  static std::int64_t block(std::int64_t n, std::int64_t b) { return n == 1 ? 0 : b; }

 private:
  static std::int64_t count(const std::vector<double>& v, std::int64_t block_size) {
    return block_size > 0 ? static_cast<std::int64_t>(v.size()) / block_size : 0;
  }
};

}  // namespace otgpu::detail
