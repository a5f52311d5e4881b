// Checks shared by the CPU and GPU suites: the typed-error expectation, and the dense
// fp64 cost of point clouds that assignment results are evaluated on.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "otgpu/sinkhorn.h"

namespace otgpu_test {

/// `f` must throw E with `needle` in its message; another exception type, or none,
/// is a failure.
template <class E>
void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one naming " << needle;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

/// The dense cost [n, m] (row-major) of problem b of the clouds x [B, n, d] and
/// y [B, m, d], in fp64: C_ij = |x_i - y_j|^2 (sqeuclidean), |x_i - y_j| (euclidean)
/// or -<x_i, y_j> (neg_dot), summed over k in order.
inline std::vector<double> point_cost(const std::vector<double>& x, const std::vector<double>& y,
                                      std::int64_t b, std::int64_t n, std::int64_t m,
                                      std::int64_t d, otgpu::CostKind kind) {
  std::vector<double> c(static_cast<std::size_t>(n * m));
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < m; ++j) {
      double sq = 0, dot = 0;
      for (std::int64_t k = 0; k < d; ++k) {
        const double a = x[static_cast<std::size_t>((b * n + i) * d + k)];
        const double e = y[static_cast<std::size_t>((b * m + j) * d + k)];
        sq += (a - e) * (a - e);
        dot += a * e;
      }
      c[static_cast<std::size_t>(i * m + j)] = kind == otgpu::CostKind::neg_dot     ? -dot
                                               : kind == otgpu::CostKind::euclidean ? std::sqrt(sq)
                                                                                    : sq;
    }
  }
  return c;
}

}  // namespace otgpu_test
