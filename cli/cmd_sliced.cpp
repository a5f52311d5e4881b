// `otgpu sliced`: sliced (or max-sliced) Wasserstein distances of point clouds
// stored as .npy files, with optional gradients. The command maps flags to
// SlicedOptions and the library's errors to flag names; every check of shapes,
// values and options is the library's (sliced_wasserstein validates them all).
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "common.h"
#include "otgpu/detail/sinkhorn_rules.h"
#include "otgpu/error.h"
#include "otgpu/sliced.h"

namespace otgpu::cli {

namespace {

struct SlicedArgs {
  std::string x_path, y_path, a_path, b_path, directions_path, grad_out, grad_y_out;
  int projections = 64;
  double p = 2.0;
  std::string seed = "0";
  bool max_sliced = false;
  JsonFlags json;
  BackendFlags backend;
};

/// Masses of a weights file per problem ([B] for [B, n], [1] for [n]; absent: {1},
/// the uniform default). Values are checked by the library afterwards.
std::vector<double> file_masses(const NpyInput& w) {
  if (!w.present()) return {1.0};
  const std::int64_t rows = w.rank() == 2 ? w.dim(0) : 1;
  const std::int64_t len = w.array.numel() / std::max<std::int64_t>(rows, 1);
  std::vector<double> out(static_cast<std::size_t>(rows), 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    double sum = 0, comp = 0;  // Kahan: the tolerance is relative 1e-5, sizes up to 2^31
    for (std::int64_t i = 0; i < len; ++i) {
      const double v = w.array.at(r * len + i);
      if (!(v >= 0) || !std::isfinite(v)) {
        sum = std::numeric_limits<double>::quiet_NaN();  // the library names the element
        break;
      }
      const double y = v - comp;
      const double t = sum + y;
      comp = (t - sum) - y;
      sum = t;
    }
    out[static_cast<std::size_t>(r)] = sum;
  }
  return out;
}

/// The rule of `otgpu sinkhorn` (balanced): the two measures of a problem must have
/// equal masses to otgpu::detail::kMassTolerance (relative); both are then normalized.
void check_equal_masses(const NpyInput& a, const NpyInput& b) {
  const std::vector<double> ma = file_masses(a), mb = file_masses(b);
  const std::size_t rows = std::max(ma.size(), mb.size());
  for (std::size_t r = 0; r < rows; ++r) {
    const double x = ma[ma.size() == 1 ? 0 : r], y = mb[mb.size() == 1 ? 0 : r];
    // Non-finite or negative weights are the library's to report.
    if (!std::isfinite(x) || !std::isfinite(y) || !(x > 0) || !(y > 0)) continue;
    if (!otgpu::detail::masses_match(x, y)) {
      throw InvalidArgument(fmt::format(
          "{}, {}: problem {} has mass(a) = {} and mass(b) = {}; the masses must be equal "
          "(relative {}), as for otgpu sinkhorn (the default weights have mass 1)",
          a.present() ? a.label() : std::string("--a (uniform)"),
          b.present() ? b.label() : std::string("--b (uniform)"), r, x, y,
          otgpu::detail::kMassTolerance));
    }
  }
}

void run_sliced(const SlicedArgs& args) {
  const Backend backend = resolve_backend_flag(args.backend);
  const std::uint64_t seed = parse_seed(args.seed);
  check_outputs(
      {{"--x", args.x_path},
       {"--y", args.y_path},
       {"--a", args.a_path},
       {"--b", args.b_path},
       {"--directions", args.directions_path}},
      {{"--grad-out", args.grad_out}, {"--grad-y-out", args.grad_y_out}, args.json.output()});

  const NpyInput x = load_array("--x", args.x_path);
  const NpyInput y = load_array("--y", args.y_path);
  NpyInput a, b, dirs;
  if (!args.a_path.empty()) a = load_array("--a", args.a_path);
  if (!args.b_path.empty()) b = load_array("--b", args.b_path);
  if (!args.directions_path.empty()) dirs = load_array("--directions", args.directions_path);
  check_equal_masses(a, b);

  SlicedProblem problem;
  problem.x = x.view();
  problem.y = y.view();
  if (a.present()) problem.a = a.view();
  if (b.present()) problem.b = b.view();
  SlicedOptions options;
  options.projections = args.projections;
  options.p = args.p;
  options.seed = seed;
  options.max_sliced = args.max_sliced;
  options.backend = backend;
  options.device = args.backend.device;
  options.cpu_threads = args.backend.threads;
  options.gradients = !args.grad_out.empty() || !args.grad_y_out.empty();
  if (dirs.present()) options.directions = dirs.view();

  std::vector<FlagName> names = {{"x", x.label()},
                                 {"y", y.label()},
                                 {"p", "--p"},
                                 {"projections", "--projections"},
                                 {"cpu_threads", "--threads"},
                                 {"device", "--device"},
                                 {"backend", "--backend"}};
  if (a.present()) names.push_back({"a", a.label()});
  if (b.present()) names.push_back({"b", b.label()});
  if (dirs.present()) names.push_back({"directions", dirs.label()});
  const SlicedResult r = call_library("sliced_wasserstein", names,
                                      [&] { return sliced_wasserstein(problem, options); });

  const bool batched = x.rank() == 3;
  if (!args.grad_out.empty()) {
    write_output("--grad-out", args.grad_out, r.grad_x,
                 batched_shape(batched, r.batch, {r.n, r.d}));
  }
  if (!args.grad_y_out.empty()) {
    write_output("--grad-y-out", args.grad_y_out, r.grad_y,
                 batched_shape(batched, r.batch, {r.m, r.d}));
  }

  if (args.json.to_stdout || !args.json.file.empty()) {
    nlohmann::json problems = nlohmann::json::array();
    for (std::size_t k = 0; k < r.value.size(); ++k) {
      problems.push_back(
          {{"sliced_wasserstein", r.value[k]}, {"sliced_wasserstein_pp", r.value_pp[k]}});
    }
    nlohmann::json opts = {{"p", args.p},
                           {"L", r.projections},
                           {"max_sliced", args.max_sliced},
                           {"backend", args.backend.backend}};
    // Explicit directions replace the seeded draw: the seed then shaped nothing.
    if (dirs.present()) {
      opts["directions"] = dirs.path;
      opts["seed"] = nullptr;
    } else {
      opts["directions"] = nullptr;
      opts["seed"] = seed;
    }
    emit_json(args.json, {{"command", "sliced"},
                          {"backend", std::string(to_string(r.backend))},
                          {"time_ms", r.time_ms},
                          {"B", r.batch},
                          {"n", r.n},
                          {"m", r.m},
                          {"d", r.d},
                          {"options", opts},
                          {"problems", problems}});
    if (args.json.to_stdout) return;
  }
  const std::string source =
      dirs.present() ? std::string("from --directions") : fmt::format("seed {}", seed);
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
  sub->add_option("--a", args->a_path,
                  "weights of x, [n] or [B, n] (default uniform, mass 1); mass(a) must equal "
                  "mass(b) to 1e-5 relative, as for sinkhorn");
  sub->add_option("--b", args->b_path, "weights of y, [m] or [B, m] (default uniform, mass 1)");
  sub->add_option("--projections,-L", args->projections,
                  "number of random directions (default 64)");
  sub->add_option("--p", args->p,
                  "ground cost exponent p >= 1 (default 2); a p for which |u - v|^p leaves "
                  "the fp64 range [2.2e-308, 1.8e308] on the data is rejected");
  sub->add_option("--seed", args->seed,
                  "seed of the directions, an integer in [0, 2^64) (default 0)");
  sub->add_option("--directions", args->directions_path,
                  "explicit directions [d, L] (.npy), normalized; overrides -L and --seed");
  sub->add_flag("--max-sliced", args->max_sliced,
                "largest W_p over the directions instead of the mean");
  sub->add_option("--grad-out", args->grad_out,
                  "write the gradient of SW_p^p w.r.t. x, [n, d] or [B, n, d] (.npy)");
  sub->add_option("--grad-y-out", args->grad_y_out,
                  "write the gradient of SW_p^p w.r.t. y, [m, d] or [B, m, d] (.npy)");
  add_json_flags(*sub, args->json);
  add_backend_flags(*sub, args->backend);
  sub->callback([args] { run_sliced(*args); });
}

}  // namespace otgpu::cli
