// The sharded CUDA Sinkhorn (dist::sinkhorn with Backend::cuda, SinkhornOptions::devices)
// against two independent solves: the single-GPU driver on the whole problem (same
// fp32 kernels, same decisions: f, g, OT_eps to fp32 round-off, equal iterations) and
// the CPU sharded solve (fp64; the fp32 tolerances of test_sinkhorn_gpu.cpp). G = 1, 2,
// 3 logical shards on device 0 over the host-staged local group; one NCCL rank when
// NCCL is built. Skips without a device.
#include <gtest/gtest.h>

#if defined(OTGPU_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../dist/dist_cases.h"
#include "gpu_test_util.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Case {
  const char* name;
  std::int64_t n, m, d;
  bool weighted;
  double rho;  ///< inf: balanced
  double eps;  ///< relative to the mean cost
  double eps_init;
  bool matrix;
  bool warm;
  SinkhornAcceleration accel;
};

/// m > 512 keeps the single-GPU solve off its one-block small kernel (which runs plain
/// updates only); n = 701 splits unevenly over 2 and 3 shards.
std::vector<Case> cases() {
  return {
      {"balanced", 701, 613, 3, false, kInf, 0.05, 0.0, false, false,
       SinkhornAcceleration::overrelax},
      {"balanced_plain", 701, 613, 3, false, kInf, 0.05, 0.0, false, false,
       SinkhornAcceleration::none},
      {"unbalanced", 701, 577, 2, true, 0.7, 0.1, 0.0, false, false,
       SinkhornAcceleration::overrelax},
      {"weighted", 655, 601, 4, true, kInf, 0.08, 0.0, false, false,
       SinkhornAcceleration::overrelax},
      {"eps_continuation", 603, 589, 2, false, kInf, 1e-3, kAuto, false, false,
       SinkhornAcceleration::overrelax},
      {"eps_geometric", 611, 599, 3, true, kInf, 0.02, 1.0, false, false,
       SinkhornAcceleration::none},
      {"cost_matrix", 533, 521, 0, true, kInf, 0.05, 0.0, true, false,
       SinkhornAcceleration::overrelax},
      {"warm_start", 677, 541, 2, false, kInf, 0.05, 0.0, false, true,
       SinkhornAcceleration::overrelax},
  };
}

/// The case as the shared dist suites describe it (tests/dist/dist_cases.h): their data
/// generator and row slicing serve this suite too, with this suite's own seed.
dist_test::Case base_case(const Case& k) {
  return {k.name, k.n, k.m, k.d, k.weighted, k.rho, k.eps, true, k.eps_init, k.matrix, k.warm};
}

using dist_test::Data;

Data make_data(const Case& k) {
  return dist_test::make_data(base_case(k), 77 + static_cast<std::uint64_t>(k.n * 3 + k.m));
}

SinkhornProblem problem_of(const Case& k, const Data& D, dist::RowRange r) {
  return dist_test::problem_of(base_case(k), D, r);
}

SinkhornOptions options_of(const Case& k, const Data& D, dist::RowRange r, Backend backend) {
  SinkhornOptions o;
  o.backend = backend;
  o.device = 0;
  o.cpu_threads = 1;
  o.eps = k.eps;
  o.eps_relative = true;
  o.eps_init = k.eps_init;
  o.rho_a = o.rho_b = k.rho;
  o.tol = 1e-4;
  o.max_iter = 4000;
  o.acceleration = k.accel;
  if (k.warm) {
    o.f_init.assign(D.f0.begin() + r.begin, D.f0.begin() + r.end);
    o.g_init = D.g0;
  }
  return o;
}

struct Sharded {
  std::vector<SinkhornResult> parts;
  std::vector<double> f, map, grad;
  std::vector<std::int64_t> pairs;
};

/// dist::sinkhorn over G logical ranks of a local group, f and the derived outputs of
/// the ranks concatenated in row order.
Sharded solve_sharded(const Case& k, const Data& D, int G, Backend backend, bool derived) {
  Sharded out;
  out.parts.resize(static_cast<std::size_t>(G));
  std::vector<std::vector<double>> maps(static_cast<std::size_t>(G)), grads(maps.size());
  std::vector<std::vector<std::int64_t>> pairs(maps.size());
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), G);
    const auto p = problem_of(k, D, r);
    const auto rk = static_cast<std::size_t>(c.rank());
    out.parts[rk] = dist::sinkhorn(c, p, options_of(k, D, r, backend));
    if (!derived) return;
    if (!k.matrix) {
      maps[rk] = dist::barycentric_map(c, p, out.parts[rk]);
      grads[rk] = dist::gradient_x(c, p, out.parts[rk]);
    }
    pairs[rk] = dist::sample_partners(c, p, out.parts[rk], 5);
  });
  for (int r = 0; r < G; ++r) {
    const auto rk = static_cast<std::size_t>(r);
    out.f.insert(out.f.end(), out.parts[rk].f.begin(), out.parts[rk].f.end());
    out.map.insert(out.map.end(), maps[rk].begin(), maps[rk].end());
    out.grad.insert(out.grad.end(), grads[rk].begin(), grads[rk].end());
    out.pairs.insert(out.pairs.end(), pairs[rk].begin(), pairs[rk].end());
  }
  return out;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

TEST(ShardedSinkhornGpu, LogicalShardsMatchTheSingleGpuSolve) {
  REQUIRE_GPU();
  for (const Case& k : cases()) {
    const Data D = make_data(k);
    const dist::RowRange whole{0, k.n};
    const SinkhornProblem p = problem_of(k, D, whole);
    const SinkhornResult ref = sinkhorn(p, options_of(k, D, whole, Backend::cuda));
    const double eps_abs = ref.problems[0].eps;
    for (const int G : {1, 2, 3}) {
      SCOPED_TRACE(std::string(k.name) + " G=" + std::to_string(G));
      const Sharded s = solve_sharded(k, D, G, Backend::cuda, false);
      for (const auto& part : s.parts) {
        EXPECT_EQ(part.backend, Backend::cuda);
        // Every shard reports the whole problem, bit for bit the same g.
        EXPECT_EQ(part.g, s.parts[0].g);
        EXPECT_EQ(part.problems[0].ot_eps, s.parts[0].problems[0].ot_eps);
        EXPECT_EQ(part.problems[0].iterations, s.parts[0].problems[0].iterations);
      }
      const SinkhornReport& got = s.parts[0].problems[0];
      const SinkhornReport& want = ref.problems[0];
      EXPECT_EQ(got.iterations, want.iterations);
      EXPECT_EQ(got.converged, want.converged);
      EXPECT_NEAR(got.eps, want.eps, 1e-6 * want.eps);
      // fp32 round-off of potentials of size max|f|, accumulated over the iterations.
      const double scale = std::max({max_abs(ref.f), max_abs(ref.g), eps_abs});
      EXPECT_LE(max_diff(s.f, ref.f), 2e-4 * scale);
      EXPECT_LE(max_diff(s.parts[0].g, ref.g), 2e-4 * scale);
      EXPECT_NEAR(got.ot_eps, want.ot_eps, 1e-4 * scale + 1e-5 * std::fabs(want.ot_eps));
      EXPECT_NEAR(got.transport_cost, want.transport_cost, 1e-4 * (1 + want.transport_cost));
      EXPECT_NEAR(got.residual, want.residual, 1e-4 + 0.05 * want.residual);
    }
  }
}

TEST(ShardedSinkhornGpu, MatchesTheCpuShardedSolve) {
  REQUIRE_GPU();
  for (const Case& k : cases()) {
    SCOPED_TRACE(k.name);
    const Data D = make_data(k);
    const Sharded gpu = solve_sharded(k, D, 2, Backend::cuda, false);
    const Sharded cpu = solve_sharded(k, D, 2, Backend::cpu, false);
    const SinkhornReport& g = gpu.parts[0].problems[0];
    const SinkhornReport& c = cpu.parts[0].problems[0];
    EXPECT_TRUE(g.converged);
    EXPECT_NEAR(g.eps, c.eps, 1e-6 * c.eps);
    const double scale = std::max(std::fabs(c.ot_eps), c.eps);
    EXPECT_NEAR(g.ot_eps, c.ot_eps, 3e-4 * scale + 1e-4 * std::fabs(c.ot_eps));
    // Both stop within tol of the solution; potentials agree to a few eps x tol-scale
    // (fp32 against fp64), up to the additive constant a balanced problem leaves free.
    std::vector<double> df(gpu.f.size());
    for (std::size_t i = 0; i < df.size(); ++i) df[i] = gpu.f[i] - cpu.f[i];
    const double shift = std::isinf(k.rho) ? df[0] : 0.0;
    double worst = 0;
    for (double v : df) worst = std::max(worst, std::fabs(v - shift));
    EXPECT_LE(worst, 0.05 * c.eps + 1e-3 * max_abs(cpu.f));
  }
}

TEST(ShardedSinkhornGpu, DerivedOutputsMatchTheSingleGpu) {
  REQUIRE_GPU();
  for (const Case& k : {cases()[0], cases()[2], cases()[6]}) {
    const Data D = make_data(k);
    const dist::RowRange whole{0, k.n};
    const SinkhornProblem p = problem_of(k, D, whole);
    const SinkhornResult ref = sinkhorn(p, options_of(k, D, whole, Backend::cuda));
    const auto pairs_ref = sample_partners(p, ref, 5);
    for (const int G : {1, 3}) {
      SCOPED_TRACE(std::string(k.name) + " G=" + std::to_string(G));
      const Sharded s = solve_sharded(k, D, G, Backend::cuda, true);
      if (!k.matrix) {
        const auto map_ref = barycentric_map(p, ref);
        const auto grad_ref = gradient_x(p, ref);
        EXPECT_LE(max_diff(s.map, map_ref), 1e-3 * (1 + max_abs(map_ref)));
        EXPECT_LE(max_diff(s.grad, grad_ref), 1e-3 * (1 + max_abs(grad_ref)));
      }
      // Identical potentials, identical pairs: the sharded driver samples with the
      // single-GPU kernels (online_sample / dense_sample) on its kept state, keyed by the
      // global row. Rank 0's rows start at 0, so the plain single-GPU sampler on rank 0's
      // own result (the same kept X, Y or C, logB, g, eps; row offset 0) must draw them
      // bit for bit (for G = 1: every row of the problem).
      const auto r0 = dist::row_range(k.n, 0, G);
      const auto pairs_r0 = sample_partners(problem_of(k, D, r0), s.parts[0], 5);
      ASSERT_EQ(pairs_r0.size(), static_cast<std::size_t>(r0.size()));
      ASSERT_GE(s.pairs.size(), pairs_r0.size());
      std::size_t differ = 0;
      for (std::size_t i = 0; i < pairs_r0.size(); ++i) differ += s.pairs[i] != pairs_r0[i];
      EXPECT_EQ(differ, 0u) << "of " << pairs_r0.size() << " rows of rank 0";
      // Against the whole-problem solve the potentials are NOT identical: g comes from
      // the cross-shard double merge, b is balanced by the allreduced mass of a and eps
      // by the merged mean cost, each equal to the single-GPU value only to fp32
      // round-off. The key is the same (global row), so the draws agree except where a
      // near-tie flips on that round-off.
      ASSERT_EQ(s.pairs.size(), pairs_ref.size());
      std::size_t same = 0;
      for (std::size_t i = 0; i < pairs_ref.size(); ++i) same += s.pairs[i] == pairs_ref[i];
      EXPECT_GE(static_cast<double>(same), 0.98 * static_cast<double>(pairs_ref.size()));
    }
  }
}

TEST(ShardedSinkhornGpu, DevicesOptionSplitsInOneCall) {
  REQUIRE_GPU();
  const Case k = cases()[3];  // weighted
  const Data D = make_data(k);
  const dist::RowRange whole{0, k.n};
  const SinkhornProblem p = problem_of(k, D, whole);
  const SinkhornResult ref = sinkhorn(p, options_of(k, D, whole, Backend::cuda));
  const Sharded s = solve_sharded(k, D, 3, Backend::cuda, false);
  SinkhornOptions o = options_of(k, D, whole, Backend::cuda);
  o.devices = {0, 0, 0};
  const SinkhornResult r = sinkhorn(p, o);
  EXPECT_EQ(r.n, k.n);
  // The same shards as the local group's, f in row order (a kernel's reduction order
  // may differ between runs: round-off, not bits).
  const double scale = std::max(max_abs(s.f), max_abs(s.parts[0].g));
  EXPECT_LE(max_diff(r.f, s.f), 1e-5 * scale);
  EXPECT_LE(max_diff(r.g, s.parts[0].g), 1e-5 * scale);
  EXPECT_EQ(r.problems[0].iterations, ref.problems[0].iterations);
  // Derived outputs of the whole result: each shard computes its rows from its own kept
  // state, concatenated in row order (dist::DevicesState).
  const auto map = barycentric_map(p, r);
  EXPECT_LE(max_diff(map, barycentric_map(p, ref)), 1e-3 * (1 + max_abs(map)));
  o.devices = {0, 0, 0, 0};
  o.f_init.assign(static_cast<std::size_t>(k.n), 0.0);
  o.g_init.assign(static_cast<std::size_t>(k.m), 0.0);
  const SinkhornResult warm = sinkhorn(p, o);  // warm start sliced per shard
  EXPECT_EQ(warm.problems[0].iterations, ref.problems[0].iterations);
}

TEST(ShardedSinkhornGpu, BadShardMakesEveryShardThrow) {
  REQUIRE_GPU();
  const Case k = cases()[0];
  Data D = make_data(k);
  const int G = 3;
  const auto bad_rows = dist::row_range(k.n, 1, G);
  D.x[static_cast<std::size_t>((bad_rows.begin + 2) * k.d + 1)] =
      std::numeric_limits<double>::quiet_NaN();
  std::vector<std::string> errors(G);
  dist::run_local(G, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), G);
    try {
      (void)dist::sinkhorn(c, problem_of(k, D, r), options_of(k, D, r, Backend::cuda));
    } catch (const NonFiniteInput& e) {
      errors[static_cast<std::size_t>(c.rank())] = std::string("NonFiniteInput: ") + e.what();
    } catch (const InvalidArgument& e) {
      errors[static_cast<std::size_t>(c.rank())] = std::string("InvalidArgument: ") + e.what();
    }
  });
  EXPECT_NE(errors[1].find("NonFiniteInput: x"), std::string::npos) << errors[1];
  for (int r : {0, 2}) {
    EXPECT_NE(errors[static_cast<std::size_t>(r)].find("InvalidArgument: rank 1:"),
              std::string::npos)
        << errors[static_cast<std::size_t>(r)];
  }
}

TEST(ShardedSinkhornGpu, RanksWithDifferentYAllThrow) {
  REQUIRE_GPU();
  const Case k = cases()[0];
  const Data D = make_data(k);
  Data shifted = D;
  for (auto& v : shifted.y) v += 0.25;  // rank 2's y: another cloud, same shape
  std::vector<std::string> errors(3);
  dist::run_local(3, [&](dist::Communicator& c) {
    const auto r = dist::row_range(k.n, c.rank(), 3);
    SinkhornProblem p = problem_of(k, D, r);
    if (c.rank() == 2) p.y = TensorView::host(shifted.y.data(), {k.m, k.d});
    try {
      (void)dist::sinkhorn(c, p, options_of(k, D, r, Backend::cuda));
    } catch (const InvalidArgument& e) {
      errors[static_cast<std::size_t>(c.rank())] = e.what();
    }
  });
  for (const auto& e : errors)
    EXPECT_NE(e.find("every rank must pass the same y"), std::string::npos) << e;
}

#if defined(OTGPU_WITH_CUDA)
TEST(ShardedSinkhornGpu, HostStagedAllreduceDevice) {
  REQUIRE_GPU();
  // Device buffers of each rank reduced in rank order; float sums in double.
  dist::run_local(3, [&](dist::Communicator& c) {
    std::vector<double> h = {1.0 + c.rank(), -2.0 * c.rank(), 0.5};
    void* dv = nullptr;
    ASSERT_EQ(cudaMalloc(&dv, h.size() * sizeof(double)), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dv, h.data(), h.size() * sizeof(double), cudaMemcpyHostToDevice),
              cudaSuccess);
    c.allreduce_device(dv, 3, DType::f64, dist::ReduceOp::sum, nullptr);
    ASSERT_EQ(cudaMemcpy(h.data(), dv, h.size() * sizeof(double), cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(h, (std::vector<double>{6.0, -6.0, 1.5}));
    c.allreduce_device(dv, 3, DType::f64, dist::ReduceOp::max, nullptr);
    ASSERT_EQ(cudaMemcpy(h.data(), dv, h.size() * sizeof(double), cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(h, (std::vector<double>{6.0, -6.0, 1.5}));
    cudaFree(dv);
  });
}
#endif

TEST(ShardedSinkhornGpu, OneNcclRankMatchesTheSingleGpu) {
  REQUIRE_GPU();
  if (!dist::nccl_built()) GTEST_SKIP() << "built without NCCL";
  const Case k = cases()[2];  // unbalanced, weighted
  const Data D = make_data(k);
  const dist::RowRange whole{0, k.n};
  const SinkhornProblem p = problem_of(k, D, whole);
  const SinkhornResult ref = sinkhorn(p, options_of(k, D, whole, Backend::cuda));
  auto comms = dist::nccl_local({0});
  const SinkhornResult r = dist::sinkhorn(*comms[0], p, options_of(k, D, whole, Backend::cuda));
  EXPECT_EQ(r.problems[0].iterations, ref.problems[0].iterations);
  const double scale = std::max(max_abs(ref.f), max_abs(ref.g));
  EXPECT_LE(max_diff(r.f, ref.f), 2e-4 * scale);
  EXPECT_LE(max_diff(r.g, ref.g), 2e-4 * scale);
}

}  // namespace
}  // namespace otgpu
