// W3 of docs/benchmarks.md: sliced W2 with L = 256 directions.
//
// GPU rows (device-resident fp32 inputs, as a training step has them): one row per
// size with the time per call and the projection GEMM against the FMA roofline, and
// one row for sorting + 1-D merges against the copy bandwidth. A small CPU row runs
// always, so the quick suite works without a GPU.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "bench.h"
#include "otgpu/error.h"
#include "otgpu/sliced.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace otgpu::bench {

namespace {

constexpr int kDirections = 256;

/// X entries U[0,1), Y entries U[0,1) + 0.1 (docs/benchmarks.md data), fp32.
void make_data(std::int64_t n, std::int64_t d, std::vector<float>& x, std::vector<float>& y) {
  std::mt19937_64 gen(20240607);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  x.resize(static_cast<std::size_t>(n * d));
  y.resize(static_cast<std::size_t>(n * d));
  for (auto& v : x) v = u(gen);
  for (auto& v : y) v = u(gen) + 0.1f;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

double projection_flops(std::int64_t n, std::int64_t m, std::int64_t d, std::int64_t L) {
  return 2.0 * static_cast<double>(n + m) * static_cast<double>(d) * static_cast<double>(L);
}

void cpu_row(const Context& ctx, std::vector<Row>& rows) {
  const std::int64_t n = 4096, d = 64;
  const int L = 64;
  std::vector<float> x, y;
  make_data(n, d, x, y);
  SlicedProblem pr;
  pr.x = TensorView::host(x.data(), {n, d});
  pr.y = TensorView::host(y.data(), {n, d});
  SlicedOptions o;
  o.projections = L;
  o.p = 2.0;
  o.backend = Backend::cpu;
  std::vector<double> proj_ms, merge_ms;
  double value = 0;
  const double ms = median_ms(ctx, [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const SlicedResult r = sliced_wasserstein(pr, o);
    const double t =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    proj_ms.push_back(r.timings.project_ms);
    merge_ms.push_back(r.timings.merge_ms);
    value = r.value[0];
    return t;
  });
  Row row;
  row.workload = "W3";
  row.solver = "cpu-reference";
  row.backend = "cpu";
  row.params = {{"n", n}, {"m", n}, {"d", d}, {"L", L}, {"p", 2}, {"sw2", value}};
  row.ms = ms;
  row.time_unit = "ms/call";
  const double pm = median_of(proj_ms);
  row.figure = pm > 0 ? projection_flops(n, n, d, L) / (pm * 1e-3) : 0;
  row.figure_unit = "FLOP/s";
  row.roofline = ctx.cpu_fma_flop_per_s;
  row.bound = "fma";
  row.note = fmt::format(
      "fp64 projections {:.2f} ms (figure: their FLOP rate), sort + merge {:.2f} ms; the "
      "reference solver favours clarity (per-element strided loads), not speed",
      pm, median_of(merge_ms));
  rows.push_back(std::move(row));
}

#ifdef OTGPU_WITH_CUDA
/// Minimum traffic of sorting (key + index, read and written once) and of the merge
/// (sorted keys and indices read once) for both sides: a lower bound on bytes moved,
/// so the ratio to the copy bandwidth is an upper bound on the efficiency.
double sort_merge_bytes(std::int64_t n, std::int64_t m, std::int64_t L) {
  return static_cast<double>(L) * static_cast<double>(n + m) * (16.0 + 8.0);
}

/// Device buffer freed on every exit path.
struct DeviceFloats {
  float* p = nullptr;
  explicit DeviceFloats(const std::vector<float>& host) {
    if (cudaMalloc(&p, host.size() * sizeof(float)) != cudaSuccess) {
      throw OutOfMemory(fmt::format("bench W3: cannot allocate {} MiB on the GPU",
                                    host.size() * sizeof(float) >> 20));
    }
    if (cudaMemcpy(p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice) !=
        cudaSuccess) {
      throw CudaError("bench W3: copying the data to the GPU failed", 0);
    }
  }
  ~DeviceFloats() { (void)cudaFree(p); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
};

void gpu_rows(const Context& ctx, std::vector<Row>& rows, std::int64_t n, std::int64_t d,
              double reference_ms) {
  std::vector<float> x, y;
  make_data(n, d, x, y);
  const DeviceFloats dx(x), dy(y);
  SlicedProblem pr;
  pr.x = TensorView::device(dx.p, {n, d});
  pr.y = TensorView::device(dy.p, {n, d});
  SlicedOptions o;
  o.projections = kDirections;
  o.p = 2.0;
  o.backend = Backend::cuda;
  std::vector<double> dir_ms, proj_ms, sort_ms, merge_ms;
  double value = 0;
  const double ms = median_ms(ctx, [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const SlicedResult r = sliced_wasserstein(pr, o);  // returns synchronized
    const double t =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    dir_ms.push_back(r.timings.directions_ms);
    proj_ms.push_back(r.timings.project_ms);
    sort_ms.push_back(r.timings.sort_ms);
    merge_ms.push_back(r.timings.merge_ms);
    value = r.value[0];
    return t;
  });
  const double pm = median_of(proj_ms), sm = median_of(sort_ms), mm = median_of(merge_ms);
  const nlohmann::json params = {{"n", n},           {"m", n}, {"d", d},
                                 {"L", kDirections}, {"p", 2}, {"sw2", value}};
  Row call;
  call.workload = "W3";
  call.solver = "cuda-sliced";
  call.backend = "cuda";
  call.params = params;
  call.ms = ms;
  call.time_unit = "ms/call";
  call.figure = pm > 0 ? projection_flops(n, n, d, kDirections) / (pm * 1e-3) : 0;
  call.figure_unit = "FLOP/s";
  call.roofline = ctx.fma_flop_per_s;
  call.bound = "fma";
  call.note = fmt::format(
      "reference PyTorch matmul + sort on H100: {:.2f} ms (target 4x faster: {:.2f} ms); "
      "figure = projection GEMM rate (fp32 SGEMM, no TF32); phases: directions {:.3f}, "
      "projection {:.3f}, sort {:.3f}, merge {:.3f} ms; the rest is workspace and launch "
      "overhead",
      reference_ms, reference_ms / 4, median_of(dir_ms), pm, sm, mm);
  rows.push_back(call);

  Row sort = call;
  sort.solver = "cuda-sliced-sort+merge";
  sort.ms = sm + mm;
  sort.time_unit = "ms/call";
  sort.figure = sm + mm > 0 ? sort_merge_bytes(n, n, kDirections) / ((sm + mm) * 1e-3) : 0;
  sort.figure_unit = "B/s";
  sort.roofline = ctx.copy_bytes_per_s;
  sort.bound = "copy";
  sort.note = fmt::format(
      "CUB segmented radix sort (one block per (direction, side) segment, several passes) "
      "+ one block per segment for the merge; bytes counted once (lower bound), so the "
      "ratio overstates the efficiency; sort {:.3f} ms, merge {:.3f} ms",
      sm, mm);
  rows.push_back(std::move(sort));
}
#endif

}  // namespace

void add_sliced_workloads(std::vector<Workload>& out) {
  out.push_back(Workload{"W3",
                         "sliced W2, L=256 directions (CPU row: n=4096, d=64, L=64)",
                         {"quick", "full"},
                         [](const Context& ctx, std::vector<Row>& rows) {
                           if (!ctx.gpu_only) cpu_row(ctx, rows);
#ifdef OTGPU_WITH_CUDA
                           if (ctx.has_gpu) {
                             gpu_rows(ctx, rows, 65536, 64, 4.20);
                             gpu_rows(ctx, rows, 65536, 3072, 8.09);
                             if (ctx.suite == "full") gpu_rows(ctx, rows, 1048576, 64, 97.7);
                           }
#endif
                         }});
}

}  // namespace otgpu::bench
