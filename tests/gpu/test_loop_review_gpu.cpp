// Review of the CUDA Sinkhorn loop (host/src/cuda/sinkhorn_loop.cpp): what a cached
// period graph bakes in, and the per-problem decisions of the accelerated loop.
//  - A graph captured for one SinkhornOptions::precision must not be replayed for
//    another on the same context with the same shapes and pointers (its key did not
//    name the half-step kernels the launches chose).
//  - The accelerated loop decides per problem: a problem's iterations, omega and
//    acceleration do not depend on the other problems of its batch (the earlier driver
//    ran every problem at eps plain until no problem of the batch was above eps, and
//    restarted the relaxation state then).
//  - Its schedule follows the fp64 CPU reference's (tests/test_loop_decisions.cpp
//    replays it exactly on the host; here the fp32 device run, within a check period).
#include <gtest/gtest.h>

#ifdef OTGPU_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/device.h"
#include "otgpu/otgpu.h"
#include "otgpu_host/planner.h"

namespace {

using otgpu::CostKind;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;
using otgpu::TensorView;

std::vector<double> normalized(std::vector<double> w, std::int64_t rows, std::int64_t len) {
  for (std::int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (std::int64_t k = 0; k < len; ++k) s += w[static_cast<std::size_t>(r * len + k)];
    for (std::int64_t k = 0; k < len; ++k) w[static_cast<std::size_t>(r * len + k)] /= s;
  }
  return w;
}

TEST(LoopReviewGpu, CachedPeriodGraphFollowsThePrecision) {
  REQUIRE_GPU();
  // Point clouds with d = 32: the online kernel on tensor cores, whose arithmetic is
  // the precision option (3xTF32 for fp32, one TF32 product for tf32).
  const std::int64_t B = 2, n = 1500, m = 1400, d = 32;
  auto x = otgpu_test::uniform(static_cast<std::size_t>(B * n * d), 11);
  auto y = otgpu_test::uniform(static_cast<std::size_t>(B * m * d), 12, 0.1, 1.1);
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {B, n, d});
  p.y = TensorView::host(y.data(), {B, m, d});
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.eps_init = 0;  // no continuation, no relaxation: the period graph runs
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.tol = 1e-30;  // never met: every period runs
  o.max_iter = 60;
  o.check_every = 10;
  auto run = [&](otgpu::GpuContext& ctx, otgpu::Precision prec) {
    SinkhornOptions q = o;
    q.precision = prec;
    SinkhornResult r = otgpu::sinkhorn(ctx, p, q);
    EXPECT_EQ(otgpu::planner::last_loop_strategy(), "graph");
    return r;
  };
  otgpu::GpuContext shared(0);
  const SinkhornResult tf32_first = run(shared, otgpu::Precision::tf32);
  const SinkhornResult fp32_after = run(shared, otgpu::Precision::fp32);
  otgpu::GpuContext fresh(0);
  const SinkhornResult fp32_fresh = run(fresh, otgpu::Precision::fp32);
  ASSERT_TRUE(fp32_fresh.tensor_cores);  // the case under test runs on tensor cores
  // The control: tf32 gives other bits than 3xTF32.
  EXPECT_NE(tf32_first.f, fp32_fresh.f);
  // The same solve on a context whose cached graph was captured for tf32.
  EXPECT_EQ(fp32_after.f, fp32_fresh.f);
  EXPECT_EQ(fp32_after.g, fp32_fresh.g);
}

/// B dense problems of n x m costs, each a grid of 1/16 in 1-D (exact in fp32),
/// scaled by scale[b], with cubed random weights.
struct DenseBatch {
  std::int64_t B = 0, n = 0, m = 0;
  std::vector<double> C, a, b;
  SinkhornProblem problem(std::int64_t first, std::int64_t count) const {
    SinkhornProblem p;
    p.cost_kind = CostKind::matrix;
    p.cost = TensorView::host(C.data() + first * n * m, {count, n, m});
    p.a = TensorView::host(a.data() + first * n, {count, n});
    p.b = TensorView::host(b.data() + first * m, {count, m});
    return p;
  }
};

DenseBatch dense_batch(std::int64_t n, std::int64_t m, const std::vector<double>& scale,
                       unsigned seed) {
  DenseBatch p;
  p.B = static_cast<std::int64_t>(scale.size());
  p.n = n;
  p.m = m;
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> pos(0, 16);
  std::uniform_real_distribution<double> w(0.1, 1.0);
  for (double s : scale) {
    std::vector<double> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(m));
    for (double& v : x) v = pos(gen) / 16.0;
    for (double& v : y) v = pos(gen) / 16.0;
    x[0] = 0.0;
    y[0] = 1.0;
    for (double xi : x)
      for (double yj : y) p.C.push_back(s * (xi - yj) * (xi - yj));
  }
  auto cubes = [&](std::int64_t count) {
    std::vector<double> v(static_cast<std::size_t>(count));
    for (double& e : v) {
      e = w(gen);
      e = e * e * e;
    }
    return v;
  };
  p.a = normalized(cubes(p.B * n), p.B, n);
  p.b = normalized(cubes(p.B * m), p.B, m);
  return p;
}

SinkhornOptions accel_options() {
  SinkhornOptions o;
  o.eps = 1.0 / 1024.0;  // < 3e-3 x spread 1: problems of spread 1 scale
  o.tol = 1e-4;
  o.max_iter = 20000;
  o.check_every = 10;
  o.eps_init = otgpu::kAuto;
  o.acceleration = otgpu::SinkhornAcceleration::overrelax;
  o.backend = otgpu::Backend::cuda;
  return o;
}

TEST(LoopReviewGpu, BatchDecisionsEqualSoloDecisions) {
  REQUIRE_GPU();
  // Problem 0 (spread 1) runs the continuation's levels; problem 1 (spread 1/8: eps
  // >= 3e-3 x spread) starts at eps and over-relaxes from its first checks, in the
  // batch as alone.
  const DenseBatch p = dense_batch(64, 48, {1.0, 0.125, 1.0}, 5);
  const SinkhornOptions o = accel_options();
  const SinkhornResult batch = otgpu::sinkhorn(p.problem(0, p.B), o);
  for (std::int64_t k = 0; k < p.B; ++k) {
    SCOPED_TRACE(k);
    const SinkhornResult solo = otgpu::sinkhorn(p.problem(k, 1), o);
    const auto& rb = batch.problems[static_cast<std::size_t>(k)];
    const auto& rs = solo.problems[0];
    EXPECT_TRUE(rs.converged);
    EXPECT_EQ(rb.converged, rs.converged);
    // Same decisions on the same arithmetic; one check period of slack for launch
    // geometry that depends on B.
    EXPECT_LE(std::abs(rb.iterations - rs.iterations), o.check_every)
        << rb.iterations << " in the batch, " << rs.iterations << " alone";
    EXPECT_EQ(rb.acceleration, rs.acceleration);
    EXPECT_NEAR(rb.omega, rs.omega, 1e-3);
  }
  EXPECT_EQ(batch.problems[1].acceleration, otgpu::SinkhornAcceleration::overrelax);
}

TEST(LoopReviewGpu, AcceleratedScheduleFollowsTheCpu) {
  REQUIRE_GPU();
  // The problem of tests/test_loop_decisions.cpp's replay, both backends at tol 1e-4.
  for (unsigned seed : {1u, 2u}) {
    SCOPED_TRACE(seed);
    const DenseBatch p = dense_batch(12, 9, {1.0}, seed);
    SinkhornOptions o = accel_options();
    const SinkhornResult gpu = otgpu::sinkhorn(p.problem(0, 1), o);
    o.backend = otgpu::Backend::cpu;
    const SinkhornResult cpu = otgpu::sinkhorn(p.problem(0, 1), o);
    const auto& rg = gpu.problems[0];
    const auto& rc = cpu.problems[0];
    EXPECT_TRUE(rc.converged);
    EXPECT_EQ(rg.converged, rc.converged);
    // fp32 residuals cross tol within a check period or two of the fp64 ones.
    EXPECT_LE(std::abs(rg.iterations - rc.iterations), 2 * o.check_every)
        << rg.iterations << " on the GPU, " << rc.iterations << " on the CPU";
    EXPECT_EQ(rg.acceleration, rc.acceleration);
    // Balanced potentials are defined up to f + c, g - c: compare after the mean shift.
    double c = 0;
    for (std::size_t i = 0; i < cpu.f.size(); ++i) c += gpu.f[i] - cpu.f[i];
    c /= static_cast<double>(cpu.f.size());
    for (std::size_t i = 0; i < cpu.f.size(); ++i) EXPECT_NEAR(gpu.f[i] - c, cpu.f[i], 2e-3);
    for (std::size_t j = 0; j < cpu.g.size(); ++j) EXPECT_NEAR(gpu.g[j] + c, cpu.g[j], 2e-3);
  }
}

}  // namespace

#endif  // OTGPU_WITH_CUDA
