// The accelerated synchronous CUDA loop (eps continuation for eps_init = kAuto,
// adaptive over-relaxation) against the CPU reference running the same rules in fp64:
// the same fixed point (potentials up to the gauge f + c, g - c and the fp32 floor),
// far fewer iterations than plain Sinkhorn at small eps, and the fp32 eps range check.
#include <gtest/gtest.h>

#ifdef OTGPU_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/detail/accel.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_host/planner.h"

namespace {

using otgpu::Backend;
using otgpu::CostKind;
using otgpu::SinkhornAcceleration;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;
using otgpu::TensorView;

/// The TTS bench problem (bench/solution_workloads.cpp): n = m = 100, d = 2,
/// X ~ U[0,1)^2, Y ~ U[0,1)^2 + 0.1 from mt19937_64(7).
struct Tts {
  std::vector<double> x, y;
  SinkhornProblem p;
  Tts() : x(200), y(200) {
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (double& v : x) v = u(rng);
    for (double& v : y) v = u(rng) + 0.1;
    p.x = TensorView::host(x.data(), {100, 2});
    p.y = TensorView::host(y.data(), {100, 2});
  }
};

/// Largest |(f_gpu - f_cpu) - c| over both potentials, c = mean(f_gpu - f_cpu) per
/// problem (balanced potentials are defined up to f + c, g - c).
double gauge_distance(const SinkhornResult& gpu, const SinkhornResult& cpu) {
  double worst = 0;
  for (std::int64_t b = 0; b < cpu.batch; ++b) {
    double c = 0;
    for (std::int64_t i = 0; i < cpu.n; ++i) {
      const auto k = static_cast<std::size_t>(b * cpu.n + i);
      c += gpu.f[k] - cpu.f[k];
    }
    c /= static_cast<double>(cpu.n);
    for (std::int64_t i = 0; i < cpu.n; ++i) {
      const auto k = static_cast<std::size_t>(b * cpu.n + i);
      worst = std::max(worst, std::abs(gpu.f[k] - cpu.f[k] - c));
    }
    for (std::int64_t j = 0; j < cpu.m; ++j) {
      const auto k = static_cast<std::size_t>(b * cpu.m + j);
      worst = std::max(worst, std::abs(gpu.g[k] - cpu.g[k] + c));
    }
  }
  return worst;
}

/// The target, on the GPU: at eps = 1e-3 x mean cost the defaults (continuation
/// + over-relaxation) converge to the fp32 tol 1e-4 where plain Sinkhorn with ten
/// times as many iterations does not (on the CPU, to 1e-6: 43,390 vs 750,170).
TEST(SinkhornAccelGpu, DefaultsAtSmallEpsBeatPlainTenfoldAndMatchTheCpu) {
  REQUIRE_GPU();
  const Tts t;
  SinkhornOptions o;
  o.eps = 1e-3;
  o.eps_relative = true;
  o.backend = Backend::cuda;
  const SinkhornResult gpu = otgpu::sinkhorn(t.p, o);
  EXPECT_EQ(otgpu::planner::last_loop_strategy(), "accelerated: eps continuation");
  const auto& rep = gpu.problems.at(0);
  ASSERT_TRUE(rep.converged) << "residual " << rep.residual << " after " << rep.iterations;
  EXPECT_EQ(rep.acceleration, SinkhornAcceleration::overrelax);
  EXPECT_GT(rep.omega, 1.0);

  SinkhornOptions plain = o;
  plain.acceleration = SinkhornAcceleration::none;
  plain.eps_init = 0;
  plain.max_iter = 10 * rep.iterations;
  const SinkhornResult slow = otgpu::sinkhorn(t.p, plain);
  EXPECT_FALSE(slow.problems[0].converged)
      << "plain converged in " << slow.problems[0].iterations << " vs " << rep.iterations;

  SinkhornOptions ref = o;
  ref.backend = Backend::cpu;
  const SinkhornResult cpu = otgpu::sinkhorn(t.p, ref);
  ASSERT_TRUE(cpu.problems[0].converged);
  // A marginal error of 1e-4 leaves the potentials within a few eps of the fixed point
  // at this eps (the slow mode has rate near 1); the value agrees much closer.
  EXPECT_LE(gauge_distance(gpu, cpu), 20.0 * rep.eps);
  EXPECT_NEAR(rep.ot_eps, cpu.problems[0].ot_eps, 1e-3 * std::abs(cpu.problems[0].ot_eps));
}

/// Over-relaxation alone (no scaling), a batch on the online path and on the dense
/// path: converged to the CPU's fixed point, fewer iterations than the GPU's plain loop,
/// and w from the same rule (the CPU's w from fp64 residuals, close to the GPU's).
TEST(SinkhornAccelGpu, OverrelaxationMatchesTheCpuRule) {
  REQUIRE_GPU();
  for (const CostKind cost : {CostKind::sqeuclidean, CostKind::matrix}) {
    SCOPED_TRACE(std::string(otgpu::to_string(cost)));
    const std::int64_t B = 2, n = 700, m = 600, d = 2;
    auto x = otgpu_test::uniform(static_cast<std::size_t>(B * n * d), 5);
    auto y = otgpu_test::uniform(static_cast<std::size_t>(B * m * d), 6, 0.1, 1.1);
    std::vector<double> c;
    SinkhornProblem p;
    p.cost_kind = cost;
    if (cost == CostKind::matrix) {
      c.resize(static_cast<std::size_t>(B * n * m));
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t j = 0; j < m; ++j) {
            double s = 0;
            for (std::int64_t k = 0; k < d; ++k) {
              const double t = x[static_cast<std::size_t>((b * n + i) * d + k)] -
                               y[static_cast<std::size_t>((b * m + j) * d + k)];
              s += t * t;
            }
            c[static_cast<std::size_t>((b * n + i) * m + j)] = s;
          }
      p.cost = TensorView::host(c.data(), {B, n, m});
    } else {
      p.x = TensorView::host(x.data(), {B, n, d});
      p.y = TensorView::host(y.data(), {B, m, d});
    }
    SinkhornOptions o;
    o.eps = 5e-3;
    o.eps_relative = true;
    o.eps_init = 0;  // over-relaxation alone
    o.tol = 1e-4;
    o.backend = Backend::cuda;
    const SinkhornResult gpu = otgpu::sinkhorn(p, o);
    EXPECT_EQ(otgpu::planner::last_loop_strategy(), "accelerated: over-relaxation");
    SinkhornOptions plain = o;
    plain.acceleration = SinkhornAcceleration::none;
    const SinkhornResult slow = otgpu::sinkhorn(p, plain);
    SinkhornOptions ref = o;
    ref.backend = Backend::cpu;
    const SinkhornResult cpu = otgpu::sinkhorn(p, ref);
    for (std::size_t b = 0; b < 2; ++b) {
      const auto& g = gpu.problems[b];
      ASSERT_TRUE(g.converged) << "problem " << b << " residual " << g.residual;
      EXPECT_EQ(g.acceleration, SinkhornAcceleration::overrelax) << "problem " << b;
      EXPECT_LE(g.omega, otgpu::detail::kOverrelaxMaxOmega);
      EXPECT_NEAR(g.omega, cpu.problems[b].omega, 0.1) << "problem " << b;
      EXPECT_LT(2 * g.iterations, slow.problems[b].iterations) << "problem " << b;
      EXPECT_NEAR(g.ot_eps, cpu.problems[b].ot_eps, 1e-3 * std::abs(cpu.problems[b].ot_eps));
    }
    EXPECT_LE(gauge_distance(gpu, cpu), 20.0 * gpu.problems[0].eps);
  }
}

/// Problems of one batch at different levels at once: scaled very differently (x1 and
/// x1000), each starts from its own 1024 eps capped by its own spread, and each ends at
/// its own eps with the CPU's value; a tiny cap stops at a level, never "converged".
TEST(SinkhornAccelGpu, ContinuationPerProblemInABatch) {
  REQUIRE_GPU();
  const std::int64_t B = 2, n = 300, m = 280, d = 2;
  auto x = otgpu_test::uniform(static_cast<std::size_t>(B * n * d), 15);
  auto y = otgpu_test::uniform(static_cast<std::size_t>(B * m * d), 16, 0.1, 1.1);
  for (std::size_t k = static_cast<std::size_t>(n * d); k < x.size(); ++k) x[k] *= 31.6;
  for (std::size_t k = static_cast<std::size_t>(m * d); k < y.size(); ++k) y[k] *= 31.6;
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {B, n, d});
  p.y = TensorView::host(y.data(), {B, m, d});
  SinkhornOptions o;
  o.eps = 2e-3;
  o.eps_relative = true;
  o.backend = Backend::cuda;
  const SinkhornResult gpu = otgpu::sinkhorn(p, o);
  SinkhornOptions ref = o;
  ref.backend = Backend::cpu;
  const SinkhornResult cpu = otgpu::sinkhorn(p, ref);
  for (std::size_t b = 0; b < 2; ++b) {
    ASSERT_TRUE(gpu.problems[b].converged) << "problem " << b;
    EXPECT_NEAR(gpu.problems[b].eps, cpu.problems[b].eps, 1e-5 * cpu.problems[b].eps);
    EXPECT_NEAR(gpu.problems[b].ot_eps, cpu.problems[b].ot_eps,
                1e-3 * std::abs(cpu.problems[b].ot_eps));
  }
  SinkhornOptions capped = o;
  capped.max_iter = 20;  // inside the first levels
  for (const auto& rep : otgpu::sinkhorn(p, capped).problems) {
    EXPECT_FALSE(rep.converged);
    EXPECT_EQ(rep.iterations, 20);
  }
}

/// The progress callback keeps its contract on the accelerated loop: checks in order,
/// iterations increasing, and a false return cancels.
TEST(SinkhornAccelGpu, ProgressAndCancelOnTheAcceleratedLoop) {
  REQUIRE_GPU();
  const Tts t;
  SinkhornOptions o;
  o.eps = 1e-3;
  o.eps_relative = true;
  o.backend = Backend::cuda;
  std::vector<int> seen;
  o.progress = [&seen](const otgpu::SinkhornProgress& pr) {
    seen.push_back(pr.iteration);
    return seen.size() < 5;
  };
  const SinkhornResult r = otgpu::sinkhorn(t.p, o);
  EXPECT_TRUE(r.cancelled);
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_FALSE(r.problems[0].converged);
}

/// eps below what fp32 resolves (3.6e-6 x max|C|) is one clear error naming the range
/// on the default path; the CPU (fp64) accepts the same eps.
TEST(SinkhornAccelGpu, EpsBelowFp32ResolutionIsRejected) {
  REQUIRE_GPU();
  const Tts t;
  SinkhornOptions o;
  o.eps = 1e-6;
  o.eps_relative = true;
  o.backend = Backend::cuda;
  o.max_iter = 10;
  try {
    (void)otgpu::sinkhorn(t.p, o);
    ADD_FAILURE() << "no error for eps = 1e-6 x mean cost on fp32";
  } catch (const otgpu::InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("float32"), std::string::npos) << what;
    EXPECT_NE(what.find("working range"), std::string::npos) << what;
  }
  o.backend = Backend::cpu;
  EXPECT_NO_THROW((void)otgpu::sinkhorn(t.p, o));
}

}  // namespace

#else

TEST(SinkhornAccelGpu, RequiresCudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif
