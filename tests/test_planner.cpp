// The Sinkhorn planner (otgpu_host/planner.h) on made-up machines: kernel choice at its
// boundaries, column splits that fill the last wave, the workspace carve-up, batch
// chunks and the out-of-memory error. Pure: runs on every build.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "otgpu/error.h"
#include "otgpu_host/planner.h"

namespace {

using otgpu::CostKind;
using otgpu::planner::Chunk;
using otgpu::planner::DeviceProps;
using otgpu::planner::Kernel;
using otgpu::planner::Request;

/// A device with known occupancy for every padded dimension.
DeviceProps machine(int sms, int occupancy) {
  DeviceProps p = otgpu::planner::h200_assumed();
  p.name = "test device";
  p.assumed = false;
  p.sm_count = sms;
  for (int dp : {1, 2, 4, 8, 16, 32, 64, 68, 128}) p.online_occupancy.push_back({dp, occupancy});
  return p;
}

Request points(std::int64_t B, std::int64_t n, std::int64_t m, std::int64_t d) {
  Request r;
  r.B = B;
  r.n = n;
  r.m = m;
  r.d = d;
  return r;
}

TEST(Planner, SmallKernelUpTo512PointsWithin32Dims) {
  // 64 SMs: a batch of 64 gives every SM a problem (the small kernel is then preferred
  // whatever the shape; SmallKernelOnlyWhenItKeepsTheSmsBusy covers fewer problems).
  const DeviceProps dev = machine(64, 8);
  EXPECT_EQ(otgpu::planner::make_plan(points(64, 512, 512, 2), dev).kernel, Kernel::small);
  EXPECT_EQ(otgpu::planner::make_plan(points(64, 512, 513, 2), dev).kernel, Kernel::online);
  EXPECT_EQ(otgpu::planner::make_plan(points(64, 513, 512, 2), dev).kernel, Kernel::online);
  EXPECT_EQ(otgpu::planner::make_plan(points(64, 100, 100, 32), dev).kernel, Kernel::small);
  EXPECT_EQ(otgpu::planner::make_plan(points(64, 100, 100, 33), dev).kernel, Kernel::online);
  Request c = points(64, 100, 100, 0);
  c.cost = CostKind::matrix;
  EXPECT_EQ(otgpu::planner::make_plan(c, dev).kernel, Kernel::dense);
}

TEST(Planner, SmallKernelLayoutFollowsThePaddedDimension) {
  // d = 5 is staged as dp = 8, where the kernel caches the n x m scores (dp >= 8); the
  // plan must report that layout, the one d = 8 gets, not the recomputing layout that
  // a raw d = 5 would pick (d = 4, staged as dp = 4, recomputes: a different size).
  const DeviceProps dev = machine(64, 8);
  const auto bytes = [&](std::int64_t d) {
    const auto plan = otgpu::planner::make_plan(points(64, 100, 100, d), dev);
    EXPECT_EQ(plan.kernel, Kernel::small) << "d = " << d;
    return plan.small_smem_bytes;
  };
  ASSERT_NE(bytes(4), bytes(8));  // the two layouts differ, so the case matters
  EXPECT_EQ(bytes(5), bytes(8));
  EXPECT_EQ(bytes(7), bytes(8));
}

TEST(Planner, SmallKernelNeedsTheSharedMemory) {
  // 512 x 512 with d = 32: the cached cost needs 512 * 513 floats (> 1 MB): no fit
  // in 227 KB; the recomputing variant needs 2 * 512 * 32 floats of points (128 KB)
  // plus potentials, weights and scratch: it fits in 227 KB, not in 100 KB.
  DeviceProps dev = machine(8, 8);  // 8 problems on 8 SMs: the small kernel is preferred
  const auto plan = otgpu::planner::make_plan(points(8, 512, 512, 32), dev);
  ASSERT_EQ(plan.kernel, Kernel::small);
  EXPECT_GT(plan.small_smem_bytes, std::size_t{128} * 1024);
  EXPECT_LE(plan.small_smem_bytes, dev.smem_per_block_optin);
  dev.smem_per_block_optin = 100 * 1024;
  EXPECT_EQ(otgpu::planner::make_plan(points(8, 512, 512, 32), dev).kernel, Kernel::online);
}

TEST(Planner, SmallKernelOnlyWhenItKeepsTheSmsBusy) {
  const DeviceProps dev = machine(132, 4);
  using otgpu::planner::small_kernel_preferred;
  // Issue 10's W2 shapes: B = 64, n = 512, d = 32 leaves 68 of 132 SMs idle in the small
  // kernel: ~85 us per iteration there against ~41 us + 4 launches online.
  EXPECT_EQ(otgpu::planner::make_plan(points(64, 512, 512, 32), dev).kernel, Kernel::online);
  EXPECT_FALSE(small_kernel_preferred(64, 512, 512, 32, dev));
  // d = 2: ~13 us against ~7 us + 12 us of launches: the small kernel stays.
  EXPECT_EQ(otgpu::planner::make_plan(points(64, 512, 512, 2), dev).kernel, Kernel::small);
  // A batch that fills the SMs, and tiny problems, stay on the small kernel.
  EXPECT_EQ(otgpu::planner::make_plan(points(1024, 128, 128, 2), dev).kernel, Kernel::small);
  EXPECT_EQ(otgpu::planner::make_plan(points(132, 512, 512, 32), dev).kernel, Kernel::small);
  EXPECT_EQ(otgpu::planner::make_plan(points(4, 100, 120, 8), dev).kernel, Kernel::small);
  // One large-ish problem on one SM is slower than the launches: online.
  EXPECT_EQ(otgpu::planner::make_plan(points(1, 512, 512, 16), dev).kernel, Kernel::online);
}

TEST(Planner, PaddedDimension) {
  const DeviceProps dev = machine(132, 8);
  EXPECT_EQ(otgpu::planner::make_plan(points(1, 4096, 4096, 3), dev).dp, 4);
  EXPECT_EQ(otgpu::planner::make_plan(points(1, 4096, 4096, 64), dev).dp, 64);
  EXPECT_EQ(otgpu::planner::make_plan(points(1, 4096, 4096, 65), dev).dp, 68);
}

TEST(Planner, SplitsGiveAFullLastWave) {
  // B = 1, n = 256 rows (one block of 512 rows at d = 2), m = 101,376 columns (1,584
  // tiles of 64): the row blocks alone use 1 of 132 * 4 = 528 slots. 528 splits of
  // 3 tiles fill exactly one wave.
  const DeviceProps dev = machine(132, 4);
  const auto plan = otgpu::planner::make_plan(points(1, 256, 101376, 2), dev);
  ASSERT_EQ(plan.kernel, Kernel::online);
  EXPECT_EQ(plan.f.row_blocks, 1);
  EXPECT_EQ(plan.f.col_tiles, 1584);
  EXPECT_EQ(plan.f.splits, 528);
  EXPECT_EQ(plan.f.blocks % (132 * 4), 0) << "splits " << plan.f.splits;
  EXPECT_EQ(plan.f.waves, 1);
  EXPECT_DOUBLE_EQ(plan.f.last_wave_fill, 1.0);
  EXPECT_EQ(plan.occupancy, 4);
  EXPECT_FALSE(plan.occupancy_assumed);
}

TEST(Planner, SplitsFollowTheMeasuredOccupancy) {
  // The same shape (4,800 column tiles) on devices of different occupancy:
  // blocks = k * sms * occupancy.
  for (int occ : {2, 3, 6, 8}) {
    const DeviceProps dev = machine(100, occ);
    const auto plan = otgpu::planner::make_plan(points(1, 128, 4800 * 64, 2), dev);
    ASSERT_EQ(plan.kernel, Kernel::online);
    EXPECT_EQ(plan.f.blocks % (100 * occ), 0) << "occupancy " << occ;
    EXPECT_DOUBLE_EQ(plan.f.last_wave_fill, 1.0) << "occupancy " << occ;
  }
}

TEST(Planner, SplitChoiceMinimisesWavesTimesSpan) {
  // Brute force over every admissible split count of the estimate the planner
  // minimises; the planner's answer must reach the minimum.
  for (std::int64_t rb : {1, 3, 7}) {
    for (std::int64_t tiles : {4, 9, 64, 301}) {
      for (std::int64_t wave : {16, 100, 528}) {
        const int s = otgpu::planner::choose_splits(rb, 1, tiles, wave);
        auto cost = [&](std::int64_t k) {
          const std::int64_t span = (tiles + k - 1) / k;
          return (rb * k + wave - 1) / wave * (span + 1);
        };
        std::int64_t best = cost(1);
        for (std::int64_t k = 2; k <= tiles / 2; ++k)
          if ((tiles + k - 1) / k * (k - 1) < tiles) best = std::min(best, cost(k));
        EXPECT_EQ(cost(s), best) << "rb=" << rb << " tiles=" << tiles << " wave=" << wave;
        EXPECT_LE(s, std::max<std::int64_t>(1, tiles / 2));
        if (s > 1) {
          EXPECT_LT((tiles + s - 1) / s * (s - 1), tiles) << "empty split";
        }
      }
    }
  }
}

TEST(Planner, NoSplitsWhenRowBlocksFillTheDevice) {
  const DeviceProps dev = machine(132, 8);
  const auto plan = otgpu::planner::make_plan(points(4096, 1024, 1024, 2), dev);
  EXPECT_EQ(plan.f.splits, 1);
  EXPECT_EQ(plan.g.splits, 1);
  EXPECT_EQ(plan.launches_per_iteration, 2);
}

TEST(Planner, WorkspaceMatchesTheCarveUp) {
  const DeviceProps dev = machine(132, 4);
  for (const Request& r : {points(3, 1000, 700, 5), points(1, 256, 100000, 2)}) {
    const auto plan = otgpu::planner::make_plan(r, dev);
    const auto w = otgpu::planner::layout_workspace(plan, true, false);
    EXPECT_EQ(plan.workspace_bytes, w.total);
    // Every array is aligned, inside the total, and disjoint from the next one.
    std::vector<otgpu::planner::Span> spans = {
        w.X,          w.Y,      w.logA,  w.logB,   w.a,    w.b,    w.Ft,
        w.eps_tab,    w.active, w.iters, w.count,  w.res,  w.out4, w.partials,
        w.loop_state, w.F,      w.G,     w.center, w.mean, w.bad,  w.mass};
    std::sort(spans.begin(), spans.end(),
              [](const auto& a, const auto& b) { return a.offset < b.offset; });
    for (std::size_t i = 0; i < spans.size(); ++i) {
      ASSERT_GT(spans[i].bytes, 0u);
      EXPECT_EQ(spans[i].offset % otgpu::planner::kWorkspaceAlign, 0u);
      EXPECT_LE(spans[i].offset + spans[i].bytes, w.total);
      if (i + 1 < spans.size()) {
        EXPECT_LE(spans[i].offset + spans[i].bytes, spans[i + 1].offset);
      }
    }
    // Sizes by the layout's own definition.
    EXPECT_EQ(w.X.bytes, static_cast<std::size_t>(r.B * r.n * plan.dp) * sizeof(float));
    EXPECT_EQ(w.G.bytes, static_cast<std::size_t>(r.B * r.m) * sizeof(float));
    const auto splits = std::max(plan.f.splits, plan.g.splits);
    if (splits > 1) {
      EXPECT_EQ(w.partials.bytes, 2 * sizeof(float) * static_cast<std::size_t>(r.B) *
                                      std::max(static_cast<std::size_t>(plan.f.splits * r.n),
                                               static_cast<std::size_t>(plan.g.splits * r.m)));
    }
    // Without F and G, and with the derived scratch.
    const auto caller_fg = otgpu::planner::layout_workspace(plan, false, false);
    EXPECT_EQ(caller_fg.F.bytes, 0u);
    EXPECT_LT(caller_fg.total, w.total);
    const auto derived = otgpu::planner::layout_workspace(plan, false, true);
    EXPECT_EQ(derived.T.bytes, static_cast<std::size_t>(r.B * r.n * plan.dp) * sizeof(float));
  }
}

TEST(Planner, EpsTablesHaveOneRowPerScalingStep) {
  const DeviceProps dev = machine(132, 4);
  Request r = points(10, 1000, 1000, 2);
  r.scaling_steps = 0;
  const auto w0 = otgpu::planner::layout_workspace(otgpu::planner::make_plan(r, dev), true, false);
  r.scaling_steps = 9;
  const auto w9 = otgpu::planner::layout_workspace(otgpu::planner::make_plan(r, dev), true, false);
  EXPECT_EQ(w0.eps_tab.bytes, 10 * sizeof(float));
  EXPECT_EQ(w9.eps_tab.bytes, 100 * sizeof(float));
}

TEST(Planner, ScalingStepsFromTheOneScheduleRule) {
  otgpu::SinkhornOptions o;
  o.eps = 0.01;
  o.eps_init = 1.0;
  o.eps_decay = 0.5;
  // 1 * 0.5^k > 0.01 for k <= 6 (0.0156); 0.5^7 = 0.0078 <= 0.01: K = 7.
  const auto r =
      otgpu::planner::make_request(2, 10, 10, 2, CostKind::sqeuclidean, otgpu::DType::f64, o);
  EXPECT_EQ(r.scaling_steps, 7);
  EXPECT_EQ(r.check_every, o.check_every);
}

TEST(Planner, LargeBatchesAreChunked) {
  const DeviceProps dev = machine(132, 8);
  const auto plan = otgpu::planner::make_plan(points(150000, 600, 600, 2), dev);
  ASSERT_EQ(plan.kernel, Kernel::online);
  ASSERT_EQ(plan.chunks.size(), 3u);
  std::int64_t next = 0;
  for (const Chunk& c : plan.chunks) {
    EXPECT_EQ(c.begin, next);
    EXPECT_LE(c.count, 65535);
    EXPECT_GT(c.count, 0);
    next += c.count;
  }
  EXPECT_EQ(next, 150000);
  // The small kernel puts the batch on x: one launch.
  EXPECT_EQ(otgpu::planner::make_plan(points(150000, 64, 64, 2), dev).chunks.size(), 1u);
}

TEST(Planner, OutOfMemoryNamesNeededAndFree) {
  DeviceProps dev = machine(132, 8);
  dev.memory_free = 1 << 20;
  try {
    (void)otgpu::planner::make_plan(points(64, 100000, 100000, 8), dev);
    FAIL() << "expected OutOfMemory";
  } catch (const otgpu::OutOfMemory& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("1048576 bytes are free"), std::string::npos) << what;
    EXPECT_NE(what.find("needs"), std::string::npos) << what;
  }
  dev.memory_free = 0;  // unknown: no check
  EXPECT_NO_THROW((void)otgpu::planner::make_plan(points(64, 100000, 100000, 8), dev));
}

TEST(Planner, BadSizesNameTheArgument) {
  const DeviceProps dev = machine(132, 8);
  try {
    (void)otgpu::planner::make_plan(points(1, 0, 10, 2), dev);
    FAIL();
  } catch (const otgpu::InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "n: must be >= 1, got 0");
  }
  EXPECT_THROW((void)otgpu::planner::make_plan(points(0, 10, 10, 2), dev), otgpu::InvalidArgument);
  EXPECT_THROW((void)otgpu::planner::make_plan(points(1, 10, 10, 0), dev), otgpu::InvalidArgument);
}

TEST(Planner, RooflineOfOneIteration) {
  const DeviceProps dev = otgpu::planner::h200_assumed();
  // Online, d = 2: 2 n m (1 + 1/16) exps (a rescale per chunk of 16); exp-bound on the
  // H200 (6.5 issue slots per pair against 8 per exp slot).
  const auto p = otgpu::planner::make_plan(points(1, 10000, 20000, 2), dev);
  EXPECT_DOUBLE_EQ(p.roofline.exps, 2.0 * 10000 * 20000 * 1.0625);
  EXPECT_DOUBLE_EQ(otgpu::planner::online_instructions_per_pair(2, CostKind::sqeuclidean), 6.5);
  EXPECT_EQ(p.roofline.bound, "exp");
  EXPECT_NEAR(p.roofline.seconds, p.roofline.exps / (132.0 * 16 * 1.98e9), 1e-12);
  EXPECT_TRUE(p.roofline.assumed);
  // d = 64 on the SIMT path: 64 FMAs + 4 + 17 shared loads + 0.5 per pair.
  EXPECT_DOUBLE_EQ(otgpu::planner::online_instructions_per_pair(64, CostKind::sqeuclidean), 85.5);
  // d = 8 (SIMT): 2 * 8 + 2 fp32 instructions per pair against 8 per exp slot: fp32-bound.
  // (From d = 16 the half-steps run on tensor cores: test_mma_emulation.cpp.)
  EXPECT_EQ(otgpu::planner::make_plan(points(1, 10000, 20000, 8), dev).roofline.bound, "fp32");
  // A cost matrix: C read twice per iteration, memory-bound.
  Request c = points(1, 10000, 20000, 0);
  c.cost = CostKind::matrix;
  const auto pc = otgpu::planner::make_plan(c, dev);
  EXPECT_DOUBLE_EQ(pc.roofline.bytes, 2.0 * 10000 * 20000 * 4);
  EXPECT_EQ(pc.roofline.bound, "memory");
  EXPECT_NEAR(pc.roofline.seconds, pc.roofline.bytes / 4.8e12, 1e-12);
}

TEST(Planner, CpuPlan) {
  const auto cpu = otgpu::planner::cpu_assumed(4);
  const auto p = otgpu::planner::make_cpu_plan(points(2, 300, 500, 3), cpu);
  EXPECT_EQ(p.kernel, Kernel::cpu_reference);
  EXPECT_EQ(p.backend, otgpu::Backend::cpu);
  EXPECT_EQ(p.cpu_threads, 4);
  EXPECT_DOUBLE_EQ(p.roofline.exps, 2.0 * 2 * 300 * 500);
  EXPECT_NEAR(p.roofline.seconds, p.roofline.exps / 4e8, 1e-15);
  EXPECT_GE(p.host_bytes, static_cast<std::size_t>(2 * (300 + 500) * 3 * 8));
  EXPECT_NE(otgpu::planner::describe(p).find("cpu-reference"), std::string::npos);
}

TEST(Planner, LoopScheduleMatchesTheReferenceChecks) {
  // Brute force against the CPU reference's rule: a check after iteration t when
  // (t+1) % ce == 0 and t >= K. The prefix ends with the first check, every period ends
  // with one and starts after one, the tail has none, and nothing is left out.
  for (int K : {0, 1, 4, 9, 10, 23}) {
    for (int ce : {1, 3, 10}) {
      for (int max_iter : {1, 5, 10, 11, 20, 57, 97, 100}) {
        const auto l = otgpu::planner::loop_schedule(K, ce, max_iter);
        auto is_check = [&](int t) { return (t + 1) % ce == 0 && t >= K; };
        std::vector<int> checks;
        for (int t = 0; t < max_iter; ++t)
          if (is_check(t)) checks.push_back(t);
        if (l.periods == 0) {
          // Plain: no whole period fits after the first check.
          EXPECT_TRUE(checks.empty() || checks.front() + ce >= max_iter)
              << "K=" << K << " ce=" << ce << " max_iter=" << max_iter;
          continue;
        }
        ASSERT_FALSE(checks.empty());
        EXPECT_EQ(l.t0, checks.front() + 1);
        EXPECT_EQ(l.t_limit, l.t0 + l.periods * ce);
        EXPECT_LE(l.t_limit, max_iter);
        EXPECT_LT(max_iter - l.t_limit, ce) << "a whole period left in the tail";
        for (int p = 0; p < l.periods; ++p) {
          const int first = l.t0 + p * ce, last = first + ce - 1;
          EXPECT_TRUE(is_check(first - 1)) << "period " << p << " does not follow a check";
          EXPECT_TRUE(is_check(last)) << "period " << p << " does not end with a check";
          for (int t = first; t < last; ++t) EXPECT_FALSE(is_check(t));
        }
        for (int t = l.t_limit; t < max_iter; ++t) EXPECT_FALSE(is_check(t)) << "tail " << t;
      }
    }
  }
  EXPECT_EQ(otgpu::planner::loop_schedule(4, 0, 100).periods, 0);
  const auto l = otgpu::planner::loop_schedule(4, 10, 97);
  EXPECT_EQ(l.t0, 10);
  EXPECT_EQ(l.periods, 8);
  EXPECT_EQ(l.t_limit, 90);
}

TEST(Planner, DescribeSaysWhatIsAssumed) {
  const auto p =
      otgpu::planner::make_plan(points(64, 512, 512, 32), otgpu::planner::h200_assumed());
  const std::string text = otgpu::planner::describe(p);
  EXPECT_NE(text.find("[properties assumed]"), std::string::npos) << text;
  EXPECT_NE(text.find("H200"), std::string::npos) << text;
  EXPECT_EQ(p.device_count, 1);
}

}  // namespace
