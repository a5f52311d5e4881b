// The dense-cost and many-small-problems Sinkhorn kernels, called through their
// launchers on device buffers and compared with straightforward double-precision
// computations written here (independent of the kernels and of the CPU backend).
// Skipped when no CUDA device is usable.
#include <gtest/gtest.h>

#if defined(OTGPU_WITH_CUDA)

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/sinkhorn_dense.h"
#include "otgpu_kernels/sinkhorn_small.h"

namespace {

using otgpu::CostKind;
using std::int64_t;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kSentinel = 12345.0f;

using otgpu_test::DeviceBuffer;

std::vector<float> uniform(std::mt19937& rng, std::size_t count, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(count);
  for (auto& x : v) x = u(rng);
  return v;
}

/// Log weights [B, len], normalized per problem; every `zero_every`-th entry (from
/// offset 1) is a zero weight (-inf). At least one entry stays positive.
std::vector<float> log_weights(std::mt19937& rng, int64_t B, int64_t len, int zero_every) {
  std::uniform_real_distribution<double> u(0.2, 1.0);
  std::vector<float> out(static_cast<std::size_t>(B * len));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> w(static_cast<std::size_t>(len));
    double total = 0;
    for (int64_t i = 0; i < len; ++i) {
      const bool zero = zero_every > 0 && len > 1 && i % zero_every == 1;
      w[static_cast<std::size_t>(i)] = zero ? 0.0 : u(rng);
      total += w[static_cast<std::size_t>(i)];
    }
    for (int64_t i = 0; i < len; ++i) {
      const double wi = w[static_cast<std::size_t>(i)];
      out[static_cast<std::size_t>(b * len + i)] = wi == 0.0
                                                       ? -std::numeric_limits<float>::infinity()
                                                       : static_cast<float>(std::log(wi / total));
    }
  }
  return out;
}

/// Double log-sum-exp skipping -inf terms (-inf when all are).
struct LseD {
  double max = -kInf, sum = 0;
  void push(double s) {
    if (s == -kInf) return;
    if (s <= max) {
      sum += std::exp(s - max);
    } else {
      sum = sum * std::exp(max - s) + 1.0;
      max = s;
    }
  }
  double value() const { return max == -kInf ? -kInf : max + std::log(sum); }
};

double potential(double lse, double lambda, double eps) {
  return lse == -kInf ? kInf : -lambda * eps * lse;
}

// ---- references, all in double -------------------------------------------------------

std::vector<double> ref_row_update(const std::vector<float>& C, const std::vector<float>& logB,
                                   const std::vector<float>& G, const std::vector<float>& eps,
                                   const std::vector<float>* lambda, int64_t B, int64_t n,
                                   int64_t m) {
  std::vector<double> F(static_cast<std::size_t>(B * n));
  for (int64_t b = 0; b < B; ++b) {
    const double e = eps[static_cast<std::size_t>(b)];
    const double lam = lambda != nullptr ? (*lambda)[static_cast<std::size_t>(b)] : 1.0;
    for (int64_t i = 0; i < n; ++i) {
      LseD acc;
      for (int64_t j = 0; j < m; ++j) {
        const double lb = logB[static_cast<std::size_t>(b * m + j)];
        if (lb == -kInf) continue;
        acc.push(lb + (G[static_cast<std::size_t>(b * m + j)] -
                       double{C[static_cast<std::size_t>((b * n + i) * m + j)]}) /
                          e);
      }
      F[static_cast<std::size_t>(b * n + i)] = potential(acc.value(), lam, e);
    }
  }
  return F;
}

std::vector<double> ref_col_update(const std::vector<float>& C, const std::vector<float>& logA,
                                   const std::vector<float>& F, const std::vector<float>& eps,
                                   const std::vector<float>* lambda, int64_t B, int64_t n,
                                   int64_t m) {
  std::vector<double> G(static_cast<std::size_t>(B * m));
  for (int64_t b = 0; b < B; ++b) {
    const double e = eps[static_cast<std::size_t>(b)];
    const double lam = lambda != nullptr ? (*lambda)[static_cast<std::size_t>(b)] : 1.0;
    for (int64_t j = 0; j < m; ++j) {
      LseD acc;
      for (int64_t i = 0; i < n; ++i) {
        const double la = logA[static_cast<std::size_t>(b * n + i)];
        if (la == -kInf) continue;
        acc.push(la + (F[static_cast<std::size_t>(b * n + i)] -
                       double{C[static_cast<std::size_t>((b * n + i) * m + j)]}) /
                          e);
      }
      G[static_cast<std::size_t>(b * m + j)] = potential(acc.value(), lam, e);
    }
  }
  return G;
}

/// |gpu - ref| <= atol + rtol |ref| for every element; infinities must match.
void expect_close(const std::vector<float>& gpu, const std::vector<double>& ref, double atol,
                  double rtol, const std::string& what) {
  ASSERT_EQ(gpu.size(), ref.size()) << what;
  int reported = 0;
  for (std::size_t k = 0; k < ref.size(); ++k) {
    const double g = gpu[k], r = ref[k];
    const bool ok = std::isinf(r) ? g == r : std::abs(g - r) <= atol + rtol * std::abs(r);
    if (!ok && reported++ < 8) ADD_FAILURE() << what << "[" << k << "]: gpu " << g << " ref " << r;
  }
}

// ---- dense half-steps ------------------------------------------------------------------

struct DenseCase {
  int64_t B, n, m;
  bool use_lambda;
  /// Pass C, G, logB, F, logA one float past a 16-byte boundary: with m % 4 == 0 the
  /// launchers must notice and take the scalar path (a float4 load there faults).
  bool misaligned = false;
};

std::string dense_name(const DenseCase& c) {
  return "B" + std::to_string(c.B) + "_n" + std::to_string(c.n) + "_m" + std::to_string(c.m) +
         (c.use_lambda ? "_lambda" : "") + (c.misaligned ? "_misaligned" : "");
}

/// v with `off` leading NaNs (the kernels must never read them).
std::vector<float> shifted(const std::vector<float>& v, int off) {
  std::vector<float> out(static_cast<std::size_t>(off), std::numeric_limits<float>::quiet_NaN());
  out.insert(out.end(), v.begin(), v.end());
  return out;
}

void PrintTo(const DenseCase& c, std::ostream* os) { *os << dense_name(c); }

class DenseHalfSteps : public ::testing::TestWithParam<DenseCase> {};

// Potentials in fp32 from fp32 scores: the error is a few ulp of the base-2 score
// (|score| <= ~30 here) times eps, plus the rounding of the result.
constexpr double kPotAtol = 2e-5;
constexpr double kPotRtol = 2e-5;

TEST_P(DenseHalfSteps, RowAndColumnMatchDoubleReference) {
  REQUIRE_GPU();
  const DenseCase c = GetParam();
  const int64_t B = c.B, n = c.n, m = c.m;
  std::mt19937 rng(static_cast<unsigned>(B * 1000003 + n * 101 + m));
  const auto C = uniform(rng, static_cast<std::size_t>(B * n * m), 0.0f, 2.0f);
  const auto logA = log_weights(rng, B, n, 7);
  const auto logB = log_weights(rng, B, m, 5);
  const auto F0 = uniform(rng, static_cast<std::size_t>(B * n), -0.5f, 0.5f);
  const auto G0 = uniform(rng, static_cast<std::size_t>(B * m), -0.5f, 0.5f);
  std::vector<float> eps(static_cast<std::size_t>(B)), lambda(static_cast<std::size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    eps[static_cast<std::size_t>(b)] = 0.05f * static_cast<float>(b + 1);
    lambda[static_cast<std::size_t>(b)] = 1.0f - 0.1f * static_cast<float>(b + 1);
  }
  // Problem 1 (when present) is inactive: its outputs must stay untouched.
  std::vector<int> active(static_cast<std::size_t>(B), 1);
  if (B > 1) active[1] = 0;

  const int off = c.misaligned ? 1 : 0;
  DeviceBuffer<float> dC(shifted(C, off)), dLA(shifted(logA, off)), dLB(shifted(logB, off)),
      dF(shifted(F0, off)), dG(shifted(G0, off)), dEps(eps), dLam(lambda);
  DeviceBuffer<int> dActive(active);
  DeviceBuffer<float> dOutF(std::vector<float>(static_cast<std::size_t>(B * n), kSentinel));
  DeviceBuffer<float> dOutG(std::vector<float>(static_cast<std::size_t>(B * m), kSentinel));
  const std::size_t ws_bytes = otgpu::kernels::dense_col_workspace_bytes(B, n, m);
  DeviceBuffer<unsigned char> dWs(std::vector<unsigned char>(ws_bytes, 0xff));
  const float* lam_ptr = c.use_lambda ? dLam.data() : nullptr;

  otgpu::kernels::dense_row_update(dC.data() + off, dLB.data() + off, dG.data() + off, dEps.data(),
                                   lam_ptr, dActive.data(), dOutF.data(), B, n, m, nullptr);
  otgpu::kernels::dense_col_update(dC.data() + off, dLA.data() + off, dF.data() + off, dEps.data(),
                                   lam_ptr, dActive.data(), dOutG.data(), dWs.data(), ws_bytes, B,
                                   n, m, nullptr);
  OTGPU_CUDA_CHECK(cudaDeviceSynchronize());

  auto refF = ref_row_update(C, logB, G0, eps, c.use_lambda ? &lambda : nullptr, B, n, m);
  auto refG = ref_col_update(C, logA, F0, eps, c.use_lambda ? &lambda : nullptr, B, n, m);
  if (B > 1) {
    for (int64_t i = 0; i < n; ++i) refF[static_cast<std::size_t>(n + i)] = kSentinel;
    for (int64_t j = 0; j < m; ++j) refG[static_cast<std::size_t>(m + j)] = kSentinel;
  }
  expect_close(dOutF.to_host(), refF, kPotAtol, kPotRtol, "F");
  expect_close(dOutG.to_host(), refG, kPotAtol, kPotRtol, "G");
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, DenseHalfSteps,
    ::testing::Values(DenseCase{1, 1, 1, false}, DenseCase{3, 5, 33, true},
                      DenseCase{1, 33, 5, false}, DenseCase{3, 1000, 37, true},
                      DenseCase{1, 4099, 33, false}, DenseCase{3, 33, 4099, true},
                      DenseCase{1, 1000, 1000, false}, DenseCase{3, 1000, 4096, true},
                      DenseCase{1, 4099, 1000, true}, DenseCase{1, 1, 4099, false},
                      DenseCase{1, 4099, 1, false}, DenseCase{2, 40, 1000, true, true},
                      DenseCase{1, 4099, 64, false, true}),
    [](const ::testing::TestParamInfo<DenseCase>& p) { return dense_name(p.param); });

TEST(DenseRowStats, MatchesDoubleReference) {
  REQUIRE_GPU();
  for (const auto& [B, n, m] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                                {3, 33, 1000},
                                {1, 1000, 4099},
                                {3, 5, 33}}) {
    SCOPED_TRACE("B=" + std::to_string(B) + " n=" + std::to_string(n) + " m=" + std::to_string(m));
    std::mt19937 rng(static_cast<unsigned>(7 * B + 13 * n + m));
    const auto C = uniform(rng, static_cast<std::size_t>(B * n * m), 0.0f, 1.0f);
    const auto logA = log_weights(rng, B, n, 4);
    const auto logB = log_weights(rng, B, m, 6);
    const auto F = uniform(rng, static_cast<std::size_t>(B * n), -0.5f, 0.5f);
    const auto G = uniform(rng, static_cast<std::size_t>(B * m), -0.5f, 0.5f);
    std::vector<float> eps(static_cast<std::size_t>(B), 0.1f);
    DeviceBuffer<float> dC(C), dLA(logA), dLB(logB), dF(F), dG(G), dEps(eps);
    DeviceBuffer<float> dMass(std::vector<float>(static_cast<std::size_t>(B * n), kSentinel));
    DeviceBuffer<float> dCost(std::vector<float>(static_cast<std::size_t>(B * n), kSentinel));
    DeviceBuffer<float> dMass2(std::vector<float>(static_cast<std::size_t>(B * n), kSentinel));
    otgpu::kernels::dense_row_stats(dC.data(), dLA.data(), dLB.data(), dF.data(), dG.data(),
                                    dEps.data(), dMass.data(), dCost.data(), B, n, m, nullptr);
    // row_cost may be null when only the masses are wanted.
    otgpu::kernels::dense_row_stats(dC.data(), dLA.data(), dLB.data(), dF.data(), dG.data(),
                                    dEps.data(), dMass2.data(), nullptr, B, n, m, nullptr);
    OTGPU_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_EQ(dMass2.to_host(), dMass.to_host());
    std::vector<double> mass(static_cast<std::size_t>(B * n)), cost(mass.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < n; ++i) {
        double s = 0, sc = 0;
        for (int64_t j = 0; j < m; ++j) {
          const double c = C[static_cast<std::size_t>((b * n + i) * m + j)];
          const double p = std::exp(double{logA[static_cast<std::size_t>(b * n + i)]} +
                                    logB[static_cast<std::size_t>(b * m + j)] +
                                    (double{F[static_cast<std::size_t>(b * n + i)]} +
                                     G[static_cast<std::size_t>(b * m + j)] - c) /
                                        0.1);
          s += p;
          sc += p * c;
        }
        mass[static_cast<std::size_t>(b * n + i)] = s;
        cost[static_cast<std::size_t>(b * n + i)] = sc;
      }
    // Exponents up to ~25 in fp32 lose ~1e-6 relative; sums of m fp32 terms ~1e-6.
    expect_close(dMass.to_host(), mass, 1e-12, 1e-4, "row_mass");
    expect_close(dCost.to_host(), cost, 1e-12, 1e-4, "row_cost");
  }
}

TEST(DenseLaunchers, RejectBadArguments) {
  // Validation happens before anything touches the device.
  float dummy = 0;
  EXPECT_THROW(otgpu::kernels::dense_row_update(&dummy, &dummy, &dummy, &dummy, nullptr, nullptr,
                                                &dummy, 0, 4, 4, nullptr),
               otgpu::InvalidArgument);
  EXPECT_THROW(otgpu::kernels::dense_row_update(nullptr, &dummy, &dummy, &dummy, nullptr, nullptr,
                                                &dummy, 1, 4, 4, nullptr),
               otgpu::InvalidArgument);
  const std::size_t need = otgpu::kernels::dense_col_workspace_bytes(1, 4099, 64);
  ASSERT_GT(need, 0u) << "many rows and few columns must split the rows";
  EXPECT_THROW(otgpu::kernels::dense_col_update(&dummy, &dummy, &dummy, &dummy, nullptr, nullptr,
                                                &dummy, &dummy, need - 1, 1, 4099, 64, nullptr),
               otgpu::InvalidArgument);
  EXPECT_EQ(otgpu::kernels::dense_col_workspace_bytes(1, 5, 64), 0u);
}

// ---- many small problems ------------------------------------------------------------------

struct RefResult {
  std::vector<double> F, G;
  int iterations = 0;
  double residual = kInf;
  bool converged = false;
};

struct SolveSpec {
  double eps_decay = 0.5, rho_a = kInf, rho_b = kInf, tol = 1e-6;
  int max_iter = 50, check_every = 0;
};

double lambda_of(double rho, double e) { return std::isinf(rho) ? 1.0 : rho / (rho + e); }

/// The whole Sinkhorn loop of one problem, following the CPU reference semantics.
RefResult ref_solve(const std::vector<double>& C, const float* logA, const float* logB,
                    const float* F0, const float* G0, double eps, double eps_init,
                    const SolveSpec& s, int64_t n, int64_t m) {
  RefResult r;
  r.F.assign(F0, F0 + n);
  r.G.assign(G0, G0 + m);
  auto row = [&](double e, double lam, std::vector<double>& out) {
    for (int64_t i = 0; i < n; ++i) {
      LseD acc;
      for (int64_t j = 0; j < m; ++j)
        if (logB[j] != -std::numeric_limits<float>::infinity())
          acc.push(logB[j] +
                   (r.G[static_cast<std::size_t>(j)] - C[static_cast<std::size_t>(i * m + j)]) / e);
      out[static_cast<std::size_t>(i)] = potential(acc.value(), lam, e);
    }
  };
  auto col = [&](double e, double lam) {
    for (int64_t j = 0; j < m; ++j) {
      LseD acc;
      for (int64_t i = 0; i < n; ++i)
        if (logA[i] != -std::numeric_limits<float>::infinity())
          acc.push(logA[i] +
                   (r.F[static_cast<std::size_t>(i)] - C[static_cast<std::size_t>(i * m + j)]) / e);
      r.G[static_cast<std::size_t>(j)] = potential(acc.value(), lam, e);
    }
  };
  auto measure = [&] {
    std::vector<double> ft(static_cast<std::size_t>(n));
    row(eps, 1.0, ft);
    const double la = lambda_of(s.rho_a, eps);
    double R = 0;
    for (int64_t i = 0; i < n; ++i)
      if (logA[i] != -std::numeric_limits<float>::infinity())
        R += std::exp(double{logA[i]}) * std::abs(std::exp((r.F[static_cast<std::size_t>(i)] -
                                                            la * ft[static_cast<std::size_t>(i)]) /
                                                           eps) -
                                                  1.0);
    return R;
  };
  for (int t = 0; t < s.max_iter; ++t) {
    const double et = eps_init > 0 ? std::max(eps, eps_init * std::pow(s.eps_decay, t)) : eps;
    row(et, lambda_of(s.rho_a, et), r.F);
    col(et, lambda_of(s.rho_b, et));
    r.iterations = t + 1;
    const bool check =
        (s.check_every > 0 && (t + 1) % s.check_every == 0 && et == eps) || t + 1 == s.max_iter;
    if (check) {
      r.residual = measure();
      r.converged = r.residual <= s.tol;
      if (r.converged) break;
    }
  }
  return r;
}

struct SmallCase {
  CostKind cost;
  int64_t B, n, m, d;
  SolveSpec spec;
  bool eps_scaling;
  int chunk;  ///< iterations per launch (0 = one launch)
  const char* name;
};

std::vector<double> cost_matrix(CostKind kind, const float* x, const float* y, const float* c,
                                int64_t n, int64_t m, int64_t d) {
  std::vector<double> C(static_cast<std::size_t>(n * m));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double v = 0;
      if (kind == CostKind::matrix) {
        v = c[i * m + j];
      } else {
        for (int64_t k = 0; k < d; ++k) {
          const double diff = double{x[i * d + k]} - y[j * d + k];
          v += diff * diff;
        }
        if (kind == CostKind::euclidean) v = std::sqrt(v);
      }
      C[static_cast<std::size_t>(i * m + j)] = v;
    }
  return C;
}

void PrintTo(const SmallCase& c, std::ostream* os) { *os << c.name; }

class SmallSinkhorn : public ::testing::TestWithParam<SmallCase> {};

TEST_P(SmallSinkhorn, MatchesDoubleSinkhornLoop) {
  REQUIRE_GPU();
  const SmallCase c = GetParam();
  const int64_t B = c.B, n = c.n, m = c.m, d = c.d;
  int device = 0;
  OTGPU_CUDA_CHECK(cudaGetDevice(&device));
  ASSERT_TRUE(otgpu::kernels::small_kernel_fits(c.cost, n, m, d, device))
      << "needs " << otgpu::kernels::small_kernel_smem_bytes(c.cost, n, m, d, device) << " bytes";

  std::mt19937 rng(static_cast<unsigned>(B * 31 + n * 7 + m * 3 + d));
  std::vector<float> X, Y, Cm;
  if (c.cost == CostKind::matrix) {
    Cm = uniform(rng, static_cast<std::size_t>(B * n * m), 0.0f, 1.0f);
  } else {
    // Centered data (what the driver hands the kernel), W2-like spread.
    X = uniform(rng, static_cast<std::size_t>(B * n * d), -0.5f, 0.5f);
    Y = uniform(rng, static_cast<std::size_t>(B * m * d), -0.4f, 0.6f);
  }
  const auto logA = log_weights(rng, B, n, 6);
  const auto logB = log_weights(rng, B, m, 9);
  std::vector<float> F0(static_cast<std::size_t>(B * n), 0.0f),
      G0(static_cast<std::size_t>(B * m), 0.0f);
  // Mean sqeuclidean cost grows like d/6: keep eps / mean cost comparable across d.
  const double cost_scale = c.cost == CostKind::matrix      ? 0.5
                            : c.cost == CostKind::euclidean ? std::sqrt(double(d) / 6.0 + 0.01)
                                                            : double(d) / 6.0 + 0.01;
  std::vector<float> eps(static_cast<std::size_t>(B)), eps_init(static_cast<std::size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    eps[static_cast<std::size_t>(b)] =
        static_cast<float>(cost_scale * (0.05 + 0.05 * double(b % 3)));
    eps_init[static_cast<std::size_t>(b)] =
        c.eps_scaling ? 16.0f * eps[static_cast<std::size_t>(b)] : 0.0f;
  }
  std::vector<int> active(static_cast<std::size_t>(B), 1);
  if (B > 2) active[2] = 0;  // untouched

  DeviceBuffer<float> dX(X), dY(Y), dC(Cm), dLA(logA), dLB(logB), dF(F0), dG(G0), dEps(eps),
      dEpsInit(eps_init);
  DeviceBuffer<int> dActive(active);
  DeviceBuffer<int> dIters(std::vector<int>(static_cast<std::size_t>(B), -7));
  DeviceBuffer<int> dConv(std::vector<int>(static_cast<std::size_t>(B), -7));
  DeviceBuffer<float> dRes(std::vector<float>(static_cast<std::size_t>(B), kSentinel));

  otgpu::kernels::SmallSinkhornArgs a;
  a.cost = c.cost;
  a.X = dX.data();
  a.Y = dY.data();
  a.C = dC.data();
  a.logA = dLA.data();
  a.logB = dLB.data();
  a.F = dF.data();
  a.G = dG.data();
  a.eps = dEps.data();
  a.eps_init = dEpsInit.data();
  a.eps_decay = c.spec.eps_decay;
  a.rho_a = c.spec.rho_a;
  a.rho_b = c.spec.rho_b;
  a.tol = c.spec.tol;
  a.max_iter = c.spec.max_iter;
  a.check_every = c.spec.check_every;
  a.active = dActive.data();
  a.iterations = dIters.data();
  a.residual = dRes.data();
  a.converged = dConv.data();
  a.B = B;
  a.n = n;
  a.m = m;
  a.d = d;
  const int chunk = c.chunk > 0 ? c.chunk : c.spec.max_iter;
  for (int t = 0; t < c.spec.max_iter; t += chunk) {
    a.t_begin = t;
    a.t_end = std::min(t + chunk, c.spec.max_iter);
    otgpu::kernels::small_sinkhorn(a, nullptr);
  }
  OTGPU_CUDA_CHECK(cudaDeviceSynchronize());
  const auto F = dF.to_host(), G = dG.to_host(), res = dRes.to_host();
  const auto iters = dIters.to_host(), conv = dConv.to_host(), act = dActive.to_host();

  // fp32 iterates track the double loop: each half-step adds ~1e-7 of the cost
  // scale (score rounding, ex2.approx), and the balanced problem's constant shift
  // (f + k, g - k) is not damped, so a few hundred iterations can drift ~1e-4 of the
  // cost scale. An indexing or masking error moves potentials by O(cost scale).
  const double atol = 5e-4 * cost_scale;
  constexpr double kRtol = 5e-4;
  for (int64_t b = 0; b < B; ++b) {
    SCOPED_TRACE("problem " + std::to_string(b));
    const auto sb = static_cast<std::size_t>(b);
    if (active[sb] == 0) {
      EXPECT_EQ(iters[sb], -7);
      EXPECT_EQ(conv[sb], -7);
      EXPECT_EQ(res[sb], kSentinel);
      EXPECT_EQ(act[sb], 0);
      for (int64_t i = 0; i < n; ++i)
        EXPECT_EQ(F[sb * static_cast<std::size_t>(n) + static_cast<std::size_t>(i)], 0.0f);
      continue;
    }
    const auto Cb = cost_matrix(c.cost, X.empty() ? nullptr : X.data() + b * n * d,
                                Y.empty() ? nullptr : Y.data() + b * m * d,
                                Cm.empty() ? nullptr : Cm.data() + b * n * m, n, m, d);
    RefResult ref = ref_solve(Cb, logA.data() + b * n, logB.data() + b * m, F0.data() + b * n,
                              G0.data() + b * m, eps[sb], eps_init[sb], c.spec, n, m);
    // fp32 potentials put a floor of ~1e-5 under R, so a check can land on the
    // other side of tol than in double: then the GPU's stop must still be
    // justified by the double residual at that iteration (within 50%), and the
    // potentials are compared at the GPU's iteration count.
    if (iters[sb] != ref.iterations) {
      SolveSpec fixed = c.spec;
      fixed.max_iter = iters[sb];
      fixed.check_every = 0;
      const RefResult at_gpu =
          ref_solve(Cb, logA.data() + b * n, logB.data() + b * m, F0.data() + b * n,
                    G0.data() + b * m, eps[sb], eps_init[sb], fixed, n, m);
      if (conv[sb] == 1) {
        EXPECT_LE(at_gpu.residual, 1.5 * c.spec.tol)
            << "gpu stopped at " << iters[sb] << ", reference at " << ref.iterations;
        // A stop happens only at a check (or at the cap).
        EXPECT_TRUE(iters[sb] == c.spec.max_iter ||
                    (c.spec.check_every > 0 && iters[sb] % c.spec.check_every == 0))
            << "gpu stopped at " << iters[sb];
      } else {
        // Not converged: the GPU must have run to the cap.
        EXPECT_EQ(iters[sb], c.spec.max_iter) << "reference stopped at " << ref.iterations;
        EXPECT_GE(ref.residual, c.spec.tol / 1.5)
            << "gpu ran to " << iters[sb] << ", reference stopped at " << ref.iterations;
      }
      ref = at_gpu;
      EXPECT_NEAR(res[sb], ref.residual, 0.05 * ref.residual + 3e-5);
    } else {
      // fp32 puts a floor of ~1e-5 under R: a residual within 50% of tol may land
      // on either side of it.
      const bool borderline = ref.residual >= c.spec.tol / 1.5 && ref.residual <= 1.5 * c.spec.tol;
      if (!borderline) {
        EXPECT_EQ(conv[sb], ref.converged ? 1 : 0);
      }
      EXPECT_TRUE(conv[sb] == 0 || conv[sb] == 1) << conv[sb];
      if (ref.residual != kInf) {
        EXPECT_NEAR(res[sb], ref.residual, 0.05 * ref.residual + 3e-5);
      }
    }
    EXPECT_EQ(act[sb], 0) << "every problem finished: converged or max_iter";
    std::vector<float> Fb(F.begin() + b * n, F.begin() + (b + 1) * n);
    std::vector<float> Gb(G.begin() + b * m, G.begin() + (b + 1) * m);
    expect_close(Fb, ref.F, atol, kRtol, "F");
    expect_close(Gb, ref.G, atol, kRtol, "G");
  }
}

SolveSpec fixed_iters(int iters) {
  SolveSpec s;
  s.max_iter = iters;
  s.check_every = 0;
  s.tol = 1e-4;
  return s;
}

SolveSpec converge(double tol, int check_every, int max_iter) {
  SolveSpec s;
  s.max_iter = max_iter;
  s.check_every = check_every;
  s.tol = tol;
  return s;
}

SolveSpec unbalanced(double rho_a, double rho_b, SolveSpec s) {
  s.rho_a = rho_a;
  s.rho_b = rho_b;
  return s;
}

SolveSpec with_decay(double decay, SolveSpec s) {
  s.eps_decay = decay;
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SmallSinkhorn,
    ::testing::Values(
        // recomputed cost, d = 2 (W2 small case shape), tails n = 33, m = 5
        SmallCase{CostKind::sqeuclidean, 3, 33, 5, 2, fixed_iters(40), false, 0, "sq_d2_fixed"},
        SmallCase{CostKind::sqeuclidean, 4, 128, 128, 2, converge(1e-4, 10, 500), false, 0,
                  "sq_d2_128_converge"},
        // d = 3 padded to 4, euclidean, n = m = 1
        SmallCase{CostKind::euclidean, 3, 5, 33, 3, fixed_iters(30), false, 0, "eu_d3_fixed"},
        SmallCase{CostKind::sqeuclidean, 1, 1, 1, 1, fixed_iters(3), false, 0, "sq_1x1"},
        // d = 32 at n = m = 128: the cost matrix is cached in shared memory
        SmallCase{CostKind::sqeuclidean, 3, 128, 128, 32, converge(1e-4, 5, 300), true, 0,
                  "sq_d32_cached_scaling"},
        // d = 32 at 500 x 500 (1 MB of cost does not fit): recomputed with |x|^2+|y|^2-2<x,y>
        SmallCase{CostKind::sqeuclidean, 2, 500, 499, 32, fixed_iters(20), false, 0,
                  "sq_d32_online"},
        // d = 10 padded to 16, recomputed (300 x 301 cost does not fit), euclidean
        SmallCase{CostKind::euclidean, 1, 300, 301, 10, fixed_iters(15), false, 0, "eu_d10_online"},
        // dense matrix, unbalanced, eps scaling, convergence, several launches
        SmallCase{CostKind::matrix, 3, 33, 100, 0, unbalanced(1.0, 2.0, converge(1e-4, 5, 400)),
                  true, 7, "matrix_unbalanced_chunked"},
        SmallCase{CostKind::matrix, 3, 1000, 5, 0, converge(1e-4, 3, 200), false, 0, "matrix_tall"},
        SmallCase{CostKind::sqeuclidean, 3, 1000, 37, 2, fixed_iters(25), true, 4,
                  "sq_d2_1000_chunked"},
        // eps scaling with a decay that is not a power of two (eps_t reaches eps by
        // rounding), checks and chunks that do not line up
        SmallCase{CostKind::sqeuclidean, 3, 64, 48, 2, with_decay(0.7, converge(1e-4, 4, 300)),
                  true, 5, "sq_d2_decay07_chunked"},
        // euclidean cost cached in shared memory from the points (d >= 8)
        SmallCase{CostKind::euclidean, 2, 64, 80, 16, fixed_iters(20), false, 0, "eu_d16_cached"}),
    [](const ::testing::TestParamInfo<SmallCase>& p) { return std::string(p.param.name); });

TEST(SmallSinkhornLauncher, RejectsBadArguments) {
  otgpu::kernels::SmallSinkhornArgs a;
  float dummy = 0;
  a.X = a.Y = a.logA = a.logB = a.eps = &dummy;
  a.F = a.G = &dummy;
  a.B = 1;
  a.n = 4;
  a.m = 4;
  a.d = 2;
  a.t_end = 1;
  a.d = 0;
  EXPECT_THROW(otgpu::kernels::small_sinkhorn(a, nullptr), otgpu::InvalidArgument);
  a.d = 2;
  a.t_begin = 3;
  a.t_end = 1;
  EXPECT_THROW(otgpu::kernels::small_sinkhorn(a, nullptr), otgpu::InvalidArgument);
  a.t_begin = 0;
  a.X = nullptr;
  EXPECT_THROW(otgpu::kernels::small_sinkhorn(a, nullptr), otgpu::InvalidArgument);
}

TEST(SmallSinkhornLauncher, FitQueryMatchesDeviceLimit) {
  REQUIRE_GPU();
  int device = 0, limit = 0;
  OTGPU_CUDA_CHECK(cudaGetDevice(&device));
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // W2 shapes must fit on an H100-class device (227 KB per block).
  if (limit >= 227 * 1024) {
    EXPECT_TRUE(otgpu::kernels::small_kernel_fits(CostKind::sqeuclidean, 512, 512, 32, device));
    EXPECT_TRUE(otgpu::kernels::small_kernel_fits(CostKind::sqeuclidean, 128, 128, 2, device));
  }
  // A 2000 x 2000 matrix (16 MB) never fits; the query says so and the size says why.
  EXPECT_FALSE(otgpu::kernels::small_kernel_fits(CostKind::matrix, 2000, 2000, 0, device));
  EXPECT_GT(otgpu::kernels::small_kernel_smem_bytes(CostKind::matrix, 2000, 2000, 0, device),
            static_cast<std::size_t>(limit));
  EXPECT_FALSE(otgpu::kernels::small_kernel_fits(CostKind::sqeuclidean, 4000, 4000, 64, device));
}

}  // namespace

#else  // built without CUDA

TEST(SinkhornKernelsGpu, RequiresCudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif
