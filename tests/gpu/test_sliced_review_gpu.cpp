// Review of the CUDA sliced Wasserstein sort (kernels/src/sliced.cu): one device-wide
// radix sort of 64-bit keys, segment id above the fp32 value's order bits.
//  - Exact ties (duplicate points, +0 and -0 among them) are ordered by index, as the
//    CPU reference orders them, so each tied point gets the CPU's quantile pieces and
//    per-point gradient (not only the same total).
//  - Segment counts on both sides of a power of two (the sort's end bit is
//    32 + ceil(log2 segments)) and direction chunks with a remainder.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/sliced.h"

namespace {

using otgpu::SlicedOptions;
using otgpu::SlicedProblem;
using otgpu::SlicedResult;
using otgpu::TensorView;

struct Both {
  SlicedResult cpu, gpu;
};

Both run_both(const SlicedProblem& p, SlicedOptions o) {
  Both r;
  o.backend = otgpu::Backend::cpu;
  r.cpu = otgpu::sliced_wasserstein(p, o);
  o.backend = otgpu::Backend::cuda;
  r.gpu = otgpu::sliced_wasserstein(p, o);
  return r;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double e : v) m = std::max(m, std::fabs(e));
  return m;
}

TEST(SlicedReviewGpu, TiedPointsGetTheCpuPerPointGradients) {
  REQUIRE_GPU();
  // x: 4 copies of the origin (two written as -0.0) and 3 copies of (0.25, 0.5), then
  // distinct points; weighted a: each tied copy carries another mass, so which copy
  // takes which quantile piece decides its gradient.
  const std::int64_t n = 12, m = 9, d = 2;
  std::vector<float> x = {0.0f,  0.0f, -0.0f, -0.0f, 0.0f,  -0.0f, -0.0f, 0.0f,
                          0.25f, 0.5f, 0.25f, 0.5f,  0.25f, 0.5f,  0.9f,  0.1f,
                          0.3f,  0.7f, 0.6f,  0.2f,  0.8f,  0.8f,  0.1f,  0.4f};
  std::vector<float> y(static_cast<std::size_t>(m * d));
  const auto yv = otgpu_test::uniform(y.size(), 21, -0.5, 1.5);
  std::copy(yv.begin(), yv.end(), y.begin());
  std::vector<double> a = otgpu_test::uniform(static_cast<std::size_t>(n), 22, 0.1, 1.0);
  SlicedProblem p;
  p.x = TensorView::host(x.data(), {n, d});
  p.y = TensorView::host(y.data(), {m, d});
  p.a = TensorView::host(a.data(), {n});
  // Directions with exact fp32 projections of the grid points (columns of [d, L]):
  // the tied copies project to exactly equal values on both backends.
  std::vector<double> dirs = {1.0, 0.0, 1.0, -1.0, 0.0, 1.0, 1.0, 1.0};  // [2, 4]
  SlicedOptions o;
  o.projections = 4;
  o.directions = TensorView::host(dirs.data(), {d, 4});
  o.gradients = true;
  o.p = 2.0;
  const Both r = run_both(p, o);
  ASSERT_EQ(r.gpu.grad_x.size(), r.cpu.grad_x.size());
  const double scale = max_abs(r.cpu.grad_x);
  ASSERT_GT(scale, 0.0);
  for (std::size_t k = 0; k < r.cpu.grad_x.size(); ++k)
    EXPECT_NEAR(r.gpu.grad_x[k], r.cpu.grad_x[k], 1e-4 * scale) << "grad_x[" << k << "]";
  for (std::size_t k = 0; k < r.cpu.value.size(); ++k)
    EXPECT_NEAR(r.gpu.value[k], r.cpu.value[k], 1e-4 * r.cpu.value[k] + 1e-9);
}

TEST(SlicedReviewGpu, SegmentCountsAroundPowersOfTwo) {
  REQUIRE_GPU();
  // B x L segments of 127, 128, 129, 255, 256, 257: the end bit of the sort moves
  // with ceil(log2 segments); a segment id that did not fit would merge segments.
  const std::int64_t n = 33, m = 17, d = 3;
  const std::pair<std::int64_t, int> cases[] = {{1, 127}, {1, 128}, {3, 43},
                                                {5, 51},  {2, 128}, {1, 257}};
  for (const auto& [B, L] : cases) {
    SCOPED_TRACE(B * L);
    auto xv = otgpu_test::uniform(static_cast<std::size_t>(B * n * d), 31);
    auto yv = otgpu_test::uniform(static_cast<std::size_t>(B * m * d), 32, 0.2, 1.2);
    std::vector<float> x(xv.begin(), xv.end()), y(yv.begin(), yv.end());
    SlicedProblem p;
    p.x = TensorView::host(x.data(), {B, n, d});
    p.y = TensorView::host(y.data(), {B, m, d});
    SlicedOptions o;
    o.projections = L;
    o.seed = 7;
    const Both r = run_both(p, o);
    ASSERT_EQ(r.gpu.per_direction.size(), r.cpu.per_direction.size());
    for (std::size_t k = 0; k < r.cpu.per_direction.size(); ++k)
      EXPECT_NEAR(r.gpu.per_direction[k], r.cpu.per_direction[k],
                  2e-4 * r.cpu.per_direction[k] + 1e-9)
          << "term " << k;
  }
}

TEST(SlicedReviewGpu, DirectionChunksWithARemainder) {
  REQUIRE_GPU();
  // 2^26 sorted elements per chunk: n = 2^19 + 3 gives 127 directions per chunk, so
  // L = 130 runs a chunk of 127 and one of 3 (another segment count and end bit).
  const std::int64_t n = (std::int64_t{1} << 19) + 3, m = std::int64_t{1} << 18, d = 2;
  const int L = 130;
  auto xv = otgpu_test::uniform(static_cast<std::size_t>(n * d), 41);
  auto yv = otgpu_test::uniform(static_cast<std::size_t>(m * d), 42, 0.1, 1.1);
  std::vector<float> x(xv.begin(), xv.end()), y(yv.begin(), yv.end());
  SlicedProblem p;
  p.x = TensorView::host(x.data(), {n, d});
  p.y = TensorView::host(y.data(), {m, d});
  SlicedOptions o;
  o.projections = L;
  o.seed = 3;
  const Both r = run_both(p, o);
  ASSERT_EQ(r.gpu.per_direction.size(), static_cast<std::size_t>(L));
  for (std::size_t k = 0; k < r.cpu.per_direction.size(); ++k)
    EXPECT_NEAR(r.gpu.per_direction[k], r.cpu.per_direction[k],
                1e-3 * r.cpu.per_direction[k] + 1e-9)
        << "term " << k;
}

}  // namespace
