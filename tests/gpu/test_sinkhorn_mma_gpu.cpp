// The tensor-core online half-step (kernels/src/sinkhorn_online_mma.cu) against the
// fp64 CPU reference: d in {16, 17, 33, 64, 100, 3072}, precision fp32 (3xTF32), tf32
// and bf16, points offset by 1e4 (fp32 inputs, so both backends see the same values),
// eps down to 1e-4 of the mean cost, and the derived outputs at d = 3072 (which the
// SIMT kernels cannot launch). Tolerances follow tests/test_mma_emulation.cpp: the
// cost error of the model, relative to the mean cost, is below kCostBound of the
// precision; a fixed number T of iterations moves each potential by at most that per
// half-step, so the potentials agree to (2e-4 + 2 T kCostBound) mean(C).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/sinkhorn.h"

namespace {

using otgpu::Backend;
using otgpu::CostKind;
using otgpu::Precision;
using otgpu::SinkhornOptions;
using otgpu::SinkhornResult;

/// Largest |C_model - C| / mean(C) of the emulation test (with margin), per precision.
double cost_bound(Precision p, std::int64_t d) {
  switch (p) {
    case Precision::tf32:
      return 3e-3;
    case Precision::bf16:
      return 1.5e-2;
    default:
      return d > 1000 ? 2e-5 : 5e-6;
  }
}

struct Clouds {
  std::vector<float> x, y;
  otgpu::SinkhornProblem p;
};

/// x [n, d] and y [m, d]: offset + N(0, 1) per coordinate, y shifted by 0.5.
Clouds make_clouds(std::int64_t n, std::int64_t m, std::int64_t d, double offset,
                   std::uint32_t seed, CostKind cost = CostKind::sqeuclidean) {
  Clouds c;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  c.x.resize(static_cast<std::size_t>(n * d));
  c.y.resize(static_cast<std::size_t>(m * d));
  for (float& v : c.x) v = static_cast<float>(offset) + nd(rng);
  for (float& v : c.y) v = static_cast<float>(offset + 0.5) + nd(rng);
  c.p.x = otgpu::TensorView::host(c.x.data(), {n, d});
  c.p.y = otgpu::TensorView::host(c.y.data(), {m, d});
  c.p.cost_kind = cost;
  return c;
}

SinkhornOptions fixed(double eps_rel, int iters, Backend be, Precision prec) {
  SinkhornOptions o;
  o.eps = eps_rel;
  o.eps_relative = true;
  o.max_iter = iters;
  o.check_every = 0;
  o.eps_init = 0;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.backend = be;
  o.precision = prec;
  return o;
}

void expect_close(const std::vector<double>& gpu, const std::vector<double>& cpu, double tol,
                  const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t k = 0; k < gpu.size(); ++k) {
    const double err = std::abs(gpu[k] - cpu[k]);
    if (!(err <= worst)) {
      worst = err;
      at = k;
    }
  }
  EXPECT_LE(worst, tol) << what << "[" << at << "]: gpu " << gpu[at] << " cpu " << cpu[at];
}

struct Case {
  std::int64_t d;
  Precision precision;
  double eps_rel;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& k = info.param;
  return fmt::format("d{}_{}_eps1em{}", k.d, otgpu::to_string(k.precision),
                     static_cast<int>(std::round(-std::log10(k.eps_rel))));
}

class MmaVsCpu : public ::testing::TestWithParam<Case> {};

// n, m > 512 so that the online kernel (not the small one) runs.
TEST_P(MmaVsCpu, PotentialsAndReportOfOffsetClouds) {
  REQUIRE_GPU();
  const Case k = GetParam();
  const std::int64_t n = 600, m = 530;
  const int iters = k.d > 1000 ? 6 : 20;
  Clouds c = make_clouds(n, m, k.d, 1e4, static_cast<std::uint32_t>(k.d));
  const SinkhornResult cpu =
      otgpu::sinkhorn(c.p, fixed(k.eps_rel, iters, Backend::cpu, k.precision));
  const SinkhornResult gpu =
      otgpu::sinkhorn(c.p, fixed(k.eps_rel, iters, Backend::cuda, k.precision));
  ASSERT_EQ(gpu.backend, Backend::cuda);
  EXPECT_TRUE(gpu.tensor_cores);
  EXPECT_EQ(gpu.precision, k.precision);
  EXPECT_EQ(cpu.precision, Precision::fp64);
  const double mean_c = cpu.problems[0].eps / k.eps_rel;
  const double tol = (2e-4 + 2.0 * iters * cost_bound(k.precision, k.d)) * mean_c;
  expect_close(gpu.f, cpu.f, tol, "f");
  expect_close(gpu.g, cpu.g, tol, "g");
  EXPECT_NEAR(gpu.problems[0].ot_eps, cpu.problems[0].ot_eps, tol);
  EXPECT_NEAR(gpu.problems[0].transport_cost, cpu.problems[0].transport_cost, tol);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (std::int64_t d : {16, 17, 33, 64, 100, 3072}) {
    v.push_back({d, Precision::fp32, 1e-1});
    v.push_back({d, Precision::fp32, 1e-4});
    // The opt-ins where their documented error (1e-3, 1e-2 of the mean cost) is below eps.
    v.push_back({d, Precision::tf32, 1e-1});
    v.push_back({d, Precision::bf16, 1e-1});
  }
  v.push_back({64, Precision::fp32, 1e-2});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Dims, MmaVsCpu, ::testing::ValuesIn(cases()), case_name);

// Column splits (n small against m, B = 1) merge exactly like one pass: the converged
// solve agrees with the CPU and reports 3xTF32.
TEST(MmaGpu, ConvergedWithSplits) {
  REQUIRE_GPU();
  Clouds c = make_clouds(64, 40000, 48, 0.0, 5);
  SinkhornOptions o;
  o.eps = 0.05;
  o.eps_relative = true;
  o.max_iter = 2000;
  o.backend = Backend::cuda;
  const SinkhornResult gpu = otgpu::sinkhorn(c.p, o);
  o.backend = Backend::cpu;
  o.tol = 1e-5;
  const SinkhornResult cpu = otgpu::sinkhorn(c.p, o);
  ASSERT_TRUE(gpu.problems[0].converged);
  EXPECT_TRUE(gpu.tensor_cores);
  EXPECT_EQ(gpu.precision, Precision::fp32);
  const double mean_c = cpu.problems[0].eps / 0.05;
  EXPECT_NEAR(gpu.problems[0].ot_eps, cpu.problems[0].ot_eps, 1e-4 * mean_c);
}

// d = 3072 (the flow-matching size): the solve, the barycentric map, the gradient and
// the sampled partners run (their SIMT tiles do not fit a block) and match the CPU.
TEST(MmaGpu, DerivedOutputsAtD3072) {
  REQUIRE_GPU();
  for (CostKind cost : {CostKind::sqeuclidean, CostKind::euclidean}) {
    SCOPED_TRACE(std::string(otgpu::to_string(cost)));
    Clouds c = make_clouds(520, 513, 3072, 0.0, 11, cost);
    SinkhornOptions o = fixed(0.1, 8, Backend::cpu, Precision::fp32);
    const SinkhornResult cpu = otgpu::sinkhorn(c.p, o);
    SinkhornResult as_gpu = cpu;
    as_gpu.backend = Backend::cuda;
    as_gpu.device = 0;
    const auto map_c = otgpu::barycentric_map(c.p, cpu);
    const auto map_g = otgpu::barycentric_map(c.p, as_gpu);
    ASSERT_EQ(map_c.size(), map_g.size());
    // Weights carry dC / eps ~ 2e-5 / 0.1 relative error; the map spans ~1 per coordinate.
    expect_close(map_g, map_c, 2e-3, "map");
    const auto grad_c = otgpu::gradient_x(c.p, cpu);
    const auto grad_g = otgpu::gradient_x(c.p, as_gpu);
    double gmax = 0;
    for (double v : grad_c) gmax = std::max(gmax, std::abs(v));
    expect_close(grad_g, grad_c, 2e-3 * gmax, "gradient");
    const auto s_c = otgpu::sample_partners(c.p, cpu, 42);
    const auto s_g = otgpu::sample_partners(c.p, as_gpu, 42);
    std::size_t same = 0;
    for (std::size_t q = 0; q < s_c.size(); ++q) same += s_c[q] == s_g[q];
    EXPECT_GE(static_cast<double>(same), 0.9 * static_cast<double>(s_c.size()));
  }
}

}  // namespace
