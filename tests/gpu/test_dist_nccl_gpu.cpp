// The NCCL communicator with one rank on one device: the device allreduce (sum and
// max, float and double) and the staged host collectives are the identity over one
// rank, so the values must come back unchanged; and the sharded solve's host
// collectives run over it. Skips without a GPU or without NCCL in the build.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "gpu_test_util.h"
#include "otgpu/dist.h"
#include "otgpu/sinkhorn.h"

#if defined(OTGPU_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace {

#define REQUIRE_NCCL()                                                                 \
  do {                                                                                 \
    REQUIRE_GPU();                                                                     \
    if (!otgpu::dist::nccl_built()) GTEST_SKIP() << "libotgpu was built without NCCL"; \
  } while (0)

TEST(DistNcclGpu, OneRankCollectivesAreTheIdentity) {
  REQUIRE_NCCL();
#if defined(OTGPU_WITH_CUDA)
  auto comms = otgpu::dist::nccl_local({0});
  ASSERT_EQ(comms.size(), 1u);
  auto& c = *comms[0];
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.rank(), 0);
  double host[3] = {1.5, -2.0, 3.25};
  c.allreduce(host, 3, otgpu::dist::ReduceOp::sum);
  EXPECT_EQ(host[0], 1.5);
  EXPECT_EQ(host[2], 3.25);
  double got[1];
  const double mine = 7.0;
  c.allgather(&mine, 1, got);
  EXPECT_EQ(got[0], 7.0);

  std::vector<float> values = {1.f, -3.f, 0.5f, 8.f};
  otgpu_test::DeviceBuffer<float> dev(values);
  c.allreduce_device(dev.data(), 4, otgpu::DType::f32, otgpu::dist::ReduceOp::max, nullptr);
  EXPECT_EQ(dev.to_host(), values);
#endif
}

TEST(DistNcclGpu, ShardedSolveOverOneNcclRankIsTheSingleProcessSolve) {
  REQUIRE_NCCL();
  auto comms = otgpu::dist::nccl_local({0});
  const auto x = otgpu_test::uniform(40 * 2, 11), y = otgpu_test::uniform(30 * 2, 12);
  otgpu::SinkhornProblem p;
  p.x = otgpu::TensorView::host(x.data(), {40, 2});
  p.y = otgpu::TensorView::host(y.data(), {30, 2});
  otgpu::SinkhornOptions o;
  o.backend = otgpu::Backend::cpu;
  o.eps = 0.05;
  const auto ref = otgpu::sinkhorn(p, o);
  const auto got = otgpu::dist::sinkhorn(*comms[0], p, o);
  // One rank: the merged column partials are the single-process ones bit for bit.
  EXPECT_EQ(got.f, ref.f);
  EXPECT_EQ(got.g, ref.g);
  EXPECT_EQ(got.problems[0].ot_eps, ref.problems[0].ot_eps);
}

}  // namespace
