// CPU reference of Gaussian OT. Per distinct source covariance S1: one Jacobi
// eigen-decomposition gives S1^{1/2} (and S1^{+1/2} for the map); per pair:
// M = S1^{1/2} S2 S1^{1/2}, its eigenvalues give Bures^2 and the entropic value
// (detail/gaussian_math.h), its eigenvectors the map. All float64.
#include "cpu_gaussian.h"

#include <fmt/format.h>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <exception>
#include <mutex>
#include <numeric>

#include "otgpu/detail/gaussian_math.h"
#include "otgpu/error.h"

namespace otgpu::cpu {

namespace {

// Jacobi converges quadratically once the off-diagonal part is small; 6-10 sweeps
// is typical up to d ~ 500. The cap only guards against a logic error.
constexpr int kMaxJacobiSweeps = 100;

using Matrix = std::vector<double>;

/// c = a * b for n x n row-major matrices (i-k-j order: unit stride inner loop).
void matmul(const double* a, const double* b, double* c, std::int64_t n) {
  std::fill(c, c + n * n, 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < n; ++k) {
      const double aik = a[i * n + k];
      if (aik == 0.0) continue;
      const double* brow = b + k * n;
      double* crow = c + i * n;
      for (std::int64_t j = 0; j < n; ++j) crow[j] += aik * brow[j];
    }
  }
}

/// V diag(f(values)) V^T, symmetrized exactly.
template <class F>
Matrix spectral_function(const Matrix& vectors, const std::vector<double>& values, std::int64_t n,
                         F f) {
  std::vector<double> fv(static_cast<std::size_t>(n));
  for (std::int64_t k = 0; k < n; ++k)
    fv[static_cast<std::size_t>(k)] = f(values[static_cast<std::size_t>(k)]);
  Matrix out(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = i; j < n; ++j) {
      double acc = 0;
      for (std::int64_t k = 0; k < n; ++k) {
        acc += vectors[static_cast<std::size_t>(i * n + k)] * fv[static_cast<std::size_t>(k)] *
               vectors[static_cast<std::size_t>(j * n + k)];
      }
      out[static_cast<std::size_t>(i * n + j)] = acc;
      out[static_cast<std::size_t>(j * n + i)] = acc;
    }
  }
  return out;
}

void symmetrize(double* a, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = i + 1; j < n; ++j) {
      const double s = 0.5 * (a[i * n + j] + a[j * n + i]);
      a[i * n + j] = s;
      a[j * n + i] = s;
    }
  }
}

/// Runs body(i) for i in [0, n) on OpenMP threads; the first exception thrown by any
/// iteration is rethrown on the calling thread (an exception must not leave an
/// OpenMP region).
template <class Body>
void parallel_for(std::int64_t n, Body body) {
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t i = 0; i < n; ++i) {
    try {
      body(i);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

/// What the pairs need from one source covariance.
struct SourceFactor {
  Matrix sqrt_s1;       ///< S1^{1/2}
  Matrix pinv_sqrt_s1;  ///< S1^{+1/2} (only for the map)
  double trace = 0;
};

SourceFactor factor_source(const double* s1, std::int64_t d, bool want_map) {
  SourceFactor f;
  Matrix a(s1, s1 + d * d);
  for (std::int64_t i = 0; i < d; ++i) f.trace += a[static_cast<std::size_t>(i * d + i)];
  std::vector<double> lambda;
  Matrix u;
  symmetric_eigen(a, d, lambda, &u);
  f.sqrt_s1 = spectral_function(u, lambda, d, [](double l) { return detail::psd_sqrt(l); });
  if (want_map) {
    const double null_threshold = detail::kGaussianNullRelTol * std::max(f.trace, 0.0);
    f.pinv_sqrt_s1 = spectral_function(
        u, lambda, d, [null_threshold](double l) { return detail::pinv_sqrt(l, null_threshold); });
  }
  return f;
}

}  // namespace

void symmetric_eigen(std::vector<double>& a, std::int64_t n, std::vector<double>& values,
                     std::vector<double>* vectors) {
  const auto N = static_cast<std::size_t>(n);
  auto at = [&a, n](std::int64_t i, std::int64_t j) -> double& {
    return a[static_cast<std::size_t>(i * n + j)];
  };
  if (vectors != nullptr) {
    vectors->assign(N * N, 0.0);
    for (std::size_t i = 0; i < N; ++i) (*vectors)[i * N + i] = 1.0;
  }
  symmetrize(a.data(), n);
  double frob2 = 0;
  for (double x : a) frob2 += x * x;
  // Stop when the off-diagonal mass is below round-off of the matrix norm: the
  // eigenvalues are then within ~eps * ||A||_F of the diagonal.
  const double stop = DBL_EPSILON * DBL_EPSILON * frob2 * 0.25;
  bool converged = false;
  for (int sweep = 0; sweep < kMaxJacobiSweeps && !converged; ++sweep) {
    double off = 0;
    for (std::int64_t p = 0; p < n; ++p) {
      for (std::int64_t q = p + 1; q < n; ++q) off += at(p, q) * at(p, q);
    }
    if (off <= stop || off == 0.0) {
      converged = true;
      break;
    }
    for (std::int64_t p = 0; p < n; ++p) {
      for (std::int64_t q = p + 1; q < n; ++q) {
        const double apq = at(p, q);
        if (apq == 0.0) continue;
        const double app = at(p, p);
        const double aqq = at(q, q);
        // An element too small to change either diagonal entry is dropped: rotating
        // it would only stir round-off (and it keeps the sweeps finite).
        const double g = 100.0 * std::fabs(apq);
        if (sweep > 3 && std::fabs(app) + g == std::fabs(app) &&
            std::fabs(aqq) + g == std::fabs(aqq)) {
          at(p, q) = 0.0;
          at(q, p) = 0.0;
          continue;
        }
        // Rotation J = [[c, s], [-s, c]] in the (p, q) plane with (J^T A J)_pq = 0,
        // the smaller of the two angles (|t| <= 1) for stability.
        const double theta = (aqq - app) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::hypot(theta, 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0);
        const double s = t * c;
        at(p, p) = app - t * apq;
        at(q, q) = aqq + t * apq;
        at(p, q) = 0.0;
        at(q, p) = 0.0;
        for (std::int64_t k = 0; k < n; ++k) {
          if (k == p || k == q) continue;
          const double akp = at(k, p);
          const double akq = at(k, q);
          const double nkp = c * akp - s * akq;
          const double nkq = s * akp + c * akq;
          at(k, p) = nkp;
          at(p, k) = nkp;
          at(k, q) = nkq;
          at(q, k) = nkq;
        }
        if (vectors != nullptr) {
          double* v = vectors->data();
          for (std::int64_t k = 0; k < n; ++k) {
            const double vkp = v[k * n + p];
            const double vkq = v[k * n + q];
            v[k * n + p] = c * vkp - s * vkq;
            v[k * n + q] = s * vkp + c * vkq;
          }
        }
      }
    }
  }
  if (!converged) {
    throw Error(
        fmt::format("symmetric_eigen: Jacobi rotations did not converge in {} sweeps (n = {})",
                    kMaxJacobiSweeps, n));
  }
  // Ascending order, eigenvectors permuted with their eigenvalues.
  std::vector<std::size_t> order(N);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(),
            [&a, N](std::size_t x, std::size_t y) { return a[x * N + x] < a[y * N + y]; });
  values.resize(N);
  for (std::size_t k = 0; k < N; ++k) values[k] = a[order[k] * N + order[k]];
  if (vectors != nullptr) {
    std::vector<double> sorted(N * N);
    for (std::size_t i = 0; i < N; ++i) {
      for (std::size_t k = 0; k < N; ++k) sorted[i * N + k] = (*vectors)[i * N + order[k]];
    }
    *vectors = std::move(sorted);
  }
}

bool cholesky_succeeds(const double* a, std::int64_t n, double shift) {
  Matrix l(static_cast<std::size_t>(n * n), 0.0);
  for (std::int64_t j = 0; j < n; ++j) {
    double diag = a[j * n + j] + shift;
    for (std::int64_t k = 0; k < j; ++k)
      diag -= l[static_cast<std::size_t>(j * n + k)] * l[static_cast<std::size_t>(j * n + k)];
    if (!(diag > 0) || !std::isfinite(diag)) return false;
    const double ljj = std::sqrt(diag);
    l[static_cast<std::size_t>(j * n + j)] = ljj;
    for (std::int64_t i = j + 1; i < n; ++i) {
      // Symmetric part, as everywhere else: the inputs are symmetric up to tolerance.
      double x = 0.5 * (a[i * n + j] + a[j * n + i]);
      for (std::int64_t k = 0; k < j; ++k)
        x -= l[static_cast<std::size_t>(i * n + k)] * l[static_cast<std::size_t>(j * n + k)];
      l[static_cast<std::size_t>(i * n + j)] = x / ljj;
    }
  }
  return true;
}

GaussianOTResult gaussian_ot(const detail::GaussianPairs& pairs, const GaussianOTOptions& options) {
  const std::int64_t B = pairs.batch;
  const std::int64_t d = pairs.d;
  const std::int64_t dd = d * d;
  const bool want_map = options.want_map;
  const bool entropic = options.eps > 0;
  const double sigma2 = 0.5 * options.eps;

  GaussianOTResult r;
  r.backend = Backend::cpu;
  r.batch = B;
  r.d = d;
  r.w2_squared.resize(static_cast<std::size_t>(B));
  r.bures_squared.resize(static_cast<std::size_t>(B));
  if (entropic) r.entropic.resize(static_cast<std::size_t>(B));
  if (want_map) r.map_matrix.resize(static_cast<std::size_t>(B * dd));

  const std::int64_t n_s1 = pairs.count_s1();
  std::vector<SourceFactor> factors(static_cast<std::size_t>(n_s1));
  parallel_for(n_s1, [&](std::int64_t k) {
    factors[static_cast<std::size_t>(k)] = factor_source(pairs.s1.data() + k * dd, d, want_map);
  });

  const std::int64_t n_m1 = pairs.count_m1(), n_m2 = pairs.count_m2(), n_s2 = pairs.count_s2();
  parallel_for(B, [&](std::int64_t b) {
    const double* m1 = pairs.m1.data() + detail::GaussianPairs::block(n_m1, b) * d;
    const double* m2 = pairs.m2.data() + detail::GaussianPairs::block(n_m2, b) * d;
    const double* s2 = pairs.s2.data() + detail::GaussianPairs::block(n_s2, b) * dd;
    const SourceFactor& f =
        factors[static_cast<std::size_t>(detail::GaussianPairs::block(n_s1, b))];

    double mean_sq = 0, tr_s2 = 0;
    for (std::int64_t i = 0; i < d; ++i) {
      const double diff = m1[i] - m2[i];
      mean_sq += diff * diff;
      tr_s2 += s2[i * d + i];
    }
    Matrix tmp(static_cast<std::size_t>(dd)), m(static_cast<std::size_t>(dd));
    matmul(s2, f.sqrt_s1.data(), tmp.data(), d);
    matmul(f.sqrt_s1.data(), tmp.data(), m.data(), d);
    std::vector<double> mu;
    Matrix v;
    symmetric_eigen(m, d, mu, want_map ? &v : nullptr);

    double sum_sqrt = 0, ent = 0;
    for (double x : mu) {
      sum_sqrt += detail::psd_sqrt(x);
      if (entropic) ent += detail::entropic_eigen_term(x, sigma2);
    }
    const double bures = std::max(0.0, f.trace + tr_s2 - 2.0 * sum_sqrt);
    r.bures_squared[static_cast<std::size_t>(b)] = bures;
    r.w2_squared[static_cast<std::size_t>(b)] = mean_sq + bures;
    if (entropic) r.entropic[static_cast<std::size_t>(b)] = mean_sq + f.trace + tr_s2 + ent;

    if (want_map) {
      const Matrix m_sqrt =
          spectral_function(v, mu, d, [](double x) { return detail::psd_sqrt(x); });
      matmul(m_sqrt.data(), f.pinv_sqrt_s1.data(), tmp.data(), d);
      double* a = r.map_matrix.data() + b * dd;
      matmul(f.pinv_sqrt_s1.data(), tmp.data(), a, d);
      symmetrize(a, d);
    }
  });
  return r;
}

}  // namespace otgpu::cpu
