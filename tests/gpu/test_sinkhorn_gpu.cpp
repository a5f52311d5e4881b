// The CUDA Sinkhorn backend against the CPU reference (FAISS-style: same data, both
// backends, stated tolerances). The GPU computes in fp32 with fp32 accumulation in
// the O(nm) loops and double in the per-problem reductions; the CPU is fp64
// throughout. Runs compare iteration for iteration (check_every = 0, fixed
// max_iter) so the iterates match up to fp32 round-off, except where a converged
// solve is the point. Every comparison states the iteration it compares: plain
// updates (acceleration = none; the CPU default over-relaxes), no eps scaling
// (eps_init = 0; the default kAuto runs the continuation schedule on both backends,
// see SinkhornOptions::eps_init) and an explicit tol (kAuto resolves to
// 1e-6 on the CPU and 1e-4 on the GPU).
#include <gtest/gtest.h>

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cpu_sinkhorn.h"
#include "gpu_test_util.h"
#include "otgpu/detail/accel.h"
#include "otgpu/otgpu.h"
#include "otgpu_host/cuda_backend.h"
#include "validate.h"

namespace {

using otgpu::Backend;
using otgpu::CostKind;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::SinkhornResult;
using otgpu::TensorView;

using otgpu_test::DeviceBuffer;
using otgpu_test::uniform;

struct Case {
  std::string name;
  std::int64_t B, n, m, d;
  CostKind cost = CostKind::sqeuclidean;
  double eps_rel = 0.05;  ///< eps as a fraction of the mean cost
  bool weights = false;   ///< non-uniform weights with some zeros
  double rho = std::numeric_limits<double>::infinity();
  bool f32 = false;
  int iters = 30;
  double offset = 0;  ///< added to every coordinate of x and y (before any fp32 rounding)
};

struct Data {
  std::vector<double> x, y, c, a, b;
  std::vector<float> xf, yf;
  SinkhornProblem p;
};

Data make(const Case& k, std::uint32_t seed) {
  Data D;
  D.x = uniform(static_cast<std::size_t>(k.B * k.n * k.d), seed);
  D.y = uniform(static_cast<std::size_t>(k.B * k.m * k.d), seed + 1, 0.1, 1.1);
  for (double& v : D.x) v += k.offset;
  for (double& v : D.y) v += k.offset;
  if (k.cost == CostKind::matrix) {
    D.c = uniform(static_cast<std::size_t>(k.B * k.n * k.m), seed + 2, 0.0, 2.0);
    D.p.cost = TensorView::host(D.c.data(), {k.B, k.n, k.m});
  } else if (k.f32) {
    D.xf.assign(D.x.begin(), D.x.end());
    D.yf.assign(D.y.begin(), D.y.end());
    D.p.x = TensorView::host(D.xf.data(), {k.B, k.n, k.d});
    D.p.y = TensorView::host(D.yf.data(), {k.B, k.m, k.d});
  } else {
    D.p.x = TensorView::host(D.x.data(), {k.B, k.n, k.d});
    D.p.y = TensorView::host(D.y.data(), {k.B, k.m, k.d});
  }
  D.p.cost_kind = k.cost;
  if (k.weights) {
    D.a = uniform(static_cast<std::size_t>(k.B * k.n), seed + 3, 0.2, 1.0);
    D.b = uniform(static_cast<std::size_t>(k.B * k.m), seed + 4, 0.2, 1.0);
    // Zeros (never all of a problem), then normalize each problem to mass 1.
    for (std::size_t i = 1; i < D.a.size(); i += 5) D.a[i] = 0;
    for (std::size_t j = 2; j < D.b.size(); j += 7) D.b[j] = 0;
    auto normalize = [](std::vector<double>& w, std::int64_t B, std::int64_t len) {
      for (std::int64_t b = 0; b < B; ++b) {
        double s = 0;
        for (std::int64_t i = 0; i < len; ++i) s += w[static_cast<std::size_t>(b * len + i)];
        if (s == 0) w[static_cast<std::size_t>(b * len)] = s = 1;
        for (std::int64_t i = 0; i < len; ++i) w[static_cast<std::size_t>(b * len + i)] /= s;
      }
    };
    normalize(D.a, k.B, k.n);
    normalize(D.b, k.B, k.m);
    D.p.a = TensorView::host(D.a.data(), {k.B, k.n});
    D.p.b = TensorView::host(D.b.data(), {k.B, k.m});
  }
  return D;
}

SinkhornOptions fixed_iterations(const Case& k, Backend be) {
  SinkhornOptions o;
  o.eps = k.eps_rel;
  o.eps_relative = true;
  o.max_iter = k.iters;
  o.check_every = 0;
  o.eps_init = 0;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.tol = 1e-4;
  o.rho_a = o.rho_b = k.rho;
  o.backend = be;
  return o;
}

/// Potentials agree to fp32 round-off of scores of size C/eps, amplified mildly by
/// the iterations: |f_gpu - f_cpu| <= 2e-4 * (mean cost) + 2e-5 |f|.
void expect_potentials_close(const std::vector<double>& gpu, const std::vector<double>& cpu,
                             double scale, const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t k = 0; k < gpu.size(); ++k) {
    if (!std::isfinite(cpu[k])) continue;  // rows/cols of zero weight may be +inf on both
    const double err = std::abs(gpu[k] - cpu[k]) / (2e-4 * scale + 2e-5 * std::abs(cpu[k]));
    if (err > worst) {
      worst = err;
      at = k;
    }
  }
  EXPECT_LE(worst, 1.0) << what << "[" << at << "]: gpu " << gpu[at] << " cpu " << cpu[at];
}

class GpuVsCpu : public ::testing::TestWithParam<Case> {};

TEST_P(GpuVsCpu, IterationForIteration) {
  REQUIRE_GPU();
  const Case k = GetParam();
  Data D = make(k, 17);
  const SinkhornResult cpu = otgpu::sinkhorn(D.p, fixed_iterations(k, Backend::cpu));
  const SinkhornResult gpu = otgpu::sinkhorn(D.p, fixed_iterations(k, Backend::cuda));
  ASSERT_EQ(gpu.backend, Backend::cuda);
  ASSERT_EQ(gpu.problems.size(), cpu.problems.size());
  double scale = 0;
  for (const auto& r : cpu.problems) scale = std::max(scale, r.eps / k.eps_rel);
  expect_potentials_close(gpu.f, cpu.f, scale, "f");
  expect_potentials_close(gpu.g, cpu.g, scale, "g");
  for (std::size_t b = 0; b < cpu.problems.size(); ++b) {
    const auto& c = cpu.problems[b];
    const auto& g = gpu.problems[b];
    EXPECT_NEAR(g.eps, c.eps, 1e-6 * c.eps);
    EXPECT_EQ(g.iterations, c.iterations);
    EXPECT_NEAR(g.ot_eps, c.ot_eps, 3e-4 * scale + 1e-4 * std::abs(c.ot_eps)) << "problem " << b;
    EXPECT_NEAR(g.transport_cost, c.transport_cost, 3e-4 * scale + 1e-4 * c.transport_cost)
        << "problem " << b;
    EXPECT_NEAR(g.marginal_error, c.marginal_error, 1e-3 + 1e-2 * c.marginal_error)
        << "problem " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuVsCpu,
    ::testing::Values(
        Case{"one_point", 1, 1, 1, 1}, Case{"tails_7x129_d3", 2, 7, 129, 3},
        Case{"tails_129x7_d17", 1, 129, 7, 17},
        Case{"tail_1000_d2_weights", 1, 1000, 1000, 2, CostKind::sqeuclidean, 0.05, true},
        Case{"tail_4097_d2_few_iters", 1, 4097, 1000, 2, CostKind::sqeuclidean, 0.05, false,
             std::numeric_limits<double>::infinity(), false, 5},
        Case{"d64", 1, 600, 700, 64}, Case{"d130_dynamic", 1, 300, 257, 130},
        Case{"euclidean_d3", 2, 300, 200, 3, CostKind::euclidean},
        Case{"small_eps", 1, 500, 500, 2, CostKind::sqeuclidean, 1e-3},
        Case{"large_eps", 1, 500, 500, 2, CostKind::sqeuclidean, 10.0},
        Case{"unbalanced", 1, 400, 300, 2, CostKind::sqeuclidean, 0.05, true, 1.0},
        Case{"f32_inputs", 1, 500, 400, 3, CostKind::sqeuclidean, 0.05, false,
             std::numeric_limits<double>::infinity(), true},
        Case{"dense_matrix", 2, 300, 257, 0, CostKind::matrix, 0.05, true},
        Case{"small_kernel_batch", 16, 100, 120, 2, CostKind::sqeuclidean, 0.05, true},
        Case{"small_kernel_d17", 8, 64, 64, 17},
        // The online kernels' norm form |x|^2 + |y|^2 - 2<x,y> on centered data: clouds
        // offset by 1e4 (fp32 inputs: the CPU sees the same rounded points) and eps down
        // to 1e-4 of the mean cost, on the online path (n > 512) and the small kernel.
        Case{"offset_1e4_d2", 1, 700, 600, 2, CostKind::sqeuclidean, 0.05, false,
             std::numeric_limits<double>::infinity(), true, 20, 1e4},
        Case{"offset_1e4_d16", 1, 700, 600, 16, CostKind::sqeuclidean, 0.05, false,
             std::numeric_limits<double>::infinity(), true, 20, 1e4},
        Case{"offset_1e4_d64", 1, 600, 700, 64, CostKind::sqeuclidean, 0.05, false,
             std::numeric_limits<double>::infinity(), true, 20, 1e4},
        Case{"offset_1e4_small_kernel", 4, 100, 120, 8, CostKind::sqeuclidean, 0.05, false,
             std::numeric_limits<double>::infinity(), true, 20, 1e4},
        Case{"eps_1em4_d2", 1, 700, 600, 2, CostKind::sqeuclidean, 1e-4, true,
             std::numeric_limits<double>::infinity(), false, 10},
        Case{"eps_1em4_d16", 1, 700, 600, 16, CostKind::sqeuclidean, 1e-4, false,
             std::numeric_limits<double>::infinity(), false, 10},
        Case{"eps_1em4_euclidean_d3", 1, 700, 600, 3, CostKind::euclidean, 1e-4, false,
             std::numeric_limits<double>::infinity(), false, 10},
        Case{"eps_1em4_offset_1e4_d8", 1, 1000, 900, 8, CostKind::sqeuclidean, 1e-4, false,
             std::numeric_limits<double>::infinity(), true, 10, 1e4}),
    [](const ::testing::TestParamInfo<Case>& param_info) { return param_info.param.name; });

TEST(SinkhornGpu, ConvergedSolvesAgree) {
  REQUIRE_GPU();
  for (const std::int64_t n : {60, 2000}) {  // small-kernel path and online path
    Case k{"conv", 2, n, n + 3, 2};
    Data D = make(k, 5);
    SinkhornOptions o;
    o.eps = 0.05;
    o.eps_relative = true;
    o.tol = 1e-4;
    o.max_iter = 2000;
    // The same iteration on both sides, so that the stopping checks can be compared:
    // plain updates from a cold start at eps.
    o.eps_init = 0;
    o.acceleration = otgpu::SinkhornAcceleration::none;
    o.backend = Backend::cpu;
    const auto cpu = otgpu::sinkhorn(D.p, o);
    o.backend = Backend::cuda;
    const auto gpu = otgpu::sinkhorn(D.p, o);
    for (std::size_t b = 0; b < 2; ++b) {
      EXPECT_TRUE(cpu.problems[b].converged);
      EXPECT_TRUE(gpu.problems[b].converged)
          << "n=" << n << " residual " << gpu.problems[b].residual;
      // Stopping may differ by one check period: iterates differ by at most the
      // distance a converged solve still moves (~tol).
      EXPECT_NEAR(gpu.problems[b].ot_eps, cpu.problems[b].ot_eps,
                  1e-3 * std::abs(cpu.problems[b].ot_eps));
      EXPECT_LE(std::abs(gpu.problems[b].iterations - cpu.problems[b].iterations), 10);
    }
  }
}

/// Each problem reports what ran: the synchronous driver over-relaxes by default (the
/// small-kernel sizes included: the accelerated loop runs the online kernels), and a
/// problem reports overrelax with its last w exactly when a period ran with w > 1.
TEST(SinkhornGpu, ReportsTheIterationThatRan) {
  REQUIRE_GPU();
  for (const std::int64_t n : {60, 2000}) {
    Case k{"what_ran", 2, n, n + 3, 2};
    Data D = make(k, 13);
    SinkhornOptions o;
    o.eps = 0.05;
    o.eps_relative = true;
    o.backend = Backend::cuda;
    ASSERT_EQ(o.acceleration, otgpu::SinkhornAcceleration::overrelax);
    const auto r = otgpu::sinkhorn(D.p, o);
    for (const auto& rep : r.problems) {
      EXPECT_GE(rep.omega, 1.0) << "n=" << n;
      EXPECT_LE(rep.omega, otgpu::detail::kOverrelaxMaxOmega) << "n=" << n;
      if (rep.omega > 1.0) {
        EXPECT_EQ(rep.acceleration, otgpu::SinkhornAcceleration::overrelax) << "n=" << n;
      }
      EXPECT_TRUE(rep.converged) << "n=" << n << " residual " << rep.residual;
    }
    o.acceleration = otgpu::SinkhornAcceleration::none;
    for (const auto& rep : otgpu::sinkhorn(D.p, o).problems) {
      EXPECT_EQ(rep.acceleration, otgpu::SinkhornAcceleration::none) << "n=" << n;
      EXPECT_EQ(rep.omega, 1.0) << "n=" << n;
    }
  }
}

/// The self-transport solve of the divergence (symmetric update) on the GPU against
/// the CPU's: iteration for iteration (fixed count, no checks), then converged (the
/// same check schedule, stopping within one period of each other).
TEST(SinkhornGpu, SymmetricSelfTermMatchesCpu) {
  REQUIRE_GPU();
  for (const std::int64_t n : {300, 2000}) {  // small-kernel plan and online plan
    SCOPED_TRACE(n);
    Case k{"self", 1, n, n, 2, CostKind::sqeuclidean, 0.05, true};
    Data D = make(k, 77);
    D.p.y = D.p.x;
    D.p.b = D.p.a;
    SinkhornOptions o;
    o.eps = 0.02;  // absolute, as the divergence passes it (mean cost ~ 1/3)
    o.eps_init = 0;
    o.check_every = 0;
    o.max_iter = 30;
    o.tol = 1e-4;
    const auto shape = otgpu::detail::validate_sinkhorn(D.p, o);
    auto cuda_opts = otgpu::detail::resolve_sinkhorn_options(o, Backend::cuda);
    auto cpu_opts = otgpu::detail::resolve_sinkhorn_options(o, Backend::cpu);
    const auto g30 = otgpu::cuda_backend::sinkhorn_symmetric(D.p, cuda_opts, shape);
    const auto c30 = otgpu::cpu::sinkhorn_symmetric(D.p, cpu_opts, shape);
    ASSERT_EQ(g30.backend, Backend::cuda);
    expect_potentials_close(g30.f, c30.f, 1.0 / 3.0, "f after 30 iterations");
    EXPECT_EQ(g30.problems[0].iterations, 30);
    EXPECT_NEAR(g30.problems[0].ot_eps, c30.problems[0].ot_eps,
                3e-4 + 1e-4 * std::abs(c30.problems[0].ot_eps));
    // Converged: OT_eps(a, a) = 2 <a, f> within the fp32 floor, in a few dozen
    // iterations (alternating updates need thousands on these problems).
    cuda_opts.check_every = cpu_opts.check_every = 10;
    cuda_opts.max_iter = cpu_opts.max_iter = 5000;
    const auto g = otgpu::cuda_backend::sinkhorn_symmetric(D.p, cuda_opts, shape);
    const auto c = otgpu::cpu::sinkhorn_symmetric(D.p, cpu_opts, shape);
    EXPECT_TRUE(g.problems[0].converged) << "residual " << g.problems[0].residual;
    EXPECT_TRUE(c.problems[0].converged) << "residual " << c.problems[0].residual;
    EXPECT_LE(std::abs(g.problems[0].iterations - c.problems[0].iterations), 10);
    EXPECT_LT(g.problems[0].iterations, 500);
    EXPECT_NEAR(g.problems[0].ot_eps, c.problems[0].ot_eps,
                1e-3 * std::abs(c.problems[0].ot_eps) + 1e-5);
    expect_potentials_close(g.g, g.f, 0.0, "g = f");
  }
}

/// An explicit eps schedule (eps_t = max(eps, eps_init decay^t), one iteration per
/// level, on both backends) reaches the same converged answer on both.
TEST(SinkhornGpu, EpsScalingSmallEps) {
  REQUIRE_GPU();
  Case k{"scaling", 1, 800, 800, 2};
  Data D = make(k, 9);
  SinkhornOptions o;
  o.eps = 1e-3;
  o.eps_relative = true;
  o.eps_init = 1.0;
  o.eps_decay = 0.7;
  o.tol = 1e-3;
  o.max_iter = 3000;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.backend = Backend::cuda;
  const auto gpu = otgpu::sinkhorn(D.p, o);
  EXPECT_TRUE(std::isfinite(gpu.problems[0].ot_eps));
  EXPECT_TRUE(gpu.problems[0].converged) << "residual " << gpu.problems[0].residual;
  o.backend = Backend::cpu;
  const auto cpu = otgpu::sinkhorn(D.p, o);
  EXPECT_NEAR(gpu.problems[0].transport_cost, cpu.problems[0].transport_cost,
              5e-3 * cpu.problems[0].transport_cost);
}

/// Derived outputs computed by the GPU from the CPU's potentials (so only the
/// derived kernels are under test) against the CPU's.
TEST(SinkhornGpu, DerivedOutputsMatchCpu) {
  REQUIRE_GPU();
  for (CostKind cost : {CostKind::sqeuclidean, CostKind::euclidean}) {
    for (std::int64_t d : {2, 5, 70}) {
      Case k{"derived", 2, 300, 250, d, cost, 0.1, true};
      Data D = make(k, 23);
      SinkhornOptions o = fixed_iterations(k, Backend::cpu);
      o.max_iter = 50;
      const SinkhornResult cpu = otgpu::sinkhorn(D.p, o);
      SinkhornResult as_gpu = cpu;
      as_gpu.backend = Backend::cuda;
      as_gpu.device = 0;
      const auto map_c = otgpu::barycentric_map(D.p, cpu);
      const auto map_g = otgpu::barycentric_map(D.p, as_gpu);
      ASSERT_EQ(map_c.size(), map_g.size());
      for (std::size_t q = 0; q < map_c.size(); ++q) {
        ASSERT_NEAR(map_g[q], map_c[q], 2e-4) << "map d=" << d << " at " << q;
      }
      const auto grad_c = otgpu::gradient_x(D.p, cpu);
      const auto grad_g = otgpu::gradient_x(D.p, as_gpu);
      for (std::size_t q = 0; q < grad_c.size(); ++q) {
        ASSERT_NEAR(grad_g[q], grad_c[q], 1e-4 * std::abs(grad_c[q]) + 4e-6)
            << "grad d=" << d << " at " << q;
      }
      const auto s_c = otgpu::sample_partners(D.p, cpu, 42);
      const auto s_g = otgpu::sample_partners(D.p, as_gpu, 42);
      std::size_t same = 0;
      for (std::size_t q = 0; q < s_c.size(); ++q) same += s_c[q] == s_g[q];
      // Same Philox key per pair: only fp32 near-ties may differ.
      EXPECT_GE(static_cast<double>(same), 0.97 * static_cast<double>(s_c.size()));
    }
  }
}

/// The sampled partner of a row, over many seeds, follows P_i. / r_i (chi-square).
TEST(SinkhornGpu, SampledPartnersHaveThePlanDistribution) {
  REQUIRE_GPU();
  const std::int64_t n = 1, m = 6;
  std::vector<double> x = {0.3}, y = {0.0, 0.1, 0.25, 0.4, 0.7, 1.0};
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {n, 1});
  p.y = TensorView::host(y.data(), {m, 1});
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_init = 0;  // 10 iterations at eps itself (the default would scale from 1024 eps)
  o.backend = Backend::cuda;
  o.max_iter = 10;
  const auto r = otgpu::sinkhorn(p, o);
  std::vector<double> prob(static_cast<std::size_t>(m));
  double tot = 0;
  for (std::int64_t j = 0; j < m; ++j) {
    const double c =
        (x[0] - y[static_cast<std::size_t>(j)]) * (x[0] - y[static_cast<std::size_t>(j)]);
    prob[static_cast<std::size_t>(j)] =
        std::exp((r.g[static_cast<std::size_t>(j)] - c) / o.eps) / m;
    tot += prob[static_cast<std::size_t>(j)];
  }
  const int draws = 4000;
  std::vector<int> count(static_cast<std::size_t>(m), 0);
  for (int s = 0; s < draws; ++s) {
    const auto j = otgpu::sample_partners(p, r, static_cast<std::uint64_t>(s))[0];
    ASSERT_GE(j, 0);
    ASSERT_LT(j, m);
    ++count[static_cast<std::size_t>(j)];
  }
  double chi2 = 0;
  for (std::int64_t j = 0; j < m; ++j) {
    const double e = draws * prob[static_cast<std::size_t>(j)] / tot;
    chi2 += (count[static_cast<std::size_t>(j)] - e) * (count[static_cast<std::size_t>(j)] - e) / e;
  }
  EXPECT_LT(chi2, 20.5) << "chi-square with 5 degrees of freedom (p = 0.001)";
}

/// Device-memory views run on the GPU (backend auto) and give the host-view answer.
TEST(SinkhornGpu, DeviceViews) {
  REQUIRE_GPU();
  Case k{"device", 2, 200, 150, 3};
  Data D = make(k, 31);
  std::vector<float> xf(D.x.begin(), D.x.end()), yf(D.y.begin(), D.y.end());
  DeviceBuffer<float> dx(xf), dy(yf);
  SinkhornProblem pd;
  pd.x = TensorView::device(dx.data(), {k.B, k.n, k.d});
  pd.y = TensorView::device(dy.data(), {k.B, k.m, k.d});
  SinkhornProblem ph;
  ph.x = TensorView::host(xf.data(), {k.B, k.n, k.d});
  ph.y = TensorView::host(yf.data(), {k.B, k.m, k.d});
  SinkhornOptions o = fixed_iterations(k, Backend::automatic);
  const auto rd = otgpu::sinkhorn(pd, o);
  o.backend = Backend::cuda;
  const auto rh = otgpu::sinkhorn(ph, o);
  EXPECT_EQ(rd.backend, Backend::cuda);
  // Device views are staged by kernels (the center and the mean cost are summed in
  // another order than on the host): equal up to fp32 round-off, not bitwise.
  ASSERT_EQ(rd.f.size(), rh.f.size());
  for (std::size_t q = 0; q < rd.f.size(); ++q) {
    ASSERT_NEAR(rd.f[q], rh.f[q], 1e-5 * (1 + std::abs(rh.f[q]))) << "f[" << q << "]";
  }
  for (std::size_t b = 0; b < rd.problems.size(); ++b) {
    EXPECT_NEAR(rd.problems[b].eps, rh.problems[b].eps, 1e-9 * rh.problems[b].eps);
    EXPECT_NEAR(rd.problems[b].ot_eps, rh.problems[b].ot_eps,
                1e-5 * (1 + std::abs(rh.problems[b].ot_eps)));
  }
  // NaN in device memory is found on the device and named (x[0, 1, 2] is flat 5).
  const float nan = std::numeric_limits<float>::quiet_NaN();
  dx.upload({nan}, 5);
  try {
    otgpu::sinkhorn(pd, o);
    ADD_FAILURE() << "NaN in device x accepted";
  } catch (const otgpu::NonFiniteInput& e) {
    EXPECT_NE(std::string(e.what()).find("x: element [0, 1, 2] is nan"), std::string::npos)
        << e.what();
  }
  // A CPU backend cannot read device memory.
  o.backend = Backend::cpu;
  EXPECT_THROW(otgpu::sinkhorn(pd, o), otgpu::InvalidArgument);
}

TEST(SinkhornGpu, MissingDeviceOrdinal) {
  REQUIRE_GPU();
  std::vector<double> x = {0.0}, y = {1.0};
  SinkhornProblem p;
  p.x = TensorView::host(x.data(), {1, 1});
  p.y = TensorView::host(y.data(), {1, 1});
  SinkhornOptions o;
  o.backend = Backend::cuda;
  o.device = 99;
  try {
    otgpu::sinkhorn(p, o);
    FAIL() << "device 99 accepted";
  } catch (const otgpu::DeviceUnavailable& e) {
    EXPECT_NE(std::string(e.what()).find("99"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

/// The stream-ordered API: device data, caller's stream, no host sync inside; the
/// numbers match the synchronous GPU solve, and a second call of the same size does
/// not grow the workspace (no allocation per training step).
TEST(SinkhornGpuAsync, MatchesSynchronousSolveWithoutReallocating) {
  REQUIRE_GPU();
  const std::int64_t B = 3, n = 700, m = 650, d = 3;
  const auto x = uniform(static_cast<std::size_t>(B * n * d), 3);
  const auto y = uniform(static_cast<std::size_t>(B * m * d), 4, 0.1, 1.1);
  DeviceBuffer<double> dx(x), dy(y), d_ot(static_cast<std::size_t>(B));
  DeviceBuffer<float> df(static_cast<std::size_t>(B * n)), dg(static_cast<std::size_t>(B * m));
  DeviceBuffer<int> d_it(static_cast<std::size_t>(B));
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);

  SinkhornProblem p;
  p.x = TensorView::device(dx.data(), {B, n, d});
  p.y = TensorView::device(dy.data(), {B, m, d});
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.max_iter = 40;
  o.check_every = 0;
  o.backend = Backend::cuda;
  const auto ref = otgpu::sinkhorn(p, o);

  otgpu::GpuContext ctx(0, stream);
  otgpu::DeviceSinkhornOutputs out;
  out.f = df.data();
  out.g = dg.data();
  out.ot_eps = d_ot.data();
  out.iterations = d_it.data();
  otgpu::sinkhorn_async(ctx, p, o, out);
  const std::size_t grown = ctx.workspace_bytes();
  EXPECT_EQ(grown, otgpu::sinkhorn_async_workspace_bytes(p, o));
  otgpu::sinkhorn_async(ctx, p, o, out);  // a second training step
  EXPECT_EQ(ctx.workspace_bytes(), grown);
  ctx.synchronize();

  const std::vector<float> f = df.to_host();
  const std::vector<double> ot = d_ot.to_host();
  const std::vector<int> it = d_it.to_host();
  for (std::size_t k = 0; k < f.size(); ++k)
    ASSERT_NEAR(f[k], ref.f[k], 1e-6 + 1e-6 * std::abs(ref.f[k]));
  for (std::size_t b = 0; b < ot.size(); ++b) {
    EXPECT_NEAR(ot[b], ref.problems[b].ot_eps, 1e-9 + 1e-7 * std::abs(ref.problems[b].ot_eps));
    EXPECT_EQ(it[b], 40);
  }
  // Host views are refused by the device API.
  std::vector<double> hx(x);
  SinkhornProblem host_p;
  host_p.x = TensorView::host(hx.data(), {B, n, d});
  host_p.y = TensorView::host(y.data(), {B, m, d});
  EXPECT_THROW(otgpu::sinkhorn_async(ctx, host_p, o, out), otgpu::InvalidArgument);

  cudaStreamDestroy(stream);
}

}  // namespace

namespace {

/// The same view shape and strides, pointing at device memory.
TensorView on_device(TensorView v, const void* device_data) {
  v.data = device_data;
  v.space = otgpu::MemorySpace::device;
  return v;
}

/// Device views of every kind the staging kernels handle (f64, strided, batched and
/// shared weights, cost matrices staged or used in place) give the host-view answer.
TEST(SinkhornGpuDeviceViews, StagingMatchesHostViews) {
  REQUIRE_GPU();
  const std::int64_t B = 2, n = 150, m = 131, d = 5;
  // x as a strided f64 view: every other row of a [B, 2n, d] buffer.
  const auto xbuf = uniform(static_cast<std::size_t>(B * 2 * n * d), 41);
  TensorView xv = TensorView::host(xbuf.data(), {B, n, d});
  xv.strides = {2 * n * d, 2 * d, 1};
  const auto yd = uniform(static_cast<std::size_t>(B * m * d), 42, 0.1, 1.1);
  std::vector<float> yf(yd.begin(), yd.end());
  auto a = uniform(static_cast<std::size_t>(n), 43, 0.0, 1.0);  // shared [n]
  a[3] = 0;
  double sa = 0;
  for (double v : a) sa += v;
  for (double& v : a) v /= sa;
  auto bw = uniform(static_cast<std::size_t>(B * m), 44, 0.2, 1.0);  // batched [B, m]
  for (std::int64_t b = 0; b < B; ++b) {
    double sb = 0;
    for (std::int64_t j = 0; j < m; ++j) sb += bw[static_cast<std::size_t>(b * m + j)];
    for (std::int64_t j = 0; j < m; ++j) bw[static_cast<std::size_t>(b * m + j)] /= sb;
  }
  SinkhornProblem ph;
  ph.x = xv;
  ph.y = TensorView::host(yf.data(), {B, m, d});
  ph.a = TensorView::host(a.data(), {n});
  ph.b = TensorView::host(bw.data(), {B, m});
  DeviceBuffer<double> dxb(xbuf), da(a), db(bw);
  DeviceBuffer<float> dy(yf);
  SinkhornProblem pd = ph;
  pd.x = on_device(ph.x, dxb.data());
  pd.y = on_device(ph.y, dy.data());
  pd.a = on_device(ph.a, da.data());
  pd.b = on_device(ph.b, db.data());

  for (CostKind cost : {CostKind::sqeuclidean, CostKind::euclidean}) {
    ph.cost_kind = pd.cost_kind = cost;
    SinkhornOptions o;
    o.eps = 0.05;
    o.eps_relative = true;
    o.max_iter = 25;
    o.check_every = 0;
    o.backend = Backend::cuda;
    const auto rh = otgpu::sinkhorn(ph, o);
    const auto rd = otgpu::sinkhorn(pd, o);
    for (std::size_t q = 0; q < rh.f.size(); ++q) {
      if (!std::isfinite(rh.f[q])) continue;  // a_3 = 0: +inf or a free value on both
      ASSERT_NEAR(rd.f[q], rh.f[q], 1e-5 * (1 + std::abs(rh.f[q]))) << "f[" << q << "]";
    }
    for (std::size_t b = 0; b < rh.problems.size(); ++b) {
      EXPECT_NEAR(rd.problems[b].eps, rh.problems[b].eps, 1e-9 * rh.problems[b].eps);
      EXPECT_NEAR(rd.problems[b].transport_cost, rh.problems[b].transport_cost,
                  1e-5 * rh.problems[b].transport_cost);
    }
    // Derived outputs of device views run on the device too.
    const auto map_h = otgpu::barycentric_map(ph, rh);
    const auto map_d = otgpu::barycentric_map(pd, rh);
    ASSERT_EQ(map_h.size(), map_d.size());
    for (std::size_t q = 0; q < map_h.size(); ++q) ASSERT_NEAR(map_d[q], map_h[q], 1e-5);
    const auto grad_h = otgpu::gradient_x(ph, rh);
    const auto grad_d = otgpu::gradient_x(pd, rh);
    for (std::size_t q = 0; q < grad_h.size(); ++q) {
      ASSERT_NEAR(grad_d[q], grad_h[q], 1e-4 * std::abs(grad_h[q]) + 1e-7);
    }
    const auto s_h = otgpu::sample_partners(ph, rh, 7);
    const auto s_d = otgpu::sample_partners(pd, rh, 7);
    std::size_t same = 0;
    for (std::size_t q = 0; q < s_h.size(); ++q) same += s_h[q] == s_d[q];
    EXPECT_GE(static_cast<double>(same), 0.97 * static_cast<double>(s_h.size()));
  }

  // Cost matrices: contiguous f32 (read in place) and strided f64 (staged), relative
  // eps (mean of C on the device).
  const auto cd = uniform(static_cast<std::size_t>(B * n * m), 45, 0.0, 2.0);
  std::vector<float> cf(cd.begin(), cd.end());
  DeviceBuffer<double> dcd(cd);
  DeviceBuffer<float> dcf(cf);
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.max_iter = 25;
  o.check_every = 0;
  o.backend = Backend::cuda;
  SinkhornProblem mh;
  mh.cost_kind = CostKind::matrix;
  mh.cost = TensorView::host(cf.data(), {B, n, m});
  mh.b = ph.b;
  const auto rm = otgpu::sinkhorn(mh, o);
  SinkhornProblem md = mh;
  md.b = pd.b;
  for (const TensorView& cv : {on_device(TensorView::host(cf.data(), {B, n, m}), dcf.data()),
                               on_device(TensorView::host(cd.data(), {B, n, m}), dcd.data())}) {
    md.cost = cv;
    const auto r = otgpu::sinkhorn(md, o);
    for (std::size_t q = 0; q < rm.g.size(); ++q) {
      ASSERT_NEAR(r.g[q], rm.g[q], 1e-5 * (1 + std::abs(rm.g[q]))) << "g[" << q << "]";
    }
    for (std::size_t b = 0; b < rm.problems.size(); ++b) {
      EXPECT_NEAR(r.problems[b].eps, rm.problems[b].eps, 1e-6 * rm.problems[b].eps);
      EXPECT_NEAR(r.problems[b].ot_eps, rm.problems[b].ot_eps,
                  1e-5 * (1 + std::abs(rm.problems[b].ot_eps)));
    }
  }
}

/// Bad device data is found on the device and reported with the host's error types
/// and the offending element.
TEST(SinkhornGpuDeviceViews, BadDeviceDataIsReported) {
  REQUIRE_GPU();
  const std::int64_t n = 40, m = 30, d = 2;
  const auto x = uniform(static_cast<std::size_t>(n * d), 51);
  const auto y = uniform(static_cast<std::size_t>(m * d), 52);
  const std::vector<double> a(static_cast<std::size_t>(n), 1.0 / n);
  const std::vector<double> b(static_cast<std::size_t>(m), 1.0 / m);
  SinkhornOptions o;
  o.backend = Backend::cuda;
  o.max_iter = 5;
  auto expect_error = [&](auto mutate, auto tag, const std::string& needle) {
    auto xx = x, yy = y, aa = a, bb = b;
    mutate(xx, yy, aa, bb);
    DeviceBuffer<double> dx(xx), dy(yy), da(aa), dbw(bb);
    SinkhornProblem p;
    p.x = TensorView::device(dx.data(), {n, d});
    p.y = TensorView::device(dy.data(), {m, d});
    p.a = TensorView::device(da.data(), {n});
    p.b = TensorView::device(dbw.data(), {m});
    try {
      otgpu::sinkhorn(p, o);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const decltype(tag)& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  using V = std::vector<double>;
  const double inf = std::numeric_limits<double>::infinity();
  expect_error([&](V&, V& yy, V&, V&) { yy[7] = -inf; }, otgpu::NonFiniteInput{""},
               "y: element [3, 1] is -inf");
  expect_error([&](V& xx, V&, V&, V&) { xx[9] = 1e300; }, otgpu::NonFiniteInput{""},
               "x: element [4, 1] is 1e+300, outside the fp32 range");
  expect_error([&](V&, V&, V& aa, V&) { aa[2] = -0.5; }, otgpu::NonFiniteInput{""},
               "a: element [2] is -0.5 (weights must be >= 0)");
  expect_error([&](V&, V&, V&, V& bb) { std::fill(bb.begin(), bb.end(), 0.0); },
               otgpu::InvalidArgument{""}, "b: total mass is 0");
  expect_error([&](V&, V&, V&, V& bb) { bb[0] += 0.5; }, otgpu::InvalidArgument{""},
               "needs equal masses");
  // A relative eps needs a positive mean cost: all points equal.
  o.eps_relative = true;
  expect_error(
      [&](V& xx, V& yy, V&, V&) {
        std::fill(xx.begin(), xx.end(), 0.5);
        std::fill(yy.begin(), yy.end(), 0.5);
      },
      otgpu::InvalidArgument{""}, "mean cost of problem 0 is 0");
}

/// The derived outputs of the stream-ordered API, queued behind sinkhorn_async on
/// the caller's stream, against the CPU's derived outputs at the same (GPU)
/// potentials; the workspace does not grow after the solve.
TEST(SinkhornGpuAsync, DerivedOutputsMatchCpu) {
  REQUIRE_GPU();
  for (CostKind cost : {CostKind::sqeuclidean, CostKind::euclidean}) {
    for (std::int64_t d : {2, 17, 70}) {
      Case k{"async_derived", 2, 257, 190, d, cost, 0.1, true};
      Data D = make(k, 61);
      DeviceBuffer<double> dx(D.x), dy(D.y), da(D.a), db(D.b);
      SinkhornProblem pd;
      pd.cost_kind = cost;
      pd.x = on_device(D.p.x, dx.data());
      pd.y = on_device(D.p.y, dy.data());
      pd.a = on_device(D.p.a, da.data());
      pd.b = on_device(D.p.b, db.data());
      SinkhornOptions o;
      o.eps = 0.1;  // absolute: the CPU comparison below needs no per-problem scale
      o.max_iter = 60;
      o.check_every = 0;
      o.backend = Backend::cuda;
      const auto nB = static_cast<std::size_t>(k.B * k.n), mB = static_cast<std::size_t>(k.B * k.m);
      DeviceBuffer<float> df(nB), dg(mB), dmap(nB * static_cast<std::size_t>(d)),
          dgrad(nB * static_cast<std::size_t>(d));
      DeviceBuffer<std::int64_t> dsamp(nB);
      cudaStream_t stream = nullptr;
      ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
      {
        otgpu::GpuContext ctx(0, stream);
        otgpu::DeviceSinkhornOutputs out;
        out.f = df.data();
        out.g = dg.data();
        otgpu::sinkhorn_async(ctx, pd, o, out);
        const std::size_t grown = ctx.workspace_bytes();
        otgpu::barycentric_map_async(ctx, pd, o, dg.data(), dmap.data());
        otgpu::gradient_x_async(ctx, pd, o, df.data(), dg.data(), dgrad.data());
        otgpu::sample_partners_async(ctx, pd, o, dg.data(), 99, dsamp.data());
        EXPECT_EQ(ctx.workspace_bytes(), grown) << "derived outputs reallocated";
        ctx.synchronize();
      }
      cudaStreamDestroy(stream);
      const auto f = df.to_host(), g = dg.to_host();
      SinkhornResult at;  // the GPU's potentials, evaluated by the CPU
      at.backend = Backend::cpu;
      at.batch = k.B;
      at.n = k.n;
      at.m = k.m;
      at.d = d;
      at.f.assign(f.begin(), f.end());
      at.g.assign(g.begin(), g.end());
      at.problems.resize(static_cast<std::size_t>(k.B));
      for (auto& r : at.problems) r.eps = o.eps;
      const auto map_c = otgpu::barycentric_map(D.p, at);
      const auto map_g = dmap.to_host();
      ASSERT_EQ(map_c.size(), map_g.size());
      for (std::size_t q = 0; q < map_c.size(); ++q) {
        ASSERT_NEAR(map_g[q], map_c[q], 2e-4) << "map d=" << d << " at " << q;
      }
      const auto grad_c = otgpu::gradient_x(D.p, at);
      const auto grad_g = dgrad.to_host();
      for (std::size_t q = 0; q < grad_c.size(); ++q) {
        ASSERT_NEAR(grad_g[q], grad_c[q], 2e-4 * std::abs(grad_c[q]) + 4e-6)
            << "grad d=" << d << " at " << q;
      }
      const auto s_c = otgpu::sample_partners(D.p, at, 99);
      const auto s_g = dsamp.to_host();
      std::size_t same = 0;
      for (std::size_t q = 0; q < s_c.size(); ++q) same += s_c[q] == s_g[q];
      EXPECT_GE(static_cast<double>(same), 0.97 * static_cast<double>(s_c.size()));
    }
  }
}

/// The async derived calls refuse what they cannot do, before queueing anything.
TEST(SinkhornGpuAsync, DerivedOutputsRejectBadArguments) {
  REQUIRE_GPU();
  std::vector<double> c(12, 1.0);
  DeviceBuffer<double> dc(c);
  DeviceBuffer<float> buf(16);
  SinkhornProblem p;
  p.cost_kind = CostKind::matrix;
  p.cost = TensorView::device(dc.data(), {3, 4});
  SinkhornOptions o;
  otgpu::GpuContext ctx(0, nullptr);
  EXPECT_THROW(otgpu::barycentric_map_async(ctx, p, o, buf.data(), buf.data()),
               otgpu::InvalidArgument);  // a cost matrix has no points to average
  EXPECT_THROW(otgpu::gradient_x_async(ctx, p, o, nullptr, buf.data(), buf.data()),
               otgpu::InvalidArgument);
  EXPECT_THROW(otgpu::sample_partners_async(ctx, p, o, buf.data(), 1, nullptr),
               otgpu::InvalidArgument);
}

}  // namespace

#else  // !OTGPU_WITH_CUDA

TEST(SinkhornGpu, RequiresCudaBuild) { GTEST_SKIP() << "built without CUDA"; }

#endif
