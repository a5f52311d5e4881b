// The sharded planner against its closed forms: the row split of dist::row_range, the
// ring-allreduce bytes and time of the column merge, the node count, and one rank
// being the one-device plan with no communication.
#include <gtest/gtest.h>

#include "otgpu/dist.h"
#include "otgpu_host/planner.h"

namespace otgpu {
namespace {

planner::Request request(std::int64_t n, std::int64_t m, std::int64_t d) {
  planner::Request r;
  r.n = n;
  r.m = m;
  r.d = d;
  r.check_every = 10;
  return r;
}

TEST(PlannerShards, RowsFollowTheDistributedSplit) {
  const auto p = planner::make_sharded_cpu_plan(request(1003, 50, 4), 4, planner::cpu_assumed(1),
                                                planner::cpu_shared_memory(4));
  ASSERT_EQ(p.rows.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    const auto want = dist::row_range(1003, r, 4);
    EXPECT_EQ(p.rows[static_cast<std::size_t>(r)].begin, want.begin);
    EXPECT_EQ(p.rows[static_cast<std::size_t>(r)].end, want.end);
  }
  EXPECT_EQ(p.shard.request.n, 251);  // the longest shard: 1003 = 251 + 3 x 250
}

TEST(PlannerShards, CommunicationIsWhatTheCudaDriverSends) {
  // Per iteration: allreduce_device max and sum of B x m doubles (the column LSE
  // partials, fp64); per check: B residuals + the status word, then the cancel flag +
  // the status word (host/src/cuda/sinkhorn_sharded.cpp).
  planner::Interconnect net;
  net.ranks_per_node = 8;
  const std::int64_t m = 1 << 16;
  for (int R : {2, 8, 16}) {
    for (std::int64_t B : {1, 3}) {
      auto req = request(1 << 16, m, 64);
      req.B = B;
      const auto p = planner::make_sharded_plan(req, R, planner::h200_assumed(), net);
      const double ring = 2.0 * (R - 1) / R;
      const double bytes = ring * (2.0 * 8 * B * m + 8.0 * ((B + 1) + 2) / 10);
      EXPECT_EQ(p.element_bytes, 8u);
      EXPECT_DOUBLE_EQ(p.comm_bytes_per_iteration, bytes) << R;
      const bool multi = R > 8;
      EXPECT_EQ(p.nodes, multi ? R / 8 : 1);
      const double bw = multi ? net.inter_bytes_per_s : net.intra_bytes_per_s;
      const double lat = multi ? net.inter_latency_s : net.intra_latency_s;
      const double want = bytes / bw + (2 + 2.0 / 10) * 2 * (R - 1) * lat;
      EXPECT_NEAR(p.comm_seconds, want, 1e-12 * want) << R;
      EXPECT_DOUBLE_EQ(p.iteration_seconds, p.compute_seconds + p.comm_seconds);
      EXPECT_LT(p.bytes_per_rank, p.whole.workspace_bytes + p.whole.input_bytes);
    }
  }
}

TEST(PlannerShards, CpuCommunicationIsWhatTheCpuShardedSolveSends) {
  // Problem after problem: per iteration and problem the finite-f flag and the max and
  // sum of m doubles; per check and problem the residual and the cancel + status pair.
  const int R = 3;
  auto req = request(900, 200, 4);
  req.B = 2;
  const auto net = planner::cpu_shared_memory(R);
  const auto p = planner::make_sharded_cpu_plan(req, R, planner::cpu_assumed(1), net);
  const double ring = 2.0 * (R - 1) / R;
  const double bytes = ring * 8.0 * (2 * 2 * 200 + 2 + (2 + 2 * 2) / 10.0);
  EXPECT_DOUBLE_EQ(p.comm_bytes_per_iteration, bytes);
  const double want = bytes / net.intra_bytes_per_s +
                      (2 * 2 + 2 + 2 * 2 / 10.0) * 2 * (R - 1) * net.intra_latency_s;
  EXPECT_NEAR(p.comm_seconds, want, 1e-12 * want);
}

TEST(PlannerShards, OneRankIsTheOneDevicePlan) {
  const auto p = planner::make_sharded_plan(request(5000, 3000, 16), 1, planner::h200_assumed(),
                                            planner::Interconnect{});
  EXPECT_EQ(p.comm_bytes_per_iteration, 0.0);
  EXPECT_EQ(p.comm_seconds, 0.0);
  EXPECT_DOUBLE_EQ(p.iteration_seconds, p.whole.roofline.seconds);
  EXPECT_DOUBLE_EQ(p.speedup, 1.0);
}

TEST(PlannerShards, MoreRanksThanRowsIsRejected) {
  EXPECT_THROW(planner::make_sharded_cpu_plan(request(3, 5, 2), 4, planner::cpu_assumed(1),
                                              planner::cpu_shared_memory(4)),
               InvalidArgument);
}

}  // namespace
}  // namespace otgpu
