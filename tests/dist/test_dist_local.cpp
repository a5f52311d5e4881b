// The sharded Sinkhorn on a local group of G logical ranks (threads of this process)
// against the single-process solve, the communicator primitives against closed
// forms, and the agreement on a bad input.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <mutex>
#include <string>
#include <vector>

#include "dist_cases.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"

namespace otgpu {
namespace {

using dist_test::Case;

TEST(DistRowRange, EvenAndUnevenSplitsCoverTheRowsOnce) {
  for (int size = 1; size <= 5; ++size) {
    for (std::int64_t n : {5, 7, 12, 13}) {
      if (n < size) continue;
      std::int64_t next = 0;
      for (int r = 0; r < size; ++r) {
        const auto rr = dist::row_range(n, r, size);
        EXPECT_EQ(rr.begin, next);
        // Sizes differ by at most one, the longer first.
        EXPECT_EQ(rr.size(), n / size + (r < n % size ? 1 : 0));
        next = rr.end;
      }
      EXPECT_EQ(next, n);
    }
  }
  EXPECT_THROW(dist::row_range(3, 0, 4), InvalidArgument);
  EXPECT_THROW(dist::row_range(8, 4, 4), InvalidArgument);
}

TEST(DistLocalGroup, CollectivesMatchClosedForms) {
  constexpr int G = 3;
  std::mutex mu;
  std::vector<std::string> errors;
  dist::run_local(G, [&](dist::Communicator& c) {
    const int r = c.rank();
    // sum_r (r + 1) = G (G + 1) / 2; max_r r = G - 1.
    double v[2] = {r + 1.0, static_cast<double>(r)};
    c.allreduce(v, 1, dist::ReduceOp::sum);
    c.allreduce(v + 1, 1, dist::ReduceOp::max);
    double got[G];
    const double mine = 10.0 * r;
    c.allgather(&mine, 1, got);
    char text[6] = {};
    if (r == 2) std::snprintf(text, sizeof text, "hello");
    c.broadcast(text, sizeof text, 2);
    c.barrier();
    const auto rows =
        dist::allgather_rows(c, std::vector<double>(static_cast<std::size_t>(r + 1), r), 1);
    const std::lock_guard<std::mutex> lock(mu);
    if (v[0] != G * (G + 1) / 2.0 || v[1] != G - 1) errors.push_back("allreduce");
    for (int k = 0; k < G; ++k) {
      if (got[k] != 10.0 * k) errors.push_back("allgather");
    }
    if (std::string(text) != "hello") errors.push_back("broadcast");
    // Blocks of 1, 2, 3 rows holding their rank: 0 1 1 2 2 2.
    if (rows != std::vector<double>{0, 1, 1, 2, 2, 2}) errors.push_back("allgather_rows");
  });
  EXPECT_TRUE(errors.empty()) << errors.front();
}

TEST(DistLocalGroup, ARankThatFailsOutsideACollectiveWakesTheOthers) {
  // Rank 1 throws before its first collective; rank 0 would wait forever in the
  // allreduce without the group's abort.
  std::atomic<int> woken{0};
  try {
    dist::run_local(2, [&](dist::Communicator& c) {
      if (c.rank() == 1) throw NonFiniteInput("x: NaN on rank 1");
      try {
        c.allreduce(1.0, dist::ReduceOp::sum);
      } catch (const dist::CommError&) {
        ++woken;
        throw;
      }
    });
    FAIL() << "run_local did not rethrow";
  } catch (const NonFiniteInput& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos);
  }
  EXPECT_EQ(woken.load(), 1);
}

TEST(DistSinkhorn, OneLocalRankIsTheSingleProcessSolveBitForBit) {
  for (const Case& k : dist_test::cases()) {
    const auto D = dist_test::make_data(k);
    const dist::RowRange all{0, k.n};
    const auto ref = sinkhorn(dist_test::problem_of(k, D, all), dist_test::options_of(k, D, all));
    dist::LocalGroup group(1);
    const auto got = dist::sinkhorn(group.communicator(0), dist_test::problem_of(k, D, all),
                                    dist_test::options_of(k, D, all));
    EXPECT_EQ(got.f, ref.f) << k.name;
    EXPECT_EQ(got.g, ref.g) << k.name;
    EXPECT_EQ(got.problems[0].ot_eps, ref.problems[0].ot_eps) << k.name;
    EXPECT_EQ(got.problems[0].iterations, ref.problems[0].iterations) << k.name;
  }
}

TEST(DistSinkhorn, LocalShardsMatchTheSingleProcessSolve) {
  for (int G : {2, 3, 4}) {
    for (const Case& k : dist_test::cases()) {
      std::mutex mu;
      std::vector<std::string> errors;
      dist::run_local(G, [&](dist::Communicator& c) {
        const std::string e = dist_test::check_case(c, k);
        const std::lock_guard<std::mutex> lock(mu);
        if (!e.empty()) errors.push_back(e);
      });
      EXPECT_TRUE(errors.empty()) << errors.front();
    }
  }
}

TEST(DistSinkhorn, ABadRankMakesEveryRankThrowOneError) {
  const Case k = dist_test::cases()[0];
  auto D = dist_test::make_data(k);
  constexpr int G = 3;
  const auto bad = dist::row_range(k.n, 2, G);
  D.x[static_cast<std::size_t>(bad.begin * k.d + 1)] = std::nan("");
  std::vector<std::string> messages(G);
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), G);
    try {
      dist::sinkhorn(c, dist_test::problem_of(k, D, r), dist_test::options_of(k, D, r));
    } catch (const NonFiniteInput& e) {
      messages[static_cast<std::size_t>(c.rank())] = std::string("own: ") + e.what();
    } catch (const InvalidArgument& e) {
      messages[static_cast<std::size_t>(c.rank())] = std::string("other: ") + e.what();
    }
  });
  EXPECT_EQ(messages[2].rfind("own: x", 0), 0u) << messages[2];
  for (int r : {0, 1}) {
    EXPECT_EQ(messages[static_cast<std::size_t>(r)].rfind("other: rank 2: x", 0), 0u)
        << messages[static_cast<std::size_t>(r)];
  }
}

TEST(DistSinkhorn, RanksThatDisagreeOnTheProblemAllThrow) {
  const Case k = dist_test::cases()[0];
  const auto D = dist_test::make_data(k);
  std::atomic<int> thrown{0};
  dist::run_local(2, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), 2);
    auto o = dist_test::options_of(k, D, r);
    if (c.rank() == 1) o.eps *= 2;
    try {
      dist::sinkhorn(c, dist_test::problem_of(k, D, r), o);
    } catch (const InvalidArgument& e) {
      if (std::string(e.what()).find("disagree on eps") != std::string::npos) ++thrown;
    }
  });
  EXPECT_EQ(thrown.load(), 2);
}

TEST(DistSinkhorn, MpiAndNcclStubsNameTheBuildOption) {
  if (!dist::nccl_built()) {
    try {
      dist::nccl_local({0});
      FAIL();
    } catch (const DeviceUnavailable& e) {
      EXPECT_NE(std::string(e.what()).find("OTGPU_NCCL"), std::string::npos);
    }
  }
  if (!dist::mpi_built()) {
    EXPECT_THROW(dist::mpi_world(), DeviceUnavailable);
  }
}

}  // namespace
}  // namespace otgpu
