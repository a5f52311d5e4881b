// Sharded plans: the per-shard plan of the one-device planner plus the communication
// of the g-update's column merge (see ShardPlan in otgpu_host/planner.h).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "otgpu/error.h"
#include "otgpu_host/planner.h"

namespace otgpu::planner {

namespace {

void check_ranks(const Request& r, int ranks, const Interconnect& net) {
  if (ranks < 1) throw InvalidArgument(fmt::format("ranks: must be >= 1, got {}", ranks));
  if (r.n < ranks) {
    throw InvalidArgument(fmt::format(
        "ranks: {} ranks need at least one row each, but n = {} (every rank holds rows of x)",
        ranks, r.n));
  }
  if (net.ranks_per_node < 1) {
    throw InvalidArgument(fmt::format("ranks_per_node: must be >= 1, got {}", net.ranks_per_node));
  }
}

/// dist::row_range's split: contiguous, the first n % R ranks one row longer.
std::vector<ShardRows> split_rows(std::int64_t n, int ranks) {
  std::vector<ShardRows> out;
  const std::int64_t base = n / ranks, extra = n % ranks;
  std::int64_t begin = 0;
  for (int r = 0; r < ranks; ++r) {
    const std::int64_t len = base + (r < extra ? 1 : 0);
    out.push_back({begin, begin + len});
    begin += len;
  }
  return out;
}

/// What one rank sends in the collectives of a sharded solve, as the drivers issue them
/// (host/src/cuda/sinkhorn_sharded.cpp, the Shard parts of core/src/cpu_sinkhorn.cpp):
/// per iteration the g-merge (an allreduce max and one sum of the m column partials in
/// fp64 per problem; the CUDA driver merges all B problems of a launch in one pair,
/// the CPU one problem after the other, each also agreeing on finite f with one scalar
/// allreduce), and per check the residual with its status word and the cancel/status
/// pair (dist_status.h).
struct Collectives {
  double merges = 0;         ///< large allreduces per iteration
  double merge_doubles = 0;  ///< doubles reduced by them per iteration (all of them)
  double scalars = 0;        ///< small allreduces per iteration, checks amortized
  double scalar_doubles = 0;
};

Collectives collectives(const Request& r, bool cpu) {
  const double B = static_cast<double>(r.B), m = static_cast<double>(r.m);
  const double per_check = r.check_every > 0 ? 1.0 / r.check_every : 0.0;
  Collectives c;
  if (cpu) {
    c.merges = 2 * B;
    c.merge_doubles = 2 * B * m;
    c.scalars = B + 2 * B * per_check;  // finite flag; residual, cancel+status
    c.scalar_doubles = B + (B * 1 + B * 2) * per_check;
  } else {
    c.merges = 2;
    c.merge_doubles = 2 * B * m;
    c.scalars = 2 * per_check;  // residuals+status; cancel+status
    c.scalar_doubles = ((B + 1) + 2) * per_check;
  }
  return c;
}

/// Fills the communication and totals of `p` (shard and whole plans already made): a
/// ring allreduce of k bytes sends 2 (R - 1) / R k bytes per rank and costs
/// 2 (R - 1) latencies.
void finish(ShardPlan& p, const Request& r, bool cpu) {
  const int R = p.ranks;
  p.nodes = (R + p.net.ranks_per_node - 1) / p.net.ranks_per_node;
  const bool multi_node = p.nodes > 1;
  const double bw = multi_node ? p.net.inter_bytes_per_s : p.net.intra_bytes_per_s;
  const double lat = multi_node ? p.net.inter_latency_s : p.net.intra_latency_s;
  if (R > 1) {
    const Collectives c = collectives(r, cpu);
    const double ring = 2.0 * (R - 1) / R;
    const auto s = static_cast<double>(p.element_bytes);
    p.comm_bytes_per_iteration = ring * (c.merge_doubles + c.scalar_doubles) * s;
    p.comm_seconds = p.comm_bytes_per_iteration / bw + (c.merges + c.scalars) * 2.0 * (R - 1) * lat;
  }
  p.compute_seconds = p.shard.roofline.seconds;
  p.iteration_seconds = p.compute_seconds + p.comm_seconds;
  p.speedup = p.iteration_seconds > 0 ? p.whole.roofline.seconds / p.iteration_seconds : 0.0;
}

Request shard_request(const Request& r, const std::vector<ShardRows>& rows) {
  Request s = r;
  s.n = rows.front().end - rows.front().begin;  // the first shard is the longest
  return s;
}

}  // namespace

Interconnect cpu_shared_memory(int ranks) {
  Interconnect net;
  net.name = "shared memory between CPU ranks of one machine (10 GB/s per rank, 2 us)";
  net.ranks_per_node = std::max(ranks, 1);
  net.intra_bytes_per_s = 10e9;
  net.inter_bytes_per_s = 10e9;
  net.intra_latency_s = 2e-6;
  net.inter_latency_s = 2e-6;
  return net;
}

ShardPlan make_sharded_plan(const Request& request, int ranks, const DeviceProps& device,
                            const Interconnect& net) {
  check_ranks(request, ranks, net);
  ShardPlan p;
  p.ranks = ranks;
  p.net = net;
  p.rows = split_rows(request.n, ranks);
  p.whole = make_plan(request, device);
  p.shard = make_plan(shard_request(request, p.rows), device);
  p.shard.device_count = ranks;
  p.bytes_per_rank = p.shard.workspace_bytes + p.shard.input_bytes;
  p.element_bytes = 8;  // the CUDA driver merges fp64 column LSE partials
  finish(p, request, false);
  return p;
}

ShardPlan make_sharded_cpu_plan(const Request& request, int ranks, const CpuProps& cpu,
                                const Interconnect& net) {
  check_ranks(request, ranks, net);
  ShardPlan p;
  p.ranks = ranks;
  p.net = net;
  p.rows = split_rows(request.n, ranks);
  p.whole = make_cpu_plan(request, cpu);
  p.shard = make_cpu_plan(shard_request(request, p.rows), cpu);
  p.bytes_per_rank = p.shard.host_bytes;
  p.element_bytes = 8;  // the CPU merges fp64 partials
  finish(p, request, true);
  return p;
}

std::string describe(const ShardPlan& p) {
  std::string s = describe(p.shard);
  auto line = [&s](const std::string& l) {
    s += l;
    s += '\n';
  };
  line(fmt::format("-- sharded over {} rank(s) on {} node(s): the plan above is one shard's --",
                   p.ranks, p.nodes));
  std::string layout;
  const std::size_t shown = std::min<std::size_t>(p.rows.size(), 8);
  for (std::size_t k = 0; k < shown; ++k) {
    layout += fmt::format(" {}:[{}, {})", k, p.rows[k].begin, p.rows[k].end);
  }
  if (shown < p.rows.size()) layout += fmt::format(" ... ({} more)", p.rows.size() - shown);
  line(fmt::format("shards       rows of x split by rank (y, b, g replicated):{}", layout));
  line(fmt::format("per rank     {} bytes ({})", p.bytes_per_rank,
                   p.shard.backend == Backend::cpu ? "host memory" : "device workspace + inputs"));
  line(fmt::format("interconnect {} [assumed]", p.net.name));
  line(
      fmt::format("comm         {:.4g} bytes sent per rank per iteration (ring allreduces "
                  "of the m column partials, max and sum, {} B each, and the checks' "
                  "scalars): {:.4g} ms",
                  p.comm_bytes_per_iteration, p.element_bytes, p.comm_seconds * 1e3));
  line(
      fmt::format("iteration    {:.4g} ms compute (largest shard) + {:.4g} ms comm = {:.4g} ms; "
                  "one {}: {:.4g} ms; speedup {:.3g}x on {} ranks",
                  p.compute_seconds * 1e3, p.comm_seconds * 1e3, p.iteration_seconds * 1e3,
                  p.shard.backend == Backend::cpu ? "rank" : "device",
                  p.whole.roofline.seconds * 1e3, p.speedup, p.ranks));
  return s;
}

}  // namespace otgpu::planner
