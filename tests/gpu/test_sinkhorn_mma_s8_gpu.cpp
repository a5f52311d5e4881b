// The shared-memory layouts of the tensor-core half-step (kernels/src/sinkhorn_online_mma.cu)
// against the fp64 CPU reference, at the dimensions where they change shape: one
// zero-filled chunk (d = 20), a resident block of two chunks whose second is half
// empty (d = 48), the full resident block (d = 64), streamed rows with a partial last
// chunk (d = 68, 3 chunks; d = 100) and whole streamed chunks (d = 128); rows and
// columns not multiples of the 64-row block (the zero-filled tails of the fragment
// staging). Each arithmetic (3xTF32, TF32, bf16) reads its own layout: fragment-order
// split rows for the TF32 arithmetics, swizzled rows for bf16. Tolerances as
// tests/gpu/test_sinkhorn_mma_gpu.cpp (from the CPU model's cost bounds in
// tests/test_mma_emulation.cpp): (2e-4 + 2 T bound) x mean(C) after T iterations.
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
using otgpu::Precision;
using otgpu::SinkhornOptions;
using otgpu::SinkhornResult;

double cost_bound(Precision p) {
  switch (p) {
    case Precision::tf32:
      return 3e-3;
    case Precision::bf16:
      return 1.5e-2;
    default:
      return 5e-6;
  }
}

struct Layout {
  std::int64_t d;
  Precision precision;
  double eps_rel;
};

std::string layout_name(const ::testing::TestParamInfo<Layout>& info) {
  const Layout& k = info.param;
  return fmt::format("d{}_{}_eps1em{}", k.d, otgpu::to_string(k.precision),
                     static_cast<int>(std::round(-std::log10(k.eps_rel))));
}

class MmaLayoutVsCpu : public ::testing::TestWithParam<Layout> {};

TEST_P(MmaLayoutVsCpu, PotentialsMatchTheFp64Reference) {
  REQUIRE_GPU();
  const Layout k = GetParam();
  const std::int64_t n = 601, m = 547;  // a partial last block on both sides
  std::mt19937 rng(static_cast<std::uint32_t>(100 + k.d));
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<std::size_t>(n * k.d)), y(static_cast<std::size_t>(m * k.d));
  for (float& v : x) v = 3e3f + nd(rng);
  for (float& v : y) v = 3e3f + 0.25f + nd(rng);
  otgpu::SinkhornProblem p;
  p.x = otgpu::TensorView::host(x.data(), {n, k.d});
  p.y = otgpu::TensorView::host(y.data(), {m, k.d});
  const int iters = 15;
  SinkhornOptions o;
  o.eps = k.eps_rel;
  o.eps_relative = true;
  o.max_iter = iters;
  o.check_every = 0;
  o.eps_init = 0;
  o.acceleration = otgpu::SinkhornAcceleration::none;
  o.precision = k.precision;
  o.backend = Backend::cpu;
  const SinkhornResult cpu = otgpu::sinkhorn(p, o);
  o.backend = Backend::cuda;
  const SinkhornResult gpu = otgpu::sinkhorn(p, o);
  ASSERT_EQ(gpu.backend, Backend::cuda);
  EXPECT_TRUE(gpu.tensor_cores);
  EXPECT_EQ(gpu.precision, k.precision);
  const double mean_c = cpu.problems[0].eps / k.eps_rel;
  const double tol = (2e-4 + 2.0 * iters * cost_bound(k.precision)) * mean_c;
  ASSERT_EQ(gpu.f.size(), cpu.f.size());
  ASSERT_EQ(gpu.g.size(), cpu.g.size());
  double worst = 0;
  for (std::size_t i = 0; i < cpu.f.size(); ++i)
    worst = std::max(worst, std::abs(gpu.f[i] - cpu.f[i]));
  for (std::size_t j = 0; j < cpu.g.size(); ++j)
    worst = std::max(worst, std::abs(gpu.g[j] - cpu.g[j]));
  EXPECT_LE(worst, tol) << "mean C " << mean_c;
  EXPECT_NEAR(gpu.problems[0].ot_eps, cpu.problems[0].ot_eps, tol);
}

std::vector<Layout> layouts() {
  std::vector<Layout> v;
  for (std::int64_t d : {20, 48, 64, 68, 100, 128}) {
    v.push_back({d, Precision::fp32, 1e-1});
    v.push_back({d, Precision::fp32, 1e-3});
    v.push_back({d, Precision::tf32, 1e-1});
    v.push_back({d, Precision::bf16, 1e-1});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Dims, MmaLayoutVsCpu, ::testing::ValuesIn(layouts()), layout_name);

}  // namespace
