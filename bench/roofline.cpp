// W5: CPU limits measured here; GPU limits in cuda/roofline.cu. The W5 rows report
// them so every other row's ratio can be checked against the same run.
#include "roofline.h"

#include <fmt/format.h>
#include "tensor_probe.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"
#include "cpu_exp.h"
#include "cpu_problem.h"

namespace otgpu::bench {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <class F>
double best_of(int runs, F&& f) {
  double best = 1e300;
  for (int r = 0; r < runs; ++r) best = std::min(best, f());
  return best;
}

/// kChains independent fp64 FMA chains per step, kSteps steps: each chain is
/// v = fma(v, a, b), 2 FLOP. Built for AVX-512, AVX2+FMA and the baseline, picked at run
/// time like the solver's own kernels (cpu_cost, cpu_exp), so the limit is that of the
/// widest vector unit the library uses on this CPU, not of the build's baseline.
constexpr int kFmaChains = 32;
constexpr long kFmaSteps = 1 << 20;
template <int kChains>
inline double fma_chains(long steps) {
  double v[kChains];
  for (int c = 0; c < kChains; ++c) v[c] = 1.0 + c;
  for (long s = 0; s < steps; ++s) {
#pragma omp simd
    for (int c = 0; c < kChains; ++c) v[c] = __builtin_fma(v[c], 0.999999, 1e-7);
  }
  double acc = 0;
  for (double x : v) acc += x;
  return acc;
}
[[gnu::target("avx512f,fma")]] double fma_chains_avx512(long steps) {
  return fma_chains<kFmaChains>(steps);
}
[[gnu::target("avx2,fma")]] double fma_chains_avx2(long steps) {
  return fma_chains<kFmaChains>(steps);
}
double fma_chains_base(long steps) { return fma_chains<kFmaChains>(steps); }

/// The widest build this CPU runs, and its name for the W5 note.
double (*fma_probe(const char** isa))(long) {
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    *isa = "AVX-512";
    return fma_chains_avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    *isa = "AVX2+FMA";
    return fma_chains_avx2;
  }
  *isa = "baseline";
  return fma_chains_base;
}

}  // namespace

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::string model = "unknown CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) model = line.substr(colon + 2);
      break;
    }
  }
  return model + " x" + std::to_string(omp_get_max_threads()) + " threads";
}

Limits measure_cpu_limits() {
  Limits lim;
  const int threads = omp_get_max_threads();

  // exp: the CPU reference's inner loop, the library's own vectorized exp and sum of a
  // log-sum-exp row (cpu::exp_sums, widest instruction set), every term evaluated.
  constexpr int kExpN = 1 << 14, kExpReps = 128;
  std::vector<double> sums(static_cast<std::size_t>(threads), 0.0);
  const double exp_s = best_of(3, [&] {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    {
      std::vector<double> t(static_cast<std::size_t>(kExpN));
      const double base = -1.0 - 1e-3 * omp_get_thread_num();
      for (int k = 0; k < kExpN; ++k) t[static_cast<std::size_t>(k)] = base - 1e-4 * k;
      double acc = 0;
      for (int r = 0; r < kExpReps; ++r) {
        acc += cpu::exp_sums(t.data(), nullptr, kExpN, 1e-3 * r, -700.0).sum;
      }
      sums[static_cast<std::size_t>(omp_get_thread_num())] = acc;
    }
    return seconds_since(t0);
  });
  lim.exp_per_s = static_cast<double>(threads) * kExpN * kExpReps / exp_s;

  // fp64 FMA: kFmaChains independent chains per thread in the widest vector build
  // (fma_probe). 32 chains cover the FMA latency (8 measured the latency, not the
  // throughput, and the solvers' vector code exceeded it).
  const char* fma_isa = "";
  double (*const chains)(long) = fma_probe(&fma_isa);
  lim.fma_isa = fma_isa;
  const double fma_s = best_of(3, [&] {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    { sums[static_cast<std::size_t>(omp_get_thread_num())] += chains(kFmaSteps); }
    return seconds_since(t0);
  });
  lim.fma_flop_per_s = 2.0 * kFmaChains * static_cast<double>(kFmaSteps) * threads / fma_s;

  // copy: 64 MiB per thread-chunk total, far past the caches.
  const std::size_t bytes = std::size_t{256} << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const double copy_s = best_of(3, [&] {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    {
      const std::size_t chunk = bytes / static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t off = chunk * static_cast<std::size_t>(omp_get_thread_num());
      std::memcpy(dst.data() + off, src.data() + off, chunk);
    }
    return seconds_since(t0);
  });
  lim.copy_bytes_per_s = 2.0 * static_cast<double>(bytes) / copy_s;
  if (dst[bytes / 2] != 1 || sums[0] == -1.0) lim.copy_bytes_per_s = 0;  // keep the work alive

  // Pair sweep: the CPU reference's half-step over one row of a cost matrix is
  // cpu::row_lse: a score pass s_j = log w_j + (g_j - C_ij) / eps with a running max,
  // then exp(s_j - max) only where s_j - max >= -60. Here every term but the row max
  // lies far below -60, so no exp but one per row runs: the rate is what the solver
  // reaches when it skips every exp it can, an upper bound on its pairs/s. The same
  // function the solver calls, so the same instruction set. The matrix (1024 x 1024
  // doubles, 8 MiB) is the size of the W1 CPU rows' cost matrix.
  constexpr std::int64_t kRows = 1024, kCols = 1024;
  constexpr int kSweeps = 8;
  std::vector<double> cost(static_cast<std::size_t>(kRows * kCols));
  std::vector<double> log_w(static_cast<std::size_t>(kCols), -std::log(double(kCols)));
  std::vector<double> pot(static_cast<std::size_t>(kCols), 0.0);
  for (std::int64_t i = 0; i < kRows; ++i)
    for (std::int64_t j = 0; j < kCols; ++j)
      cost[static_cast<std::size_t>(i * kCols + j)] = j == i ? 0.0 : 1.0 + 1e-6 * double(j);
  const double inv_eps = 1000.0;  // every off-diagonal score is ~1000 below the max
  std::vector<double> row_sums(static_cast<std::size_t>(kRows), 0.0);
  // Best of 10 short runs: on a shared machine some run is likely undisturbed.
  const double sweep_s = best_of(10, [&] {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < kSweeps; ++r) {
#pragma omp parallel
      {
        std::vector<double> s(static_cast<std::size_t>(kCols));
#pragma omp for schedule(static)
        for (std::int64_t i = 0; i < kRows; ++i) {
          const cpu::RowLse lse = cpu::row_lse(cost.data() + i * kCols, log_w.data(), pot.data(),
                                               kCols, inv_eps, s.data(), false);
          row_sums[static_cast<std::size_t>(i)] += lse.sum;
        }
      }
    }
    return seconds_since(t0);
  });
  lim.pair_per_s = static_cast<double>(kRows * kCols) * kSweeps / sweep_s;
  if (row_sums[0] == 0) lim.pair_per_s = 0;  // keep the work alive
  return lim;
}

void add_roofline_workloads(std::vector<Workload>& out) {
  out.push_back(Workload{
      "W5",
      "the machine's own limits, measured by the runner: exp and FMA throughput, copy "
      "bandwidth (and the CPU solver's pair sweep)",
      {"quick", "full"},
      [](const Context& ctx, std::vector<Row>& rows) {
        // These rows ARE the rooflines: a figure, no ratio (roofline stays 0).
        auto add = [&rows](std::string backend, std::string what, double value, std::string unit,
                           std::string note) {
          Row r;
          r.workload = "W5";
          r.solver = backend + "-" + what;
          r.backend = std::move(backend);
          r.params = nlohmann::json::object();
          r.time_unit = "";
          r.figure = value;
          r.figure_unit = std::move(unit);
          r.bound = what;
          r.notes.push_back(std::move(note));
          rows.push_back(std::move(r));
        };
        if (ctx.has_gpu) {
          add("cuda", "exp", ctx.exp_per_s, "exp/s", "ex2.approx.f32 (MUFU), 8 chains per thread");
          add("cuda", "fma", ctx.fma_flop_per_s, "FLOP/s", "fp32 FFMA, 8 chains per thread");
          add("cuda", "copy", ctx.copy_bytes_per_s, "B/s",
              "float4 copy kernel over 1 GiB; bytes read + written");
          add("cuda", "tf32-mma", ctx.tf32_flop_per_s, "FLOP/s",
              "mma.sync m16n8k8 TF32 on register operands, 8 accumulators per warp, 32 warps "
              "per SM: the measured tensor ceiling of W1tc (published H200 dense TF32: 494.7 "
              "TFLOP/s)");
          add("cuda", "bf16-mma", ctx.bf16_flop_per_s, "FLOP/s",
              "mma.sync m16n8k16 bf16 on register operands, as tf32-mma");
        } else {
          Row r;
          r.workload = "W5";
          r.solver = "cuda-limits";
          r.backend = "cuda";
          r.params = nlohmann::json::object();
          r.skipped = ctx.gpu_skip_reason();
          rows.push_back(std::move(r));
          // The tensor-core probe: W1tc then labels its ceiling "published".
          Row t;
          t.workload = "W5";
          t.solver = "cuda-mma";
          t.backend = "cuda";
          t.params = nlohmann::json::object();
          t.skipped = ctx.cpu_only ? ctx.gpu_skip_reason() : "no device";
          t.notes.push_back(
              "mma.sync TF32 / bf16 throughput probe; W1tc uses the published 494.7 TFLOP/s "
              "dense TF32 when it does not run");
          rows.push_back(std::move(t));
        }
        add("cpu", "exp", ctx.cpu_exp_per_s, "exp/s",
            "fp64 exp and sum of a log-sum-exp row by the CPU solver's own vectorized exp "
            "(cpu::exp_sums, widest instruction set), all threads");
        add("cpu", "fma", ctx.cpu_fma_flop_per_s, "FLOP/s",
            fmt::format("fp64 FMA chains in the widest vector build this CPU runs ({}), all "
                        "threads: the peak of the solvers' own vector kernels",
                        ctx.cpu_fma_isa));
        add("cpu", "copy", ctx.cpu_copy_bytes_per_s, "B/s",
            "memcpy of 256 MiB; bytes read + written");
        add("cpu", "pair", ctx.cpu_pair_per_s, "pair/s",
            "the CPU solver's row sweep (cpu::row_lse: scores, row max, exp only within e^-60 of "
            "the max) over an 8 MiB cost matrix with every exp but the max skipped: the most "
            "pairs/s "
            "the CPU solver can reach. Limits are the best of several short runs in this "
            "process; on a busy machine they can still come out low, and a row above 100% "
            "says so");
      }});
}

#ifndef OTGPU_WITH_CUDA
bool query_gpu(int, GpuInfo&) { return false; }
TensorRates measure_tensor_rates(int) { return {}; }
Limits measure_gpu_limits(int) { return {}; }
#endif

}  // namespace otgpu::bench
