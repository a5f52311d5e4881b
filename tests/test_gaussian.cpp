// Gaussian (Bures) OT on the CPU: the Jacobi eigensolver, closed forms checked
// against independent formulas (commuting covariances, 1-D, 2x2 fidelity, the
// Cholesky route to the fidelity, the map's defining equation), the entropic value
// against a 1-D variational solution, against the library's Sinkhorn on a quadrature
// grid and on samples, empirical W2 of large samples, batching and broadcasting,
// and the validation messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cpu_gaussian.h"
#include "gaussian_test_util.h"
#include "gaussian_validate.h"
#include "otgpu/error.h"
#include "otgpu/gaussian.h"
#include "otgpu/sinkhorn.h"

namespace {

using otgpu::Backend;
using otgpu::GaussianBatch;
using otgpu::GaussianOTOptions;
using otgpu::GaussianOTResult;
using otgpu::TensorView;
using otgpu_test::gaussian_pair;
using otgpu_test::Mat;

GaussianOTOptions cpu_options(double eps = 0, bool want_map = false) {
  GaussianOTOptions o;
  o.backend = Backend::cpu;
  o.eps = eps;
  o.want_map = want_map;
  return o;
}

std::vector<double> zeros(std::int64_t d) {
  return std::vector<double>(static_cast<std::size_t>(d), 0.0);
}

Mat diagonal(const std::vector<double>& v) {
  const auto d = static_cast<std::int64_t>(v.size());
  Mat m(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < d; ++i)
    m[static_cast<std::size_t>(i * d + i)] = v[static_cast<std::size_t>(i)];
  return m;
}

/// Lower Cholesky factor, written here independently of the library.
Mat cholesky(const Mat& a, std::int64_t d) {
  Mat l(a.size(), 0.0);
  for (std::int64_t j = 0; j < d; ++j) {
    double s = a[static_cast<std::size_t>(j * d + j)];
    for (std::int64_t k = 0; k < j; ++k)
      s -= l[static_cast<std::size_t>(j * d + k)] * l[static_cast<std::size_t>(j * d + k)];
    const double ljj = std::sqrt(s);
    l[static_cast<std::size_t>(j * d + j)] = ljj;
    for (std::int64_t i = j + 1; i < d; ++i) {
      double t = a[static_cast<std::size_t>(i * d + j)];
      for (std::int64_t k = 0; k < j; ++k)
        t -= l[static_cast<std::size_t>(i * d + k)] * l[static_cast<std::size_t>(j * d + k)];
      l[static_cast<std::size_t>(i * d + j)] = t / ljj;
    }
  }
  return l;
}

// ------------------------------------------------------------ eigensolver

TEST(GaussianEigen, JacobiReconstructsAndIsOrthonormal) {
  std::mt19937_64 rng(11);
  for (std::int64_t n : {1, 2, 3, 7, 33, 80}) {
    std::normal_distribution<double> n01;
    Mat a(static_cast<std::size_t>(n * n));
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j <= i; ++j) {
        const double x = n01(rng);
        a[static_cast<std::size_t>(i * n + j)] = x;
        a[static_cast<std::size_t>(j * n + i)] = x;
      }
    }
    Mat work = a, v;
    std::vector<double> w;
    otgpu::cpu::symmetric_eigen(work, n, w, &v);
    ASSERT_EQ(w.size(), static_cast<std::size_t>(n));
    EXPECT_TRUE(std::is_sorted(w.begin(), w.end())) << "n = " << n;
    const Mat rebuilt = otgpu_test::from_eigen(v, w, n);
    const double scale = otgpu_test::max_abs(a);
    EXPECT_LT(otgpu_test::max_abs_diff(rebuilt, a), 1e-13 * scale * static_cast<double>(n))
        << "n = " << n;
    const Mat vtv = otgpu_test::matmul(otgpu_test::transpose(v, n), v, n);
    Mat eye(static_cast<std::size_t>(n * n), 0.0);
    for (std::int64_t i = 0; i < n; ++i) eye[static_cast<std::size_t>(i * n + i)] = 1.0;
    EXPECT_LT(otgpu_test::max_abs_diff(vtv, eye), 1e-13 * static_cast<double>(n)) << "n = " << n;
    // Trace is the sum of the eigenvalues.
    EXPECT_NEAR(std::accumulate(w.begin(), w.end(), 0.0), otgpu_test::trace(a, n),
                1e-12 * scale * static_cast<double>(n));
  }
}

TEST(GaussianEigen, KnownSpectraWithRepeatsAndZeros) {
  std::mt19937_64 rng(12);
  const std::int64_t n = 9;
  const std::vector<double> lambda{-2.0, 0.0, 0.0, 1e-9, 1.0, 1.0, 1.0, 4.0, 1e6};
  const Mat q = otgpu_test::random_orthogonal(n, rng);
  Mat a = otgpu_test::from_eigen(q, lambda, n);
  std::vector<double> w;
  otgpu::cpu::symmetric_eigen(a, n, w, nullptr);
  for (std::size_t k = 0; k < lambda.size(); ++k) {
    EXPECT_NEAR(w[k], lambda[k], 1e-14 * 1e6 * 4) << "k = " << k;
  }
}

// ------------------------------------------------------------ closed forms

TEST(GaussianOT, IdenticalGaussiansAreAtDistanceZeroAndMapIsIdentity) {
  std::mt19937_64 rng(1);
  for (std::int64_t d : {1, 2, 5, 16}) {
    const auto m = otgpu_test::random_vector(d, rng);
    const Mat s = otgpu_test::random_spd(d, rng);
    const auto r = gaussian_pair(m, s, m, s, cpu_options(0, true));
    const double tr = otgpu_test::trace(s, d);
    EXPECT_NEAR(r.w2_squared[0], 0.0, 1e-12 * tr) << "d = " << d;
    EXPECT_NEAR(r.bures_squared[0], 0.0, 1e-12 * tr) << "d = " << d;
    EXPECT_GE(r.bures_squared[0], 0.0);
    Mat eye(static_cast<std::size_t>(d * d), 0.0);
    for (std::int64_t i = 0; i < d; ++i) eye[static_cast<std::size_t>(i * d + i)] = 1.0;
    EXPECT_LT(otgpu_test::max_abs_diff(r.map_matrix, eye), 1e-10) << "d = " << d;
  }
}

TEST(GaussianOT, CommutingCovariancesMatchTheSumOfSquaredRootDifferences) {
  std::mt19937_64 rng(2);
  for (std::int64_t d : {1, 3, 8, 40}) {
    const auto l1 = otgpu_test::random_spectrum(d, rng, 0.05, 20.0);
    const auto l2 = otgpu_test::random_spectrum(d, rng, 0.05, 20.0);
    double expect = 0;
    for (std::size_t k = 0; k < l1.size(); ++k) {
      expect += (std::sqrt(l1[k]) - std::sqrt(l2[k])) * (std::sqrt(l1[k]) - std::sqrt(l2[k]));
    }
    // Diagonal, and the same pair rotated by a common orthogonal Q (still commuting).
    const auto r_diag =
        gaussian_pair(zeros(d), diagonal(l1), zeros(d), diagonal(l2), cpu_options());
    EXPECT_NEAR(r_diag.bures_squared[0], expect, 1e-12 * expect + 1e-13) << "d = " << d;
    const Mat q = otgpu_test::random_orthogonal(d, rng);
    const auto r_rot = gaussian_pair(zeros(d), otgpu_test::from_eigen(q, l1, d), zeros(d),
                                     otgpu_test::from_eigen(q, l2, d), cpu_options(0, true));
    EXPECT_NEAR(r_rot.bures_squared[0], expect, 1e-10 * (expect + 1.0)) << "d = " << d;
    // The map of commuting covariances is Q diag(sqrt(l2 / l1)) Q^T.
    std::vector<double> ratio(l1.size());
    for (std::size_t k = 0; k < l1.size(); ++k) ratio[k] = std::sqrt(l2[k] / l1[k]);
    EXPECT_LT(otgpu_test::max_abs_diff(r_rot.map_matrix, otgpu_test::from_eigen(q, ratio, d)),
              1e-9 * otgpu_test::max_abs(ratio))
        << "d = " << d;
  }
}

TEST(GaussianOT, PureTranslation) {
  std::mt19937_64 rng(3);
  const std::int64_t d = 6;
  const Mat s = otgpu_test::random_spd(d, rng);
  const auto m1 = otgpu_test::random_vector(d, rng, 3.0);
  const auto m2 = otgpu_test::random_vector(d, rng, 3.0);
  double msq = 0;
  for (std::int64_t k = 0; k < d; ++k) {
    msq += (m1[static_cast<std::size_t>(k)] - m2[static_cast<std::size_t>(k)]) *
           (m1[static_cast<std::size_t>(k)] - m2[static_cast<std::size_t>(k)]);
  }
  const auto r = gaussian_pair(m1, s, m2, s, cpu_options());
  EXPECT_NEAR(r.w2_squared[0], msq, 1e-12 * (msq + otgpu_test::trace(s, d)));
  EXPECT_NEAR(r.bures_squared[0], 0.0, 1e-12 * otgpu_test::trace(s, d));
}

TEST(GaussianOT, OneDimensionalIsMeanAndStdDifferences) {
  const double cases[][4] = {
      {0.0, 1.0, 0.0, 1.0}, {1.5, 0.3, -2.0, 4.0}, {0.0, 1e-3, 0.0, 1e3}, {7.0, 2.0, 7.5, 0.0}};
  for (const auto& c : cases) {
    const double m1 = c[0], sd1 = c[1], m2 = c[2], sd2 = c[3];
    const auto r = gaussian_pair({m1}, {sd1 * sd1}, {m2}, {sd2 * sd2}, cpu_options(0, sd1 > 0));
    const double expect = (m1 - m2) * (m1 - m2) + (sd1 - sd2) * (sd1 - sd2);
    EXPECT_NEAR(r.w2_squared[0], expect, 1e-12 * (expect + sd1 * sd1 + sd2 * sd2))
        << sd1 << " " << sd2;
    if (sd1 > 0) {
      EXPECT_NEAR(r.map_matrix[0], sd2 / sd1, 1e-12 * sd2 / sd1);
    }
  }
}

TEST(GaussianOT, TwoByTwoFidelityFormula) {
  // For 2x2 PSD M, tr M^{1/2} = sqrt(tr M + 2 sqrt(det M)); with M = S1^{1/2} S2 S1^{1/2}:
  // tr M = tr(S1 S2), det M = det S1 det S2. No square root of a matrix involved.
  std::mt19937_64 rng(4);
  for (int t = 0; t < 20; ++t) {
    const Mat s1 = otgpu_test::random_spd(2, rng, 0.01, 10.0);
    const Mat s2 = otgpu_test::random_spd(2, rng, 0.01, 10.0);
    const Mat p = otgpu_test::matmul(s1, s2, 2);
    const double det1 = s1[0] * s1[3] - s1[1] * s1[2];
    const double det2 = s2[0] * s2[3] - s2[1] * s2[2];
    const double fid = std::sqrt(p[0] + p[3] + 2.0 * std::sqrt(det1 * det2));
    const double expect = otgpu_test::trace(s1, 2) + otgpu_test::trace(s2, 2) - 2.0 * fid;
    const auto r = gaussian_pair(zeros(2), s1, zeros(2), s2, cpu_options());
    EXPECT_NEAR(r.bures_squared[0], expect,
                1e-11 * (otgpu_test::trace(s1, 2) + otgpu_test::trace(s2, 2)))
        << "trial " << t;
  }
}

TEST(GaussianOT, FidelityThroughCholeskyAndTheMapEquation) {
  // Independent routes in d dimensions: with S1 = L L^T, the eigenvalues of L^T S2 L
  // are those of S1 S2 (hence of S1^{1/2} S2 S1^{1/2}); and the map A is the unique
  // SPD solution of A S1 A = S2, with tr(A S1) = tr (S1^{1/2} S2 S1^{1/2})^{1/2}.
  std::mt19937_64 rng(5);
  for (std::int64_t d : {3, 10, 33, 64}) {
    const Mat s1 = otgpu_test::random_spd(d, rng, 0.1, 5.0);
    const Mat s2 = otgpu_test::random_spd(d, rng, 0.1, 5.0);
    const Mat l = cholesky(s1, d);
    Mat k = otgpu_test::matmul(otgpu_test::transpose(l, d), otgpu_test::matmul(s2, l, d), d);
    std::vector<double> w;
    otgpu::cpu::symmetric_eigen(k, d, w, nullptr);
    double fid = 0;
    for (double x : w) fid += std::sqrt(std::max(x, 0.0));
    const double trs = otgpu_test::trace(s1, d) + otgpu_test::trace(s2, d);
    const auto r = gaussian_pair(zeros(d), s1, zeros(d), s2, cpu_options(0, true));
    EXPECT_NEAR(r.bures_squared[0], trs - 2.0 * fid, 1e-11 * trs) << "d = " << d;

    const Mat& a = r.map_matrix;
    const Mat pushed = otgpu_test::matmul(a, otgpu_test::matmul(s1, a, d), d);
    EXPECT_LT(otgpu_test::max_abs_diff(pushed, s2), 1e-10 * otgpu_test::max_abs(s2)) << "d = " << d;
    EXPECT_LT(otgpu_test::max_abs_diff(a, otgpu_test::transpose(a, d)),
              1e-14 * otgpu_test::max_abs(a));
    Mat work = a;
    std::vector<double> wa;
    otgpu::cpu::symmetric_eigen(work, d, wa, nullptr);
    EXPECT_GT(wa.front(), 0.0) << "the map of SPD covariances is positive definite, d = " << d;
    EXPECT_NEAR(otgpu_test::trace(otgpu_test::matmul(a, s1, d), d), fid, 1e-10 * fid);
  }
}

TEST(GaussianOT, SingularSourceUsesThePseudoInverseOnItsRange) {
  // S1 of rank 2 in 4 dimensions: the map satisfies A S1 A = P S2 P with P the
  // projector onto range(S1), and vanishes on the null space. Two variants: exact
  // zeros (coordinate-aligned), and rotated, where the "zero" eigenvalues of the
  // input are round-off (~1e-16) whose square roots (~1e-8) legitimately enter
  // S1^{1/2}: W2 of the matrix as given then differs from the rank-2 value by ~1e-8.
  std::mt19937_64 rng(6);
  const std::int64_t d = 4;
  const Mat s2 = otgpu_test::random_spd(d, rng);
  Mat eye(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < d; ++i) eye[static_cast<std::size_t>(i * d + i)] = 1.0;
  const Mat rotations[] = {eye, otgpu_test::random_orthogonal(d, rng)};
  const double value_tol[] = {1e-12, 1e-7};
  for (int variant = 0; variant < 2; ++variant) {
    const Mat& q = rotations[variant];
    const Mat s1 = otgpu_test::from_eigen(q, {0.0, 0.0, 1.5, 3.0}, d);
    const Mat p = otgpu_test::from_eigen(q, {0.0, 0.0, 1.0, 1.0}, d);
    const auto r = gaussian_pair(zeros(d), s1, zeros(d), s2, cpu_options(0.1, true));
    const Mat& a = r.map_matrix;
    const Mat pushed = otgpu_test::matmul(a, otgpu_test::matmul(s1, a, d), d);
    const Mat ps2p = otgpu_test::matmul(p, otgpu_test::matmul(s2, p, d), d);
    EXPECT_LT(otgpu_test::max_abs_diff(pushed, ps2p), 1e-9 * otgpu_test::max_abs(s2)) << variant;
    const Mat null_part =
        otgpu_test::matmul(a, otgpu_test::from_eigen(q, {1.0, 1.0, 0.0, 0.0}, d), d);
    EXPECT_LT(otgpu_test::max_abs(null_part), 1e-7) << variant;
    // W2 needs no inverse; on the range of S1 the fidelity is tr(A S1).
    const double fid = otgpu_test::trace(otgpu_test::matmul(a, s1, d), d);
    EXPECT_NEAR(r.bures_squared[0], otgpu_test::trace(s1, d) + otgpu_test::trace(s2, d) - 2.0 * fid,
                value_tol[variant])
        << variant;
    EXPECT_TRUE(std::isfinite(r.entropic[0]));
  }
}

// ------------------------------------------------------------ entropic value

/// OT_eps between N(m1, a) and N(m2, b) in 1-D by direct minimization over Gaussian
/// couplings with correlation rho: cost (m1-m2)^2 + a + b - 2 rho sqrt(ab), and
/// KL(P | mu (x) nu) = mutual information = -log(1 - rho^2) / 2. Convex in rho.
double entropic_1d_variational(double m1, double a, double m2, double b, double eps) {
  const double s = std::sqrt(a * b);
  auto f = [&](double rho) {
    return (m1 - m2) * (m1 - m2) + a + b - 2.0 * rho * s - 0.5 * eps * std::log1p(-rho * rho);
  };
  double lo = 0.0, hi = 1.0 - 1e-15;
  const double g = (std::sqrt(5.0) - 1.0) / 2.0;
  for (int it = 0; it < 200; ++it) {
    const double x1 = hi - g * (hi - lo), x2 = lo + g * (hi - lo);
    if (f(x1) < f(x2)) {
      hi = x2;
    } else {
      lo = x1;
    }
  }
  return f(0.5 * (lo + hi));
}

TEST(GaussianEntropic, OneDimensionalMatchesTheVariationalSolution) {
  const double cases[][5] = {{0.0, 1.0, 0.0, 1.0, 0.1},
                             {0.5, 1.0, -1.0, 2.25, 1.0},
                             {0.0, 0.3, 2.0, 5.0, 0.01},
                             {1.0, 4.0, 1.0, 0.5, 10.0},
                             {0.0, 1.0, 0.0, 1.0, 1e-6}};
  for (const auto& c : cases) {
    const auto r = gaussian_pair({c[0]}, {c[1]}, {c[2]}, {c[3]}, cpu_options(c[4]));
    const double expect = entropic_1d_variational(c[0], c[1], c[2], c[3], c[4]);
    EXPECT_NEAR(r.entropic[0], expect, 1e-9 * (1.0 + std::fabs(expect))) << "eps = " << c[4];
  }
}

TEST(GaussianEntropic, TendsToW2AsEpsVanishesAndGrowsWithEps) {
  std::mt19937_64 rng(7);
  const std::int64_t d = 5;
  const Mat s1 = otgpu_test::random_spd(d, rng), s2 = otgpu_test::random_spd(d, rng);
  const auto m1 = otgpu_test::random_vector(d, rng), m2 = otgpu_test::random_vector(d, rng);
  const double w2 = gaussian_pair(m1, s1, m2, s2, cpu_options()).w2_squared[0];
  double prev = -std::numeric_limits<double>::infinity();
  for (double eps : {1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0, 10.0}) {
    const auto r = gaussian_pair(m1, s1, m2, s2, cpu_options(eps));
    // OT_eps - W2^2 = O(eps log(1/eps)) (d sigma^2 log terms).
    if (eps <= 1e-6) {
      EXPECT_NEAR(r.entropic[0], w2,
                  10.0 * static_cast<double>(d) * eps * std::log(1.0 / eps) + 1e-12)
          << eps;
    }
    EXPECT_GE(r.entropic[0], w2 - 1e-12) << eps;
    EXPECT_GT(r.entropic[0], prev) << "OT_eps must increase with eps, eps = " << eps;
    prev = r.entropic[0];
    EXPECT_NEAR(r.w2_squared[0], w2, 1e-13 * w2) << "W2 does not depend on eps";
  }
}

/// OT_eps of discrete measures by the library's CPU Sinkhorn (x [n, d], y [m, d]).
double sinkhorn_value(const std::vector<double>& x, const std::vector<double>& y, std::int64_t d,
                      const std::vector<double>* a, const std::vector<double>* b, double eps) {
  const auto n = static_cast<std::int64_t>(x.size()) / d;
  const auto m = static_cast<std::int64_t>(y.size()) / d;
  otgpu::SinkhornProblem p;
  p.x = TensorView::host(x.data(), {n, d});
  p.y = TensorView::host(y.data(), {m, d});
  if (a != nullptr) p.a = TensorView::host(a->data(), {n});
  if (b != nullptr) p.b = TensorView::host(b->data(), {m});
  otgpu::SinkhornOptions o;
  o.eps = eps;
  o.tol = 1e-10;
  o.max_iter = 100000;
  o.backend = Backend::cpu;
  const auto r = otgpu::sinkhorn(p, o);
  EXPECT_TRUE(r.problems[0].converged) << "marginal error " << r.problems[0].marginal_error;
  return r.problems[0].ot_eps;
}

TEST(GaussianEntropic, OneDimensionalMatchesSinkhornOnAQuadratureGrid) {
  // Discretize both densities on fine grids (weights = normalized density values):
  // P_ij / (a_i b_j) then approximates the continuous density ratio, so the discrete
  // OT_eps converges to the continuous one at the rate of the quadrature, not of
  // sampling. This checks sigma^2 = eps / 2 and every constant of the formula.
  const double m1 = 0.3, v1 = 1.0, m2 = -0.4, v2 = 2.25;
  const std::int64_t n = 1200;
  auto grid = [n](double m, double v, std::vector<double>& x, std::vector<double>& w) {
    const double sd = std::sqrt(v), lo = m - 9.0 * sd, h = 18.0 * sd / static_cast<double>(n - 1);
    x.resize(static_cast<std::size_t>(n));
    w.resize(static_cast<std::size_t>(n));
    double total = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double xi = lo + h * static_cast<double>(i);
      x[static_cast<std::size_t>(i)] = xi;
      w[static_cast<std::size_t>(i)] = std::exp(-(xi - m) * (xi - m) / (2.0 * v));
      total += w[static_cast<std::size_t>(i)];
    }
    for (double& wi : w) wi /= total;
  };
  std::vector<double> x, a, y, b;
  grid(m1, v1, x, a);
  grid(m2, v2, y, b);
  for (double eps : {0.25, 1.0}) {
    const double closed = gaussian_pair({m1}, {v1}, {m2}, {v2}, cpu_options(eps)).entropic[0];
    const double numeric = sinkhorn_value(x, y, 1, &a, &b, eps);
    EXPECT_NEAR(numeric, closed, 1e-6 * closed) << "eps = " << eps;
  }
}

/// n samples of N(m, S) whose empirical mean and covariance equal m and S exactly
/// (whitened, then colored by the Cholesky factor): the first-order sampling error
/// of the OT value, driven by the sample moments, is removed, leaving the O(1/n)
/// discretization effect that the comparison is about.
std::vector<double> moment_matched_samples(const std::vector<double>& m, const Mat& s,
                                           std::int64_t n, std::mt19937_64& rng) {
  const auto d = static_cast<std::int64_t>(m.size());
  std::normal_distribution<double> n01;
  std::vector<double> z(static_cast<std::size_t>(n * d));
  for (double& v : z) v = n01(rng);
  std::vector<double> mean(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < d; ++k)
      mean[static_cast<std::size_t>(k)] +=
          z[static_cast<std::size_t>(i * d + k)] / static_cast<double>(n);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < d; ++k)
      z[static_cast<std::size_t>(i * d + k)] -= mean[static_cast<std::size_t>(k)];
  }
  Mat c(static_cast<std::size_t>(d * d), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t p = 0; p < d; ++p) {
      for (std::int64_t q = 0; q < d; ++q) {
        c[static_cast<std::size_t>(p * d + q)] += z[static_cast<std::size_t>(i * d + p)] *
                                                  z[static_cast<std::size_t>(i * d + q)] /
                                                  static_cast<double>(n);
      }
    }
  }
  const Mat lc = cholesky(c, d), ls = cholesky(s, d);
  std::vector<double> out(z.size());
  std::vector<double> w(static_cast<std::size_t>(d));
  for (std::int64_t i = 0; i < n; ++i) {
    // w = Lc^{-1} z_i (forward substitution), out_i = m + Ls w.
    for (std::int64_t p = 0; p < d; ++p) {
      double t = z[static_cast<std::size_t>(i * d + p)];
      for (std::int64_t q = 0; q < p; ++q)
        t -= lc[static_cast<std::size_t>(p * d + q)] * w[static_cast<std::size_t>(q)];
      w[static_cast<std::size_t>(p)] = t / lc[static_cast<std::size_t>(p * d + p)];
    }
    for (std::int64_t p = 0; p < d; ++p) {
      double t = m[static_cast<std::size_t>(p)];
      for (std::int64_t q = 0; q <= p; ++q)
        t += ls[static_cast<std::size_t>(p * d + q)] * w[static_cast<std::size_t>(q)];
      out[static_cast<std::size_t>(i * d + p)] = t;
    }
  }
  return out;
}

TEST(GaussianEntropic, SinkhornOnLargeSamplesApproachesTheClosedForm) {
  // n = 2000 samples per side, eps = 1. With moment-matched samples the remaining
  // error of the sample OT_eps was measured (POT, 6 seeds each) below 2e-3 in d = 1
  // and d = 2; a wrong constant (e.g. sigma^2 = eps) moves the value by ~0.5.
  std::mt19937_64 rng(8);
  const std::int64_t n = 2000;
  const double eps = 1.0;
  struct Case {
    std::vector<double> m1, m2;
    Mat s1, s2;
  };
  const Case cases[] = {{{0.0}, {0.5}, {1.0}, {2.25}},
                        {{0.0, 0.0}, {0.5, 0.5}, {1.0, 0.3, 0.3, 0.5}, {2.0, -0.4, -0.4, 1.0}}};
  for (const Case& c : cases) {
    const auto d = static_cast<std::int64_t>(c.m1.size());
    const auto x = moment_matched_samples(c.m1, c.s1, n, rng);
    const auto y = moment_matched_samples(c.m2, c.s2, n, rng);
    const double closed = gaussian_pair(c.m1, c.s1, c.m2, c.s2, cpu_options(eps)).entropic[0];
    const double sample = sinkhorn_value(x, y, d, nullptr, nullptr, eps);
    EXPECT_NEAR(sample, closed, 1e-2) << "d = " << d;
  }
}

TEST(GaussianOT, EmpiricalW2OfLargeSamplesApproachesTheFormula) {
  // In 1-D the exact OT of two equal-size uniform samples matches sorted values.
  std::mt19937_64 rng(9);
  const std::int64_t n = 100000;
  const double m1 = 0.3, sd1 = 1.0, m2 = -0.5, sd2 = 1.5;
  auto x = moment_matched_samples({m1}, {sd1 * sd1}, n, rng);
  auto y = moment_matched_samples({m2}, {sd2 * sd2}, n, rng);
  std::sort(x.begin(), x.end());
  std::sort(y.begin(), y.end());
  double emp = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    emp += (x[i] - y[i]) * (x[i] - y[i]) / static_cast<double>(n);
  const double closed =
      gaussian_pair({m1}, {sd1 * sd1}, {m2}, {sd2 * sd2}, cpu_options()).w2_squared[0];
  EXPECT_NEAR(emp, closed, 2e-3);
}

// ------------------------------------------------------------ batches, views

struct Batch {
  std::int64_t B, d;
  std::vector<double> m1, s1, m2, s2;
};

Batch random_batch(std::int64_t B, std::int64_t d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Batch b{B, d, {}, {}, {}, {}};
  for (std::int64_t k = 0; k < B; ++k) {
    for (auto* v : {&b.m1, &b.m2}) {
      const auto m = otgpu_test::random_vector(d, rng);
      v->insert(v->end(), m.begin(), m.end());
    }
    for (auto* v : {&b.s1, &b.s2}) {
      const auto s = otgpu_test::random_spd(d, rng);
      v->insert(v->end(), s.begin(), s.end());
    }
  }
  return b;
}

std::vector<double> block(const std::vector<double>& v, std::int64_t k, std::int64_t size) {
  return {v.begin() + k * size, v.begin() + (k + 1) * size};
}

TEST(GaussianOT, BatchedEqualsOneByOne) {
  const Batch bt = random_batch(7, 4, 21);
  const std::int64_t B = bt.B, d = bt.d;
  GaussianBatch src{TensorView::host(bt.m1.data(), {B, d}),
                    TensorView::host(bt.s1.data(), {B, d, d})};
  GaussianBatch tgt{TensorView::host(bt.m2.data(), {B, d}),
                    TensorView::host(bt.s2.data(), {B, d, d})};
  const auto r = otgpu::gaussian_ot(src, tgt, cpu_options(0.3, true));
  ASSERT_EQ(r.w2_squared.size(), 7u);
  ASSERT_EQ(r.entropic.size(), 7u);
  ASSERT_EQ(r.map_matrix.size(), static_cast<std::size_t>(B * d * d));
  EXPECT_EQ(r.batch, B);
  EXPECT_EQ(r.d, d);
  EXPECT_EQ(r.backend, Backend::cpu);
  for (std::int64_t k = 0; k < B; ++k) {
    const auto one = gaussian_pair(block(bt.m1, k, d), block(bt.s1, k, d * d), block(bt.m2, k, d),
                                   block(bt.s2, k, d * d), cpu_options(0.3, true));
    const auto sk = static_cast<std::size_t>(k);
    EXPECT_EQ(r.w2_squared[sk], one.w2_squared[0]) << k;
    EXPECT_EQ(r.bures_squared[sk], one.bures_squared[0]) << k;
    EXPECT_EQ(r.entropic[sk], one.entropic[0]) << k;
    EXPECT_EQ(block(r.map_matrix, k, d * d), one.map_matrix) << k;
  }
}

TEST(GaussianOT, SharedTensorsBroadcastAgainstBatchedOnes) {
  const Batch bt = random_batch(5, 3, 22);
  const std::int64_t B = bt.B, d = bt.d;
  // One source (mean and covariance shared) against B targets; then B means sharing
  // one target covariance.
  GaussianBatch src{TensorView::host(bt.m1.data(), {d}), TensorView::host(bt.s1.data(), {d, d})};
  GaussianBatch tgt{TensorView::host(bt.m2.data(), {B, d}),
                    TensorView::host(bt.s2.data(), {B, d, d})};
  const auto r = otgpu::gaussian_ot(src, tgt, cpu_options(0, true));
  ASSERT_EQ(r.w2_squared.size(), static_cast<std::size_t>(B));
  GaussianBatch src2{TensorView::host(bt.m1.data(), {B, d}),
                     TensorView::host(bt.s1.data(), {B, d, d})};
  GaussianBatch tgt2{TensorView::host(bt.m2.data(), {B, d}),
                     TensorView::host(bt.s2.data(), {d, d})};
  const auto r2 = otgpu::gaussian_ot(src2, tgt2, cpu_options());
  for (std::int64_t k = 0; k < B; ++k) {
    const auto sk = static_cast<std::size_t>(k);
    const auto one = gaussian_pair(block(bt.m1, 0, d), block(bt.s1, 0, d * d), block(bt.m2, k, d),
                                   block(bt.s2, k, d * d), cpu_options(0, true));
    EXPECT_EQ(r.w2_squared[sk], one.w2_squared[0]) << k;
    EXPECT_EQ(block(r.map_matrix, k, d * d), one.map_matrix) << k;
    const auto two = gaussian_pair(block(bt.m1, k, d), block(bt.s1, k, d * d), block(bt.m2, k, d),
                                   block(bt.s2, 0, d * d), cpu_options());
    EXPECT_EQ(r2.w2_squared[sk], two.w2_squared[0]) << k;
  }
}

TEST(GaussianOT, Float32AndStridedViews) {
  const Batch bt = random_batch(3, 4, 23);
  const std::int64_t B = bt.B, d = bt.d;
  GaussianBatch src{TensorView::host(bt.m1.data(), {B, d}),
                    TensorView::host(bt.s1.data(), {B, d, d})};
  GaussianBatch tgt{TensorView::host(bt.m2.data(), {B, d}),
                    TensorView::host(bt.s2.data(), {B, d, d})};
  const auto ref = otgpu::gaussian_ot(src, tgt, cpu_options(0.5));

  // Covariances transposed in memory (a symmetric matrix reads the same), means
  // stored column-major ([d, B] memory read as [B, d] with strides (1, B)).
  std::vector<double> m1t(bt.m1.size());
  for (std::int64_t k = 0; k < B; ++k) {
    for (std::int64_t i = 0; i < d; ++i)
      m1t[static_cast<std::size_t>(i * B + k)] = bt.m1[static_cast<std::size_t>(k * d + i)];
  }
  TensorView m1v = TensorView::host(m1t.data(), {B, d});
  m1v.strides = {1, B, 0};
  TensorView s1v = TensorView::host(bt.s1.data(), {B, d, d});
  s1v.strides = {d * d, 1, d};
  const auto strided = otgpu::gaussian_ot({m1v, s1v}, tgt, cpu_options(0.5));
  for (std::size_t k = 0; k < static_cast<std::size_t>(B); ++k) {
    EXPECT_DOUBLE_EQ(strided.w2_squared[k], ref.w2_squared[k]);
    EXPECT_DOUBLE_EQ(strided.entropic[k], ref.entropic[k]);
  }

  std::vector<float> m1f(bt.m1.begin(), bt.m1.end()), s1f(bt.s1.begin(), bt.s1.end());
  std::vector<float> m2f(bt.m2.begin(), bt.m2.end()), s2f(bt.s2.begin(), bt.s2.end());
  // The float32 inputs, converted back to double, are what the reference must see.
  std::vector<double> m1d(m1f.begin(), m1f.end()), s1d(s1f.begin(), s1f.end());
  std::vector<double> m2d(m2f.begin(), m2f.end()), s2d(s2f.begin(), s2f.end());
  const auto rf = otgpu::gaussian_ot(
      {TensorView::host(m1f.data(), {B, d}), TensorView::host(s1f.data(), {B, d, d})},
      {TensorView::host(m2f.data(), {B, d}), TensorView::host(s2f.data(), {B, d, d})},
      cpu_options(0.5));
  const auto rd = otgpu::gaussian_ot(
      {TensorView::host(m1d.data(), {B, d}), TensorView::host(s1d.data(), {B, d, d})},
      {TensorView::host(m2d.data(), {B, d}), TensorView::host(s2d.data(), {B, d, d})},
      cpu_options(0.5));
  for (std::size_t k = 0; k < static_cast<std::size_t>(B); ++k) {
    EXPECT_EQ(rf.w2_squared[k], rd.w2_squared[k]);
    EXPECT_EQ(rf.entropic[k], rd.entropic[k]);
  }
}

TEST(GaussianOT, LargerDimension) {
  std::mt19937_64 rng(24);
  const std::int64_t d = 120;
  const Mat s1 = otgpu_test::random_spd(d, rng, 0.1, 4.0),
            s2 = otgpu_test::random_spd(d, rng, 0.1, 4.0);
  const auto r = gaussian_pair(zeros(d), s1, zeros(d), s2, cpu_options(0, true));
  const Mat pushed = otgpu_test::matmul(r.map_matrix, otgpu_test::matmul(s1, r.map_matrix, d), d);
  EXPECT_LT(otgpu_test::max_abs_diff(pushed, s2), 1e-9 * otgpu_test::max_abs(s2));
  const double fid = otgpu_test::trace(otgpu_test::matmul(r.map_matrix, s1, d), d);
  const double trs = otgpu_test::trace(s1, d) + otgpu_test::trace(s2, d);
  EXPECT_NEAR(r.bures_squared[0], trs - 2.0 * fid, 1e-10 * trs);
}

// ------------------------------------------------------------ validation

template <class E>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return {};
  }
  ADD_FAILURE() << "no exception thrown";
  return {};
}

void expect_mentions(const std::string& msg, std::initializer_list<const char*> parts) {
  for (const char* p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

TEST(GaussianValidation, NonSymmetricCovarianceNamesTheMaxAsymmetry) {
  std::vector<double> m{0, 0};
  Mat good{1.0, 0.2, 0.2, 1.0}, bad{1.0, 0.2, 0.7, 1.0};
  const auto msg =
      error_of<otgpu::InvalidArgument>([&] { gaussian_pair(m, bad, m, good, cpu_options()); });
  expect_mentions(msg,
                  {"source.cov", "not symmetric", "(0, 1)", "(0.2 and 0.7)", "tolerance 1e-06"});
  // Within the relative tolerance: accepted, and symmetrized.
  Mat almost{1.0, 0.2, 0.2 + 1e-9, 1.0};
  const auto r = gaussian_pair(m, almost, m, good, cpu_options());
  EXPECT_NEAR(r.bures_squared[0], 0.0, 1e-14);
}

TEST(GaussianValidation, NonPsdCovarianceNamesThePairAndTheEigenvalue) {
  const std::int64_t B = 3, d = 2;
  std::vector<double> m(static_cast<std::size_t>(B * d), 0.0);
  std::vector<double> s{1, 0, 0, 1, /* pair 1: eigenvalues 3, -1 */ 1, 2, 2, 1, 1, 0, 0, 1};
  std::vector<double> one{1, 0, 0, 1};
  GaussianBatch src{TensorView::host(m.data(), {d}), TensorView::host(one.data(), {d, d})};
  GaussianBatch tgt{TensorView::host(m.data(), {B, d}), TensorView::host(s.data(), {B, d, d})};
  const auto msg =
      error_of<otgpu::InvalidArgument>([&] { otgpu::gaussian_ot(src, tgt, cpu_options()); });
  expect_mentions(msg,
                  {"target.cov of pair 1", "positive semi-definite", "smallest eigenvalue -1"});
  // Shared source that is not PSD.
  std::vector<double> neg{-1e-3, 0, 0, 1};
  GaussianBatch src_bad{TensorView::host(m.data(), {d}), TensorView::host(neg.data(), {d, d})};
  const auto msg2 =
      error_of<otgpu::InvalidArgument>([&] { otgpu::gaussian_ot(src_bad, src, cpu_options()); });
  expect_mentions(msg2, {"source.cov (shared by all pairs)", "-0.001"});
}

TEST(GaussianValidation, PsdToleranceAcceptsRoundOffNegativesAndSingularMatrices) {
  std::vector<double> m{0, 0, 0};
  std::mt19937_64 rng(31);
  const Mat q = otgpu_test::random_orthogonal(3, rng);
  const Mat singular = otgpu_test::from_eigen(q, {0.0, 1.0, 2.0}, 3);
  const Mat tiny_negative = otgpu_test::from_eigen(q, {-1e-12, 1.0, 2.0}, 3);  // > -1e-10 * 3
  const Mat negative = diagonal({1.0, -1e-6, 2.0});
  EXPECT_NO_THROW(gaussian_pair(m, singular, m, singular, cpu_options(0.1, true)));
  EXPECT_NO_THROW(gaussian_pair(m, tiny_negative, m, singular, cpu_options()));
  const auto msg = error_of<otgpu::InvalidArgument>(
      [&] { gaussian_pair(m, singular, m, negative, cpu_options()); });
  expect_mentions(msg, {"target.cov", "smallest eigenvalue -1e-06"});
  const Mat zero(9, 0.0);
  const auto r = gaussian_pair(m, zero, m, singular, cpu_options(0, true));
  EXPECT_NEAR(r.bures_squared[0], 3.0, 1e-12);  // tr S2: a point mass against N(0, S2)
}

TEST(GaussianValidation, NonFiniteShapesAndOptions) {
  std::vector<double> m{0, 0};
  Mat s{1, 0, 0, 1};
  Mat nan_s{1, 0, 0, std::numeric_limits<double>::quiet_NaN()};
  auto msg = error_of<otgpu::NonFiniteInput>([&] { gaussian_pair(m, s, m, nan_s, cpu_options()); });
  expect_mentions(msg, {"target.cov", "[1, 1]", "nan"});
  std::vector<double> inf_m{0, std::numeric_limits<double>::infinity()};
  msg = error_of<otgpu::NonFiniteInput>([&] { gaussian_pair(inf_m, s, m, s, cpu_options()); });
  expect_mentions(msg, {"source.mean", "[1]", "inf"});

  msg = error_of<otgpu::InvalidArgument>([&] { gaussian_pair(m, s, m, s, cpu_options(-1.0)); });
  expect_mentions(msg, {"eps", "-1"});
  msg = error_of<otgpu::InvalidArgument>(
      [&] { gaussian_pair(m, s, m, s, cpu_options(std::numeric_limits<double>::quiet_NaN())); });
  expect_mentions(msg, {"eps", "nan"});

  std::vector<double> m3{0, 0, 0};
  msg = error_of<otgpu::ShapeError>([&] {
    otgpu::gaussian_ot({TensorView::host(m3.data(), {3}), TensorView::host(s.data(), {2, 2})},
                       {TensorView::host(m3.data(), {3}), TensorView::host(s.data(), {2, 2})},
                       cpu_options());
  });
  expect_mentions(msg, {"source.cov", "d = 3"});
  std::vector<double> rect(6, 0.0);
  msg = error_of<otgpu::ShapeError>([&] {
    otgpu::gaussian_ot({TensorView::host(m.data(), {2}), TensorView::host(rect.data(), {2, 3})},
                       {TensorView::host(m.data(), {2}), TensorView::host(s.data(), {2, 2})},
                       cpu_options());
  });
  expect_mentions(msg, {"source.cov", "square", "[2, 3]"});
  std::vector<double> m_b3(6, 0.0), s_b2(8, 0.0);
  for (int k = 0; k < 2; ++k) {
    s_b2[static_cast<std::size_t>(k * 4)] = 1;
    s_b2[static_cast<std::size_t>(k * 4 + 3)] = 1;
  }
  msg = error_of<otgpu::ShapeError>([&] {
    otgpu::gaussian_ot({TensorView::host(m_b3.data(), {3, 2}), TensorView::host(s.data(), {2, 2})},
                       {TensorView::host(m.data(), {2}), TensorView::host(s_b2.data(), {2, 2, 2})},
                       cpu_options());
  });
  expect_mentions(msg, {"target.cov", "batch size 2", "source.mean", "batch size 3"});
  msg = error_of<otgpu::InvalidArgument>([&] {
    otgpu::gaussian_ot({TensorView::host(m.data(), {2}), TensorView{}},
                       {TensorView::host(m.data(), {2}), TensorView::host(s.data(), {2, 2})},
                       cpu_options());
  });
  expect_mentions(msg, {"source.cov", "missing"});
  GaussianOTOptions bad_device = cpu_options();
  bad_device.device = -2;
  msg = error_of<otgpu::InvalidArgument>([&] { gaussian_pair(m, s, m, s, bad_device); });
  expect_mentions(msg, {"device", "-2"});
}

TEST(GaussianValidation, PackedPairsAreTheSymmetricPartsInCOrder) {
  // Covariance blocks read through strides (every other float of an interleaved
  // buffer), asymmetric within the tolerance: the packed blocks are (S + S^T) / 2,
  // formed here independently, and the means come out in C order.
  const std::int64_t B = 2, d = 3;
  std::vector<float> s_mem(static_cast<std::size_t>(2 * B * d * d), -7.0f);
  std::vector<double> expected(static_cast<std::size_t>(B * d * d));
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t j = 0; j < d; ++j) {
        const float base = i == j ? 2.0f + static_cast<float>(b) : 0.25f;
        const float skew = i < j ? 3e-7f : 0.0f;  // relative 1e-7 < kGaussianSymmetryRelTol
        s_mem[static_cast<std::size_t>(2 * ((b * d + i) * d + j))] = base + skew;
      }
    }
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t j = 0; j < d; ++j) {
        const auto at = [&](std::int64_t r, std::int64_t c) {
          return static_cast<double>(s_mem[static_cast<std::size_t>(2 * ((b * d + r) * d + c))]);
        };
        expected[static_cast<std::size_t>((b * d + i) * d + j)] =
            i == j
                ? at(i, i)
                : 0.5 * (at(std::min(i, j), std::max(i, j)) + at(std::max(i, j), std::min(i, j)));
      }
    }
  }
  TensorView cov = TensorView::host(s_mem.data(), {B, d, d});
  cov.strides = {2 * d * d, 2 * d, 2};
  const std::vector<double> means{1, 2, 3, 4, 5, 6};  // [d, B] memory read as [B, d]
  TensorView mean = TensorView::host(means.data(), {B, d});
  mean.strides = {1, B, 0};
  const std::vector<double> m2{0, 0, 0};
  const std::vector<double> s2{1, 0, 0, 0, 1, 0, 0, 0, 1};
  const GaussianBatch src{mean, cov};
  const GaussianBatch tgt{TensorView::host(m2.data(), {d}), TensorView::host(s2.data(), {d, d})};
  const auto shape = otgpu::detail::validate_gaussian_shapes(src, tgt, cpu_options());
  EXPECT_EQ(shape.batch, B);
  EXPECT_EQ(shape.count_s1, B);
  EXPECT_EQ(shape.count_s2, 1);
  otgpu::detail::validate_gaussian_values(src, tgt, shape);
  const auto pairs = otgpu::detail::pack_gaussian_pairs(src, tgt, shape);
  EXPECT_EQ(pairs.s1, expected);
  EXPECT_EQ(pairs.m1, (std::vector<double>{1, 3, 5, 2, 4, 6}));
  EXPECT_EQ(pairs.s2, s2);
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t j = 0; j < d; ++j) {
        EXPECT_EQ(pairs.s1[static_cast<std::size_t>((b * d + i) * d + j)],
                  pairs.s1[static_cast<std::size_t>((b * d + j) * d + i)]);
      }
    }
  }
  // Values are only read from host memory: a device view must be read back first.
  GaussianBatch on_device = src;
  on_device.mean.space = otgpu::MemorySpace::device;
  EXPECT_THROW(otgpu::detail::validate_gaussian_values(on_device, tgt, shape),
               otgpu::InvalidArgument);
}

TEST(GaussianValidation, CudaBackendWithoutADeviceIsDeviceUnavailable) {
  if (otgpu::cuda_available()) GTEST_SKIP() << "a CUDA device is usable here";
  std::vector<double> m{0, 0};
  Mat s{1, 0, 0, 1};
  GaussianOTOptions o;
  o.backend = Backend::cuda;
  const auto msg = error_of<otgpu::DeviceUnavailable>([&] { gaussian_pair(m, s, m, s, o); });
  EXPECT_NE(msg.find("cuda"), std::string::npos) << msg;
  // automatic falls back to the CPU.
  o.backend = Backend::automatic;
  EXPECT_EQ(gaussian_pair(m, s, m, s, o).backend, Backend::cpu);
}

}  // namespace
