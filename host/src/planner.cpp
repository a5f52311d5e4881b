// The Sinkhorn planner (otgpu_host/planner.h): pure functions of the problem and of a
// machine description. Built on every configuration and tested on the CPU.
#include "otgpu_host/planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "otgpu/detail/sinkhorn_rules.h"
#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "otgpu_kernels/sinkhorn_mma_geometry.h"

namespace otgpu::planner {

namespace geo = kernels::geometry;
namespace mma_geometry = kernels::mma_geometry;

std::string_view to_string(Kernel k) noexcept {
  switch (k) {
    case Kernel::cpu_reference:
      return "cpu-reference";
    case Kernel::small:
      return "small";
    case Kernel::dense:
      return "dense";
    case Kernel::online:
      return "online";
  }
  return "?";
}

DeviceProps h200_assumed() {
  DeviceProps p;
  p.name = "NVIDIA H200 (assumed: published figures, no device queried)";
  p.assumed = true;
  p.sm_count = 132;
  p.max_threads_per_sm = 2048;
  p.smem_per_block_optin = 227 * 1024;
  p.smem_per_sm = 228 * 1024;
  p.memory_total = 141ull * 1000 * 1000 * 1000;
  p.memory_free = p.memory_total;
  const double clock = 1.98e9;
  p.exp_per_s = 132.0 * 16.0 * clock;
  p.fp32_per_s = 132.0 * 128.0 * clock;
  p.bytes_per_s = 4.8e12;
  // Dense tensor rates as published for the H200 SXM (989 / 1979 TFLOP/s with
  // sparsity), i.e. 2048 and 4096 FLOP per clock per SM at about 1.83 GHz.
  p.tf32_flops_per_s = 494.7e12;
  p.bf16_flops_per_s = 989.4e12;
  p.conditional_nodes = true;  // CUDA 12.4+ drivers (the toolkit this build targets)
  return p;
}

CpuProps cpu_assumed(int threads) {
  CpuProps c;
  c.name = fmt::format("CPU, {} threads (assumed rates)", threads);
  c.threads = std::max(threads, 1);
  c.exp_per_s = 1e8 * c.threads;
  c.bytes_per_s = 20e9;
  c.assumed = true;
  return c;
}

namespace {

void check_request(const Request& r) {
  auto positive = [](const char* name, std::int64_t v) {
    if (v < 1) throw InvalidArgument(fmt::format("{}: must be >= 1, got {}", name, v));
  };
  positive("n", r.n);
  positive("m", r.m);
  positive("batch", r.B);
  if (r.cost != CostKind::matrix) positive("d", r.d);
  if (r.max_iter < 0)
    throw InvalidArgument(fmt::format("max_iter: must be >= 0, got {}", r.max_iter));
  if (r.check_every < 0)
    throw InvalidArgument(fmt::format("check_every: must be >= 0, got {}", r.check_every));
  if (r.scaling_steps < 0)
    throw InvalidArgument(fmt::format("scaling_steps: must be >= 0, got {}", r.scaling_steps));
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

/// Blocks per SM of the online half-step for dp: the measured figure, else an estimate
/// from threads and shared memory (registers unknown: capped at 8, half occupancy).
int online_occupancy(const DeviceProps& dev, int dp, bool& assumed) {
  for (const Occupancy& o : dev.online_occupancy) {
    if (o.dp == dp && o.blocks_per_sm > 0) {
      assumed = false;
      return o.blocks_per_sm;
    }
  }
  assumed = true;
  int by_threads = dev.max_threads_per_sm > 0 ? dev.max_threads_per_sm / geo::kOnlineThreads : 8;
  // 1 KB of shared memory per block is reserved by the hardware.
  const std::size_t per_block = geo::online_smem_bytes(dp) + 1024;
  const int by_smem =
      dev.smem_per_sm > 0 ? static_cast<int>(dev.smem_per_sm / per_block) : by_threads;
  return std::max(1, std::min({by_threads, by_smem, 8}));
}

/// Blocks per SM of the tensor-core half-step for dp: measured, else an estimate from
/// its ~46 KB of shared memory and 128 threads (registers unknown: capped at 4).
int mma_occupancy(const DeviceProps& dev, bool& assumed, int dp) {
  for (const Occupancy& o : dev.mma_occupancy) {
    if (o.dp == dp && o.blocks_per_sm > 0) {
      assumed = false;
      return o.blocks_per_sm;
    }
  }
  assumed = true;
  const int by_smem = dev.smem_per_sm > 0 ? static_cast<int>(dev.smem_per_sm / (47 * 1024)) : 4;
  return std::max(1, std::min(by_smem, 4));
}

HalfStep plan_half(std::int64_t B, std::int64_t rows, std::int64_t cols, int dp, std::int64_t wave,
                   bool split, std::int64_t rows_per_block = 0) {
  HalfStep h;
  h.rows = rows;
  h.cols = cols;
  h.rows_per_block = rows_per_block > 0 ? rows_per_block : geo::online_rows_per_block(dp);
  h.row_blocks = ceil_div(rows, h.rows_per_block);
  h.col_tiles = geo::online_col_tiles(cols);
  h.splits = split ? choose_splits(h.row_blocks, B, h.col_tiles, wave) : 1;
  h.blocks = h.row_blocks * h.splits * B;
  h.wave = wave;
  h.waves = ceil_div(h.blocks, wave);
  const std::int64_t last = h.blocks - (h.waves - 1) * wave;
  h.last_wave_fill = static_cast<double>(last) / static_cast<double>(wave);
  return h;
}

std::size_t input_bytes(const Request& r) {
  const auto es = dtype_size(r.dtype);
  const auto B = static_cast<std::size_t>(r.B), n = static_cast<std::size_t>(r.n),
             m = static_cast<std::size_t>(r.m), d = static_cast<std::size_t>(r.d);
  const std::size_t weights = B * (n + m) * es;
  if (r.cost == CostKind::matrix) return B * n * m * es + weights;
  return B * (n + m) * d * es + weights;
}

Roofline gpu_roofline(const Plan& p, const DeviceProps& dev) {
  const Request& r = p.request;
  Roofline f;
  const double pairs =
      2.0 * static_cast<double>(r.B) * static_cast<double>(r.n) * static_cast<double>(r.m);
  // One exp2 per score plus one rescale per chunk (16 scores for the online kernel at
  // dp <= 4, 8 otherwise). Euclidean: the root is a second MUFU op (rsqrt) per pair.
  const bool online = p.kernel == Kernel::online;
  const double chunk = online ? geo::online_chunk(p.dp) : 8.0;
  f.exps = pairs * (1.0 + 1.0 / chunk);
  if (r.cost == CostKind::matrix) {
    // Both half-steps read C once (and the potentials and weights, negligible).
    f.bytes = 2.0 * static_cast<double>(r.B) * static_cast<double>(r.n) * static_cast<double>(r.m) *
              sizeof(float);
    f.fp32_ops = pairs * 2.0;  // score FMA and sum
  } else {
    if (r.cost == CostKind::euclidean) f.exps += pairs;  // MUFU.RSQ shares the MUFU pipe
    // Issue slots per pair of the compiled half-step (the FP32 pipe and the issue
    // rate are both 128 per clock and SM: the bound is on instructions, not flops).
    f.fp32_ops = pairs * online_instructions_per_pair(p.dp, r.cost);
    f.bytes = p.kernel == Kernel::small ? 0.0
                                        : 2.0 * static_cast<double>(r.B) *
                                              static_cast<double>(r.n + r.m) * p.dp * sizeof(float);
  }
  if (p.tensor_cores) {
    // The -2<x,y> tile on tensor cores; per pair on the SIMT side: the score FMA, the
    // sum and the max of the LSE, the column norm share.
    const int products = p.precision == Precision::fp32 ? 3 : 1;
    f.tensor_flops = pairs * 2.0 * p.dp * products;
    f.tensor_flops_per_s =
        p.precision == Precision::bf16 ? dev.bf16_flops_per_s : dev.tf32_flops_per_s;
    f.fp32_ops = pairs * 3.0;
    f.exps = pairs * (1.0 + 1.0 / 16.0);  // one rescale per 16 scores of a lane
  }
  f.exp_per_s = dev.exp_per_s;
  f.fp32_per_s = dev.fp32_per_s;
  f.bytes_per_s = dev.bytes_per_s;
  f.assumed = dev.assumed;
  const double t_exp = dev.exp_per_s > 0 ? f.exps / dev.exp_per_s : 0.0;
  const double t_fp = dev.fp32_per_s > 0 ? f.fp32_ops / dev.fp32_per_s : 0.0;
  const double t_mem = dev.bytes_per_s > 0 ? f.bytes / dev.bytes_per_s : 0.0;
  f.seconds = std::max({t_exp, t_fp, t_mem});
  f.bound = f.seconds == t_mem && t_mem > 0 ? "memory"
                                            : (f.seconds == t_fp && t_fp > t_exp ? "fp32" : "exp");
  const double t_tc = f.tensor_flops_per_s > 0 ? f.tensor_flops / f.tensor_flops_per_s : 0.0;
  if (t_tc > f.seconds) {
    f.seconds = t_tc;
    f.bound = "tensor";
  }
  return f;
}

}  // namespace

Request make_request(std::int64_t B, std::int64_t n, std::int64_t m, std::int64_t d, CostKind cost,
                     DType dtype, const SinkhornOptions& o) {
  Request r;
  r.B = B;
  r.n = n;
  r.m = m;
  r.d = d;
  r.cost = cost;
  r.dtype = dtype;
  r.max_iter = o.max_iter;
  r.check_every = o.check_every;
  r.scaling_steps = detail::scaling_steps(o.eps, o.eps_init, o.eps_decay, o.max_iter);
  r.precision = o.precision;
  return r;
}

double online_instructions_per_pair(int dp, CostKind cost) {
  const int d = std::max(dp, 1);
  const int fixed = std::min(d, geo::kOnlineMaxFixedDim);
  const double rows = d <= geo::kOnlineMaxFixedDim ? geo::online_rows_per_thread(fixed) : 1.0;
  const double chunk = d <= geo::kOnlineMaxFixedDim ? geo::online_chunk(fixed) : 8.0;
  // The column's shared loads (LDS.128 of y_j and h_j) are shared by the thread's rows.
  const double loads = std::ceil((d + 1) / 4.0) / rows;
  // Per chunk: max with the running max, the shift, the rescale's ex2 and FMA.
  const double rescale = 4.0 / chunk;
  // The LSE per pair: FMNMX, FADD (shift), MUFU.EX2, FADD (tree sum).
  const double lse = 4.0;
  double score = 0;
  if (cost == CostKind::euclidean) {
    // Differences and FMAs, the clamp, MUFU.RSQ and the multiply, the score FMA.
    score = 2.0 * d + 4.0;
  } else if (d > geo::kOnlineMaxFixedDim) {
    score = 2.0 * d + 1.0;  // the dynamic-dimension kernel keeps the difference form
  } else {
    score = d;  // the FMA chain of <2 scale x, y> starting at h_j
  }
  return score + lse + loads + rescale;
}

bool small_kernel_preferred(std::int64_t B, std::int64_t n, std::int64_t m, int dp,
                            const DeviceProps& dev) {
  if (dev.sm_count <= 0 || B >= dev.sm_count) return true;  // every SM has a problem
  // Issue rate of one SM (128 thread instructions per clock).
  const double per_sm = dev.fp32_per_s > 0 ? dev.fp32_per_s / dev.sm_count : 128.0 * 1.98e9;
  const double pairs =
      2.0 * static_cast<double>(B) * static_cast<double>(n) * static_cast<double>(m);
  // Both kernels do about the same work per pair (the small one's norm expansion or
  // cached cost against the online one's FMA chain): the difference is the SMs used
  // and the launches of the online path (2 half-steps, up to 2 split merges).
  const double per_pair = online_instructions_per_pair(dp, CostKind::sqeuclidean);
  constexpr double kLaunchSeconds = 3e-6;
  const double t_small = pairs * per_pair / (static_cast<double>(B) * per_sm);
  const double t_online =
      pairs * per_pair / (static_cast<double>(dev.sm_count) * per_sm) + 4.0 * kLaunchSeconds;
  return !(t_online < 0.8 * t_small);
}

int choose_splits(std::int64_t row_blocks, std::int64_t B, std::int64_t col_tiles,
                  std::int64_t wave) {
  if (row_blocks <= 0 || B <= 0 || col_tiles <= 0 || wave <= 0) return 1;
  const std::int64_t base = row_blocks * B;
  if (base >= wave) return 1;
  const std::int64_t cap = std::min<std::int64_t>(col_tiles / 2, geo::kOnlineMaxSplits);
  int best = 1;
  // One tile-step of fixed cost per block (its rows loaded, its result or partial
  // written): without it the estimate would trade a few tiles for thousands of splits.
  std::int64_t best_time = ceil_div(base, wave) * (col_tiles + 1);
  double best_fill = static_cast<double>(base) / static_cast<double>(wave);
  for (std::int64_t s = 2; s <= cap; ++s) {
    const std::int64_t span = ceil_div(col_tiles, s);
    if (span * (s - 1) >= col_tiles) continue;  // an empty split: never launch one
    const std::int64_t blocks = base * s;
    const std::int64_t waves = ceil_div(blocks, wave);
    const std::int64_t time = waves * (span + 1);
    const double fill =
        static_cast<double>(blocks - (waves - 1) * wave) / static_cast<double>(wave);
    if (time < best_time || (time == best_time && fill > best_fill + 1e-12)) {
      best = static_cast<int>(s);
      best_time = time;
      best_fill = fill;
    }
  }
  return best;
}

WorkspaceLayout layout_workspace(const Plan& plan, bool own_fg, bool derived) {
  const Request& r = plan.request;
  const bool pts = r.cost != CostKind::matrix;
  const auto B = static_cast<std::size_t>(r.B), n = static_cast<std::size_t>(r.n),
             m = static_cast<std::size_t>(r.m);
  const auto dp = static_cast<std::size_t>(plan.dp);
  const auto dp1 = std::max<std::size_t>(dp, 1);
  const std::size_t tab = (static_cast<std::size_t>(r.scaling_steps) + 1) * B;
  const std::size_t partials = pts ? std::max(geo::online_partials_floats(r.B, r.n, plan.f.splits),
                                              geo::online_partials_floats(r.B, r.m, plan.g.splits))
                                   : 0;
  WorkspaceLayout w;
  std::size_t at = 0;
  auto take = [&at](Span& s, std::size_t count, std::size_t elem) {
    if (count == 0) return;
    at = (at + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
    s.offset = at;
    s.bytes = count * elem;
    at += s.bytes;
  };
  take(w.X, pts ? B * n * dp : 0, sizeof(float));
  take(w.Y, pts ? B * m * dp : 0, sizeof(float));
  take(w.C, !pts && r.stage_cost ? B * n * m : 0, sizeof(float));
  take(w.logA, B * n, sizeof(float));
  take(w.logB, B * m, sizeof(float));
  take(w.a, B * n, sizeof(double));
  take(w.b, B * m, sizeof(double));
  take(w.Ft, B * n, sizeof(float));
  take(w.eps_tab, tab, sizeof(float));
  take(w.lam_a_tab, tab, sizeof(float));
  take(w.lam_b_tab, tab, sizeof(float));
  take(w.small_eps, B, sizeof(float));
  take(w.small_eps_init, B, sizeof(float));
  take(w.active, B, sizeof(int));
  take(w.iters, B, sizeof(int));
  take(w.count, 1, sizeof(int));
  take(w.res, B, sizeof(double));
  take(w.small_res, B, sizeof(float));
  take(w.small_conv, B, sizeof(int));
  take(w.col_ws, pts ? 0 : geo::dense_col_workspace_bytes(r.B, r.n, r.m), 1);
  take(w.cmean, B * n, sizeof(float));
  take(w.lse, B * n, sizeof(float));
  take(w.row_mass, B * n, sizeof(float));
  take(w.row_cost, B * n, sizeof(float));
  take(w.out4, 4 * B, sizeof(double));
  take(w.partials, partials, sizeof(float));
  take(w.loop_state, 4, sizeof(int));
  if (own_fg) {
    take(w.F, B * n, sizeof(float));
    take(w.G, B * m, sizeof(float));
  }
  take(w.center, B * dp1, sizeof(double));
  take(w.mean, B, sizeof(double));
  take(w.bad, 4, sizeof(unsigned long long));
  take(w.mass, 2 * B, sizeof(double));
  if (derived) {
    take(w.T, B * n * dp1, sizeof(float));
    take(w.ratio, B, sizeof(double));
  }
  w.total = at;
  return w;
}

Plan make_plan(const Request& request, const DeviceProps& dev) {
  check_request(request);
  if (dev.sm_count <= 0)
    throw InvalidArgument(fmt::format("device sm_count: must be >= 1, got {}", dev.sm_count));
  Plan p;
  p.backend = Backend::cuda;
  p.request = request;
  p.device_name = dev.name;
  p.props_assumed = dev.assumed;
  p.device_count = 1;
  const Request& r = request;
  const bool pts = r.cost != CostKind::matrix;
  p.dp = pts ? detail::padded_dim(r.d) : 0;

  // Kernel: small when a point-cloud problem fits one block's shared memory and its
  // blocks keep the SMs busy enough (small_kernel_preferred), dense for cost matrices,
  // online otherwise.
  if (pts && r.n <= geo::kSmallMaxSide && r.m <= geo::kSmallMaxSide &&
      p.dp <= geo::kSmallMaxOnlineDim) {
    // The kernel is launched with the padded dimension (the staged layout), so the
    // variant it picks (cached scores from dp >= 8) follows dp, not the caller's d.
    const auto v = geo::small_variant(true, r.n, r.m, p.dp, dev.smem_per_block_optin);
    if (v.fits && small_kernel_preferred(r.B, r.n, r.m, p.dp, dev)) {
      p.kernel = Kernel::small;
      p.small_smem_bytes = v.layout.bytes();
    }
  }
  if (p.kernel != Kernel::small) p.kernel = pts ? Kernel::online : Kernel::dense;

  // Batch chunks: the batched launches put the problem on the grid's y axis.
  const std::int64_t per_launch =
      p.kernel == Kernel::small ? r.B : std::max<std::int64_t>(1, dev.max_batch_per_launch);
  for (std::int64_t b = 0; b < r.B; b += per_launch)
    p.chunks.push_back(Chunk{b, std::min(per_launch, r.B - b)});
  const std::int64_t chunk_B = p.chunks.front().count;

  if (p.kernel == Kernel::online) {
    const std::size_t smem = geo::online_smem_bytes(p.dp);
    const bool simt_fits = dev.smem_per_block_optin == 0 || smem <= dev.smem_per_block_optin;
    p.tensor_cores =
        (r.cost == CostKind::sqeuclidean && mma_geometry::sqeuclidean_uses_mma(r.d)) || !simt_fits;
    p.precision = p.tensor_cores && r.cost == CostKind::sqeuclidean ? r.precision : Precision::fp32;
  }
  if (p.kernel == Kernel::online && p.tensor_cores) {
    p.occupancy = mma_occupancy(dev, p.occupancy_assumed, p.dp);
    const std::int64_t wave = static_cast<std::int64_t>(dev.sm_count) * p.occupancy;
    p.f = plan_half(chunk_B, r.n, r.m, p.dp, wave, true, mma_geometry::kRowsPerBlock);
    p.g = plan_half(chunk_B, r.m, r.n, p.dp, wave, true, mma_geometry::kRowsPerBlock);
    p.launches_per_iteration = 2 + (p.f.splits > 1 ? 1 : 0) + (p.g.splits > 1 ? 1 : 0);
  } else if (p.kernel == Kernel::online) {
    const std::size_t smem = geo::online_smem_bytes(p.dp);
    if (dev.smem_per_block_optin > 0 && smem > dev.smem_per_block_optin) {
      throw InvalidArgument(fmt::format(
          "d: dimension {} (padded {}) needs {} bytes of shared memory per block for a tile of "
          "{} points, {} allows {}",
          r.d, p.dp, smem, geo::kOnlineTileCols, dev.name, dev.smem_per_block_optin));
    }
    p.occupancy = online_occupancy(dev, p.dp, p.occupancy_assumed);
    const std::int64_t wave = static_cast<std::int64_t>(dev.sm_count) * p.occupancy;
    p.f = plan_half(chunk_B, r.n, r.m, p.dp, wave, true);
    p.g = plan_half(chunk_B, r.m, r.n, p.dp, wave, true);
    p.launches_per_iteration = 2 + (p.f.splits > 1 ? 1 : 0) + (p.g.splits > 1 ? 1 : 0);
  } else if (p.kernel == Kernel::dense) {
    const auto cs = geo::dense_col_split(chunk_B, r.n, r.m);
    p.f.rows = r.n;
    p.f.cols = r.m;
    p.f.rows_per_block = geo::kDenseRowsPerBlock;
    p.f.row_blocks = ceil_div(r.n, geo::kDenseRowsPerBlock);
    p.f.blocks = p.f.row_blocks * chunk_B;
    p.g.rows = r.m;
    p.g.cols = r.n;
    p.g.rows_per_block = cs.rows_per_split;
    p.g.row_blocks = cs.tiles;
    p.g.col_tiles = cs.tiles;
    p.g.splits = static_cast<int>(cs.nsplit);
    p.g.blocks = cs.tiles * cs.nsplit * chunk_B;
    p.launches_per_iteration = 2 + (cs.nsplit > 1 ? 1 : 0);
  } else {
    p.f.rows = r.n;
    p.f.cols = r.m;
    p.g.rows = r.m;
    p.g.cols = r.n;
    p.f.blocks = p.g.blocks = r.B;  // one block per problem runs every iteration
  }
  p.sync_loop = p.kernel == Kernel::small ? "in-kernel"
                : r.check_every > 0       ? "graph (one check period captured, replayed)"
                                          : "plain launches";
  p.async_loop = p.kernel == Kernel::small ? "in-kernel"
                 : r.check_every > 0 && dev.conditional_nodes
                     ? "conditional WHILE node (device stops the loop)"
                     : "plain launches of every iteration";

  p.workspace_bytes = layout_workspace(p, true, false).total;
  p.input_bytes = input_bytes(r);
  p.roofline = gpu_roofline(p, dev);
  if (dev.memory_free > 0 && p.workspace_bytes > dev.memory_free) {
    throw OutOfMemory(
        fmt::format("plan: the workspace needs {} bytes of device memory, {} bytes are free on {} "
                    "(B={}, n={}, m={}, d={})",
                    p.workspace_bytes, dev.memory_free, dev.name, r.B, r.n, r.m, r.d));
  }
  return p;
}

Plan make_cpu_plan(const Request& request, const CpuProps& cpu) {
  check_request(request);
  Plan p;
  p.backend = Backend::cpu;
  p.kernel = Kernel::cpu_reference;
  p.request = request;
  p.device_name = cpu.name;
  p.props_assumed = cpu.assumed;
  p.cpu_threads = std::max(cpu.threads, 1);
  const Request& r = request;
  p.chunks.push_back(Chunk{0, r.B});
  p.f.rows = r.n;
  p.f.cols = r.m;
  p.g.rows = r.m;
  p.g.cols = r.n;
  p.sync_loop = p.async_loop = "host loop (fp64, problems over threads)";
  const auto B = static_cast<double>(r.B), n = static_cast<double>(r.n),
             m = static_cast<double>(r.m);
  // Memory of the reference: inputs converted to fp64 (points or costs, weights), the
  // potentials f, g and the check's f-update, one LSE row buffer per thread.
  const double inputs =
      r.cost == CostKind::matrix ? B * n * m : B * (n + m) * static_cast<double>(r.d);
  const double doubles =
      inputs + B * (n + m) + B * (2 * n + m) + static_cast<double>(p.cpu_threads) * std::max(n, m);
  p.host_bytes = static_cast<std::size_t>(doubles * sizeof(double));
  p.input_bytes = input_bytes(r);
  Roofline& f = p.roofline;
  f.exps = 2.0 * B * n * m;  // n m exponentials per half-step
  f.fp32_ops = 0;
  f.bytes = r.cost == CostKind::matrix ? 2.0 * B * n * m * sizeof(double) : 0.0;
  f.exp_per_s = cpu.exp_per_s;
  f.bytes_per_s = cpu.bytes_per_s;
  f.assumed = cpu.assumed;
  const double t_exp = cpu.exp_per_s > 0 ? f.exps / cpu.exp_per_s : 0.0;
  const double t_mem = cpu.bytes_per_s > 0 ? f.bytes / cpu.bytes_per_s : 0.0;
  f.seconds = std::max(t_exp, t_mem);
  f.bound = t_mem > t_exp ? "memory" : "cpu-exp";
  if (cpu.memory_total > 0 && p.host_bytes > cpu.memory_total) {
    throw OutOfMemory(
        fmt::format("plan: the CPU solve needs {} bytes of host memory, {} bytes total",
                    p.host_bytes, cpu.memory_total));
  }
  return p;
}

LoopSchedule loop_schedule(int scaling_steps, int check_every, int max_iter) {
  LoopSchedule l;
  if (check_every <= 0 || max_iter <= 0) return l;
  // The first check: the smallest t >= K with (t + 1) % check_every == 0.
  const long long ce = check_every;
  const long long t_first = (static_cast<long long>(scaling_steps) + ce) / ce * ce - 1;
  if (t_first + 1 >= max_iter) return l;
  const auto t0 = static_cast<int>(t_first + 1);
  const int periods = (max_iter - t0) / check_every;
  if (periods == 0) return l;
  l.t0 = t0;
  l.periods = periods;
  l.t_limit = t0 + periods * check_every;
  return l;
}

namespace {
thread_local std::string g_last_loop;
}  // namespace

std::string last_loop_strategy() { return g_last_loop; }
void set_last_loop_strategy(std::string strategy) { g_last_loop = std::move(strategy); }

std::string describe(const Plan& p) {
  const Request& r = p.request;
  std::string s;
  auto line = [&s](const std::string& l) {
    s += l;
    s += '\n';
  };
  line(
      fmt::format("problem      B={} n={} m={} d={} cost={} dtype={} max_iter={} check_every={} "
                  "scaling_steps={}",
                  r.B, r.n, r.m, r.d, otgpu::to_string(r.cost), otgpu::to_string(r.dtype),
                  r.max_iter, r.check_every, r.scaling_steps));
  line(fmt::format("backend      {} on {}{}", otgpu::to_string(p.backend), p.device_name,
                   p.props_assumed ? " [properties assumed]" : ""));
  line(fmt::format("kernel       {}", to_string(p.kernel)));
  if (p.backend == Backend::cpu) {
    line(fmt::format("threads      {}", p.cpu_threads));
    line(fmt::format("host memory  {} bytes", p.host_bytes));
  } else {
    line(fmt::format("devices      {}", p.device_count));
    if (p.dp > 0) line(fmt::format("padded d     {}", p.dp));
    if (p.kernel == Kernel::small) {
      line(fmt::format("shared mem   {} bytes per block (one block per problem)",
                       p.small_smem_bytes));
    } else {
      auto half = [&](const char* name, const HalfStep& h) {
        line(
            fmt::format("{}       rows={} cols={} rows/block={} row_blocks={} col_tiles={} "
                        "splits={} blocks={} waves={} last_wave_fill={:.3f}",
                        name, h.rows, h.cols, h.rows_per_block, h.row_blocks, h.col_tiles, h.splits,
                        h.blocks, h.waves, h.last_wave_fill));
      };
      half("f-step", p.f);
      half("g-step", p.g);
      if (p.kernel == Kernel::online)
        line(fmt::format("occupancy    {} blocks/SM{}", p.occupancy,
                         p.occupancy_assumed ? " [assumed: not measured]" : " [measured]"));
      line(fmt::format("launches     {} per iteration", p.launches_per_iteration));
    }
    line(fmt::format("workspace    {} bytes", p.workspace_bytes));
    std::string chunks;
    for (const Chunk& c : p.chunks) chunks += fmt::format(" [{}, {})", c.begin, c.begin + c.count);
    line(fmt::format("chunks       {}:{}", p.chunks.size(), chunks));
  }
  line(fmt::format("input bytes  {}", p.input_bytes));
  line(fmt::format("sync loop    {}", p.sync_loop));
  line(fmt::format("async loop   {}", p.async_loop));
  const Roofline& f = p.roofline;
  if (p.tensor_cores)
    line(
        fmt::format("tensor cores mma.sync, {} ({}); {:.4g} tensor FLOP per iteration at {:.4g} "
                    "FLOP/s",
                    to_string(p.precision),
                    p.precision == Precision::fp32   ? "3xTF32"
                    : p.precision == Precision::tf32 ? "1xTF32"
                                                     : "1xbf16",
                    f.tensor_flops, f.tensor_flops_per_s));
  line(
      fmt::format("iteration    {:.4g} exp, {:.4g} fp32 ops, {:.4g} bytes; bound {}: {:.4g} ms "
                  "per iteration",
                  f.exps, f.fp32_ops, f.bytes, f.bound, f.seconds * 1e3));
  line(fmt::format("rates        {:.4g} exp/s, {:.4g} fp32/s, {:.4g} B/s{}", f.exp_per_s,
                   f.fp32_per_s, f.bytes_per_s,
                   f.assumed ? " [assumed: published/nominal figures, not measured]" : ""));
  return s;
}

#ifndef OTGPU_WITH_CUDA
DeviceProps query_device(int device) {
  throw DeviceUnavailable(
      fmt::format("plan: CUDA device {} unavailable: this libotgpu was built without CUDA "
                  "(configure with OTGPU_CUDA=ON and a CUDA toolkit)",
                  device));
}
#endif

}  // namespace otgpu::planner
