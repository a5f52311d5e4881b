// W1 on tensor cores (workload W1tc): the online half-steps of kernels/src/
// sinkhorn_online_mma.cu at d = 64 and d = 3072, precision fp32 (3xTF32) and tf32,
// through the public API.
//
// Timing: as W1 (sinkhorn_workloads.cpp), a solve of N iterations minus a solve of one,
// divided by N - 1 (the staging and the final report cancel), with check_every = 0.
// The figure is pairs per second (2 n m per iteration); the FLOP rate of the cost
// tiles (2 dp FLOP per product, 3 products per pair and coordinate with 3xTF32, one
// with TF32) is in the row's result. The roofline is the lower of the exp bound (W5's
// measured exp2 rate over 1 + 1/16 exps per pair) and the tensor bound: the dense TF32
// rate over the tile's FLOP per pair. The TF32 rate is W5's measured mma.sync TF32
// throughput (bench/cuda/tensor_probe.cu) when it ran, else the H200 SXM's published
// dense figure, 494.7 TFLOP/s (989 with sparsity), labelled "assumed".
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench.h"
#include "otgpu/sinkhorn.h"
#include "tensor_probe.h"

namespace otgpu::bench {

namespace {

double flop_per_pair(std::int64_t d, Precision p) {
  const double dp = static_cast<double>((d + 3) / 4 * 4);
  return 2.0 * dp * (p == Precision::fp32 ? 3.0 : 1.0);
}

void run_w1tc(const Context& ctx, std::vector<Row>& rows) {
  struct Shape {
    std::int64_t n, d;
  };
  std::vector<Shape> shapes = {{16384, 64}, {65536, 64}, {4096, 3072}};
  if (ctx.suite == "full") shapes.push_back({16384, 3072});
  const Precision precisions[] = {Precision::fp32, Precision::tf32};
  if (!ctx.has_gpu) {
    rows.push_back(skipped_gpu_row(ctx, "W1", "cuda-online-mma",
                                   {{"n", "16384,65536 (d=64); 4096 (d=3072)"},
                                    {"d", "64,3072"},
                                    {"precision", "fp32,tf32"}}));
    return;
  }
  for (const Shape& s : shapes) {
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    std::vector<float> x(static_cast<std::size_t>(s.n * s.d)), y(x.size());
    for (float& v : x) v = u(rng);
    for (float& v : y) v = u(rng) + 0.1f;
    SinkhornProblem p;
    p.x = TensorView::host(x.data(), {s.n, s.d});
    p.y = TensorView::host(y.data(), {s.n, s.d});
    for (Precision prec : precisions) {
      SinkhornOptions o;
      o.eps = 0.01;
      o.eps_relative = true;
      o.eps_init = 0;
      o.check_every = 0;
      o.backend = Backend::cuda;
      o.precision = prec;
      const int iters = s.d > 1000 ? 6 : 21;
      bool tensor_cores = false;
      auto solve = [&](int k) {
        o.max_iter = k;
        const SinkhornResult r = sinkhorn(p, o);
        tensor_cores = r.tensor_cores;
        return r.time_ms;
      };
      const double ms = median_ms(ctx, [&] {
        const double t_long = solve(iters);
        return per_iteration_ms(t_long, solve(1), iters);
      });
      const double pairs = 2.0 * static_cast<double>(s.n) * static_cast<double>(s.n);
      const double fpp = flop_per_pair(s.d, prec);
      Row r;
      r.workload = "W1";
      r.solver = "cuda-online-mma";
      r.backend = "cuda";
      r.params = {{"n", s.n},
                  {"m", s.n},
                  {"d", s.d},
                  {"eps", "0.01 x mean C"},
                  {"precision", std::string(to_string(prec))},
                  {"iters", iters}};
      r.ms = ms;
      r.time_unit = "ms/iter";
      r.figure = pairs / (ms * 1e-3);
      r.figure_unit = "pair/s";
      const double exp_bound = ctx.exp_per_s > 0 ? ctx.exp_per_s / (1.0 + 1.0 / 16.0) : 0.0;
      const bool measured = ctx.tf32_flop_per_s > 0;
      const double tc_rate = measured ? ctx.tf32_flop_per_s : kPublishedTf32FlopPerS;
      const double tc_bound = tc_rate / fpp;
      r.roofline = exp_bound > 0 ? std::min(exp_bound, tc_bound) : tc_bound;
      r.bound =
          r.roofline == tc_bound ? (measured ? "tensor (measured)" : "tensor (assumed)") : "exp";
      r.result = {{"tensor_cores", tensor_cores},
                  {"tensor_flop_per_s", r.figure * fpp},
                  {"tensor_flop_per_pair", fpp},
                  {"tensor_roofline_flop_per_s", tc_rate},
                  {"tensor_roofline_source", measured ? "W5 tf32-mma probe" : "published"},
                  {"published_tf32_flop_per_s", kPublishedTf32FlopPerS}};
      r.notes.emplace_back(
          "W1 tensor-core rows: figure = pairs/s; roofline = min(exp bound, TF32 rate / (2 dp "
          "x 3 (3xTF32) or 1 (TF32) FLOP per pair)), the TF32 rate measured by W5's mma.sync "
          "probe (bound \"tensor (measured)\") or, without it, the published H200 SXM dense "
          "494.7 TFLOP/s (\"tensor (assumed)\"); the FLOP/s reached is "
          "result.tensor_flop_per_s. Targets (issue 10): d=64 n=65536 <= 6 ms/iter with "
          "3xTF32 (FlashSinkhorn TF32 7.25); d=3072 runs");
      rows.push_back(std::move(r));
    }
  }
}

}  // namespace

void add_mma_workloads(std::vector<Workload>& out) {
  out.push_back({"W1tc",
                 "W1 on tensor cores: d=64 (n=16384, 65536) and d=3072 (n=4096; full: 16384), "
                 "precision fp32 (3xTF32) and tf32 (GPU only)",
                 {"quick", "full"},
                 run_w1tc});
}

}  // namespace otgpu::bench
