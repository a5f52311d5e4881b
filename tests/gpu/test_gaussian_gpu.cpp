// The CUDA Gaussian OT path against the CPU reference. Both compute in float64 (the
// GPU with cuSOLVER syevjBatched for d <= 32 and Xsyevd above, the CPU with Jacobi),
// so they agree to round-off of the eigen-decompositions: values within 1e-9 of the
// traces, maps within 1e-8 of their size, for well-conditioned covariances.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gaussian_test_util.h"
#include "gpu_test_util.h"
#include "otgpu/error.h"
#include "otgpu/gaussian.h"
#include "otgpu/sinkhorn.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/gpu_context_impl.h"
#include "otgpu/device.h"

using otgpu_test::DeviceBuffer;
#endif

namespace {

using otgpu::Backend;
using otgpu::GaussianBatch;
using otgpu::GaussianOTOptions;
using otgpu::GaussianOTResult;
using otgpu::TensorView;
using otgpu_test::Mat;

struct Data {
  std::int64_t B, d;
  bool src_batched, tgt_batched;
  std::vector<double> m1, s1, m2, s2;
  double trace_scale = 0;  ///< max over blocks of tr S1 + tr S2

  GaussianBatch source() const {
    return src_batched ? GaussianBatch{TensorView::host(m1.data(), {B, d}),
                                       TensorView::host(s1.data(), {B, d, d})}
                       : GaussianBatch{TensorView::host(m1.data(), {d}),
                                       TensorView::host(s1.data(), {d, d})};
  }
  GaussianBatch target() const {
    return tgt_batched ? GaussianBatch{TensorView::host(m2.data(), {B, d}),
                                       TensorView::host(s2.data(), {B, d, d})}
                       : GaussianBatch{TensorView::host(m2.data(), {d}),
                                       TensorView::host(s2.data(), {d, d})};
  }
};

Data make_data(std::int64_t B, std::int64_t d, bool src_batched, bool tgt_batched,
               std::uint64_t seed, double lo = 0.2, double hi = 3.0) {
  std::mt19937_64 rng(seed);
  Data data{B, d, src_batched, tgt_batched, {}, {}, {}, {}, 0};
  auto fill = [&](std::vector<double>& m, std::vector<double>& s, bool batched) {
    for (std::int64_t k = 0; k < (batched ? B : 1); ++k) {
      const auto mk = otgpu_test::random_vector(d, rng);
      const auto sk = otgpu_test::random_spd(d, rng, lo, hi);
      m.insert(m.end(), mk.begin(), mk.end());
      s.insert(s.end(), sk.begin(), sk.end());
    }
  };
  fill(data.m1, data.s1, src_batched);
  fill(data.m2, data.s2, tgt_batched);
  data.trace_scale = 2.0 * hi * static_cast<double>(d);
  return data;
}

GaussianOTOptions options_for(Backend backend, double eps, bool want_map) {
  GaussianOTOptions o;
  o.backend = backend;
  o.eps = eps;
  o.want_map = want_map;
  return o;
}

void compare(const Data& data, double eps, bool want_map) {
  const auto cpu =
      otgpu::gaussian_ot(data.source(), data.target(), options_for(Backend::cpu, eps, want_map));
  const auto gpu =
      otgpu::gaussian_ot(data.source(), data.target(), options_for(Backend::cuda, eps, want_map));
  ASSERT_EQ(gpu.backend, Backend::cuda);
  ASSERT_EQ(gpu.w2_squared.size(), cpu.w2_squared.size());
  ASSERT_EQ(gpu.entropic.size(), cpu.entropic.size());
  ASSERT_EQ(gpu.map_matrix.size(), cpu.map_matrix.size());
  const double tol = 1e-9 * data.trace_scale;
  for (std::size_t k = 0; k < cpu.w2_squared.size(); ++k) {
    EXPECT_NEAR(gpu.w2_squared[k], cpu.w2_squared[k], tol + 1e-12 * cpu.w2_squared[k])
        << "pair " << k << " d " << data.d;
    EXPECT_NEAR(gpu.bures_squared[k], cpu.bures_squared[k], tol) << "pair " << k;
    if (eps > 0) {
      EXPECT_NEAR(gpu.entropic[k], cpu.entropic[k], tol + 1e-12 * std::fabs(cpu.entropic[k]))
          << "pair " << k;
    }
  }
  if (want_map) {
    const double scale = otgpu_test::max_abs(cpu.map_matrix);
    EXPECT_LT(otgpu_test::max_abs_diff(gpu.map_matrix, cpu.map_matrix), 1e-8 * scale)
        << "d " << data.d;
  }
}

TEST(GaussianGpu, MatchesCpuAcrossSizesAndSolvers) {
  REQUIRE_GPU();
  // d <= 32 goes through syevjBatched, d > 32 through Xsyevd; 1 and 32/33 are the edges.
  for (std::int64_t d : {1, 2, 7, 32, 33, 64}) {
    for (std::int64_t B : {1, 5}) {
      compare(make_data(B, d, true, true, 100 + static_cast<std::uint64_t>(d * 10 + B)), 0.0, true);
      compare(make_data(B, d, true, true, 200 + static_cast<std::uint64_t>(d * 10 + B)), 0.4,
              false);
    }
  }
}

TEST(GaussianGpu, ManySmallPairsAndBroadcast) {
  REQUIRE_GPU();
  compare(make_data(1000, 3, true, true, 301), 0.1, true);
  compare(make_data(257, 8, false, true, 302), 0.0, true);  // one source, many targets
  compare(make_data(257, 8, true, false, 303), 1.0, true);  // many sources, one target
  compare(make_data(3, 40, false, true, 304), 0.2, true);
}

TEST(GaussianGpu, IllConditionedAndSingularSources) {
  REQUIRE_GPU();
  compare(make_data(4, 6, true, true, 401, 1e-4, 10.0), 0.01, false);
  // Rank-deficient source: the map uses the pseudo-inverse on the range of S1 and
  // must push S1 onto P S2 P on both backends.
  std::mt19937_64 rng(402);
  const std::int64_t d = 5;
  const Mat q = otgpu_test::random_orthogonal(d, rng);
  const Mat s1 = otgpu_test::from_eigen(q, {0.0, 0.0, 0.5, 1.0, 2.0}, d);
  const Mat p = otgpu_test::from_eigen(q, {0.0, 0.0, 1.0, 1.0, 1.0}, d);
  const Mat s2 = otgpu_test::random_spd(d, rng);
  const std::vector<double> m(static_cast<std::size_t>(d), 0.0);
  const auto gpu = otgpu_test::gaussian_pair(m, s1, m, s2, options_for(Backend::cuda, 0.0, true));
  const auto cpu = otgpu_test::gaussian_pair(m, s1, m, s2, options_for(Backend::cpu, 0.0, true));
  const Mat& a = gpu.map_matrix;
  const Mat pushed = otgpu_test::matmul(a, otgpu_test::matmul(s1, a, d), d);
  const Mat ps2p = otgpu_test::matmul(p, otgpu_test::matmul(s2, p, d), d);
  EXPECT_LT(otgpu_test::max_abs_diff(pushed, ps2p), 1e-8 * otgpu_test::max_abs(s2));
  // Round-off "zero" eigenvalues enter S1^{1/2} through their square roots (~1e-8).
  EXPECT_NEAR(gpu.bures_squared[0], cpu.bures_squared[0], 5e-7);
}

#ifdef OTGPU_WITH_CUDA
TEST(GaussianGpu, DeviceMemoryInputsMatchHostInputs) {
  REQUIRE_GPU();
  const Data data = make_data(6, 4, true, false, 501);
  DeviceBuffer<double> ds1(data.s1), dm2(data.m2), ds2(data.s2);
  const std::int64_t B = data.B, d = data.d;
  // Means stored transposed on the device ([d, B] memory read through strides).
  std::vector<double> m1t(data.m1.size());
  for (std::int64_t k = 0; k < B; ++k) {
    for (std::int64_t i = 0; i < d; ++i) {
      m1t[static_cast<std::size_t>(i * B + k)] = data.m1[static_cast<std::size_t>(k * d + i)];
    }
  }
  const DeviceBuffer<double> dm1(m1t);
  TensorView m1v = TensorView::device(dm1.data(), {B, d});
  m1v.strides = {1, B, 0};
  const GaussianBatch src{m1v, TensorView::device(ds1.data(), {B, d, d})};
  const GaussianBatch tgt{TensorView::device(dm2.data(), {d}),
                          TensorView::device(ds2.data(), {d, d})};
  const auto dev = otgpu::gaussian_ot(src, tgt, options_for(Backend::automatic, 0.5, true));
  const auto host =
      otgpu::gaussian_ot(data.source(), data.target(), options_for(Backend::cuda, 0.5, true));
  EXPECT_EQ(dev.backend, Backend::cuda);
  EXPECT_EQ(dev.w2_squared, host.w2_squared);
  EXPECT_EQ(dev.entropic, host.entropic);
  EXPECT_EQ(dev.map_matrix, host.map_matrix);
  // backend cpu cannot read device memory.
  EXPECT_THROW(otgpu::gaussian_ot(src, tgt, options_for(Backend::cpu, 0.0, false)),
               otgpu::InvalidArgument);
  // Validation sees device data too.
  std::vector<double> bad = data.s2;
  bad[1] = bad[1] + 1.0;  // breaks symmetry of the shared target covariance
  ds2.upload(bad);
  EXPECT_THROW(otgpu::gaussian_ot(src, tgt, options_for(Backend::cuda, 0.0, false)),
               otgpu::InvalidArgument);
}

TEST(GaussianGpu, ContextMatchesCpuAndAllocatesOnce) {
  REQUIRE_GPU();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  {
    otgpu::GpuContext ctx(0, stream);
    // d = 8: syevjBatched; d = 40: one Xsyevd per matrix.
    for (const std::int64_t d : {8, 40}) {
      std::int64_t allocations = -1;
      for (int rep = 0; rep < 2; ++rep) {
        const Data data = make_data(5, d, true, rep == 0, 700 + static_cast<unsigned>(d) + rep);
        const auto cpu =
            otgpu::gaussian_ot(data.source(), data.target(), options_for(Backend::cpu, 0.3, true));
        const auto gpu = otgpu::gaussian_ot(ctx, data.source(), data.target(),
                                            options_for(Backend::automatic, 0.3, true));
        ASSERT_EQ(gpu.backend, Backend::cuda);
        const double tol = 1e-9 * data.trace_scale;
        for (std::size_t k = 0; k < cpu.w2_squared.size(); ++k) {
          EXPECT_NEAR(gpu.w2_squared[k], cpu.w2_squared[k], tol) << "pair " << k << " d " << d;
          EXPECT_NEAR(gpu.entropic[k], cpu.entropic[k], tol + 1e-12 * std::fabs(cpu.entropic[k]));
        }
        EXPECT_LT(otgpu_test::max_abs_diff(gpu.map_matrix, cpu.map_matrix),
                  1e-8 * otgpu_test::max_abs(cpu.map_matrix));
        // rep 0 (batched target) sizes the workspace and the staging memory; rep 1
        // (shared target) needs less of both: it allocates nothing.
        if (rep == 0) allocations = ctx.impl().allocations();
        if (rep == 1) {
          EXPECT_EQ(ctx.impl().allocations(), allocations) << "d " << d;
        }
      }
    }
    EXPECT_THROW(otgpu::gaussian_ot(ctx, make_data(1, 2, false, false, 1).source(),
                                    make_data(1, 2, false, false, 2).target(),
                                    options_for(Backend::cpu, 0.0, false)),
                 otgpu::InvalidArgument);
  }
  (void)cudaStreamDestroy(stream);
}

TEST(GaussianGpu, HostStridedFloatInputsMatchCpu) {
  REQUIRE_GPU();
  // Covariances in f32 read with stride 2 out of an interleaved buffer (raw copy to
  // the device, gathered and symmetrized there); both backends read the same floats.
  const Data data = make_data(4, 6, true, true, 811);
  const std::int64_t B = data.B, d = data.d;
  std::vector<float> s1f(2 * data.s1.size()), s2f(data.s2.begin(), data.s2.end());
  for (std::size_t k = 0; k < data.s1.size(); ++k) s1f[2 * k] = static_cast<float>(data.s1[k]);
  // f32 rounding breaks symmetry by ~1e-7 relative at most: within the tolerance.
  TensorView s1v = TensorView::host(s1f.data(), {B, d, d});
  s1v.strides = {2 * d * d, 2 * d, 2};
  const GaussianBatch src{TensorView::host(data.m1.data(), {B, d}), s1v};
  const GaussianBatch tgt{TensorView::host(data.m2.data(), {B, d}),
                          TensorView::host(s2f.data(), {B, d, d})};
  const auto cpu = otgpu::gaussian_ot(src, tgt, options_for(Backend::cpu, 0.0, true));
  const auto gpu = otgpu::gaussian_ot(src, tgt, options_for(Backend::cuda, 0.0, true));
  for (std::size_t k = 0; k < cpu.w2_squared.size(); ++k) {
    EXPECT_NEAR(gpu.w2_squared[k], cpu.w2_squared[k], 1e-9 * data.trace_scale) << "pair " << k;
  }
  EXPECT_LT(otgpu_test::max_abs_diff(gpu.map_matrix, cpu.map_matrix),
            1e-8 * otgpu_test::max_abs(cpu.map_matrix));
}

TEST(GaussianGpu, DeviceValuesAreValidatedThroughTheContext) {
  REQUIRE_GPU();
  const Data data = make_data(3, 3, true, true, 901);
  std::vector<double> s1 = data.s1;
  s1[9 + 4] = std::nan("");  // pair 1, element [1, 1]
  const DeviceBuffer<double> dm(data.m1);
  DeviceBuffer<double> ds(s1);
  const GaussianBatch src{TensorView::device(dm.data(), {3, 3}),
                          TensorView::device(ds.data(), {3, 3, 3})};
  otgpu::GpuContext ctx(0);
  try {
    (void)otgpu::gaussian_ot(ctx, src, src, options_for(Backend::cuda, 0.0, false));
    ADD_FAILURE() << "a NaN in device memory was not reported";
  } catch (const otgpu::NonFiniteInput& e) {
    EXPECT_NE(std::string(e.what()).find("source.cov of pair 1: element [1, 1]"), std::string::npos)
        << e.what();
  }
  // A negative eigenvalue well beyond the tolerance: -diag(1, 1, 1) for pair 2.
  s1 = data.s1;
  for (int k = 0; k < 9; ++k) s1[18 + k] = (k % 4 == 0) ? -1.0 : 0.0;
  ds.upload(s1);
  try {
    (void)otgpu::gaussian_ot(ctx, src, src, options_for(Backend::cuda, 0.0, false));
    ADD_FAILURE() << "a non-PSD covariance in device memory was not reported";
  } catch (const otgpu::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("source.cov of pair 2 is not positive semi-definite"),
              std::string::npos)
        << e.what();
  }
}
#endif

TEST(GaussianGpu, BadDeviceIsDeviceUnavailable) {
  REQUIRE_GPU();
  GaussianOTOptions o = options_for(Backend::cuda, 0.0, false);
  o.device = 1000;
  const std::vector<double> m{0.0};
  const Mat s{1.0};
  EXPECT_THROW(otgpu_test::gaussian_pair(m, s, m, s, o), otgpu::DeviceUnavailable);
}

}  // namespace
