// Exact 1-D optimal transport by merging two quantile functions, shared verbatim by
// the CPU reference and the CUDA kernels (docs/design.md: "1-D OT and sliced Wasserstein").
//
// Inputs are the two sorted supports u_0 <= ... <= u_{n-1}, v_0 <= ... <= v_{m-1}
// and their normalized cumulative weights ca(i) = (a_0 + ... + a_i) / sum(a) (so
// ca(n-1) == 1 exactly), cb likewise. The merged sequence of the n + m breakpoints
// cuts [0, 1] into n + m - 1 pieces; piece k pairs the sorted points (i, j) with
// i + j = k, and carries mass min(ca(i), cb(j)) - max(ca(i-1), cb(j-1)) >= 0. Ties
// are broken A first, both in the sequential walk and in the merge-path split, so a
// walk can start at any step k (that is how a GPU block splits one merge over its
// threads) and every piece is visited exactly once.
#pragma once

#include <cmath>
#include <cstdint>

#include "otgpu/config.h"

namespace otgpu::detail {

using std::fabs;
using std::pow;

/// |diff|^p with the common exponents computed without pow.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double ground_cost_1d(double diff, double p) {
  const double a = fabs(diff);
  if (p == 1.0) return a;
  if (p == 2.0) return a * a;
  return pow(a, p);
}

/// d/du |u - v|^p at diff = u - v (0 at diff = 0, a subgradient for p = 1).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double ground_cost_1d_derivative(double diff, double p) {
  if (diff == 0.0) return 0.0;
  const double s = diff > 0 ? 1.0 : -1.0;
  if (p == 1.0) return s;
  if (p == 2.0) return 2.0 * diff;
  return p * pow(fabs(diff), p - 1.0) * s;
}

/// Number i of A breakpoints among the first k of the merged sequence (ties: A
/// first); the walk state before step k is (i, k - i). 0 <= k <= n + m.
template <class CumA, class CumB>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE std::int64_t merge_path_split(const CumA& ca, std::int64_t n,
                                                                  const CumB& cb, std::int64_t m,
                                                                  std::int64_t k) {
  std::int64_t lo = k > m ? k - m : 0;
  std::int64_t hi = k < n ? k : n;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    // mid < hi <= min(k, n) and mid >= k - m keep both indices in range.
    if (ca(mid) <= cb(k - mid - 1)) {
      lo = mid + 1;  // A's next breakpoint precedes B's last one taken: take more A
    } else {
      hi = mid;
    }
  }
  return lo;
}

/// Visits at most `steps` pieces starting from the walk state (i, j) (as given by
/// merge_path_split), calling visit(i, j, mass) for each piece, zero masses
/// included. Stops when either list is exhausted.
template <class CumA, class CumB, class Visit>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE void quantile_merge_walk(const CumA& ca, std::int64_t n,
                                                             const CumB& cb, std::int64_t m,
                                                             std::int64_t i, std::int64_t j,
                                                             std::int64_t steps, Visit&& visit) {
  if (i >= n || j >= m) return;
  double a_prev = i > 0 ? ca(i - 1) : 0.0;
  double b_prev = j > 0 ? cb(j - 1) : 0.0;
  double a_cur = ca(i);
  double b_cur = cb(j);
  for (std::int64_t s = 0; s < steps; ++s) {
    const double lo = a_prev > b_prev ? a_prev : b_prev;
    const double hi = a_cur < b_cur ? a_cur : b_cur;
    visit(i, j, hi > lo ? hi - lo : 0.0);
    if (a_cur <= b_cur) {
      if (++i == n) return;
      a_prev = a_cur;
      a_cur = ca(i);
    } else {
      if (++j == m) return;
      b_prev = b_cur;
      b_cur = cb(j);
    }
  }
}

/// Normalized cumulative weight of the first i + 1 points of a uniform measure.
struct UniformCumulative {
  std::int64_t n;
  OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double operator()(std::int64_t i) const {
    return static_cast<double>(i + 1) / static_cast<double>(n);
  }
};

/// Cumulative weights from stored prefix sums; dividing by the stored total (the
/// last prefix sum) makes the last breakpoint exactly 1.
struct PrefixCumulative {
  const double* prefix;
  double total;
  OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double operator()(std::int64_t i) const {
    return prefix[i] / total;
  }
};

}  // namespace otgpu::detail
