// W5: CPU limits measured here; GPU limits in cuda/roofline.cu. The W5 rows report
// them so every other row's ratio can be checked against the same run.
#include "roofline.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench.h"

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

  // exp: the CPU reference's inner loop is a double exp per pair.
  constexpr int kExpN = 1 << 16, kExpReps = 32;
  std::vector<double> sums(static_cast<std::size_t>(threads), 0.0);
  const double exp_s = best_of(3, [&] {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    {
      double acc = 0;
      const double base = -1.0 - 1e-3 * omp_get_thread_num();
      for (int r = 0; r < kExpReps; ++r) {
        for (int k = 0; k < kExpN; ++k) acc += std::exp(base - 1e-5 * k - 1e-3 * r);
      }
      sums[static_cast<std::size_t>(omp_get_thread_num())] = acc;
    }
    return seconds_since(t0);
  });
  lim.exp_per_s = static_cast<double>(threads) * kExpN * kExpReps / exp_s;

  // fp64 multiply-add: 8 independent chains per thread (2 FLOP each).
  constexpr long kFmaSteps = 1 << 22;
  const double fma_s = best_of(3, [&] {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    {
      double v[8];
      for (int c = 0; c < 8; ++c) v[c] = 1.0 + c;
      for (long s = 0; s < kFmaSteps; ++s) {
        for (int c = 0; c < 8; ++c)
          v[c] = v[c] * 0.999999 + 1e-7;  // mul+add (fused where the ISA allows)
      }
      double acc = 0;
      for (double x : v) acc += x;
      sums[static_cast<std::size_t>(omp_get_thread_num())] += acc;
    }
    return seconds_since(t0);
  });
  lim.fma_flop_per_s = 2.0 * 8.0 * static_cast<double>(kFmaSteps) * threads / fma_s;

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
  return lim;
}

void add_roofline_workloads(std::vector<Workload>& out) {
  out.push_back(Workload{
      "W5",
      "the machine's own limits: exp throughput, FMA throughput, copy bandwidth",
      {"quick", "full"},
      [](const Context& ctx, std::vector<Row>& rows) {
        auto add = [&rows](std::string backend, std::string what, double value, std::string unit,
                           std::string note) {
          Row r;
          r.workload = "W5";
          r.solver = "roofline-" + what;
          r.backend = std::move(backend);
          r.params = nlohmann::json::object();
          r.figure = value;
          r.figure_unit = std::move(unit);
          r.roofline = value;
          r.bound = what;
          r.note = std::move(note);
          rows.push_back(std::move(r));
        };
        if (ctx.has_gpu) {
          add("cuda", "exp", ctx.exp_per_s, "exp/s", "ex2.approx.f32 (MUFU), 8 chains/thread");
          add("cuda", "fma", ctx.fma_flop_per_s, "FLOP/s", "fp32 FFMA, 8 chains/thread");
          add("cuda", "copy", ctx.copy_bytes_per_s, "B/s", "float4 copy kernel, 1 GiB, read+write");
        }
        add("cpu", "exp", ctx.cpu_exp_per_s, "exp/s", "fp64 std::exp, all threads");
        add("cpu", "fma", ctx.cpu_fma_flop_per_s, "FLOP/s",
            "fp64 multiply-add chains, all threads");
        add("cpu", "copy", ctx.cpu_copy_bytes_per_s, "B/s", "memcpy 256 MiB, read+write");
      }});
}

#ifndef OTGPU_WITH_CUDA
bool query_gpu(int, GpuInfo&) { return false; }
Limits measure_gpu_limits(int) { return {}; }
#endif

}  // namespace otgpu::bench
