// The Euclidean cost of the tensor-core kernels near x = y (kernels/src/sinkhorn_online_mma.cu:
// euclid_tile_c2, near_pairs_direct; the rule and its bound in otgpu/detail/tf32.h,
// replayed on the CPU by tests/test_mma_emulation.cpp). The Euclidean cost runs on the
// tensor cores where its SIMT tile does not fit (padded d above ~880): a Sinkhorn
// divergence's self term OT(a, a) at d = 1000 or 3072 puts a coincident pair on every
// diagonal. With the norm form alone those pairs cost ~2e-3 of the mean cost instead of
// 0, and at small eps the diagonal dominates each row's log-sum-exp, so the potentials
// move by that much: above the tolerance below, (2e-4 + 2 T bound) x mean(C) as in
// tests/gpu/test_sinkhorn_mma_gpu.cpp. Near pairs (y = x + 1e-2 z: flagged, not zero)
// take the direct form too. The derived outputs (barycentric map, gradient: the tiled
// weighted-mean kernel, whose gradient divides by the cost) are checked at d = 3072.
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

struct NearCase {
  std::int64_t d;
  double step;     ///< y = x + step z (0: the self term)
  double eps_rel;  ///< eps / mean(C)
};

std::string near_name(const ::testing::TestParamInfo<NearCase>& info) {
  const NearCase& k = info.param;
  return fmt::format("d{}_{}_eps1em{}", k.d, k.step == 0.0 ? "self" : "near",
                     static_cast<int>(std::round(-std::log10(k.eps_rel))));
}

struct SelfClouds {
  std::vector<float> x, y;
  otgpu::SinkhornProblem p;
};

/// x [n, d] = 1e4 + N(0, 1), y = x (+ step N(0, 1)); Euclidean cost.
SelfClouds make_self(std::int64_t n, std::int64_t d, double step, std::uint32_t seed) {
  SelfClouds c;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  c.x.resize(static_cast<std::size_t>(n * d));
  for (float& v : c.x) v = 1e4f + nd(rng);
  c.y = c.x;
  if (step != 0.0)
    for (float& v : c.y) v = static_cast<float>(v + step * nd(rng));
  c.p.x = otgpu::TensorView::host(c.x.data(), {n, d});
  c.p.y = otgpu::TensorView::host(c.y.data(), {n, d});
  c.p.cost_kind = CostKind::euclidean;
  return c;
}

SinkhornOptions fixed(double eps_rel, int iters, Backend be) {
  SinkhornOptions o;
  o.eps = eps_rel;
  o.eps_relative = true;
  o.max_iter = iters;
  o.check_every = 0;
  o.eps_init = 0;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.backend = be;
  return o;
}

double worst_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double w = 0;
  for (std::size_t k = 0; k < a.size(); ++k) w = std::max(w, std::abs(a[k] - b[k]));
  return w;
}

class MmaNearVsCpu : public ::testing::TestWithParam<NearCase> {};

TEST_P(MmaNearVsCpu, SelfTermPotentialsMatchTheFp64Reference) {
  REQUIRE_GPU();
  const NearCase k = GetParam();
  const std::int64_t n = 200;  // not a multiple of the 64-row block
  const int iters = 10;
  SelfClouds c = make_self(n, k.d, k.step, static_cast<std::uint32_t>(7 + k.d));
  const SinkhornResult cpu = otgpu::sinkhorn(c.p, fixed(k.eps_rel, iters, Backend::cpu));
  const SinkhornResult gpu = otgpu::sinkhorn(c.p, fixed(k.eps_rel, iters, Backend::cuda));
  ASSERT_EQ(gpu.backend, Backend::cuda);
  EXPECT_TRUE(gpu.tensor_cores);  // the Euclidean SIMT tile does not fit at these d
  EXPECT_EQ(gpu.precision, Precision::fp32);
  const double mean_c = cpu.problems[0].eps / k.eps_rel;
  const double bound = k.d > 1000 ? 2e-5 : 5e-6;  // test_sinkhorn_mma_gpu.cpp's cost_bound
  const double tol = (2e-4 + 2.0 * iters * bound) * mean_c;
  ASSERT_EQ(gpu.f.size(), cpu.f.size());
  ASSERT_EQ(gpu.g.size(), cpu.g.size());
  EXPECT_LE(worst_diff(gpu.f, cpu.f), tol) << "mean C " << mean_c;
  EXPECT_LE(worst_diff(gpu.g, cpu.g), tol) << "mean C " << mean_c;
  EXPECT_NEAR(gpu.problems[0].ot_eps, cpu.problems[0].ot_eps, tol);
  EXPECT_NEAR(gpu.problems[0].transport_cost, cpu.problems[0].transport_cost, tol);
}

std::vector<NearCase> near_cases() {
  std::vector<NearCase> v;
  for (std::int64_t d : {1000, 3072}) {
    v.push_back({d, 0.0, 1e-1});
    v.push_back({d, 0.0, 1e-2});
    v.push_back({d, 1e-2, 1e-2});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Dims, MmaNearVsCpu, ::testing::ValuesIn(near_cases()), near_name);

// The derived outputs of the self term at d = 3072 (the tiled weighted-mean kernel):
// the map sends x_i to about itself, the gradient's coincident pair contributes 0 (the
// CPU's rule at C = 0), not w / C of a spurious ~2e-3 mean(C) cost.
TEST(MmaNearGpu, SelfTermDerivedOutputsAtD3072) {
  REQUIRE_GPU();
  SelfClouds c = make_self(130, 3072, 0.0, 99);
  const SinkhornResult cpu = otgpu::sinkhorn(c.p, fixed(0.1, 6, Backend::cpu));
  SinkhornResult as_gpu = cpu;
  as_gpu.backend = Backend::cuda;
  as_gpu.device = 0;
  const auto map_c = otgpu::barycentric_map(c.p, cpu);
  const auto map_g = otgpu::barycentric_map(c.p, as_gpu);
  ASSERT_EQ(map_c.size(), map_g.size());
  EXPECT_LE(worst_diff(map_g, map_c), 2e-3) << "map";  // coordinates span ~1 (centred)
  const auto grad_c = otgpu::gradient_x(c.p, cpu);
  const auto grad_g = otgpu::gradient_x(c.p, as_gpu);
  ASSERT_EQ(grad_c.size(), grad_g.size());
  double gmax = 0;
  for (double v : grad_c) gmax = std::max(gmax, std::abs(v));
  EXPECT_LE(worst_diff(grad_g, grad_c), 2e-3 * gmax) << "gradient";
}

}  // namespace
