// Helpers of the Gaussian OT tests (CPU and GPU suites): seeded covariances with a
// known eigen-structure, small dense matrix algebra written independently of the
// library, and single-pair calls.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "otgpu/gaussian.h"

namespace otgpu_test {

using Mat = std::vector<double>;  // row-major d x d

inline Mat matmul(const Mat& a, const Mat& b, std::int64_t d) {
  Mat c(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < d; ++i) {
    for (std::int64_t k = 0; k < d; ++k) {
      for (std::int64_t j = 0; j < d; ++j) {
        c[static_cast<std::size_t>(i * d + j)] +=
            a[static_cast<std::size_t>(i * d + k)] * b[static_cast<std::size_t>(k * d + j)];
      }
    }
  }
  return c;
}

inline Mat transpose(const Mat& a, std::int64_t d) {
  Mat t(a.size());
  for (std::int64_t i = 0; i < d; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      t[static_cast<std::size_t>(j * d + i)] = a[static_cast<std::size_t>(i * d + j)];
    }
  }
  return t;
}

inline double max_abs(const Mat& a) {
  double m = 0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

inline double max_abs_diff(const Mat& a, const Mat& b) {
  double m = 0;
  for (std::size_t k = 0; k < a.size(); ++k) m = std::max(m, std::fabs(a[k] - b[k]));
  return m;
}

inline double trace(const Mat& a, std::int64_t d) {
  double t = 0;
  for (std::int64_t i = 0; i < d; ++i) t += a[static_cast<std::size_t>(i * d + i)];
  return t;
}

/// A random orthogonal matrix (modified Gram-Schmidt of a Gaussian matrix, twice).
inline Mat random_orthogonal(std::int64_t d, std::mt19937_64& rng) {
  std::normal_distribution<double> n01;
  Mat q(static_cast<std::size_t>(d * d));
  for (double& x : q) x = n01(rng);
  for (int pass = 0; pass < 2; ++pass) {
    for (std::int64_t j = 0; j < d; ++j) {  // columns
      for (std::int64_t k = 0; k < j; ++k) {
        double dot = 0;
        for (std::int64_t i = 0; i < d; ++i) {
          dot += q[static_cast<std::size_t>(i * d + j)] * q[static_cast<std::size_t>(i * d + k)];
        }
        for (std::int64_t i = 0; i < d; ++i) {
          q[static_cast<std::size_t>(i * d + j)] -= dot * q[static_cast<std::size_t>(i * d + k)];
        }
      }
      double norm = 0;
      for (std::int64_t i = 0; i < d; ++i) {
        norm += q[static_cast<std::size_t>(i * d + j)] * q[static_cast<std::size_t>(i * d + j)];
      }
      norm = std::sqrt(norm);
      for (std::int64_t i = 0; i < d; ++i) q[static_cast<std::size_t>(i * d + j)] /= norm;
    }
  }
  return q;
}

/// Q diag(lambda) Q^T, exactly symmetric.
inline Mat from_eigen(const Mat& q, const std::vector<double>& lambda, std::int64_t d) {
  Mat s(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < d; ++i) {
    for (std::int64_t j = i; j < d; ++j) {
      double acc = 0;
      for (std::int64_t k = 0; k < d; ++k) {
        acc += q[static_cast<std::size_t>(i * d + k)] * lambda[static_cast<std::size_t>(k)] *
               q[static_cast<std::size_t>(j * d + k)];
      }
      s[static_cast<std::size_t>(i * d + j)] = acc;
      s[static_cast<std::size_t>(j * d + i)] = acc;
    }
  }
  return s;
}

/// Eigenvalues log-uniform in [lo, hi].
inline std::vector<double> random_spectrum(std::int64_t d, std::mt19937_64& rng, double lo,
                                           double hi) {
  std::uniform_real_distribution<double> u(std::log(lo), std::log(hi));
  std::vector<double> l(static_cast<std::size_t>(d));
  for (double& x : l) x = std::exp(u(rng));
  return l;
}

/// A random SPD matrix with eigenvalues in [lo, hi].
inline Mat random_spd(std::int64_t d, std::mt19937_64& rng, double lo = 0.2, double hi = 3.0) {
  return from_eigen(random_orthogonal(d, rng), random_spectrum(d, rng, lo, hi), d);
}

inline std::vector<double> random_vector(std::int64_t d, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> n01;
  std::vector<double> v(static_cast<std::size_t>(d));
  for (double& x : v) x = scale * n01(rng);
  return v;
}

/// One pair, host float64 views.
inline otgpu::GaussianOTResult gaussian_pair(const std::vector<double>& m1, const Mat& s1,
                                             const std::vector<double>& m2, const Mat& s2,
                                             otgpu::GaussianOTOptions options) {
  const auto d = static_cast<std::int64_t>(m1.size());
  otgpu::GaussianBatch src{otgpu::TensorView::host(m1.data(), {d}),
                           otgpu::TensorView::host(s1.data(), {d, d})};
  otgpu::GaussianBatch tgt{otgpu::TensorView::host(m2.data(), {d}),
                           otgpu::TensorView::host(s2.data(), {d, d})};
  return otgpu::gaussian_ot(src, tgt, options);
}

}  // namespace otgpu_test
