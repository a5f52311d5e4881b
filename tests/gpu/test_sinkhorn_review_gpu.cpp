// The review of issue 10's SIMT kernels, on the device: the online half-step (every
// padded dimension, both costs, column splits including empty ones), the one-pass
// weighted mean and the potential it writes, row statistics, sampling, the dense column
// split and the small kernel's Euclidean recompute, each launched directly on guarded
// device buffers and compared with fp64 computations written here. The edge cases are
// the ones the review looked for: row tails (n not a multiple of the rows a block owns),
// short last tiles, B > 1 strides with an inactive problem, zero weights covering a
// whole split, rows without any mass (+inf, never the finite sentinel), coincident
// points, and writes past the end of an output or partials buffer (the guards).
// Skipped when no CUDA device is usable, except the argument checks, which run before
// any device call.
#include <gtest/gtest.h>

#if defined(OTGPU_WITH_CUDA)

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_kernels/sinkhorn_dense.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "otgpu_kernels/sinkhorn_online.h"
#include "otgpu_kernels/sinkhorn_small.h"

namespace {

using otgpu::CostKind;
using std::int64_t;
namespace geo = otgpu::kernels::geometry;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kFInf = std::numeric_limits<float>::infinity();
constexpr float kUntouched = 12345.0f;  // outputs a launch must not write

/// Device copy of a host vector with kGuard elements of a marker on each side: a kernel
/// writing one element past either end shows as a changed guard (no sanitizer needed).
/// 64 floats of guard keep the data 256-byte aligned, as the workspace carve-up is.
template <class T>
class Guarded {
 public:
  static constexpr std::size_t kGuard = 64;
  Guarded(const std::vector<T>& host, T marker) : size_(host.size()), marker_(marker) {
    std::vector<T> all(size_ + 2 * kGuard, marker);
    std::copy(host.begin(), host.end(), all.begin() + kGuard);
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&base_), all.size() * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(base_, all.data(), all.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  ~Guarded() {
    if (base_ != nullptr) cudaFree(base_);
  }
  T* get() const { return base_ + kGuard; }
  std::vector<T> all() const {
    std::vector<T> out(size_ + 2 * kGuard);
    EXPECT_EQ(cudaMemcpy(out.data(), base_, out.size() * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }
  std::vector<T> download() const {
    const std::vector<T> a = all();
    return std::vector<T>(a.begin() + kGuard, a.end() - kGuard);
  }
  /// True when both guards still hold the marker, bit for bit.
  bool guards_intact() const {
    const std::vector<T> a = all();
    for (std::size_t k = 0; k < kGuard; ++k) {
      if (std::memcmp(&a[k], &marker_, sizeof(T)) != 0) return false;
      if (std::memcmp(&a[kGuard + size_ + k], &marker_, sizeof(T)) != 0) return false;
    }
    return true;
  }

 private:
  std::size_t size_ = 0;
  T marker_{};
  T* base_ = nullptr;
};

void sync_ok() {
  const cudaError_t e = cudaDeviceSynchronize();
  ASSERT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
}

// ---- data and fp64 references ------------------------------------------------------------

/// A batch of point-cloud half-steps in the kernels' layout: rows [B, n_rows, dp], cols
/// [B, n_cols, dp] (the last coordinate is padding, zero, for dp >= 2), column log
/// weights and potentials [B, n_cols], eps [B]. Half the rows sit 2 units out on the
/// first axis, so the row constant scale |x_i|^2 is large next to the cost spread.
struct Batch {
  int64_t B = 0, n_rows = 0, n_cols = 0;
  int dp = 0;
  bool euclid = false;
  std::vector<float> rows, cols, logw, pot, eps;
  double mean_cost = 0;  // of problem 0
};

double cost64(const float* x, const float* y, int dp, bool euclid) {
  double s = 0;
  for (int k = 0; k < dp; ++k) {
    const double t = static_cast<double>(x[k]) - static_cast<double>(y[k]);
    s += t * t;
  }
  return euclid ? std::sqrt(s) : s;
}

Batch make_batch(int64_t B, int64_t n_rows, int64_t n_cols, int dp, bool euclid, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  Batch t;
  t.B = B;
  t.n_rows = n_rows;
  t.n_cols = n_cols;
  t.dp = dp;
  t.euclid = euclid;
  const int real = dp >= 2 ? dp - 1 : dp;
  auto fill = [&](std::vector<float>& v, int64_t count, bool offset_half) {
    v.assign(static_cast<std::size_t>(B * count * dp), 0.f);
    for (int64_t r = 0; r < B * count; ++r) {
      for (int k = 0; k < real; ++k) v[static_cast<std::size_t>(r * dp + k)] = u(rng);
      if (offset_half && (r % count) % 2 == 0) v[static_cast<std::size_t>(r * dp)] += 2.f;
    }
  };
  fill(t.rows, n_rows, true);
  fill(t.cols, n_cols, false);
  for (int64_t i = 0; i < n_rows; ++i)
    for (int64_t j = 0; j < n_cols; ++j)
      t.mean_cost += cost64(&t.rows[static_cast<std::size_t>(i * dp)],
                            &t.cols[static_cast<std::size_t>(j * dp)], dp, euclid);
  t.mean_cost /= static_cast<double>(n_rows * n_cols);
  t.logw.resize(static_cast<std::size_t>(B * n_cols));
  t.pot.resize(t.logw.size());
  std::uniform_real_distribution<double> w(0.2, 1.0), g(-0.5, 0.5);
  for (std::size_t k = 0; k < t.logw.size(); ++k) {
    t.logw[k] = static_cast<float>(std::log(w(rng) / static_cast<double>(n_cols)));
    t.pot[k] = static_cast<float>(t.mean_cost * g(rng));
  }
  t.eps.resize(static_cast<std::size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    t.eps[static_cast<std::size_t>(b)] = static_cast<float>(t.mean_cost * 0.05 * double(b + 1));
  return t;
}

/// Natural-log LSE_j(logw_j + (pot_j - c_ij)/eps) of row i of problem b; -inf when no
/// column has mass.
double ref_lse(const Batch& t, int64_t b, int64_t i) {
  const float* x = &t.rows[static_cast<std::size_t>((b * t.n_rows + i) * t.dp)];
  const double eps = t.eps[static_cast<std::size_t>(b)];
  double mx = -kInf;
  std::vector<double> s(static_cast<std::size_t>(t.n_cols), -kInf);
  for (int64_t j = 0; j < t.n_cols; ++j) {
    const auto k = static_cast<std::size_t>(b * t.n_cols + j);
    if (t.logw[k] == -kFInf) continue;
    s[static_cast<std::size_t>(j)] =
        t.logw[k] +
        (t.pot[k] -
         cost64(x, &t.cols[static_cast<std::size_t>((b * t.n_cols + j) * t.dp)], t.dp, t.euclid)) /
            eps;
    mx = std::max(mx, s[static_cast<std::size_t>(j)]);
  }
  if (mx == -kInf) return -kInf;
  double sum = 0;
  for (double v : s) sum += std::exp(v - mx);
  return mx + std::log(sum);
}

double ref_potential(double lse, double lambda, double eps) {
  return lse == -kInf ? kInf : -lambda * eps * lse;
}

otgpu::kernels::OnlinePass pass_of(const Batch& t, const float* rows, const float* cols,
                                   const float* logw, const float* pot, const float* eps) {
  otgpu::kernels::OnlinePass p;
  p.cost = t.euclid ? CostKind::euclidean : CostKind::sqeuclidean;
  p.rows = rows;
  p.cols = cols;
  p.col_logw = logw;
  p.col_pot = pot;
  p.eps = eps;
  p.B = t.B;
  p.n_rows = t.n_rows;
  p.n_cols = t.n_cols;
  p.dp = t.dp;
  return p;
}

/// Uploads a batch: rows, cols, weights, potentials, eps.
struct DeviceBatch {
  Guarded<float> rows, cols, logw, pot, eps;
  explicit DeviceBatch(const Batch& t)
      : rows(t.rows, 0.f), cols(t.cols, 0.f), logw(t.logw, 0.f), pot(t.pot, 0.f), eps(t.eps, 0.f) {}
  otgpu::kernels::OnlinePass pass(const Batch& t) const {
    return pass_of(t, rows.get(), cols.get(), logw.get(), pot.get(), eps.get());
  }
};

std::string name_of(const Batch& t) {
  return std::string(t.euclid ? "euclidean" : "sqeuclidean") + " dp=" + std::to_string(t.dp);
}

// ---- online half-step -------------------------------------------------------------------

// Every padded dimension the SIMT half-step specialises (and one dynamic one), both costs,
// splits 1, 3 (the last split empty) and 7 (three empty), B = 3 with problem 1 inactive
// and problem 2 without any column mass, 517 rows (a tail for 4, 2 and 1 rows per
// thread), 200 columns (a short last tile); problem 0 has the whole tile [64, 128) at
// zero weight (one entire split at 7 splits), one of them next to a +inf potential.
TEST(OnlineReviewGpu, HalfStepMatchesFp64WithSplitsTailsAndMasks) {
  REQUIRE_GPU();
  const int64_t B = 3, n_rows = 517, n_cols = 200;
  const std::vector<float> lambda = {1.0f, 0.7f, 0.5f};
  Guarded<float> d_lambda(lambda, 0.f);
  Guarded<int> d_active(std::vector<int>{1, 0, 1}, 0);
  for (bool euclid : {false, true}) {
    for (int dp : {1, 2, 4, 8, 16, 32, 64, 68}) {
      Batch t = make_batch(B, n_rows, n_cols, dp, euclid, 1000u + static_cast<unsigned>(dp));
      for (int64_t j = 0; j < n_cols; ++j) {
        if (j % 9 == 4 || (j >= 64 && j < 128)) t.logw[static_cast<std::size_t>(j)] = -kFInf;
        t.logw[static_cast<std::size_t>(2 * n_cols + j)] = -kFInf;  // problem 2: no mass
      }
      t.pot[70] = kFInf;  // a zero weight next to an infinite potential
      std::vector<double> ref(static_cast<std::size_t>(B * n_rows));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n_rows; ++i)
          ref[static_cast<std::size_t>(b * n_rows + i)] =
              ref_potential(ref_lse(t, b, i), lambda[static_cast<std::size_t>(b)],
                            t.eps[static_cast<std::size_t>(b)]);
      const DeviceBatch d(t);
      for (int splits : {1, 3, 7}) {
        SCOPED_TRACE(name_of(t) + " splits=" + std::to_string(splits));
        const std::size_t pf = geo::online_partials_floats(B, n_rows, splits);
        Guarded<float> partials(std::vector<float>(pf, 0.f), -777.f);
        Guarded<float> out(std::vector<float>(static_cast<std::size_t>(B * n_rows), kUntouched),
                           -777.f);
        otgpu::kernels::OnlinePass p = d.pass(t);
        p.active = d_active.get();
        p.splits = splits;
        p.partials = splits > 1 ? partials.get() : nullptr;
        otgpu::kernels::online_half_step(p, d_lambda.get(), out.get(), nullptr);
        sync_ok();
        EXPECT_TRUE(out.guards_intact());
        if (splits > 1) {
          EXPECT_TRUE(partials.guards_intact());
        }
        const std::vector<float> f = out.download();
        int bad = 0;
        for (int64_t b = 0; b < B; ++b) {
          const double tol = 1e-5 * t.mean_cost + 1e-3 * t.eps[static_cast<std::size_t>(b)];
          for (int64_t i = 0; i < n_rows; ++i) {
            const auto k = static_cast<std::size_t>(b * n_rows + i);
            const double want = b == 1 ? double{kUntouched} : ref[k];
            const bool ok = std::isinf(want) ? f[k] == want : std::abs(f[k] - want) <= tol;
            if (!ok && bad++ < 6) {
              ADD_FAILURE() << "problem " << b << " row " << i << ": gpu " << f[k] << " ref "
                            << want;
            }
          }
        }
      }
    }
  }
}

// ---- one-pass weighted mean and the potential it writes ----------------------------------

/// fp64 softmax-weighted mean of row i of problem b: mode 0 the mean of y_j, mode 1 the
/// mean of (x_i - y_j)/|x_i - y_j| (0 at x_i = y_j); zeros when no column has mass.
std::vector<double> ref_mean(const Batch& t, int64_t b, int64_t i, int mode) {
  const float* x = &t.rows[static_cast<std::size_t>((b * t.n_rows + i) * t.dp)];
  const double lse = ref_lse(t, b, i);
  std::vector<double> m(static_cast<std::size_t>(t.dp), 0.0);
  if (lse == -kInf) return m;
  const double eps = t.eps[static_cast<std::size_t>(b)];
  for (int64_t j = 0; j < t.n_cols; ++j) {
    const auto k = static_cast<std::size_t>(b * t.n_cols + j);
    if (t.logw[k] == -kFInf) continue;
    const float* y = &t.cols[static_cast<std::size_t>((b * t.n_cols + j) * t.dp)];
    const double w = std::exp(t.logw[k] + (t.pot[k] - cost64(x, y, t.dp, t.euclid)) / eps - lse);
    const double dist = cost64(x, y, t.dp, true);
    for (int c = 0; c < t.dp; ++c) {
      const double v = mode == 0  ? static_cast<double>(y[c])
                       : dist > 0 ? (static_cast<double>(x[c]) - y[c]) / dist
                                  : 0.0;
      m[static_cast<std::size_t>(c)] += w * v;
    }
  }
  return m;
}

// The map (both costs) and the Euclidean gradient direction, for the fixed kernels
// (dp <= 64) and the dynamic one (dp = 68), with the balanced potential written beside
// them: 133 rows (a tail), 150 columns (a short last tile), the first 70 columns of
// problem 0 without mass (the running state stays at the sentinel for a tile and more),
// row 0 on column 100 (a zero direction), problem 1 without any mass (mean 0, +inf).
TEST(OnlineReviewGpu, WeightedMeanAndPotentialMatchFp64) {
  REQUIRE_GPU();
  const int64_t B = 2, n_rows = 133, n_cols = 150;
  struct Mode {
    bool euclid;
    int mode;
  };
  for (const Mode md : {Mode{false, 0}, Mode{true, 0}, Mode{true, 1}}) {
    for (int dp : {1, 2, 8, 16, 32, 64, 68}) {
      Batch t = make_batch(B, n_rows, n_cols, dp, md.euclid, 2000u + static_cast<unsigned>(dp));
      for (int64_t j = 0; j < n_cols; ++j) {
        if (j < 70) t.logw[static_cast<std::size_t>(j)] = -kFInf;
        t.logw[static_cast<std::size_t>(n_cols + j)] = -kFInf;
      }
      for (int c = 0; c < dp; ++c)
        t.rows[static_cast<std::size_t>(c)] = t.cols[static_cast<std::size_t>(100 * dp + c)];
      SCOPED_TRACE(name_of(t) + " mode=" + std::to_string(md.mode));
      const DeviceBatch d(t);
      Guarded<float> out(std::vector<float>(static_cast<std::size_t>(B * n_rows * dp), kUntouched),
                         -777.f);
      Guarded<float> pot(std::vector<float>(static_cast<std::size_t>(B * n_rows), kUntouched),
                         -777.f);
      otgpu::kernels::online_weighted_mean(d.pass(t), md.mode, out.get(), nullptr, pot.get());
      sync_ok();
      EXPECT_TRUE(out.guards_intact());
      EXPECT_TRUE(pot.guards_intact());
      const std::vector<float> v = out.download(), f = pot.download();
      int bad = 0;
      for (int64_t b = 0; b < B; ++b) {
        const double eps = t.eps[static_cast<std::size_t>(b)];
        for (int64_t i = 0; i < n_rows; ++i) {
          const std::vector<double> want = ref_mean(t, b, i, md.mode);
          for (int c = 0; c < dp; ++c) {
            const float got = v[static_cast<std::size_t>((b * n_rows + i) * dp + c)];
            const double w = want[static_cast<std::size_t>(c)];
            if (!(std::abs(got - w) <= 2e-4 * (1.0 + std::abs(w))) && bad++ < 6) {
              ADD_FAILURE() << "problem " << b << " row " << i << " coord " << c << ": gpu " << got
                            << " ref " << w;
            }
          }
          const double fw = ref_potential(ref_lse(t, b, i), 1.0, eps);
          const float fg = f[static_cast<std::size_t>(b * n_rows + i)];
          const bool ok =
              std::isinf(fw) ? fg == fw : std::abs(fg - fw) <= 1e-5 * t.mean_cost + 1e-3 * eps;
          if (!ok && bad++ < 6) {
            ADD_FAILURE() << "potential, problem " << b << " row " << i << ": gpu " << fg << " ref "
                          << fw;
          }
        }
      }
    }
  }
}

// ---- row statistics and sampling ----------------------------------------------------------

TEST(OnlineReviewGpu, RowStatsMatchFp64) {
  REQUIRE_GPU();
  const int64_t B = 2, n_rows = 130, n_cols = 70;
  for (bool euclid : {false, true}) {
    for (int dp : {2, 68}) {
      Batch t = make_batch(B, n_rows, n_cols, dp, euclid, 3000u + static_cast<unsigned>(dp));
      for (int64_t j = 0; j < n_cols; j += 5) t.logw[static_cast<std::size_t>(j)] = -kFInf;
      SCOPED_TRACE(name_of(t));
      const DeviceBatch d(t);
      const std::vector<float> init(static_cast<std::size_t>(B * n_rows), kUntouched);
      Guarded<float> lse(init, -777.f), cmean(init, -777.f);
      otgpu::kernels::online_row_stats(d.pass(t), lse.get(), cmean.get(), nullptr);
      sync_ok();
      EXPECT_TRUE(lse.guards_intact());
      EXPECT_TRUE(cmean.guards_intact());
      const std::vector<float> l = lse.download(), cm = cmean.download();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < n_rows; ++i) {
          const double want = ref_lse(t, b, i);
          double mean = 0;
          const float* x = &t.rows[static_cast<std::size_t>((b * n_rows + i) * dp)];
          for (int64_t j = 0; j < n_cols; ++j) {
            const auto k = static_cast<std::size_t>(b * n_cols + j);
            if (t.logw[k] == -kFInf) continue;
            const double c =
                cost64(x, &t.cols[static_cast<std::size_t>((b * n_cols + j) * dp)], dp, euclid);
            mean +=
                std::exp(t.logw[k] + (t.pot[k] - c) / t.eps[static_cast<std::size_t>(b)] - want) *
                c;
          }
          const auto o = static_cast<std::size_t>(b * n_rows + i);
          EXPECT_NEAR(l[o], want, 1e-4 * (1.0 + std::abs(want))) << b << " " << i;
          EXPECT_NEAR(cm[o], mean, 1e-4 * t.mean_cost) << b << " " << i;
        }
      }
    }
  }
}

// Sampled partners: in range, never a zero weight, the same for the same seed; at eps far
// below the gap between a row's two cheapest columns the Gumbel noise cannot move the
// argmax, so the partner is the cheapest column (potentials 0, equal weights).
TEST(OnlineReviewGpu, SamplesAreValidDeterministicAndTheNearestAtTinyEps) {
  REQUIRE_GPU();
  const int64_t B = 2, n_rows = 140, n_cols = 90;
  for (bool euclid : {false, true}) {
    for (int dp : {2, 16, 68}) {
      Batch t = make_batch(B, n_rows, n_cols, dp, euclid, 4000u + static_cast<unsigned>(dp));
      std::fill(t.pot.begin(), t.pot.end(), 0.f);
      std::fill(t.logw.begin(), t.logw.end(), std::log(1.f / static_cast<float>(n_cols)));
      for (int64_t j = 3; j < n_cols; j += 7) t.logw[static_cast<std::size_t>(j)] = -kFInf;
      SCOPED_TRACE(name_of(t));
      for (float& e : t.eps) e = static_cast<float>(1e-5 * t.mean_cost);
      const DeviceBatch d(t);
      const std::vector<int64_t> init(static_cast<std::size_t>(B * n_rows), -5);
      Guarded<int64_t> s1(init, -9), s2(init, -9), s3(init, -9);
      otgpu::kernels::online_sample(d.pass(t), 7u, s1.get(), nullptr);
      otgpu::kernels::online_sample(d.pass(t), 7u, s2.get(), nullptr);
      sync_ok();
      EXPECT_TRUE(s1.guards_intact());
      const std::vector<int64_t> a = s1.download(), a2 = s2.download();
      EXPECT_EQ(a, a2);
      int checked = 0;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < n_rows; ++i) {
          const int64_t j = a[static_cast<std::size_t>(b * n_rows + i)];
          ASSERT_GE(j, 0);
          ASSERT_LT(j, n_cols);
          EXPECT_NE(t.logw[static_cast<std::size_t>(b * n_cols + j)], -kFInf) << b << " " << i;
          // The two cheapest columns with mass.
          const float* x = &t.rows[static_cast<std::size_t>((b * n_rows + i) * dp)];
          double c1 = kInf, c2 = kInf;
          int64_t j1 = -1;
          for (int64_t k = 0; k < n_cols; ++k) {
            if (t.logw[static_cast<std::size_t>(b * n_cols + k)] == -kFInf) continue;
            const double c =
                cost64(x, &t.cols[static_cast<std::size_t>((b * n_cols + k) * dp)], dp, euclid);
            if (c < c1) {
              c2 = c1;
              c1 = c;
              j1 = k;
            } else if (c < c2) {
              c2 = c;
            }
          }
          if ((c2 - c1) / t.eps[static_cast<std::size_t>(b)] > 100.0) {
            EXPECT_EQ(j, j1) << "problem " << b << " row " << i;
            ++checked;
          }
        }
      }
      EXPECT_GT(checked, n_rows);  // most rows have a clear nearest column
      // A different seed moves some partner at a large eps.
      for (float& e : t.eps) e = static_cast<float>(10.0 * t.mean_cost);
      const DeviceBatch d2(t);
      otgpu::kernels::online_sample(d2.pass(t), 7u, s2.get(), nullptr);
      otgpu::kernels::online_sample(d2.pass(t), 8u, s3.get(), nullptr);
      sync_ok();
      EXPECT_NE(s2.download(), s3.download());
    }
  }
}

// Two host threads launch the dynamic-dimension half-step with tiles above 48 KB of
// different sizes (dp = 200: 51 KB, dp = 800: 205 KB). The shared-memory cap is one
// attribute of the kernel: set per launch to the launch's size, one thread's lower value
// could land between the other's set and launch and fail it.
TEST(OnlineReviewGpu, ConcurrentLaunchesOfDifferentLargeTilesAllSucceed) {
  REQUIRE_GPU();
  int device = 0, optin = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
            cudaSuccess);
  if (geo::online_smem_bytes(800) > static_cast<std::size_t>(optin)) {
    GTEST_SKIP() << "dp = 800 needs more shared memory than this device allows";
  }
  const Batch small_dp = make_batch(1, 128, 64, 200, false, 61u);
  const Batch large_dp = make_batch(1, 128, 64, 800, false, 62u);
  const DeviceBatch d_small(small_dp), d_large(large_dp);
  Guarded<float> out_small(std::vector<float>(128, 0.f), -777.f),
      out_large(std::vector<float>(128, 0.f), -777.f);
  std::atomic<int> failures{0};
  auto worker = [&failures](const Batch* t, const DeviceBatch* d, float* out) {
    cudaStream_t s = nullptr;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
      ++failures;
      return;
    }
    try {
      for (int k = 0; k < 400; ++k) otgpu::kernels::online_half_step(d->pass(*t), nullptr, out, s);
    } catch (const std::exception&) {
      ++failures;
    }
    if (cudaStreamSynchronize(s) != cudaSuccess) ++failures;
    cudaStreamDestroy(s);
  };
  std::thread a(worker, &small_dp, &d_small, out_small.get());
  std::thread b(worker, &large_dp, &d_large, out_large.get());
  a.join();
  b.join();
  EXPECT_EQ(failures.load(), 0);
  sync_ok();
  // And the results are the potentials.
  const std::vector<float> f = out_large.download();
  for (int64_t i = 0; i < 128; i += 17) {
    EXPECT_NEAR(f[static_cast<std::size_t>(i)],
                ref_potential(ref_lse(large_dp, 0, i), 1.0, large_dp.eps[0]),
                1e-5 * large_dp.mean_cost + 1e-3 * large_dp.eps[0])
        << i;
  }
}

// ---- argument checks (no device needed) ---------------------------------------------------

TEST(OnlineReviewArgs, HalfStepRejectsLaunchesOutsideItsLimits) {
  alignas(16) static float buf[64] = {};
  Batch t;
  t.B = 1;
  t.n_rows = 4;
  t.n_cols = 4;
  t.dp = 2;
  auto base = [&] { return pass_of(t, buf, buf, buf, buf, buf); };
  float out[4];
  auto expect_rejected = [&](otgpu::kernels::OnlinePass p, const char* what) {
    EXPECT_THROW(otgpu::kernels::online_half_step(p, nullptr, out, nullptr), otgpu::InvalidArgument)
        << what;
  };
  otgpu::kernels::OnlinePass p = base();
  p.B = geo::kMaxBatchPerLaunch + 1;  // gridDim.y
  expect_rejected(p, "B above 65535");
  p = base();
  p.splits = 0;
  expect_rejected(p, "splits = 0");
  p = base();
  p.splits = geo::kOnlineMaxSplits + 1;
  p.partials = buf;
  expect_rejected(p, "splits above the maximum");
  p = base();
  p.splits = 2;
  expect_rejected(p, "splits without partials");
  p = base();
  p.dp = 12;
  expect_rejected(p, "dp = 12 (not a power of two up to 64)");
  p = base();
  p.dp = 66;
  expect_rejected(p, "dp = 66 (not a multiple of 4 above 64)");
  p = base();
  p.dp = 4;
  p.rows = buf + 1;  // float4 loads need 16 bytes
  expect_rejected(p, "misaligned rows");
  p = base();
  p.n_cols = 0;
  expect_rejected(p, "no columns");
  p = base();
  EXPECT_THROW(otgpu::kernels::online_weighted_mean(p, 2, out, nullptr), otgpu::InvalidArgument);
  EXPECT_THROW(otgpu::kernels::online_weighted_mean(p, 1, out, nullptr), otgpu::InvalidArgument)
      << "mode 1 needs the Euclidean cost";
}

// ---- dense column split with a whole row range masked -----------------------------------

// 4099 rows x 64 columns: the column half-step cuts the rows into ranges of 32 and merges
// their partials. Rows [32, 96) (two whole ranges) have zero weight, so two partials are
// the empty state; problem 1 has no row mass at all (+inf) and no column mass (F = +inf).
TEST(DenseReviewGpu, ColumnSplitWithMaskedRangesAndMasslessProblems) {
  REQUIRE_GPU();
  const int64_t B = 2, n = 4099, m = 64;
  const geo::DenseColSplit split = geo::dense_col_split(B, n, m);
  ASSERT_GT(split.nsplit, 3);
  ASSERT_EQ(split.rows_per_split, 32);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.f, 2.f), h(-0.5f, 0.5f);
  std::vector<float> C(static_cast<std::size_t>(B * n * m)), F(static_cast<std::size_t>(B * n)),
      G(static_cast<std::size_t>(B * m));
  for (float& c : C) c = u(rng);
  for (float& v : F) v = h(rng);
  for (float& v : G) v = h(rng);
  std::vector<float> logA(F.size(), std::log(1.f / static_cast<float>(n))),
      logB(G.size(), std::log(1.f / static_cast<float>(m)));
  for (int64_t i = 32; i < 96; ++i) logA[static_cast<std::size_t>(i)] = -kFInf;
  for (int64_t i = 0; i < n; ++i) logA[static_cast<std::size_t>(n + i)] = -kFInf;
  for (int64_t j = 0; j < m; ++j) logB[static_cast<std::size_t>(m + j)] = -kFInf;
  const std::vector<float> eps = {0.05f, 0.1f};
  Guarded<float> dC(C, 0.f), dF(F, 0.f), dG(G, 0.f), dLA(logA, 0.f), dLB(logB, 0.f), dEps(eps, 0.f);
  const std::size_t ws = otgpu::kernels::dense_col_workspace_bytes(B, n, m);
  Guarded<float> dWs(std::vector<float>(ws / sizeof(float), 0.f), -777.f);
  Guarded<float> outG(std::vector<float>(G.size(), kUntouched), -777.f);
  Guarded<float> outF(std::vector<float>(F.size(), kUntouched), -777.f);
  otgpu::kernels::dense_col_update(dC.get(), dLA.get(), dF.get(), dEps.get(), nullptr, nullptr,
                                   outG.get(), dWs.get(), ws, B, n, m, nullptr);
  otgpu::kernels::dense_row_update(dC.get(), dLB.get(), dG.get(), dEps.get(), nullptr, nullptr,
                                   outF.get(), B, n, m, nullptr);
  sync_ok();
  EXPECT_TRUE(dWs.guards_intact());
  EXPECT_TRUE(outG.guards_intact());
  EXPECT_TRUE(outF.guards_intact());
  const std::vector<float> g = outG.download(), f = outF.download();
  for (int64_t j = 0; j < m; ++j) {
    double mx = -kInf;
    std::vector<double> s(static_cast<std::size_t>(n), -kInf);
    for (int64_t i = 0; i < n; ++i) {
      if (logA[static_cast<std::size_t>(i)] == -kFInf) continue;
      s[static_cast<std::size_t>(i)] =
          logA[static_cast<std::size_t>(i)] +
          (F[static_cast<std::size_t>(i)] - double{C[static_cast<std::size_t>(i * m + j)]}) /
              eps[0];
      mx = std::max(mx, s[static_cast<std::size_t>(i)]);
    }
    double sum = 0;
    for (double v : s) sum += std::exp(v - mx);
    const double want = -eps[0] * (mx + std::log(sum));
    EXPECT_NEAR(g[static_cast<std::size_t>(j)], want, 2e-5 + 2e-5 * std::abs(want)) << j;
    EXPECT_EQ(g[static_cast<std::size_t>(m + j)], kFInf) << "problem 1 column " << j;
  }
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(f[static_cast<std::size_t>(n + i)], kFInf) << i;
}

// ---- small kernel: Euclidean cost recomputed from coincident points ----------------------

// n = m = 300 at d = 16 does not fit the cached n x m matrix, so the cost is recomputed
// from the points. With x = y the diagonal costs are 0; the norm form's root made them
// ~sqrt(u)|x| ~ 1e-3 here, which moves the potentials at eps = 0.02 x the mean cost far
// beyond the fp32 error of three iterations.
TEST(SmallReviewGpu, EuclideanRecomputeKeepsCoincidentPointsAtZeroCost) {
  REQUIRE_GPU();
  const int64_t n = 300, d = 16;
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_TRUE(otgpu::kernels::small_kernel_fits(CostKind::euclidean, n, n, d, device));
  ASSERT_GT(geo::small_layout(n, n, 0, true).bytes(),
            otgpu::kernels::small_kernel_smem_bytes(CostKind::euclidean, n, n, d, device))
      << "the recomputing variant must run";
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> X(static_cast<std::size_t>(n * d));
  for (float& v : X) v = u(rng);
  double mean = 0;
  std::vector<double> C(static_cast<std::size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      C[static_cast<std::size_t>(i * n + j)] =
          cost64(&X[static_cast<std::size_t>(i * d)], &X[static_cast<std::size_t>(j * d)],
                 static_cast<int>(d), true);
      mean += C[static_cast<std::size_t>(i * n + j)];
    }
  mean /= static_cast<double>(n * n);
  const double eps = 0.02 * mean;
  const std::vector<float> logw(static_cast<std::size_t>(n), std::log(1.f / static_cast<float>(n)));
  Guarded<float> dX(X, 0.f), dY(X, 0.f), dLA(logw, 0.f), dLB(logw, 0.f),
      dF(std::vector<float>(static_cast<std::size_t>(n), 0.f), -777.f),
      dG(std::vector<float>(static_cast<std::size_t>(n), 0.f), -777.f),
      dEps(std::vector<float>{static_cast<float>(eps)}, 0.f);
  otgpu::kernels::SmallSinkhornArgs a;
  a.cost = CostKind::euclidean;
  a.X = dX.get();
  a.Y = dY.get();
  a.logA = dLA.get();
  a.logB = dLB.get();
  a.F = dF.get();
  a.G = dG.get();
  a.eps = dEps.get();
  a.max_iter = 3;
  a.check_every = 0;
  a.t_begin = 0;
  a.t_end = 3;
  a.B = 1;
  a.n = n;
  a.m = n;
  a.d = d;
  otgpu::kernels::small_sinkhorn(a, nullptr);
  sync_ok();
  EXPECT_TRUE(dF.guards_intact());
  EXPECT_TRUE(dG.guards_intact());
  // The same three iterations in fp64.
  std::vector<double> F(static_cast<std::size_t>(n), 0.0), G(F);
  auto half = [&](const std::vector<double>& pot, std::vector<double>& out) {
    for (int64_t i = 0; i < n; ++i) {
      double mx = -kInf;
      std::vector<double> s(static_cast<std::size_t>(n));
      for (int64_t j = 0; j < n; ++j) {
        s[static_cast<std::size_t>(j)] =
            logw[0] +
            (pot[static_cast<std::size_t>(j)] - C[static_cast<std::size_t>(i * n + j)]) / eps;
        mx = std::max(mx, s[static_cast<std::size_t>(j)]);
      }
      double sum = 0;
      for (double v : s) sum += std::exp(v - mx);
      out[static_cast<std::size_t>(i)] = -eps * (mx + std::log(sum));
    }
  };
  for (int t = 0; t < 3; ++t) {
    half(G, F);
    half(F, G);  // C is symmetric
  }
  const std::vector<float> f = dF.download(), g = dG.download();
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(f[static_cast<std::size_t>(i)], F[static_cast<std::size_t>(i)], 2e-5 * mean) << i;
    EXPECT_NEAR(g[static_cast<std::size_t>(i)], G[static_cast<std::size_t>(i)], 2e-5 * mean) << i;
  }
}

}  // namespace

#else

TEST(OnlineReviewGpu, RequiresCudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif
