// The collective sequence of the sharded Sinkhorn, rank by rank: every rank of a group
// must issue the same collectives in the same order with the same counts (a mismatch
// deadlocks NCCL and MPI; the local group would only wake them with an error). Each
// rank's communicator is wrapped in a recorder (recording_comm.h) and the records are
// compared, on the paths where the ranks could part: early convergence, a cancellation
// by one rank, a failure of one rank mid-solve, unbalanced, the eps continuation,
// over-relaxation, a geometric eps schedule, a rank with one row, and the derived
// outputs. Also: options that steer the loop must agree over the ranks.
#include <gtest/gtest.h>

#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dist_cases.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"
#include "recording_comm.h"

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
      {"converged_overrelax", cs[0], SinkhornAcceleration::overrelax, -1, -1, false},
      {"unbalanced", cs[1], SinkhornAcceleration::overrelax, -1, -1, true},
      {"eps_continuation", cs[3], SinkhornAcceleration::overrelax, -1, -1, false},
      {"eps_geometric", cs[4], SinkhornAcceleration::none, -1, -1, false},
      {"cost_matrix", cs[5], SinkhornAcceleration::overrelax, -1, -1, true},
      {"cancelled_by_rank_1", cs[0], SinkhornAcceleration::overrelax, 1, -1, false},
      {"rank_1_fails", cs[0], SinkhornAcceleration::overrelax, -1, 1, false},
      {"one_row_per_rank",
       {"tiny", 3, 17, 2, true, inf, 0.1, true, 0.0, false, false},
       SinkhornAcceleration::overrelax,
       -1,
       -1,
       true},
  };
}

TEST(DistCollectiveOrder, EveryRankIssuesTheSameCollectivesOnEveryPath) {
  for (const Path& p : paths()) {
    for (int G : {2, 3}) {
      if (p.k.n < G) continue;
      const auto D = dist_test::make_data(p.k);
      std::vector<std::vector<std::string>> logs(static_cast<std::size_t>(G));
      std::vector<std::string> outcome(static_cast<std::size_t>(G));
      dist::run_local(G, [&](dist::Communicator& inner) {
        RecordingComm c(inner);
        const auto r = dist::row_range(p.k.n, c.rank(), G);
        auto o = dist_test::options_of(p.k, D, r);
        o.acceleration = p.accel;
        if (p.cancel_rank == c.rank()) {
          o.progress = [](const SinkhornProgress& pr) { return pr.iteration < 20; };
        }
        if (p.throw_rank == c.rank()) {
          o.progress = [](const SinkhornProgress& pr) -> bool {
            if (pr.iteration >= 20) throw std::runtime_error("poisoned callback");
            return true;
          };
        }
        if (p.throw_rank >= 0) o.tol = 1e-14;  // still running at iteration 20
        std::string& out = outcome[static_cast<std::size_t>(c.rank())];
        try {
          const auto local = dist_test::problem_of(p.k, D, r);
          const SinkhornResult res = dist::sinkhorn(c, local, o);
          out = "iterations " + std::to_string(res.problems[0].iterations) +
                (res.cancelled ? " cancelled" : "");
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
      for (int r = 1; r < G; ++r)
        EXPECT_EQ(outcome[static_cast<std::size_t>(r)], outcome[0]) << where;
      // The record is not trivially short: the loop's merges are in it.
      EXPECT_GT(logs[0].size(), 10u) << where;
      if (p.cancel_rank >= 0) {
        EXPECT_EQ(outcome[0], "iterations 20 cancelled") << where;
      }
      if (p.throw_rank >= 0) {
        EXPECT_EQ(outcome[0], "dist::sinkhorn: rank 1 failed at iteration 20: poisoned callback")
            << where;
      }
    }
  }
}

/// Options that steer each rank's loop decisions: a rank passing a different value
/// would leave the loop at another iteration than the others, which then wait in a
/// collective. Every rank throws the same InvalidArgument before any solve.
TEST(DistCollectiveOrder, RanksDisagreeingOnALoopOptionAllThrowTheSameError) {
  struct Change {
    const char* option;
    void (*apply)(SinkhornOptions&);
  };
  const Change changes[] = {
      {"tol", [](SinkhornOptions& o) { o.tol = 1e-3; }},
      {"eps_init", [](SinkhornOptions& o) { o.eps_init = 1.0; }},
      {"eps_decay", [](SinkhornOptions& o) { o.eps_decay = 0.7; }},
      {"rho_a", [](SinkhornOptions& o) { o.rho_a = 2.0; }},
      {"rho_b", [](SinkhornOptions& o) { o.rho_b = 2.0; }},
      {"acceleration", [](SinkhornOptions& o) { o.acceleration = SinkhornAcceleration::none; }},
  };
  const Case k = dist_test::cases()[1];  // weighted, unbalanced (rho 0.7)
  const auto D = dist_test::make_data(k);
  constexpr int G = 3;
  for (const Change& ch : changes) {
    std::vector<std::string> got(G);
    dist::run_local(G, [&](dist::Communicator& c) {
      const auto r = dist::row_range(k.n, c.rank(), G);
      auto o = dist_test::options_of(k, D, r);
      o.acceleration = SinkhornAcceleration::overrelax;
      if (c.rank() == 2) ch.apply(o);
      std::string& out = got[static_cast<std::size_t>(c.rank())];
      try {
        dist::sinkhorn(c, dist_test::problem_of(k, D, r), o);
        out = "no error";
      } catch (const InvalidArgument& e) {
        out = e.what();
      }
    });
    EXPECT_NE(got[0].find(std::string("disagree on ") + ch.option), std::string::npos)
        << ch.option << ": " << got[0];
    EXPECT_EQ(got[1], got[0]);
    EXPECT_EQ(got[2], got[0]);
  }
}

}  // namespace
}  // namespace otgpu
