// The CUDA sliced Wasserstein path against the CPU reference (same directions from
// the same seed; fp32 projections on the GPU, fp64 on the CPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu/sliced.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/gpu_context_impl.h"
#include "otgpu/device.h"
#endif

namespace {

using otgpu::Backend;
using otgpu::SlicedOptions;
using otgpu::SlicedProblem;
using otgpu::SlicedResult;
using otgpu::TensorView;

using otgpu_test::uniform;
#ifdef OTGPU_WITH_CUDA
using otgpu_test::DeviceBuffer;
#endif

double rel_l2(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t k = 0; k < ref.size(); ++k) {
    num += (got[k] - ref[k]) * (got[k] - ref[k]);
    den += ref[k] * ref[k];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct Case {
  std::int64_t B, n, m, d;
  int L;
  double p;
  bool weighted_a, weighted_b, batched_a;
  bool batched_b;
  /// Every third weight of a and b set to zero: flat stretches of the cumulative
  /// weights, where the merge-path split lands on ties and zero-mass pieces.
  bool zero_weights;
};

/// Runs the case on both backends and compares values, per-direction terms and
/// gradients.
void compare(const Case& c, bool max_sliced = false) {
  auto x = uniform(static_cast<std::size_t>(c.B * c.n * c.d), 1);
  auto y = uniform(static_cast<std::size_t>(c.B * c.m * c.d), 2, 0.1, 1.1);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
  auto a = uniform(static_cast<std::size_t>((c.batched_a ? c.B : 1) * c.n), 3, 0.0, 1.0);
  auto b = uniform(static_cast<std::size_t>((c.batched_b ? c.B : 1) * c.m), 4, 0.2, 1.0);
  if (c.zero_weights) {
    for (std::size_t k = 0; k < a.size(); k += 3) a[k] = 0.0;
    for (std::size_t k = 1; k < b.size(); k += 3) b[k] = 0.0;
  }
  SlicedProblem pr;
  // The GPU computes in fp32: both backends read the same fp32 data.
  pr.x = TensorView::host(xf.data(), {c.B, c.n, c.d});
  pr.y = TensorView::host(yf.data(), {c.B, c.m, c.d});
  if (c.weighted_a) {
    pr.a = c.batched_a ? TensorView::host(a.data(), {c.B, c.n}) : TensorView::host(a.data(), {c.n});
  }
  if (c.weighted_b) {
    pr.b = c.batched_b ? TensorView::host(b.data(), {c.B, c.m}) : TensorView::host(b.data(), {c.m});
  }
  SlicedOptions o;
  o.projections = c.L;
  o.p = c.p;
  o.seed = 42;
  o.gradients = true;
  o.max_sliced = max_sliced;
  o.backend = Backend::cpu;
  const SlicedResult cpu = otgpu::sliced_wasserstein(pr, o);
  o.backend = Backend::cuda;
  const SlicedResult gpu = otgpu::sliced_wasserstein(pr, o);
  EXPECT_EQ(gpu.backend, Backend::cuda);
  ASSERT_EQ(gpu.per_direction.size(), cpu.per_direction.size());
  for (std::size_t k = 0; k < cpu.per_direction.size(); ++k) {
    EXPECT_NEAR(gpu.per_direction[k], cpu.per_direction[k], 2e-4 * cpu.per_direction[k] + 1e-9)
        << "term " << k;
  }
  for (std::size_t k = 0; k < cpu.value.size(); ++k) {
    EXPECT_NEAR(gpu.value[k], cpu.value[k], 1e-4 * cpu.value[k] + 1e-9) << "problem " << k;
  }
  ASSERT_EQ(gpu.grad_x.size(), cpu.grad_x.size());
  ASSERT_EQ(gpu.grad_y.size(), cpu.grad_y.size());
  EXPECT_LT(rel_l2(gpu.grad_x, cpu.grad_x), 2e-3);
  EXPECT_LT(rel_l2(gpu.grad_y, cpu.grad_y), 2e-3);
}

TEST(SlicedGpu, MatchesCpuUniform) {
  REQUIRE_GPU();
  compare({1, 1000, 1000, 8, 32, 2.0, false, false, false, false, false});
}

TEST(SlicedGpu, MatchesCpuTailsAndUnequalSizes) {
  REQUIRE_GPU();
  // n = 1, n = block + 1, primes, n != m: the merge-path split and tails.
  compare({1, 1, 1, 3, 5, 2.0, false, false, false, false, false});
  compare({2, 1, 17, 3, 5, 2.0, false, false, false, false, false});
  compare({3, 257, 1031, 5, 7, 2.0, false, false, false, false, false});
  compare({1, 4099, 263, 2, 9, 1.0, false, false, false, false, false});
  compare({1, 70001, 65537, 4, 6, 2.0, false, false, false, false, false});
}

TEST(SlicedGpu, MatchesCpuWeighted) {
  REQUIRE_GPU();
  compare({4, 300, 211, 6, 16, 2.0, true, true, true, false, false});
  compare({2, 1025, 999, 3, 8, 3.0, true, false, false, false, false});
  compare({2, 513, 2049, 3, 8, 1.5, false, true, false, false, false});
  // b batched per problem (a shared), p = 1.
  compare({3, 401, 389, 4, 10, 1.0, true, true, false, true, false});
}

TEST(SlicedGpu, MatchesCpuZeroWeights) {
  REQUIRE_GPU();
  // Flat stretches of the cumulative weights: ties in the merge-path split, zero-mass
  // pieces, points that receive no mass (zero gradient on both backends).
  compare({2, 1000, 700, 3, 8, 2.0, true, true, true, true, true});
  compare({1, 3000, 2500, 2, 5, 1.0, true, false, false, false, true});
  compare({1, 300, 4000, 2, 5, 2.0, false, true, false, false, true});
}

TEST(SlicedGpu, MatchesCpuOneDimensionAndHighDimension) {
  REQUIRE_GPU();
  compare({5, 100, 70, 1, 3, 2.0, true, true, true, false, false});
  compare({1, 512, 512, 3072, 16, 2.0, false, false, false, false, false});
}

TEST(SlicedGpu, MatchesCpuMaxSliced) {
  REQUIRE_GPU();
  compare({3, 200, 150, 4, 24, 2.0, true, false, true, false, false}, true);
}

TEST(SlicedGpu, SeveralDirectionChunks) {
  REQUIRE_GPU();
  // 600000 points per side: the GPU sorts 2^26 elements per chunk, so 130
  // directions take two chunks (the second one partial).
  compare({1, 600000, 600000, 2, 130, 2.0, false, false, false, false, false});
}

TEST(SlicedGpu, MaxSlicedSeveralDirectionChunks) {
  REQUIRE_GPU();
  // 2^20 points per side: 64 directions per chunk, so 70 take two chunks and the
  // gradient pass of max-sliced recomputes only the chunk holding the selected term.
  compare({1, 1 << 20, 1 << 20, 2, 70, 2.0, false, false, false, false, false}, true);
}

TEST(SlicedGpu, Wasserstein1DMatchesCpu) {
  REQUIRE_GPU();
  auto x = uniform(3 * 777, 5), y = uniform(3 * 500, 6, -1, 1);
  auto a = uniform(3 * 777, 7, 0, 1);
  for (double p : {1.0, 2.0}) {
    const auto c = otgpu::wasserstein_1d(TensorView::host(x.data(), {3, 777}),
                                         TensorView::host(y.data(), {3, 500}),
                                         TensorView::host(a.data(), {3, 777}), {}, p, Backend::cpu);
    const auto g = otgpu::wasserstein_1d(
        TensorView::host(x.data(), {3, 777}), TensorView::host(y.data(), {3, 500}),
        TensorView::host(a.data(), {3, 777}), {}, p, Backend::cuda);
    ASSERT_EQ(g.size(), 3u);
    for (std::size_t k = 0; k < 3; ++k) EXPECT_NEAR(g[k], c[k], 1e-5 * c[k]);
  }
}

TEST(SlicedGpu, ExplicitDirectionsAndSeedsAgreeWithCpu) {
  REQUIRE_GPU();
  const std::int64_t n = 300, d = 5;
  const int L = 12;
  auto x = uniform(n * d, 8), y = uniform(n * d, 9);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
  auto dirs = uniform(static_cast<std::size_t>(d * L), 10, -1, 1);
  SlicedProblem pr;
  pr.x = TensorView::host(xf.data(), {n, d});
  pr.y = TensorView::host(yf.data(), {n, d});
  SlicedOptions o;
  o.directions = TensorView::host(dirs.data(), {d, L});
  o.backend = Backend::cpu;
  const auto c = otgpu::sliced_wasserstein(pr, o);
  o.backend = Backend::cuda;
  const auto g = otgpu::sliced_wasserstein(pr, o);
  for (int l = 0; l < L; ++l)
    EXPECT_NEAR(g.per_direction[l], c.per_direction[l], 2e-4 * c.per_direction[l]);
  // Different seeds give different directions on the GPU too.
  SlicedOptions s1, s2;
  s1.backend = s2.backend = Backend::cuda;
  s1.seed = 1;
  s2.seed = 2;
  EXPECT_NE(otgpu::sliced_wasserstein(pr, s1).per_direction,
            otgpu::sliced_wasserstein(pr, s2).per_direction);
}

#ifdef OTGPU_WITH_CUDA
TEST(SlicedGpu, DeviceMemoryInputsStridedAndDouble) {
  REQUIRE_GPU();
  const std::int64_t B = 2, n = 333, m = 222, d = 7;
  auto x = uniform(static_cast<std::size_t>(B * n * d), 11);
  auto y = uniform(static_cast<std::size_t>(B * m * d), 12);
  auto a = uniform(static_cast<std::size_t>(B * n), 13, 0.1, 1);
  // a is read with stride 2 out of an interleaved buffer.
  std::vector<double> a2(2 * a.size(), -1.0);
  for (std::size_t k = 0; k < a.size(); ++k) a2[2 * k] = a[k];
  const DeviceBuffer<double> dx(x), dy(y), da(a2);
  const int L = 10;
  auto dirs = otgpu::sliced_directions(d, L, 3);
  const DeviceBuffer<double> ddir(dirs);

  SlicedProblem hp, dp;
  hp.x = TensorView::host(x.data(), {B, n, d});
  hp.y = TensorView::host(y.data(), {B, m, d});
  hp.a = TensorView::host(a.data(), {B, n});
  dp.x = TensorView::device(dx.data(), {B, n, d});
  dp.y = TensorView::device(dy.data(), {B, m, d});
  dp.a = TensorView::device(da.data(), {B, n});
  dp.a.strides = {2 * n, 2, 0};
  SlicedOptions o;
  o.projections = L;
  o.seed = 3;
  o.gradients = true;
  o.backend = Backend::cpu;
  const auto c = otgpu::sliced_wasserstein(hp, o);
  o.backend = Backend::automatic;  // device memory selects the GPU
  const auto g = otgpu::sliced_wasserstein(dp, o);
  EXPECT_EQ(g.backend, Backend::cuda);
  for (std::size_t k = 0; k < c.per_direction.size(); ++k) {
    EXPECT_NEAR(g.per_direction[k], c.per_direction[k], 2e-4 * c.per_direction[k]);
  }
  EXPECT_LT(rel_l2(g.grad_x, c.grad_x), 2e-3);
  // Device-resident explicit directions.
  o.directions = TensorView::device(ddir.data(), {d, L});
  const auto gd = otgpu::sliced_wasserstein(dp, o);
  for (std::size_t k = 0; k < c.per_direction.size(); ++k) {
    EXPECT_NEAR(gd.per_direction[k], c.per_direction[k], 2e-4 * c.per_direction[k]);
  }
  // The CPU backend refuses device memory.
  o.backend = Backend::cpu;
  EXPECT_THROW(otgpu::sliced_wasserstein(dp, o), otgpu::InvalidArgument);
}

TEST(SlicedGpu, DeviceMemoryFloatZeroCopyAndStrided) {
  REQUIRE_GPU();
  // x: contiguous f32 [n, d] (used in place, no staging copy); y: f32 [m, d] read with
  // a padded row stride; a: contiguous f32 [n] (converted to f64); b: f64 [m] in place.
  const std::int64_t n = 517, m = 301, d = 4, pad = 3;
  const auto x = uniform(static_cast<std::size_t>(n * d), 21);
  const auto y = uniform(static_cast<std::size_t>(m * d), 22, -0.5, 1.5);
  const auto a = uniform(static_cast<std::size_t>(n), 23, 0.1, 1.0);
  const auto b = uniform(static_cast<std::size_t>(m), 24, 0.1, 1.0);
  std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end()), af(a.begin(), a.end());
  std::vector<float> ypad(static_cast<std::size_t>(m * (d + pad)), 1e30f);
  for (std::int64_t j = 0; j < m; ++j)
    for (std::int64_t k = 0; k < d; ++k)
      ypad[static_cast<std::size_t>(j * (d + pad) + k)] = yf[static_cast<std::size_t>(j * d + k)];
  const DeviceBuffer<float> dxp(xf), dyp(ypad), dap(af);
  const DeviceBuffer<double> dbp(b);

  SlicedProblem hp, dp;
  hp.x = TensorView::host(xf.data(), {n, d});
  hp.y = TensorView::host(yf.data(), {m, d});
  hp.a = TensorView::host(af.data(), {n});
  hp.b = TensorView::host(b.data(), {m});
  dp.x = TensorView::device(dxp.data(), {n, d});
  dp.y = TensorView::device(dyp.data(), {m, d});
  dp.y.strides = {d + pad, 1, 0};
  dp.a = TensorView::device(dap.data(), {n});
  dp.b = TensorView::device(dbp.data(), {m});
  SlicedOptions o;
  o.projections = 9;
  o.seed = 7;
  o.p = 1.5;
  o.gradients = true;
  o.backend = Backend::cpu;
  const auto c = otgpu::sliced_wasserstein(hp, o);
  o.backend = Backend::cuda;
  const auto g = otgpu::sliced_wasserstein(dp, o);
  ASSERT_EQ(g.per_direction.size(), c.per_direction.size());
  for (std::size_t k = 0; k < c.per_direction.size(); ++k) {
    EXPECT_NEAR(g.per_direction[k], c.per_direction[k], 2e-4 * c.per_direction[k]) << "term " << k;
  }
  EXPECT_LT(rel_l2(g.grad_x, c.grad_x), 2e-3);
  EXPECT_LT(rel_l2(g.grad_y, c.grad_y), 2e-3);
  // The caller's device data is left untouched.
  EXPECT_EQ(dxp.to_host(), xf);
}

TEST(SlicedGpu, HostDoubleStridedInputsMatchCpu) {
  REQUIRE_GPU();
  // Host views the kernels cannot read as they are: f64 points read with stride 2
  // out of an interleaved buffer, f32 weights with stride 3. They are copied raw
  // (strides and all) to the device and laid out there.
  const std::int64_t B = 2, n = 301, m = 177, d = 5;
  const auto x = uniform(static_cast<std::size_t>(2 * B * n * d), 31);
  const auto y = uniform(static_cast<std::size_t>(B * m * d), 32, -0.5, 1.5);
  const auto a = uniform(static_cast<std::size_t>(3 * n), 33, 0.1, 1.0);
  const std::vector<float> af(a.begin(), a.end());
  SlicedProblem pr;
  pr.x = TensorView::host(x.data(), {B, n, d});
  pr.x.strides = {2 * n * d, 2 * d, 2};
  pr.y = TensorView::host(y.data(), {B, m, d});
  pr.a = TensorView::host(af.data(), {n});
  pr.a.strides = {3, 0, 0};
  SlicedOptions o;
  o.projections = 13;
  o.seed = 9;
  o.gradients = true;
  o.backend = Backend::cpu;
  const auto c = otgpu::sliced_wasserstein(pr, o);
  o.backend = Backend::cuda;
  const auto g = otgpu::sliced_wasserstein(pr, o);
  ASSERT_EQ(g.per_direction.size(), c.per_direction.size());
  for (std::size_t k = 0; k < c.per_direction.size(); ++k) {
    EXPECT_NEAR(g.per_direction[k], c.per_direction[k], 2e-4 * c.per_direction[k]) << "term " << k;
  }
  EXPECT_LT(rel_l2(g.grad_x, c.grad_x), 2e-3);
  EXPECT_LT(rel_l2(g.grad_y, c.grad_y), 2e-3);
}

TEST(SlicedGpu, ContextStreamOrderingAndNoAllocationAfterFirstCall) {
  REQUIRE_GPU();
  const std::int64_t B = 3, n = 500, m = 400, d = 6;
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  otgpu::GpuContext ctx(0, stream);
  const auto& rt = ctx.impl();

  auto run = [&](unsigned seed, bool max_sliced) {
    const auto x = uniform(static_cast<std::size_t>(B * n * d), seed);
    const auto y = uniform(static_cast<std::size_t>(B * m * d), seed + 1, 0.2, 1.2);
    const std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
    const DeviceBuffer<float> dx(xf.size());  // zeros
    float* hx = nullptr;
    ASSERT_EQ(cudaMallocHost(&hx, xf.size() * sizeof(float)), cudaSuccess);
    std::copy(xf.begin(), xf.end(), hx);
    // x is written on the context's (non-blocking) stream right before the call: the
    // call must be ordered after that copy, or it reads zeros.
    ASSERT_EQ(
        cudaMemcpyAsync(dx.data(), hx, xf.size() * sizeof(float), cudaMemcpyHostToDevice, stream),
        cudaSuccess);
    SlicedProblem dp, hp;
    dp.x = TensorView::device(dx.data(), {B, n, d});
    hp.x = TensorView::host(xf.data(), {B, n, d});
    hp.y = TensorView::host(yf.data(), {B, m, d});
    const DeviceBuffer<float> dy(yf);
    dp.y = TensorView::device(dy.data(), {B, m, d});
    SlicedOptions o;
    o.projections = 24;
    o.seed = seed;
    o.gradients = true;
    o.max_sliced = max_sliced;
    o.backend = Backend::cpu;
    const auto c = otgpu::sliced_wasserstein(hp, o);
    o.backend = Backend::automatic;
    o.device = 12345;  // ignored: the context fixes the device
    const auto g = otgpu::sliced_wasserstein(ctx, dp, o);
    EXPECT_EQ(g.backend, Backend::cuda);
    ASSERT_EQ(g.per_direction.size(), c.per_direction.size());
    for (std::size_t k = 0; k < c.per_direction.size(); ++k) {
      EXPECT_NEAR(g.per_direction[k], c.per_direction[k], 2e-4 * c.per_direction[k])
          << "term " << k;
    }
    EXPECT_LT(rel_l2(g.grad_x, c.grad_x), 2e-3);
    // The same problem from host memory on the same context.
    o.device = 0;
    const auto h = otgpu::sliced_wasserstein(ctx, hp, o);
    EXPECT_EQ(h.per_direction, g.per_direction);
    (void)cudaFreeHost(hx);
  };
  run(5, false);
  run(6, true);  // max-sliced: a second pass and a second upload through staging
  const auto allocations = rt.allocations();
  const auto workspace = ctx.workspace_bytes();
  EXPECT_GT(allocations, 0);
  run(7, false);
  run(8, true);
  EXPECT_EQ(rt.allocations(), allocations) << "a call of a known size allocated";
  EXPECT_EQ(ctx.workspace_bytes(), workspace);
  // backend cpu with a context is refused.
  SlicedOptions o;
  o.backend = Backend::cpu;
  const std::vector<float> p(12, 0.5f);
  SlicedProblem pr;
  pr.x = TensorView::host(p.data(), {6, 2});
  pr.y = TensorView::host(p.data(), {6, 2});
  EXPECT_THROW(otgpu::sliced_wasserstein(ctx, pr, o), otgpu::InvalidArgument);
  ctx.synchronize();
  (void)cudaStreamDestroy(stream);
}

TEST(SlicedGpu, ContextReleasesItsMemory) {
  REQUIRE_GPU();
  // A problem whose workspace is hundreds of MiB: held while the context lives,
  // returned when it is destroyed.
  const std::int64_t n = std::int64_t{1} << 20, d = 4;
  const auto x = uniform(static_cast<std::size_t>(n * d), 41);
  const std::vector<float> xf(x.begin(), x.end());
  SlicedProblem pr;
  pr.x = TensorView::host(xf.data(), {n, d});
  pr.y = TensorView::host(xf.data(), {n, d});
  SlicedOptions o;
  o.projections = 16;
  std::size_t free0 = 0, free1 = 0, free2 = 0, total = 0;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  std::size_t held = 0;
  {
    otgpu::GpuContext ctx(0);
    const auto r = otgpu::sliced_wasserstein(ctx, pr, o);
    EXPECT_NEAR(r.value[0], 0.0, 1e-12);  // x against itself
    held = ctx.workspace_bytes();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&free2, &total), cudaSuccess);
  EXPECT_GT(held, std::size_t{256} << 20);
  EXPECT_LT(free1 + held / 2, free0) << "the workspace is not held by the context";
  EXPECT_GT(free2 + (std::size_t{128} << 20), free0) << "the workspace outlived the context";
}
#endif

}  // namespace
