// The assignment validation's value checks (core/src/assignment_validate.cpp): the
// vectorized row scans must find every NaN / -inf cost and every non-finite point
// coordinate wherever it sits in a row (vector body or tail), for fp32 and fp64,
// contiguous, strided and batched views, and name the element and its value as the
// element-wise check did; +inf costs (forbidden pairs) pass.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "assignment_validate.h"
#include "otgpu/error.h"

namespace {

using otgpu::CostKind;
using otgpu::DType;
using otgpu::TensorView;

constexpr double kInf = std::numeric_limits<double>::infinity();

/// A host view over `store` with the given shape, its last dimension at `step`
/// elements (1 = contiguous), row-major otherwise.
template <class T>
TensorView view(const std::vector<T>& store, std::vector<std::int64_t> shape, std::int64_t step) {
  TensorView v;
  v.data = store.data();
  v.dtype = sizeof(T) == 4 ? DType::f32 : DType::f64;
  v.rank = static_cast<int>(shape.size());
  std::int64_t stride = step;
  for (int k = v.rank - 1; k >= 0; --k) {
    v.shape[static_cast<std::size_t>(k)] = shape[static_cast<std::size_t>(k)];
    v.strides[static_cast<std::size_t>(k)] = stride;
    stride *= shape[static_cast<std::size_t>(k)];
  }
  return v;
}

/// Element offset of logical index (b, i, j) in the layout of view().
std::int64_t offset(const TensorView& v, std::int64_t b, std::int64_t i, std::int64_t j) {
  return v.rank == 3 ? b * v.stride(0) + i * v.stride(1) + j * v.stride(2)
                     : i * v.stride(0) + j * v.stride(1);
}

/// printf-style formatting (indices as long long).
[[gnu::format(printf, 1, 2)]] std::string text(const char* format, ...) {
  char buf[160];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  return buf;
}

std::string message_of(const otgpu::AssignmentProblem& p) {
  try {
    otgpu::detail::validate_assignment(p, {});
  } catch (const otgpu::NonFiniteInput& e) {
    return e.what();
  }
  return "";
}

template <class T>
void cost_cases() {
  const std::int64_t K = 2, n = 3, m = 37;  // m: several vectors and a tail
  for (std::int64_t step : {1, 3}) {
    for (bool batched : {false, true}) {
      std::vector<T> store(static_cast<std::size_t>(K * n * m * step), T(0.5));
      otgpu::AssignmentProblem p;
      p.cost_kind = CostKind::matrix;
      p.cost = batched ? view(store, {K, n, m}, step) : view(store, {n, m}, step);
      const std::int64_t bmax = batched ? K : 1;
      EXPECT_EQ(message_of(p), "");
      for (std::int64_t b = 0; b < bmax; ++b) {
        for (std::int64_t j : {0, 5, 31, 36}) {
          for (T bad : {std::numeric_limits<T>::quiet_NaN(), -std::numeric_limits<T>::infinity(),
                        std::numeric_limits<T>::infinity()}) {
            T& slot = store[static_cast<std::size_t>(offset(p.cost, b, 2, j))];
            slot = bad;
            const char* value = std::isnan(bad) ? "nan" : "-inf";
            const std::string want =
                batched ? text("cost: element [%lld, 2, %lld] is %s", static_cast<long long>(b),
                               static_cast<long long>(j), value)
                        : text("cost: element [2, %lld] is %s", static_cast<long long>(j), value);
            const std::string got = message_of(p);
            if (bad == std::numeric_limits<T>::infinity()) {
              EXPECT_EQ(got, "") << "+inf is a forbidden pair, not an error";
            } else {
              EXPECT_NE(got.find(want), std::string::npos) << got << " (step " << step << ")";
            }
            slot = T(0.5);
          }
        }
      }
    }
  }
}

TEST(AssignmentValidate, EveryBadCostIsFoundAndNamed) {
  cost_cases<double>();
  cost_cases<float>();
}

template <class T>
void point_cases() {
  const std::int64_t n = 4, m = 3, d = 21;
  for (std::int64_t step : {1, 2}) {
    std::vector<T> xs(static_cast<std::size_t>(n * d * step), T(0.25));
    std::vector<T> ys(static_cast<std::size_t>(m * d * step), T(-0.5));
    otgpu::AssignmentProblem p;
    p.cost_kind = CostKind::sqeuclidean;
    p.x = view(xs, {n, d}, step);
    p.y = view(ys, {m, d}, step);
    EXPECT_EQ(message_of(p), "");
    for (std::int64_t k : {0, 7, 20}) {
      for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                    -std::numeric_limits<T>::infinity()}) {
        T& slot = ys[static_cast<std::size_t>(offset(p.y, 0, 1, k))];
        slot = bad;
        const char* value = std::isnan(bad) ? "nan" : bad > 0 ? "inf" : "-inf";
        const std::string got = message_of(p);
        EXPECT_NE(got.find(text("y: element [1, %lld] is %s", static_cast<long long>(k), value)),
                  std::string::npos)
            << got;
        slot = T(-0.5);
      }
    }
  }
}

TEST(AssignmentValidate, EveryNonFinitePointIsFoundAndNamed) {
  point_cases<double>();
  point_cases<float>();
}

TEST(AssignmentValidate, PointsWhoseCostsOverflowAreRejected) {
  // |x| = 1e154 sqrt(3): (|x| + |y|)^2 ~ 1.2e309 overflows; 1e153 does not.
  std::vector<double> xs(3 * 3, 1e154), ys(2 * 3, -1e154);
  otgpu::AssignmentProblem p;
  p.cost_kind = CostKind::sqeuclidean;
  p.x = view(xs, {3, 3}, 1);
  p.y = view(ys, {2, 3}, 1);
  EXPECT_NE(message_of(p).find("may overflow"), std::string::npos);
  for (double& v : xs) v = 1e153;
  for (double& v : ys) v = -1e153;
  EXPECT_EQ(message_of(p), "");
}

}  // namespace
