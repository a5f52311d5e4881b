// The device-side iteration loop of the CUDA Sinkhorn backend: check periods replayed
// from one captured CUDA graph (synchronous API), a conditional WHILE node that stops
// the loop on the device (sinkhorn_async), and the check's f-update reused as the next
// F. Each path is compared with the plain launches (OTGPU_LOOP=plain: the same kernels
// launched one by one, so potentials must agree bit for bit and iteration counts
// exactly) and with the fp64 CPU reference (the iteration schedule, at fp32 tolerance).
// Inputs are device views: the carved device pipeline is the one with loop state.
#include <gtest/gtest.h>

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/otgpu.h"
#include "otgpu_host/planner.h"

namespace {

using otgpu::Backend;
using otgpu::CostKind;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;
using otgpu::TensorView;

/// OTGPU_LOOP=plain for the scope.
struct PlainLoop {
  PlainLoop() { setenv("OTGPU_LOOP", "plain", 1); }
  ~PlainLoop() { unsetenv("OTGPU_LOOP"); }
  PlainLoop(const PlainLoop&) = delete;
  PlainLoop& operator=(const PlainLoop&) = delete;
};

using otgpu_test::DeviceBuffer;
using otgpu_test::uniform;

/// One problem set, on the host (for the CPU reference) and on the device.
struct Problem {
  std::int64_t B, n, m, d;
  CostKind cost;
  std::vector<double> x, y, c, a, b;
  DeviceBuffer<double> dx, dy, dc, da, db;
  SinkhornProblem host, device;

  Problem(std::int64_t B_, std::int64_t n_, std::int64_t m_, std::int64_t d_, CostKind cost_,
          std::uint32_t seed)
      : B(B_),
        n(n_),
        m(m_),
        d(d_),
        cost(cost_),
        x(uniform(static_cast<std::size_t>(B * n * std::max<std::int64_t>(d, 1)), seed, 0, 1)),
        y(uniform(static_cast<std::size_t>(B * m * std::max<std::int64_t>(d, 1)), seed + 1, 0.1,
                  1.1)),
        c(cost == CostKind::matrix ? uniform(static_cast<std::size_t>(B * n * m), seed + 2, 0, 2)
                                   : std::vector<double>{}),
        a(uniform(static_cast<std::size_t>(B * n), seed + 3, 0.2, 1.0)),
        b(uniform(static_cast<std::size_t>(B * m), seed + 4, 0.2, 1.0)),
        dx(x),
        dy(y),
        dc(c),
        da(a),
        db(b) {
    normalize(a, n);
    normalize(b, m);
    da.upload(a);
    db.upload(b);
    host.cost_kind = device.cost_kind = cost;
    if (cost == CostKind::matrix) {
      host.cost = TensorView::host(c.data(), {B, n, m});
      device.cost = TensorView::device(dc.data(), {B, n, m});
    } else {
      host.x = TensorView::host(x.data(), {B, n, d});
      host.y = TensorView::host(y.data(), {B, m, d});
      device.x = TensorView::device(dx.data(), {B, n, d});
      device.y = TensorView::device(dy.data(), {B, m, d});
    }
    host.a = TensorView::host(a.data(), {B, n});
    host.b = TensorView::host(b.data(), {B, m});
    device.a = TensorView::device(da.data(), {B, n});
    device.b = TensorView::device(db.data(), {B, m});
  }

  void normalize(std::vector<double>& w, std::int64_t len) const {
    for (std::int64_t k = 0; k < B; ++k) {
      double s = 0;
      for (std::int64_t i = 0; i < len; ++i) s += w[static_cast<std::size_t>(k * len + i)];
      for (std::int64_t i = 0; i < len; ++i) w[static_cast<std::size_t>(k * len + i)] /= s;
    }
  }
};

SinkhornOptions options(double rho = std::numeric_limits<double>::infinity()) {
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.eps_init = 0.8;  // scaling: K = 4 iterations before the target
  o.eps_decay = 0.5;
  o.tol = 1e-3;
  o.check_every = 10;
  o.max_iter = 20000;
  o.rho_a = o.rho_b = rho;
  o.backend = Backend::cuda;
  o.acceleration = otgpu::SinkhornAcceleration::none;  // the CPU reference runs plain updates
  return o;
}

/// Potentials of the fp32 GPU against the fp64 CPU: fp32 round-off of scores of size
/// C/eps, amplified mildly by the iterations.
void expect_close(const std::vector<double>& gpu, const std::vector<double>& cpu, double scale,
                  const char* what) {
  ASSERT_EQ(gpu.size(), cpu.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t k = 0; k < gpu.size(); ++k) {
    const double err = std::abs(gpu[k] - cpu[k]) / (2e-4 * scale + 2e-5 * std::abs(cpu[k]));
    if (err > worst) {
      worst = err;
      at = k;
    }
  }
  EXPECT_LE(worst, 1.0) << what << "[" << at << "]: gpu " << gpu[at] << " cpu " << cpu[at];
}

void expect_identical(const SinkhornResult& x, const SinkhornResult& y, const std::string& what) {
  ASSERT_EQ(x.f.size(), y.f.size());
  ASSERT_EQ(x.g.size(), y.g.size());
  for (std::size_t k = 0; k < x.f.size(); ++k)
    ASSERT_EQ(x.f[k], y.f[k]) << what << " f[" << k << "]";
  for (std::size_t k = 0; k < x.g.size(); ++k)
    ASSERT_EQ(x.g[k], y.g[k]) << what << " g[" << k << "]";
  for (std::size_t b = 0; b < x.problems.size(); ++b) {
    EXPECT_EQ(x.problems[b].iterations, y.problems[b].iterations) << what << " problem " << b;
    EXPECT_EQ(x.problems[b].converged, y.problems[b].converged) << what << " problem " << b;
    EXPECT_EQ(x.problems[b].residual, y.problems[b].residual) << what << " problem " << b;
  }
}

struct Shape {
  const char* name;
  std::int64_t B, n, m, d;
  CostKind cost;
  double rho;
};

const Shape kShapes[] = {
    {"online", 3, 1000, 900, 3, CostKind::sqeuclidean, std::numeric_limits<double>::infinity()},
    {"online_split_columns", 1, 200, 20000, 2, CostKind::sqeuclidean,
     std::numeric_limits<double>::infinity()},
    {"online_unbalanced", 2, 700, 600, 2, CostKind::sqeuclidean, 1.0},
    {"dense", 2, 600, 520, 0, CostKind::matrix, std::numeric_limits<double>::infinity()},
};

TEST(DeviceLoop, GraphAndPlainLaunchesGiveIdenticalResults) {
  REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(s.name);
    Problem p(s.B, s.n, s.m, s.d, s.cost, 11);
    const SinkhornOptions o = options(s.rho);
    const SinkhornResult graph = otgpu::sinkhorn(p.device, o);
    EXPECT_EQ(otgpu::planner::last_loop_strategy(), "graph");
    SinkhornResult plain;
    {
      PlainLoop force;
      plain = otgpu::sinkhorn(p.device, o);
      EXPECT_EQ(otgpu::planner::last_loop_strategy(), "plain: OTGPU_LOOP=plain");
    }
    expect_identical(graph, plain, s.name);
    for (const auto& r : graph.problems) EXPECT_TRUE(r.converged) << s.name;
  }
}

TEST(DeviceLoop, ReusedCheckMatchesTheCpuIterationForIteration) {
  // tol = 0 never converges: every check runs and its f-update is reused, for
  // max_iter = 97 iterations (K = 4; the first check after iteration 9, 8 whole
  // periods, then a tail of 7). The CPU reference runs the same schedule in fp64.
  REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(s.name);
    Problem p(s.B, s.n, s.m, s.d, s.cost, 23);
    SinkhornOptions o = options(s.rho);
    o.tol = 0;
    o.max_iter = 97;
    const SinkhornResult gpu = otgpu::sinkhorn(p.device, o);
    EXPECT_EQ(otgpu::planner::last_loop_strategy(), "graph");
    o.backend = Backend::cpu;  // an explicit eps_init: the same geometric table on the CPU
    const SinkhornResult cpu = otgpu::sinkhorn(p.host, o);
    double scale = 0;
    for (const auto& r : cpu.problems) scale = std::max(scale, r.eps / o.eps);
    expect_close(gpu.f, cpu.f, scale, "f");
    expect_close(gpu.g, cpu.g, scale, "g");
    for (std::size_t b = 0; b < cpu.problems.size(); ++b) {
      EXPECT_EQ(gpu.problems[b].iterations, 97) << "problem " << b;
      EXPECT_EQ(cpu.problems[b].iterations, 97) << "problem " << b;
      EXPECT_FALSE(gpu.problems[b].converged) << "problem " << b;
    }
  }
}

/// sinkhorn_async on p.device into device outputs; returns f, g and iterations.
struct AsyncOut {
  std::vector<float> f, g;
  std::vector<int> iterations;
  std::vector<double> residual;
};

AsyncOut run_async(otgpu::GpuContext& ctx, const Problem& p, const SinkhornOptions& o) {
  DeviceBuffer<float> f(static_cast<std::size_t>(p.B * p.n)),
      g(static_cast<std::size_t>(p.B * p.m));
  DeviceBuffer<int> it(static_cast<std::size_t>(p.B));
  DeviceBuffer<double> res(static_cast<std::size_t>(p.B));
  otgpu::DeviceSinkhornOutputs out;
  out.f = f.data();
  out.g = g.data();
  out.iterations = it.data();
  out.residual = res.data();
  otgpu::sinkhorn_async(ctx, p.device, o, out);
  ctx.synchronize();
  return {f.to_host(), g.to_host(), it.to_host(), res.to_host()};
}

TEST(DeviceLoop, AsyncConditionalLoopStopsWhereTheSyncLoopStops) {
  REQUIRE_GPU();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(s.name);
    Problem p(s.B, s.n, s.m, s.d, s.cost, 31);
    SinkhornOptions o = options(s.rho);
    o.max_iter = 100000;
    const SinkhornResult sync = otgpu::sinkhorn(p.device, o);
    otgpu::GpuContext ctx(0, nullptr);
    const AsyncOut a = run_async(ctx, p, o);
    const std::string strategy = otgpu::planner::last_loop_strategy();
    EXPECT_TRUE(strategy == "conditional-while" ||
                strategy == "plain: no conditional graph nodes in this driver")
        << strategy;
    for (std::size_t b = 0; b < sync.problems.size(); ++b) {
      EXPECT_TRUE(sync.problems[b].converged);
      EXPECT_EQ(a.iterations[b], sync.problems[b].iterations) << "problem " << b;
      EXPECT_EQ(a.residual[b], sync.problems[b].residual) << "problem " << b;
    }
    for (std::size_t k = 0; k < a.f.size(); ++k)
      ASSERT_EQ(static_cast<double>(a.f[k]), sync.f[k]) << "f[" << k << "]";
    for (std::size_t k = 0; k < a.g.size(); ++k)
      ASSERT_EQ(static_cast<double>(a.g[k]), sync.g[k]) << "g[" << k << "]";
    // A second call of the same shape replays the cached graph: same answer.
    const AsyncOut again = run_async(ctx, p, o);
    EXPECT_EQ(again.iterations, a.iterations);
    EXPECT_EQ(again.f, a.f);
  }
}

TEST(DeviceLoop, MaxIterReachedIsReported) {
  REQUIRE_GPU();
  Problem p(2, 800, 700, 2, CostKind::sqeuclidean, 41);
  SinkhornOptions o = options();
  o.tol = 1e-12;  // out of fp32 reach
  o.max_iter = 57;
  const SinkhornResult sync = otgpu::sinkhorn(p.device, o);
  otgpu::GpuContext ctx(0, nullptr);
  const AsyncOut a = run_async(ctx, p, o);
  SinkhornResult plain;
  {
    PlainLoop force;
    plain = otgpu::sinkhorn(p.device, o);
  }
  expect_identical(sync, plain, "sync vs plain");
  for (std::size_t b = 0; b < 2; ++b) {
    EXPECT_FALSE(sync.problems[b].converged);
    EXPECT_EQ(sync.problems[b].iterations, 57);
    EXPECT_EQ(a.iterations[b], 57);
    EXPECT_GT(sync.problems[b].residual, o.tol);
  }
  for (std::size_t k = 0; k < a.f.size(); ++k)
    ASSERT_EQ(static_cast<double>(a.f[k]), sync.f[k]) << "f[" << k << "]";
}

/// The progress callback of the synchronous loop: one call per check, read one
/// period late, with the batch's largest residual at that check.
TEST(DeviceLoop, ProgressReportsEachCheckOnePeriodLate) {
  REQUIRE_GPU();
  Problem p(2, 1000, 900, 3, CostKind::sqeuclidean, 61);
  SinkhornOptions o = options();
  o.eps_init = 0;  // checks after iterations 10, 20, ..., 100
  o.tol = 1e-12;   // out of fp32 reach: nothing retires
  o.max_iter = 100;
  std::vector<otgpu::SinkhornProgress> seen;
  o.progress = [&seen](const otgpu::SinkhornProgress& pr) {
    seen.push_back(pr);
    return true;
  };
  const SinkhornResult r = otgpu::sinkhorn(p.device, o);
  EXPECT_EQ(otgpu::planner::last_loop_strategy(), "graph");
  EXPECT_FALSE(r.cancelled);
  // Ten checks; the read of check k happens after check k+1 is queued, so the last
  // check (iteration 100) is never reported.
  ASSERT_EQ(seen.size(), 9u);
  const double eps = std::max(r.problems[0].eps, r.problems[1].eps);
  for (std::size_t k = 0; k < seen.size(); ++k) {
    EXPECT_EQ(seen[k].problem, -1);
    EXPECT_EQ(seen[k].iteration, static_cast<int>(10 * (k + 1)));
    EXPECT_DOUBLE_EQ(seen[k].eps, eps);
    EXPECT_EQ(seen[k].active, 2);
    EXPECT_TRUE(std::isfinite(seen[k].residual) && seen[k].residual > 0) << seen[k].residual;
    if (k > 0) {
      EXPECT_GE(seen[k].elapsed_s, seen[k - 1].elapsed_s);
    }
  }
  EXPECT_GE(seen[0].elapsed_s, 0.0);
  // The residual of check k is the final residual of a solve stopped there (the same
  // quantity, measured by the report kernel instead of the check kernel).
  for (const int at : {10, 50}) {
    SinkhornOptions stop = o;
    stop.progress = nullptr;
    stop.max_iter = at;
    stop.check_every = 0;
    const SinkhornResult s = otgpu::sinkhorn(p.device, stop);
    const double want = std::max(s.problems[0].residual, s.problems[1].residual);
    const double got = seen[static_cast<std::size_t>(at / 10 - 1)].residual;
    EXPECT_NEAR(got, want, 1e-3 * want + 1e-7) << "check after iteration " << at;
  }
}

TEST(DeviceLoop, ProgressReturningFalseCancelsAfterTheQueuedPeriod) {
  REQUIRE_GPU();
  Problem p(2, 1000, 900, 3, CostKind::sqeuclidean, 67);
  SinkhornOptions o = options();
  o.eps_init = 0;
  o.tol = 1e-12;
  o.max_iter = 100;
  int calls = 0;
  o.progress = [&calls](const otgpu::SinkhornProgress&) {
    ++calls;
    return false;
  };
  const SinkhornResult r = otgpu::sinkhorn(p.device, o);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(r.cancelled);
  // The first read (check 10) comes once check 20 is queued: 20 iterations ran, the
  // same ones as an uncancelled 20-iteration solve, bit for bit.
  SinkhornOptions twenty = o;
  twenty.progress = nullptr;
  twenty.max_iter = 20;
  const SinkhornResult ref = otgpu::sinkhorn(p.device, twenty);
  EXPECT_FALSE(ref.cancelled);
  for (std::size_t b = 0; b < r.problems.size(); ++b) {
    EXPECT_FALSE(r.problems[b].converged) << "problem " << b;
    EXPECT_EQ(r.problems[b].iterations, 20) << "problem " << b;
  }
  ASSERT_EQ(r.f.size(), ref.f.size());
  for (std::size_t k = 0; k < r.f.size(); ++k) ASSERT_EQ(r.f[k], ref.f[k]) << "f[" << k << "]";
  // A callback that keeps returning true changes nothing: the problems converge
  // (tol 1e-3, well before iteration 5000) and the solve is not cancelled.
  SinkhornOptions late = options();
  late.eps_init = 0;
  late.progress = [](const otgpu::SinkhornProgress& pr) { return pr.iteration < 5000; };
  const SinkhornResult done = otgpu::sinkhorn(p.device, late);
  EXPECT_FALSE(done.cancelled);
  for (const auto& rep : done.problems) EXPECT_TRUE(rep.converged);
}

/// The small kernel runs the whole loop on the device: no host reads, no callback.
TEST(DeviceLoop, SmallKernelNeverCallsProgress) {
  REQUIRE_GPU();
  Problem p(2, 60, 50, 2, CostKind::sqeuclidean, 71);
  SinkhornOptions o = options();
  int calls = 0;
  o.progress = [&calls](const otgpu::SinkhornProgress&) {
    ++calls;
    return true;
  };
  const SinkhornResult r = otgpu::sinkhorn(p.device, o);
  EXPECT_EQ(otgpu::planner::last_loop_strategy(), "in-kernel");
  EXPECT_EQ(calls, 0);
  for (const auto& rep : r.problems) EXPECT_TRUE(rep.converged);
}

}  // namespace

#else

TEST(DeviceLoop, RequiresCudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif
