// Review of the sharded CUDA Sinkhorn (host/src/cuda/sinkhorn_sharded.cpp, issue 11):
// the checks that need a device. Logical shards on device 0 over the host-staged local
// group, each rank's communicator wrapped in a recorder (tests/dist/recording_comm.h):
//  - every rank issues the same collectives in the same order with the same counts on
//    every path of the driver (converged, over-relaxed, unbalanced, eps continuation,
//    geometric schedule, cost matrix, cancellation by one rank, a rank failing
//    mid-solve, one row per shard, derived outputs), and all reach the same outcome;
//  - one row per shard and shards holding zero-weight rows match the single-GPU solve
//    (fp32 round-off, the tolerances of test_sinkhorn_sharded_gpu.cpp).
// Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "../dist/dist_cases.h"
#include "../dist/recording_comm.h"
#include "gpu_test_util.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu {
namespace {

using dist_test::Case;
using dist_test::RecordingComm;

struct Path {
  const char* name;
  Case k;
  SinkhornAcceleration accel;
  int cancel_rank;  ///< this rank's callback stops the solve at iteration 20 (-1: none)
  int throw_rank;   ///< this rank's callback throws at iteration 20 (-1: none)
  bool derived;     ///< also the barycentric map, gradient and sampled partners
};

std::vector<Path> paths() {
  const double inf = std::numeric_limits<double>::infinity();
  const auto cs = dist_test::cases();
  return {
      {"converged_plain", cs[0], SinkhornAcceleration::none, -1, -1, true},
      {"converged_overrelax", cs[0], SinkhornAcceleration::overrelax, -1, -1, true},
      {"unbalanced", cs[1], SinkhornAcceleration::overrelax, -1, -1, true},
      {"eps_continuation", cs[3], SinkhornAcceleration::overrelax, -1, -1, false},
      {"eps_geometric", cs[4], SinkhornAcceleration::none, -1, -1, false},
      {"cost_matrix", cs[5], SinkhornAcceleration::overrelax, -1, -1, true},
      {"warm_start", cs[6], SinkhornAcceleration::overrelax, -1, -1, false},
      {"cancelled_by_rank_1", cs[0], SinkhornAcceleration::overrelax, 1, -1, false},
      {"rank_1_fails", cs[0], SinkhornAcceleration::overrelax, -1, 1, false},
      {"one_row_per_shard",
       {"tiny", 3, 17, 2, true, inf, 0.1, true, 0.0, false, false},
       SinkhornAcceleration::overrelax,
       -1,
       -1,
       true},
  };
}

SinkhornOptions cuda_options(const Case& k, const dist_test::Data& D, dist::RowRange r) {
  SinkhornOptions o = dist_test::options_of(k, D, r);
  o.backend = Backend::cuda;
  o.device = 0;
  o.tol = 1e-4;  // fp32
  o.max_iter = 2000;
  return o;
}

TEST(ShardedSinkhornReviewGpu, EveryShardIssuesTheSameCollectivesOnEveryPath) {
  REQUIRE_GPU();
  for (const Path& p : paths()) {
    for (int G : {2, 3}) {
      if (p.k.n < G) continue;
      const auto D = dist_test::make_data(p.k);
      std::vector<std::vector<std::string>> logs(static_cast<std::size_t>(G));
      std::vector<std::string> outcome(static_cast<std::size_t>(G));
      dist::run_local(G, [&](dist::Communicator& inner) {
        RecordingComm c(inner);
        const auto r = dist::row_range(p.k.n, c.rank(), G);
        auto o = cuda_options(p.k, D, r);
        o.acceleration = p.accel;
        if (p.cancel_rank >= 0 || p.throw_rank >= 0) {
          o.tol = 1e-9;  // still running at iteration 20
          o.max_iter = 200;
        }
        if (p.cancel_rank == c.rank()) {
          o.progress = [](const SinkhornProgress& pr) { return pr.iteration < 20; };
        }
        if (p.throw_rank == c.rank()) {
          o.progress = [](const SinkhornProgress& pr) -> bool {
            if (pr.iteration >= 20) throw std::runtime_error("poisoned callback");
            return true;
          };
        }
        std::string& out = outcome[static_cast<std::size_t>(c.rank())];
        try {
          const auto local = dist_test::problem_of(p.k, D, r);
          const SinkhornResult res = dist::sinkhorn(c, local, o);
          out = "iterations " + std::to_string(res.problems[0].iterations) +
                (res.cancelled ? " cancelled" : "") + " ot_eps " +
                std::to_string(res.problems[0].ot_eps);
          if (p.derived) {
            if (!p.k.matrix) {
              (void)dist::barycentric_map(c, local, res);
              (void)dist::gradient_x(c, local, res);
            }
            (void)dist::sample_partners(c, local, res, 7);
          }
        } catch (const dist::CommError& e) {
          out = e.what();
        }
        logs[static_cast<std::size_t>(c.rank())] = c.log();
      });
      const std::string where = std::string(p.name) + " G=" + std::to_string(G);
      EXPECT_EQ(dist_test::compare_logs(logs), "") << where;
      for (int r = 1; r < G; ++r) {
        EXPECT_EQ(outcome[static_cast<std::size_t>(r)], outcome[0]) << where;
      }
      EXPECT_GT(logs[0].size(), 10u) << where;
      if (p.cancel_rank >= 0) {
        EXPECT_EQ(outcome[0].rfind("iterations 20 cancelled", 0), 0u)
            << where << ": " << outcome[0];
      }
      if (p.throw_rank >= 0) {
        EXPECT_EQ(outcome[0], "dist::sinkhorn: rank 1 failed at iteration 20: poisoned callback")
            << where;
      }
    }
  }
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

/// The sharded solve of (k, D) over G logical shards against the single-GPU solve:
/// f (gathered), g, OT_eps and iterations.
void expect_matches_single_gpu(const Case& k, const dist_test::Data& D, int G) {
  const dist::RowRange whole{0, k.n};
  const SinkhornResult ref =
      sinkhorn(dist_test::problem_of(k, D, whole), cuda_options(k, D, whole));
  std::vector<SinkhornResult> parts(static_cast<std::size_t>(G));
  std::vector<double> f;
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), G);
    SinkhornResult res = dist::sinkhorn(c, dist_test::problem_of(k, D, r), cuda_options(k, D, r));
    const auto all = dist::allgather_rows(c, res.f, 1);
    if (c.rank() == 0) f = all;
    parts[static_cast<std::size_t>(c.rank())] = std::move(res);
  });
  const SinkhornReport& got = parts[0].problems[0];
  const SinkhornReport& want = ref.problems[0];
  const double scale = std::max({max_abs(ref.f), max_abs(ref.g), want.eps});
  EXPECT_EQ(got.converged, want.converged);
  EXPECT_LE(std::abs(got.iterations - want.iterations), 10);
  ASSERT_EQ(f.size(), ref.f.size());
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(f[i], ref.f[i], 2e-4 * scale) << i;
  for (std::size_t j = 0; j < ref.g.size(); ++j)
    EXPECT_NEAR(parts[0].g[j], ref.g[j], 2e-4 * scale) << j;
  EXPECT_NEAR(got.ot_eps, want.ot_eps, 1e-4 * scale + 1e-5 * std::fabs(want.ot_eps));
}

TEST(ShardedSinkhornReviewGpu, OneRowPerShardMatchesTheSingleGpu) {
  REQUIRE_GPU();
  const double inf = std::numeric_limits<double>::infinity();
  const Case k{"tiny", 3, 17, 2, true, inf, 0.1, true, 0.0, false, false};
  expect_matches_single_gpu(k, dist_test::make_data(k), 3);
}

TEST(ShardedSinkhornReviewGpu, ZeroWeightRowsInAShardMatchTheSingleGpu) {
  REQUIRE_GPU();
  // Weighted, with the rows of a zero over most of shard 1 (rows 13..22 of 35; shard 1 holds 12..23
  // for G = 3): its partial log-sum-exp comes from few rows, and the zero rows are never
  // transported to.
  Case k = dist_test::cases()[2];  // weighted, balanced
  auto D = dist_test::make_data(k);
  for (std::size_t i = 13; i < 23; ++i) D.a[i] = 0.0;
  double sa = 0;
  for (double v : D.a) sa += v;
  for (double& v : D.a) v /= sa;
  expect_matches_single_gpu(k, D, 3);
}

TEST(ShardedSinkhornReviewGpu, RanksWithDifferentBAllThrowTheSameError) {
  REQUIRE_GPU();
  // Rank 1's b carries 1% more mass: before the agreement on mass(b), rank 1 alone
  // failed the balanced mass check and the others waited in the next collective.
  const Case k = dist_test::cases()[2];  // weighted, balanced
  const auto D = dist_test::make_data(k);
  std::vector<double> b1 = D.b;
  for (double& v : b1) v *= 1.01;
  constexpr int G = 3;
  std::vector<std::string> got(G);
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), G);
    SinkhornProblem p = dist_test::problem_of(k, D, r);
    if (c.rank() == 1) p.b = TensorView::host(b1.data(), {k.m});
    std::string& out = got[static_cast<std::size_t>(c.rank())];
    try {
      dist::sinkhorn(c, p, cuda_options(k, D, r));
      out = "no error";
    } catch (const InvalidArgument& e) {
      out = e.what();
    }
  });
  EXPECT_NE(got[0].find("every rank must pass the same b"), std::string::npos) << got[0];
  EXPECT_EQ(got[1], got[0]);
  EXPECT_EQ(got[2], got[0]);
}

}  // namespace
}  // namespace otgpu
