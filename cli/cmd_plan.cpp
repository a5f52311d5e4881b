// `otgpu plan`: what a Sinkhorn solve of a given shape would do, without running it:
// the planner's kernel, tiles, column splits, workspace, batch chunks and loop, and the
// roofline estimate of one iteration (otgpu_host/planner.h). Without a usable GPU it
// prints the CPU plan; `--backend cuda` without one plans for an H200 whose published
// figures it states as assumed.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "commands.h"
#include "common.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_host/planner.h"

namespace otgpu::cli {

namespace {

struct PlanArgs {
  long long n = 0, m = -1, d = 0, batch = 1;
  std::string cost = "sqeuclidean";
  std::string dtype = "f32";
  int max_iter = 100000;
  int check_every = 10;
  int eps_scaling_steps = 10;  // the sinkhorn command's default: 1024 x eps, halved per step
  bool json = false;
  BackendFlags backend;
  int devices = 0;         // --devices N: rows sharded over N GPUs
  int ranks = 0;           // --ranks R: rows sharded over R ranks (CPU ranks without a GPU)
  int ranks_per_node = 8;  // GPUs (ranks) per node of the projection
};

nlohmann::json plan_json(const planner::Plan& p);

/// The sharded plan: the shard's plan plus the layout and the communication.
nlohmann::json shard_json(const planner::ShardPlan& s) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : s.rows) rows.push_back({r.begin, r.end});
  nlohmann::json j = plan_json(s.shard);
  j["sharded"] = {{"ranks", s.ranks},
                  {"nodes", s.nodes},
                  {"ranks_per_node", s.net.ranks_per_node},
                  {"rows", rows},
                  {"bytes_per_rank", s.bytes_per_rank},
                  {"comm_bytes_per_iteration", s.comm_bytes_per_iteration},
                  {"element_bytes", s.element_bytes},
                  {"compute_seconds", s.compute_seconds},
                  {"comm_seconds", s.comm_seconds},
                  {"iteration_seconds", s.iteration_seconds},
                  {"single_seconds", s.whole.roofline.seconds},
                  {"speedup", s.speedup},
                  {"interconnect",
                   {{"name", s.net.name},
                    {"intra_bytes_per_s", s.net.intra_bytes_per_s},
                    {"inter_bytes_per_s", s.net.inter_bytes_per_s},
                    {"intra_latency_s", s.net.intra_latency_s},
                    {"inter_latency_s", s.net.inter_latency_s},
                    {"assumed", true}}}};
  return j;
}

nlohmann::json half_json(const planner::HalfStep& h) {
  return {{"rows", h.rows},
          {"cols", h.cols},
          {"rows_per_block", h.rows_per_block},
          {"row_blocks", h.row_blocks},
          {"col_tiles", h.col_tiles},
          {"splits", h.splits},
          {"blocks", h.blocks},
          {"wave", h.wave},
          {"waves", h.waves},
          {"last_wave_fill", h.last_wave_fill}};
}

nlohmann::json plan_json(const planner::Plan& p) {
  const auto& r = p.request;
  nlohmann::json chunks = nlohmann::json::array();
  for (const auto& c : p.chunks) chunks.push_back({{"begin", c.begin}, {"count", c.count}});
  const auto& f = p.roofline;
  nlohmann::json j = {{"problem",
                       {{"batch", r.B},
                        {"n", r.n},
                        {"m", r.m},
                        {"d", r.d},
                        {"cost", std::string(to_string(r.cost))},
                        {"dtype", std::string(to_string(r.dtype))},
                        {"max_iter", r.max_iter},
                        {"check_every", r.check_every},
                        {"eps_scaling_steps", r.scaling_steps}}},
                      {"backend", std::string(to_string(p.backend))},
                      {"device", p.device_name},
                      {"assumed", p.props_assumed},
                      {"device_count", p.device_count},
                      {"kernel", std::string(planner::to_string(p.kernel))},
                      {"padded_d", p.dp},
                      {"tensor_cores", p.tensor_cores},
                      {"precision", std::string(to_string(p.precision))},
                      {"f_step", half_json(p.f)},
                      {"g_step", half_json(p.g)},
                      {"occupancy", p.occupancy},
                      {"occupancy_assumed", p.occupancy_assumed},
                      {"small_smem_bytes", p.small_smem_bytes},
                      {"workspace_bytes", p.workspace_bytes},
                      {"input_bytes", p.input_bytes},
                      {"chunks", chunks},
                      {"launches_per_iteration", p.launches_per_iteration},
                      {"sync_loop", p.sync_loop},
                      {"async_loop", p.async_loop},
                      {"cpu_threads", p.cpu_threads},
                      {"host_bytes", p.host_bytes},
                      {"iteration",
                       {{"exps", f.exps},
                        {"fp32_ops", f.fp32_ops},
                        {"bytes", f.bytes},
                        {"bound", f.bound},
                        {"seconds", f.seconds},
                        {"exp_per_s", f.exp_per_s},
                        {"fp32_per_s", f.fp32_per_s},
                        {"bytes_per_s", f.bytes_per_s},
                        {"rates_assumed", f.assumed}}}};
  return j;
}

/// "--n: must be >= 1, got 0".
void at_least(const char* flag, long long value, long long minimum) {
  if (value < minimum)
    throw InvalidArgument(fmt::format("{}: must be >= {}, got {}", flag, minimum, value));
}

void run_plan(const PlanArgs& a) {
  at_least("--n", a.n, 1);
  const long long m = a.m < 0 ? a.n : a.m;
  at_least("--m", m, 1);
  at_least("--batch", a.batch, 1);
  at_least("--max-iter", a.max_iter, 1);
  at_least("--check-every", a.check_every, 0);
  at_least("--eps-scaling-steps", a.eps_scaling_steps, 0);
  CostKind cost = CostKind::matrix;
  if (a.cost != "matrix") cost = parse_point_cost("--cost", a.cost);
  if (cost != CostKind::matrix) at_least("--d", a.d, 1);
  DType dtype = DType::f32;
  if (a.dtype == "f64") {
    dtype = DType::f64;
  } else if (a.dtype != "f32") {
    throw InvalidArgument(
        fmt::format("--dtype: unknown dtype '{}' (expected f32 or f64)", a.dtype));
  }
  const Backend backend = resolve_backend_flag(a.backend);

  planner::Request r;
  r.B = a.batch;
  r.n = a.n;
  r.m = m;
  r.d = cost == CostKind::matrix ? 0 : a.d;
  r.cost = cost;
  r.dtype = dtype;
  r.max_iter = a.max_iter;
  r.check_every = a.check_every;
  r.scaling_steps = a.eps_scaling_steps < a.max_iter ? a.eps_scaling_steps : a.max_iter;
  // A cost matrix from a .npy file is contiguous: the GPU reads an f32 one in place
  // and stages (converts) an f64 one into the workspace.
  r.stage_cost = dtype != DType::f32;

  at_least("--devices", a.devices, 0);
  at_least("--ranks", a.ranks, 0);
  at_least("--ranks-per-node", a.ranks_per_node, 1);
  if (a.devices > 0 && a.ranks > 0) {
    throw InvalidArgument(
        fmt::format("--devices {} and --ranks {}: give one (--devices: GPUs, --ranks: processes)",
                    a.devices, a.ranks));
  }
  if (a.devices > 0 && backend == Backend::cpu) {
    throw InvalidArgument("--devices plans GPUs; with --backend cpu use --ranks");
  }

  planner::Plan p;
  const bool gpu = a.devices > 0 || backend == Backend::cuda ||
                   (backend == Backend::automatic && cuda_available());
  const int shards = a.devices > 0 ? a.devices : a.ranks;
  if (shards > 0) {
    planner::ShardPlan sp;
    if (gpu) {
      const planner::DeviceProps dev =
          cuda_available() ? planner::query_device(a.backend.device) : planner::h200_assumed();
      planner::Interconnect net;
      net.ranks_per_node = a.ranks_per_node;
      sp = planner::make_sharded_plan(r, shards, dev, net);
    } else {
      int threads = a.backend.threads;
      if (threads <= 0) threads = 1;  // one thread per rank unless --threads says more
      sp = planner::make_sharded_cpu_plan(r, shards, planner::cpu_assumed(threads),
                                          planner::cpu_shared_memory(shards));
    }
    if (a.json) {
      print_json(shard_json(sp));
    } else {
      std::fputs(planner::describe(sp).c_str(), stdout);
    }
    return;
  }
  if (gpu) {
    // The real device when there is one, else the H200's published figures.
    const planner::DeviceProps dev =
        cuda_available() ? planner::query_device(a.backend.device) : planner::h200_assumed();
    p = planner::make_plan(r, dev);
  } else {
    int threads = a.backend.threads;
    if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
    p = planner::make_cpu_plan(r, planner::cpu_assumed(threads > 0 ? threads : 1));
  }
  if (a.json) {
    print_json(plan_json(p));
  } else {
    std::fputs(planner::describe(p).c_str(), stdout);
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto args = std::make_shared<PlanArgs>();
  CLI::App* sub = app.add_subcommand(
      "plan", "Print the plan and the roofline estimate of one Sinkhorn iteration (runs nothing)");
  sub->add_option("--n", args->n, "rows (points of x)")->required();
  sub->add_option("--m", args->m, "columns (points of y; default n)");
  sub->add_option("--d", args->d, "point dimension (point-cloud costs)");
  sub->add_option("--batch", args->batch, "problems solved together (default 1)");
  sub->add_option("--cost", args->cost, "sqeuclidean (default), euclidean or matrix");
  sub->add_option("--dtype", args->dtype, "input dtype: f32 (default) or f64");
  sub->add_option("--max-iter", args->max_iter, "iteration cap (default 100000)");
  sub->add_option("--check-every", args->check_every,
                  "iterations between convergence checks (default 10, 0 = none)");
  sub->add_option("--eps-scaling-steps", args->eps_scaling_steps,
                  "iterations of epsilon scaling before the target eps (default 10: 1024 x "
                  "eps halved per step; 0 = none)");
  sub->add_flag("--json", args->json, "print one JSON object on stdout");
  sub->add_option("--devices", args->devices,
                  "shard the rows over N GPUs: shard layout, memory per device, bytes "
                  "communicated and the iteration time (NVLink/InfiniBand figures assumed)");
  sub->add_option("--ranks", args->ranks,
                  "shard the rows over R ranks (mpirun; CPU ranks when no GPU is planned)");
  sub->add_option("--ranks-per-node", args->ranks_per_node,
                  "GPUs per node for --devices (default 8; more ranks span several nodes)");
  add_backend_flags(*sub, args->backend);
  sub->callback([args] { run_plan(*args); });
}

}  // namespace otgpu::cli
