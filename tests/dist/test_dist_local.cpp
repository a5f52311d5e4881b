// The sharded Sinkhorn on a local group of G logical ranks (threads of this process)
// against the single-process solve, the communicator primitives against closed
// forms, and the agreement on a bad input.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <mutex>
#include <random>
#include <stdexcept>
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

TEST(DistSinkhorn, BatchedProblemsShardEveryProblemsRows) {
  // B = 2 problems [B, n, d]; a rank's rows of every problem are a strided view
  // (stride n d between problems), its weights [B, n_r] likewise.
  constexpr std::int64_t B = 2, n = 23, m = 17, d = 3;
  std::mt19937_64 gen(5);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> unif(0.3, 1.0);
  std::vector<double> x(B * n * d), y(B * m * d), a(B * n);
  for (auto& v : x) v = normal(gen);
  for (auto& v : y) v = normal(gen) + 0.3;
  for (std::int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += (a[static_cast<std::size_t>(b * n + i)] = unif(gen));
    for (std::int64_t i = 0; i < n; ++i) a[static_cast<std::size_t>(b * n + i)] /= s;
  }
  SinkhornOptions o;
  o.backend = Backend::cpu;
  o.eps = 0.1;
  o.eps_relative = true;
  o.tol = 1e-9;
  SinkhornProblem whole;
  whole.x = TensorView::host(x.data(), {B, n, d});
  whole.y = TensorView::host(y.data(), {B, m, d});
  whole.a = TensorView::host(a.data(), {B, n});
  const auto ref = sinkhorn(whole, o);
  constexpr int G = 3;
  std::vector<SinkhornResult> got(G);
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(n, c.rank(), G);
    SinkhornProblem p = whole;
    p.x.data = x.data() + r.begin * d;
    p.x.shape = {B, r.size(), d};
    p.a.data = a.data() + r.begin;
    p.a.shape = {B, r.size(), 0};
    p.a.strides = {n, 1, 0};
    got[static_cast<std::size_t>(c.rank())] = dist::sinkhorn(c, p, o);
  });
  for (int rank = 0; rank < G; ++rank) {
    const auto r = dist::row_range(n, rank, G);
    const auto& res = got[static_cast<std::size_t>(rank)];
    ASSERT_EQ(res.n, r.size());
    for (std::int64_t b = 0; b < B; ++b) {
      for (std::int64_t i = 0; i < r.size(); ++i) {
        EXPECT_NEAR(res.f[static_cast<std::size_t>(b * r.size() + i)],
                    ref.f[static_cast<std::size_t>(b * n + r.begin + i)], 1e-10)
            << "problem " << b << " row " << r.begin + i;
      }
      EXPECT_NEAR(res.problems[static_cast<std::size_t>(b)].ot_eps,
                  ref.problems[static_cast<std::size_t>(b)].ot_eps, 1e-10);
      EXPECT_EQ(res.problems[static_cast<std::size_t>(b)].iterations,
                ref.problems[static_cast<std::size_t>(b)].iterations);
    }
    EXPECT_EQ(res.g, got[0].g);  // replicated, the same bits on every rank
  }
}

TEST(DistSinkhorn, ACancellingRankStopsEveryRankAtTheSameCheck) {
  const Case k = dist_test::cases()[0];
  const auto D = dist_test::make_data(k);
  constexpr int G = 3;
  std::vector<SinkhornResult> got(G);
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), G);
    auto o = dist_test::options_of(k, D, r);
    o.eps_init = 0;
    o.acceleration = SinkhornAcceleration::none;
    // Only rank 1 cancels, at its second check.
    if (c.rank() == 1) {
      o.progress = [](const SinkhornProgress& pr) { return pr.iteration < 20; };
    }
    got[static_cast<std::size_t>(c.rank())] = dist::sinkhorn(c, dist_test::problem_of(k, D, r), o);
  });
  for (const auto& res : got) {
    EXPECT_TRUE(res.cancelled);
    EXPECT_FALSE(res.problems[0].converged);
    EXPECT_EQ(res.problems[0].iterations, 20);
  }
}

TEST(DistSinkhorn, ARankWhoseCallbackThrowsMidSolveMakesEveryRankThrowTheSameError) {
  // Rank 1's progress callback throws at its second check: without the status word the
  // other ranks would wait in the next collective (here the local group's run_local
  // would wake them with a different, generic error).
  const Case k = dist_test::cases()[0];
  const auto D = dist_test::make_data(k);
  constexpr int G = 3;
  std::vector<std::string> got(G);
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), G);
    auto o = dist_test::options_of(k, D, r);
    o.eps_init = 0;
    o.acceleration = SinkhornAcceleration::none;
    o.tol = 1e-14;
    if (c.rank() == 1) {
      o.progress = [](const SinkhornProgress& pr) -> bool {
        if (pr.iteration == 20) throw std::runtime_error("poisoned callback");
        return true;
      };
    }
    std::string& out = got[static_cast<std::size_t>(c.rank())];
    try {
      dist::sinkhorn(c, dist_test::problem_of(k, D, r), o);
      out = "no error";
    } catch (const dist::CommError& e) {
      out = e.what();
    }
  });
  EXPECT_EQ(got[0], "dist::sinkhorn: rank 1 failed at iteration 20: poisoned callback");
  EXPECT_EQ(got[1], got[0]);
  EXPECT_EQ(got[2], got[0]);
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
