// The unbalanced Sinkhorn divergence on the CUDA backend (issue 13): the symmetric
// self terms with the unbalanced factor and the mass term eps/2 (m(a) - m(b))^2,
// against the fp64 CPU reference, from host and from device memory.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/sinkhorn.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace {

using otgpu::Backend;
using otgpu::SinkhornOptions;
using otgpu::SinkhornProblem;
using otgpu::TensorView;

struct Unbalanced {
  std::int64_t n = 120, m = 90, d = 2;
  std::vector<double> x, y, a, b;
  explicit Unbalanced(std::uint32_t seed)
      : x(otgpu_test::uniform(static_cast<std::size_t>(n * d), seed)),
        y(otgpu_test::uniform(static_cast<std::size_t>(m * d), seed + 1, 0.2, 1.2)),
        a(otgpu_test::uniform(static_cast<std::size_t>(n), seed + 2, 0.5, 1.5)),
        b(otgpu_test::uniform(static_cast<std::size_t>(m), seed + 3, 0.5, 1.5)) {
    // mass(a) = 0.8, mass(b) = 3.2: the mass term is eps/2 * 2.4^2.
    double sa = 0, sb = 0;
    for (double v : a) sa += v;
    for (double v : b) sb += v;
    for (double& v : a) v *= 0.8 / sa;
    for (double& v : b) v *= 3.2 / sb;
  }
  SinkhornProblem host() const {
    SinkhornProblem p;
    p.x = TensorView::host(x.data(), {n, d});
    p.y = TensorView::host(y.data(), {m, d});
    p.a = TensorView::host(a.data(), {n});
    p.b = TensorView::host(b.data(), {m});
    return p;
  }
};

SinkhornOptions options(Backend backend) {
  SinkhornOptions o;
  o.eps = 0.2;
  o.rho_a = o.rho_b = 0.5;
  o.backend = backend;
  o.max_iter = 20000;
  o.tol = backend == Backend::cpu ? 1e-9 : 1e-4;
  return o;
}

TEST(DivergenceGpu, UnbalancedMatchesTheCpuReference) {
  REQUIRE_GPU();
  const Unbalanced u(1301);
  const auto cpu = otgpu::sinkhorn_divergence(u.host(), options(Backend::cpu));
  const auto gpu = otgpu::sinkhorn_divergence(u.host(), options(Backend::cuda));
  ASSERT_EQ(gpu.size(), 1u);
  EXPECT_GT(cpu[0], 0.0);
  // fp32 terms of magnitude ~ eps m(a) m(b): 1e-3 relative to the largest.
  EXPECT_NEAR(gpu[0], cpu[0], 1e-3 * (1.0 + 0.5 * 0.2 * 2.4 * 2.4));
}

TEST(DivergenceGpu, UnbalancedSelfDivergenceIsZero) {
  REQUIRE_GPU();
  const Unbalanced u(1302);
  SinkhornProblem p = u.host();
  p.y = p.x;
  p.b = p.a;
  const auto gpu = otgpu::sinkhorn_divergence(p, options(Backend::cuda));
  EXPECT_NEAR(gpu[0], 0.0, 1e-4);
}

#ifdef OTGPU_WITH_CUDA
TEST(DivergenceGpu, DeviceMemoryWeightsGiveTheSameMassTerm) {
  REQUIRE_GPU();
  const Unbalanced u(1303);
  const otgpu_test::DeviceBuffer<double> dx(u.x), dy(u.y), da(u.a), db(u.b);
  SinkhornProblem p;
  p.x = TensorView::device(dx.data(), {u.n, u.d});
  p.y = TensorView::device(dy.data(), {u.m, u.d});
  p.a = TensorView::device(da.data(), {u.n});
  p.b = TensorView::device(db.data(), {u.m});
  const auto dev = otgpu::sinkhorn_divergence(p, options(Backend::cuda));
  const auto host = otgpu::sinkhorn_divergence(u.host(), options(Backend::cuda));
  EXPECT_NEAR(dev[0], host[0], 1e-5 * (1.0 + std::abs(host[0])));
}
#endif

}  // namespace
