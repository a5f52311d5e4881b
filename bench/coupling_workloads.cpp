// W4e of docs/benchmarks.md: the entropic flow-matching coupling with sampled pairs
// (otgpu::couple, method sinkhorn, eps = 0.05 x mean cost, bs pairs drawn jointly
// with replacement as torchcfm's OTPlanSampler does), per call: cost matrix, solve and
// draws. The figure is the exponentials of the Sinkhorn solve per second (2 K bs^2 per
// iteration, the iterations the solve reported), next to the exp roofline (W5): the
// solve dominates the call, so the ratio says how far the whole call is from the
// exp-bound solve alone.
//
// GPU rows: bs 256 / 1024 / 4096 at d = 64 and 3072, and K = 64 minibatches of bs = 256
// (d = 3072), device-resident fp32 inputs, couple_async + synchronize (the training
// loop's call); a refusal (memory, a kernel limit) is a skipped row with the reason.
// CPU rows: bs = 256 at d = 64 (quick) and 3072 (full).
#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "otgpu/coupling.h"
#include "otgpu/device.h"
#include "otgpu/error.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace otgpu::bench {

namespace {

constexpr double kEps = 0.05;
/// The L1 marginal tolerance of each backend's rows (its default, SinkhornOptions::tol):
/// a row carries it in its params, so that a peer entry matches only a row that stopped
/// at the same marginal error (bench/peers/w4_coupling.py times POT to it).
constexpr double kCpuTol = 1e-6, kGpuTol = 1e-4;

/// x0 ~ N(0, I) (noise), x1 ~ N(0, I) + 1 (data), fp32, [K, bs, d].
void make_data(std::int64_t K, std::int64_t bs, std::int64_t d, std::vector<float>& x0,
               std::vector<float>& x1) {
  std::mt19937_64 gen(20200607);
  std::normal_distribution<float> nrm(0.0f, 1.0f);
  x0.resize(static_cast<std::size_t>(K * bs * d));
  x1.resize(x0.size());
  for (auto& v : x0) v = nrm(gen);
  for (auto& v : x1) v = nrm(gen) + 1.0f;
}

nlohmann::json params_of(std::int64_t K, std::int64_t bs, std::int64_t d, bool replacement,
                         double tol) {
  return {{"K", K},
          {"bs", bs},
          {"d", d},
          {"eps", kEps},
          {"eps_relative", true},
          {"pairs", bs},
          {"replacement", replacement},
          {"tol", tol}};
}

CouplingOptions options_of(std::int64_t bs, bool replacement, Backend backend) {
  CouplingOptions o;
  // The CPU's default, spelled out; the GPU rows keep kAuto (= kGpuTol on CUDA).
  if (backend == Backend::cpu) o.sinkhorn.tol = kCpuTol;
  o.method = CouplingMethod::sinkhorn;
  o.eps = kEps;
  o.eps_relative = true;
  o.num_pairs = bs;
  o.replacement = replacement;
  o.seed = 1;
  o.backend = backend;
  return o;
}

Row make_row(const std::string& solver, const std::string& backend, nlohmann::json params,
             double ms, const CouplingResult& r, std::int64_t bs, double exp_roofline) {
  Row row;
  row.workload = "W4e";
  row.solver = solver;
  row.backend = backend;
  row.params = std::move(params);
  row.ms = ms;
  row.time_unit = "ms/call";
  double exps = 0, pair_cost = 0, err = 0;
  int max_it = 0;
  bool converged = true;
  for (const CouplingReport& p : r.problems) {
    exps += 2.0 * static_cast<double>(bs) * static_cast<double>(bs) * p.iterations;
    pair_cost += p.pair_cost / static_cast<double>(r.problems.size());
    max_it = std::max(max_it, p.iterations);
    converged = converged && p.converged;
    err = std::max(err, p.gap);  // the L1 marginal error the solve stopped at
  }
  row.figure = ms > 0 ? exps / (ms * 1e-3) : 0;
  row.figure_unit = "exp/s";
  row.roofline = exp_roofline;
  row.bound = "exp";
  row.result = {{"iterations_max", max_it},
                {"converged", converged},
                {"marginal_error_l1", err},
                {"mean_pair_cost", pair_cost},
                {"pairs", r.pairs}};
  return row;
}

void cpu_rows(const Context& ctx, std::vector<Row>& rows) {
  // d = 3072 spends ~1 s per call building the fp64 cost on 2 cores: full suite only.
  for (std::int64_t d : {64, 3072}) {
    if (d == 3072 && ctx.suite != "full") continue;
    const std::int64_t bs = 256;
    std::vector<float> x0, x1;
    make_data(1, bs, d, x0, x1);
    const auto o = options_of(bs, true, Backend::cpu);
    CouplingResult last;
    const double ms = median_ms(ctx, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      last = couple(TensorView::host(x0.data(), {bs, d}), TensorView::host(x1.data(), {bs, d}), o);
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
          .count();
    });
    Row row = make_row("cpu-reference", "cpu", params_of(1, bs, d, true, kCpuTol), ms, last, bs,
                       ctx.cpu_exp_per_s);
    row.notes.emplace_back(
        "W4e CPU: fp64 reference (cost matrix once by the assignment's cost kernels, log-domain "
        "Sinkhorn with the CPU's continuation and over-relaxation to tol = L1 marginal error "
        "1e-6, inverse-CDF rows + Gumbel-max columns); figure = exps of the solve per second of "
        "the whole call; result marginal_error_l1 = the error it stopped at. The peer with the "
        "same tol is POT's ot.sinkhorn run to the same L1 marginal error (w4_coupling.py)");
    rows.push_back(std::move(row));
  }
}

#ifdef OTGPU_WITH_CUDA
void gpu_row(const Context& ctx, std::vector<Row>& rows, std::int64_t K, std::int64_t bs,
             std::int64_t d, bool replacement) {
  const nlohmann::json params = params_of(K, bs, d, replacement, kGpuTol);
  float *dx0 = nullptr, *dx1 = nullptr;
  std::int64_t *di = nullptr, *dj = nullptr;
  auto release = [&] {
    (void)cudaFree(dx0);
    (void)cudaFree(dx1);
    (void)cudaFree(di);
    (void)cudaFree(dj);
  };
  try {
    std::vector<float> x0, x1;
    make_data(K, bs, d, x0, x1);
    const std::size_t bytes = x0.size() * sizeof(float);
    if (cudaMalloc(&dx0, bytes) != cudaSuccess || cudaMalloc(&dx1, bytes) != cudaSuccess ||
        cudaMalloc(&di, static_cast<std::size_t>(K * bs) * 8) != cudaSuccess ||
        cudaMalloc(&dj, static_cast<std::size_t>(K * bs) * 8) != cudaSuccess) {
      throw OutOfMemory(
          fmt::format("bench W4e: cannot allocate the inputs ({} MiB)", 2 * bytes >> 20));
    }
    if (cudaMemcpy(dx0, x0.data(), bytes, cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy(dx1, x1.data(), bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
      throw CudaError("bench W4e: copying the inputs to the GPU failed", 0);
    }
    const auto v0 = TensorView::device(dx0, {K, bs, d});
    const auto v1 = TensorView::device(dx1, {K, bs, d});
    const auto o = options_of(bs, replacement, Backend::cuda);
    GpuContext gc(0);
    const double ms = median_ms(ctx, [&] {
      const auto t0 = std::chrono::steady_clock::now();
      couple_async(gc, v0, v1, o, di, dj);
      gc.synchronize();
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
          .count();
    });
    // The reports (iterations) from one synchronous call of the same problem.
    const CouplingResult r = couple(gc, v0, v1, o);
    Row row = make_row("cuda-couple", "cuda", params, ms, r, bs, ctx.exp_per_s);
    row.notes.emplace_back(
        "cuda-couple: couple_async + synchronize: SGEMM cost matrix, dense-kernel Sinkhorn "
        "(plain updates, tol 1e-4 L1 marginal error), pair draws on the device; targets "
        "(H100/H200): bs=4096 "
        "d=3072 <= 10 ms");
    rows.push_back(std::move(row));
  } catch (const Error& e) {
    Row row;
    row.workload = "W4e";
    row.solver = "cuda-couple";
    row.backend = "cuda";
    row.params = params;
    row.skipped = fmt::format("refused: {}", e.what());
    rows.push_back(std::move(row));
  }
  release();
}
#endif

void run_w4e(const Context& ctx, std::vector<Row>& rows) {
  if (!ctx.gpu_only) cpu_rows(ctx, rows);
  if (!ctx.has_gpu) {
    for (std::int64_t d : {64, 3072}) {
      for (std::int64_t bs : {256, 1024, 4096}) {
        rows.push_back(
            skipped_gpu_row(ctx, "W4e", "cuda-couple", params_of(1, bs, d, true, kGpuTol)));
      }
    }
    rows.push_back(
        skipped_gpu_row(ctx, "W4e", "cuda-couple", params_of(64, 256, 3072, true, kGpuTol)));
    return;
  }
#ifdef OTGPU_WITH_CUDA
  for (std::int64_t d : {64, 3072}) {
    for (std::int64_t bs : {256, 1024, 4096}) gpu_row(ctx, rows, 1, bs, d, true);
  }
  gpu_row(ctx, rows, 1, 4096, 3072, false);
  gpu_row(ctx, rows, 64, 256, 3072, true);
#endif
}

}  // namespace

void add_coupling_workloads(std::vector<Workload>& out) {
  out.push_back(
      {"W4e",
       "flow-matching entropic coupling with sampled pairs: eps 0.05 x mean cost, bs "
       "pairs, bs 256..4096 at d=64 and 3072, K=64 x bs=256 (CPU: bs=256, d=64; full: d=3072)",
       {"quick", "full"},
       run_w4e});
}

}  // namespace otgpu::bench
