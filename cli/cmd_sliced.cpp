// `otgpu sliced`: sliced (or max-sliced) Wasserstein distances of point clouds
// stored as .npy files, with optional gradients.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.h"
#include "common.h"
#include "otgpu/error.h"
#include "otgpu/sliced.h"

namespace otgpu::cli {

namespace {

struct SlicedArgs {
  std::string x_path, y_path, a_path, b_path, directions_path, grad_out, grad_y_out;
  int projections = 64;
  double p = 2.0;
  std::uint64_t seed = 0;
  bool max_sliced = false;
  bool json = false;
  BackendFlags backend;
};

void run_sliced(const SlicedArgs& args) {
  require_at_least("--projections", args.projections, 1);
  if (!(args.p >= 1.0) || !std::isfinite(args.p)) {
    throw InvalidArgument(fmt::format("--p: must be a finite number >= 1, got {}", args.p));
  }
  const Backend backend = resolve_backend_flag(args.backend);
  check_output_path("--grad-out", args.grad_out);
  check_output_path("--grad-y-out", args.grad_y_out);

  const NpyInput x = load_points("--x", args.x_path);
  const NpyInput y = load_points("--y", args.y_path);
  NpyInput a, b, dirs;
  if (!args.a_path.empty()) a = load_weights("--a", args.a_path);
  if (!args.b_path.empty()) b = load_weights("--b", args.b_path);
  if (!args.directions_path.empty()) {
    dirs = load_input("--directions", args.directions_path, 2, 2, "[d, L]");
  }

  SlicedProblem problem;
  problem.x = x.view();
  problem.y = y.view();
  if (a.present()) problem.a = a.view();
  if (b.present()) problem.b = b.view();
  SlicedOptions options;
  options.projections = args.projections;
  options.p = args.p;
  options.seed = args.seed;
  options.max_sliced = args.max_sliced;
  options.backend = backend;
  options.device = args.backend.device;
  options.cpu_threads = args.backend.threads;
  options.gradients = !args.grad_out.empty() || !args.grad_y_out.empty();
  if (dirs.present()) options.directions = dirs.view();

  const SlicedResult r = sliced_wasserstein(problem, options);

  const bool batched = x.rank() == 3;
  if (!args.grad_out.empty()) {
    write_output("--grad-out", args.grad_out, r.grad_x,
                 batched_shape(batched, r.batch, {r.n, r.d}));
  }
  if (!args.grad_y_out.empty()) {
    write_output("--grad-y-out", args.grad_y_out, r.grad_y,
                 batched_shape(batched, r.batch, {r.m, r.d}));
  }

  if (args.json) {
    nlohmann::json problems = nlohmann::json::array();
    for (double v : r.value) problems.push_back({{"sliced_wasserstein", v}});
    print_json({{"backend", std::string(to_string(r.backend))},
                {"time_ms", r.time_ms},
                {"problems", problems}});
    return;
  }
  const std::string source =
      dirs.present() ? std::string("from --directions") : fmt::format("seed {}", args.seed);
  std::fputs(fmt::format("{} Wasserstein, p = {}, L = {} directions ({}), backend {}, {:.3f} ms\n",
                         args.max_sliced ? "max-sliced" : "sliced", format_number(args.p),
                         r.projections, source, to_string(r.backend), r.time_ms)
                 .c_str(),
             stdout);
  Table table(
      {"problem", args.max_sliced ? "MSW_p" : "SW_p", args.max_sliced ? "MSW_p^p" : "SW_p^p"});
  for (std::size_t k = 0; k < r.value.size(); ++k) {
    table.add_row({std::to_string(k), format_number(r.value[k]), format_number(r.value_pp[k])});
  }
  std::fputs(table.render().c_str(), stdout);
}

}  // namespace

void add_sliced_command(CLI::App& app) {
  auto args = std::make_shared<SlicedArgs>();
  auto* sub = app.add_subcommand(
      "sliced",
      "Sliced Wasserstein distance SW_p = (mean over L random directions of W_p^p of the "
      "projections)^(1/p), exact in each direction");
  sub->add_option("--x", args->x_path, "points x, [n, d] or [B, n, d] (.npy)")->required();
  sub->add_option("--y", args->y_path, "points y, [m, d] or [B, m, d] (.npy)")->required();
  sub->add_option("--a", args->a_path, "weights of x, [n] or [B, n] (default uniform)");
  sub->add_option("--b", args->b_path, "weights of y, [m] or [B, m] (default uniform)");
  sub->add_option("--projections,-L", args->projections,
                  "number of random directions (default 64)");
  sub->add_option("--p", args->p, "ground cost exponent p >= 1 (default 2)");
  sub->add_option("--seed", args->seed, "seed of the directions (default 0)");
  sub->add_option("--directions", args->directions_path,
                  "explicit directions [d, L] (.npy), normalized; overrides -L and --seed");
  sub->add_flag("--max-sliced", args->max_sliced,
                "largest W_p over the directions instead of the mean");
  sub->add_option("--grad-out", args->grad_out,
                  "write the gradient of SW_p^p w.r.t. x, [n, d] or [B, n, d] (.npy)");
  sub->add_option("--grad-y-out", args->grad_y_out,
                  "write the gradient of SW_p^p w.r.t. y, [m, d] or [B, m, d] (.npy)");
  sub->add_flag("--json", args->json, "print one JSON object instead of a table");
  add_backend_flags(*sub, args->backend);
  sub->callback([args] { run_sliced(*args); });
}

}  // namespace otgpu::cli
