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

TEST(PlannerShards, CommunicationIsTwoRingAllreducesOfTheColumnPartials) {
  planner::Interconnect net;
  net.ranks_per_node = 8;
  const std::int64_t m = 1 << 16;
  for (int R : {2, 8, 16}) {
    const auto p =
        planner::make_sharded_plan(request(1 << 16, m, 64), R, planner::h200_assumed(), net);
    const double ring = 2.0 * (R - 1) / R, payload = 4.0 * m;
    EXPECT_DOUBLE_EQ(p.comm_bytes_per_iteration, 2 * ring * payload) << R;
    const bool multi = R > 8;
    EXPECT_EQ(p.nodes, multi ? R / 8 : 1);
    const double bw = multi ? net.inter_bytes_per_s : net.intra_bytes_per_s;
    const double lat = multi ? net.inter_latency_s : net.intra_latency_s;
    const double want = 2 * (ring * payload / bw + 2 * (R - 1) * lat) + 4.0 * (R - 1) * lat / 10;
    EXPECT_NEAR(p.comm_seconds, want, 1e-12 * want) << R;
    EXPECT_DOUBLE_EQ(p.iteration_seconds, p.compute_seconds + p.comm_seconds);
    EXPECT_LT(p.bytes_per_rank, p.whole.workspace_bytes + p.whole.input_bytes);
  }
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
