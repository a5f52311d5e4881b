// W4 of docs/benchmarks.md: exact assignment of flow-matching minibatches (the
// coupling of noise x0 [bs, d] with data x1 [bs, d]), cost matrix included.
//
// Data: x0 ~ N(0, I) and x1 entries U[0, 1) + 0.1, from splitmix64 counters (seed,
// index), so that bench/peers/w4_assignment.py draws the same points in numpy; cost
// sqeuclidean. Params {bs, d, K} identify a case (a peer row matches on them).
//
// GPU rows: device-resident fp32 points, one synchronous call on a GpuContext (cost
// GEMM + batched auction + certificate). CPU rows: the fp64 Jonker-Volgenant
// reference at the sizes a CPU does in seconds (quick suite: under ~20 s here), and
// the CPU cost matrix alone (part = cost) in both forms at d = 64, 512, 3072, whose
// peer is numpy's product form (w4_assignment.py).
// Figures count the cost's arithmetic only (GEMM 2 K bs^2 d FLOP on the GPU; the CPU's
// Gram form 2 K bs^2 d, its direct differences 3 K bs^2 d) against the FMA roofline:
// the solve is not counted, so the ratio is how far the whole call is from the cost's
// bound.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench.h"
#include "cpu_cost.h"
#include "cpu_numeric.h"
#include "otgpu/assignment.h"
#include "otgpu/error.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>

#include "otgpu/device.h"
#endif

namespace otgpu::bench {

namespace {

constexpr std::uint64_t kSeedX0 = 4001, kSeedX1 = 4002;

/// splitmix64 of the counter (seed << 32) + k as a 53-bit fraction in [0, 1).
/// bench/peers/w4_assignment.py implements the same map.
double unit(std::uint64_t seed, std::uint64_t k) {
  std::uint64_t z = (seed << 32) + k + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

/// x0 ~ N(0, 1) entries (Box-Muller on the counters 2k, 2k + 1); x1 entries
/// U[0, 1) + 0.1 (docs/benchmarks.md: "x1 drawn like Y"). fp32.
void make_points(std::int64_t count, std::vector<float>& x0, std::vector<float>& x1) {
  constexpr double kTwoPi = 6.283185307179586;
  x0.resize(static_cast<std::size_t>(count));
  x1.resize(static_cast<std::size_t>(count));
  for (std::int64_t k = 0; k < count; ++k) {
    const auto uk = static_cast<std::uint64_t>(k);
    const double r = std::sqrt(-2.0 * std::log(1.0 - unit(kSeedX0, 2 * uk)));
    x0[static_cast<std::size_t>(k)] =
        static_cast<float>(r * std::cos(kTwoPi * unit(kSeedX0, 2 * uk + 1)));
    x1[static_cast<std::size_t>(k)] = static_cast<float>(unit(kSeedX1, uk) + 0.1);
  }
}

struct Case {
  std::int64_t K, bs, d;
};

/// part: "assignment" (cost + solve) or "cost" (the CPU cost matrix alone), so that a
/// peer entry of one never matches a row of the other.
nlohmann::json params_of(const Case& c, const char* part = "assignment") {
  return {{"bs", c.bs}, {"d", c.d}, {"K", c.K}, {"cost", "sqeuclidean"}, {"part", part}};
}

double elapsed_ms(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// The row of one case: the median time of `call` (one synchronous solve of the
/// batch), the mean optimal cost, the largest certified gap and the solve's work
/// (`work_key`: the sum over the batch of the iterations, or their max), figure = the
/// cost's `flop_per_entry` K bs^2 d FLOP per second against `roofline`.
Row timed_row(const Context& ctx, const Case& c, std::string solver, std::string backend,
              const std::function<AssignmentResult()>& call, const char* work_key, bool sum_work,
              double flop_per_entry, double roofline) {
  AssignmentResult r;
  const double ms = median_ms(ctx, [&] {
    const auto t0 = std::chrono::steady_clock::now();
    r = call();
    return elapsed_ms(t0);
  });
  Row row;
  row.workload = "W4";
  row.solver = std::move(solver);
  row.backend = std::move(backend);
  row.params = params_of(c);
  double gap = 0, cost = 0;
  std::int64_t work = 0;
  for (const auto& q : r.problems) {
    gap = std::max(gap, q.gap);
    cost += q.cost;
    work = sum_work ? work + q.iterations : std::max(work, q.iterations);
  }
  row.result = {{"mean_cost", cost / static_cast<double>(c.K)}, {"max_gap", gap}, {work_key, work}};
  row.ms = ms;
  row.time_unit = "ms/call";
  row.figure = flop_per_entry * static_cast<double>(c.K * c.bs * c.bs * c.d) / (ms * 1e-3);
  row.figure_unit = "FLOP/s";
  row.roofline = roofline;
  row.bound = "fma";
  return row;
}

void cpu_row(const Context& ctx, std::vector<Row>& rows, const Case& c) {
  std::vector<float> x0, x1;
  make_points(c.K * c.bs * c.d, x0, x1);
  AssignmentProblem p;
  p.x = TensorView::host(x0.data(), {c.K, c.bs, c.d});
  p.y = TensorView::host(x1.data(), {c.K, c.bs, c.d});
  AssignmentOptions o;
  o.backend = Backend::cpu;
  const bool gram = cpu::choose_cost_form(CostKind::sqeuclidean, c.d) == cpu::CostForm::gram;
  Row row = timed_row(
      ctx, c, "cpu-jv", "cpu", [&] { return assignment(p, o); }, "augmentations", true,
      gram ? 2.0 : 3.0, ctx.cpu_fma_flop_per_s);
  row.notes.emplace_back(fmt::format(
      "W4 cpu-jv: fp64 cost (d < {}: direct differences, 3 K bs^2 d FLOP; else the Gram form "
      "on centred points, 2 K bs^2 d FLOP, its near-tight pairs re-evaluated by differences) + "
      "Jonker-Volgenant (column reduction, augmenting row reduction, Dijkstra augmentations), "
      "problems over threads; figure = the cost's FLOP only (the solve is not counted)",
      cpu::kGramMinDim));
  rows.push_back(std::move(row));
}

/// The cost matrix alone (part = cost): the direct and the Gram form on the same
/// staged fp64 points, figure = each form's own FLOP (3 or 2 bs^2 d) per second.
void cpu_cost_rows(const Context& ctx, std::vector<Row>& rows, std::int64_t bs, std::int64_t d) {
  std::vector<float> x0, x1;
  make_points(bs * d, x0, x1);
  cpu::StagedPoints pts;
  pts.n = pts.m = bs;
  pts.d = d;
  pts.x.assign(x0.begin(), x0.end());
  pts.y.assign(x1.begin(), x1.end());
  std::vector<double> direct(static_cast<std::size_t>(bs * bs)), gram(direct.size());
  const int threads = cpu::resolve_threads(0);
  double delta = 0;
  for (const bool use_gram : {false, true}) {
    const double ms = median_ms(ctx, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      if (use_gram) {
        delta = cpu::cost_gram(pts, gram.data(), threads);
      } else {
        cpu::cost_direct(pts, direct.data(), threads);
      }
      return elapsed_ms(t0);
    });
    Row row;
    row.workload = "W4";
    row.solver = use_gram ? "cpu-cost-gram" : "cpu-cost-direct";
    row.backend = "cpu";
    row.params = params_of({1, bs, d}, "cost");
    row.ms = ms;
    row.time_unit = "ms/call";
    row.figure = (use_gram ? 2.0 : 3.0) * static_cast<double>(bs * bs * d) / (ms * 1e-3);
    row.figure_unit = "FLOP/s";
    row.roofline = ctx.cpu_fma_flop_per_s;
    row.bound = "fma";
    if (use_gram) {
      double err = 0, top = 0;
      for (std::size_t e = 0; e < direct.size(); ++e) {
        err = std::max(err, std::abs(gram[e] - direct[e]));
        top = std::max(top, direct[e]);
      }
      row.result = {{"max_abs_diff", err}, {"delta_bound", delta}, {"max_cost", top}};
    }
    row.notes.emplace_back(
        "W4 cpu-cost: the fp64 cost matrix alone from staged fp64 points, all threads: direct "
        "differences (3 bs^2 d FLOP) or the Gram form |x'|^2 + |y'|^2 - 2<x', y'> on centred "
        "points (2 bs^2 d FLOP; packed register-tiled kernel, AVX-512/AVX2/SSE2 by run-time "
        "dispatch); result: the largest |gram - direct| and the bound delta the certificate "
        "uses; against W5's cpu-fma limit, measured in the same widest vector build");
    rows.push_back(std::move(row));
  }
}

#ifdef OTGPU_WITH_CUDA
/// Device buffer freed on every exit path.
struct DeviceFloats {
  float* p = nullptr;
  explicit DeviceFloats(const std::vector<float>& host) {
    if (cudaMalloc(&p, host.size() * sizeof(float)) != cudaSuccess) {
      throw OutOfMemory(fmt::format("bench W4: cannot allocate {} MiB on the GPU",
                                    host.size() * sizeof(float) >> 20));
    }
    if (cudaMemcpy(p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice) !=
        cudaSuccess) {
      throw CudaError("bench W4: copying the data to the GPU failed", 0);
    }
  }
  ~DeviceFloats() { (void)cudaFree(p); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
};

void gpu_row(const Context& ctx, std::vector<Row>& rows, const Case& c, double target_ms) {
  std::vector<float> x0, x1;
  make_points(c.K * c.bs * c.d, x0, x1);
  const DeviceFloats d0(x0), d1(x1);
  GpuContext gctx(0);
  AssignmentProblem p;
  p.x = TensorView::device(d0.p, {c.K, c.bs, c.d});
  p.y = TensorView::device(d1.p, {c.K, c.bs, c.d});
  // assignment(gctx, ...) returns synchronized.
  Row row = timed_row(
      ctx, c, "cuda-auction", "cuda", [&] { return assignment(gctx, p); }, "max_rounds", false, 2.0,
      ctx.fma_flop_per_s);
  row.notes.emplace_back(
      "W4 cuda-auction: fp32 GEMM cost + eps-scaling auction (one block per problem, or a "
      "cooperative grid of up to #SMs blocks per problem when K < #SMs and bs > 256; "
      "OTGPU_AUCTION=block|grid forces one; fp64 prices) + certificate, one synchronous call; "
      "figure = the GEMM's 2 K bs^2 d FLOP only: "
      "the auction (max_rounds bidding rounds of the slowest problem) is not counted");
  row.notes.push_back(
      fmt::format("W4 K={} bs={} d={}: target {:.3g} ms (H100/H200)", c.K, c.bs, c.d, target_ms));
  rows.push_back(std::move(row));
}
#endif

void run_w4(const Context& ctx, std::vector<Row>& rows) {
  const bool full = ctx.suite == "full";
  if (!ctx.gpu_only) {
    std::vector<Case> cpu = {{1, 256, 64}, {1, 1024, 64}, {1, 256, 3072}, {64, 256, 64}};
    if (full) {
      cpu.push_back({1, 1024, 3072});
      cpu.push_back({1, 2048, 64});
      cpu.push_back({1, 4096, 64});
      cpu.push_back({64, 256, 3072});
    }
    for (const Case& c : cpu) cpu_row(ctx, rows, c);
    for (const std::int64_t d : {64, 512, 3072}) cpu_cost_rows(ctx, rows, 256, d);
  }
  const std::vector<std::pair<Case, double>> gpu = {
      {{1, 256, 64}, 0},    {{1, 1024, 64}, 5},    {{1, 4096, 64}, 50}, {{1, 256, 3072}, 0},
      {{1, 1024, 3072}, 5}, {{1, 4096, 3072}, 50}, {{64, 256, 64}, 5},  {{64, 256, 3072}, 5}};
  if (!ctx.has_gpu) {
    for (const auto& [c, t] : gpu) {
      (void)t;
      rows.push_back(skipped_gpu_row(ctx, "W4", "cuda-auction", params_of(c)));
    }
    return;
  }
#ifdef OTGPU_WITH_CUDA
  for (const auto& [c, t] : gpu) gpu_row(ctx, rows, c, t);
#endif
}

}  // namespace

void add_assignment_workloads(std::vector<Workload>& out) {
  out.push_back({"W4",
                 "flow-matching minibatch coupling by exact assignment, bs 256/1024/4096 at d=64 "
                 "and 3072, and K=64 x bs=256 (cost included)",
                 {"quick", "full"},
                 run_w4});
}

}  // namespace otgpu::bench
