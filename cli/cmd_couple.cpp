// `otgpu couple`: minibatch couplings for flow matching. Pairs the rows of X0.npy
// [bs0, d] or [K, bs0, d] with the rows of X1.npy by an optimal transport plan (exact
// permutation, entropic or unbalanced plan) and writes the index pairs [K, P, 2]. The
// command maps flags to CouplingOptions; every check of shapes, values and options is
// the library's (couple validates them all), reported in flag names.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "common.h"
#include "otgpu/coupling.h"
#include "otgpu/error.h"

namespace otgpu::cli {

namespace {

struct CoupleArgs {
  std::string x0_path, x1_path, pairs_out;
  std::string method = "sinkhorn";
  std::string cost = "sqeuclidean";
  double eps = 0.05;
  bool eps_absolute = false;
  double rho = 1.0;
  int pairs = 0;
  bool replacement = false;
  bool per_row = false;
  std::string seed = "0";
  int max_iter = 100000;
  double tol = 0;
  CLI::Option* tol_opt = nullptr;
  JsonFlags json;
  BackendFlags backend;
};

void run_couple(const CoupleArgs& args) {
  const Backend backend = resolve_backend_flag(args.backend);
  const std::uint64_t seed = parse_seed(args.seed);
  check_outputs({{"--x0", args.x0_path}, {"--x1", args.x1_path}},
                {{"--pairs-out", args.pairs_out}, args.json.output()});
  if (args.tol_opt->count() > 0) require_nonnegative_finite("--tol", args.tol);
  if (args.per_row && args.pairs != 0) {
    throw InvalidArgument("--pairs: --per-row draws one partner per row; leave --pairs out");
  }
  const NpyInput x0 = load_array("--x0", args.x0_path);
  const NpyInput x1 = load_array("--x1", args.x1_path);

  CouplingOptions o;
  o.method = parse_coupling_method(args.method, "--method");
  o.cost_kind = parse_point_cost("--cost", args.cost);
  o.eps = args.eps;
  o.eps_relative = !args.eps_absolute;
  o.rho = args.rho;
  o.pairs = args.per_row ? CouplingPairs::per_row : CouplingPairs::joint;
  o.num_pairs = args.pairs;
  o.replacement = args.replacement;
  o.seed = seed;
  o.sinkhorn.max_iter = args.max_iter;
  if (args.tol_opt->count() > 0) o.sinkhorn.tol = args.tol;
  o.sinkhorn.cpu_threads = args.backend.threads;
  o.backend = backend;
  o.device = args.backend.device;

  std::vector<FlagName> names = sinkhorn_option_flag_names();
  names.push_back({"x0", x0.label(), true});
  names.push_back({"x1", x1.label(), true});
  names.push_back({"num_pairs", "--pairs"});
  names.push_back({"rho", "--rho"});
  names.push_back({"cost_kind", "--cost"});
  const CouplingResult r =
      call_library("couple", names, [&] { return couple(x0.view(), x1.view(), o); });

  if (!args.pairs_out.empty()) {
    std::vector<std::int64_t> out(static_cast<std::size_t>(r.batch * r.pairs * 2));
    for (std::size_t t = 0; t < r.i.size(); ++t) {
      out[2 * t] = r.i[t];
      out[2 * t + 1] = r.j[t];
    }
    write_output("--pairs-out", args.pairs_out, out, {r.batch, r.pairs, 2});
  }
  const bool batched = x0.rank() == 3;
  const std::int64_t bs0 = x0.dim(batched ? 1 : 0), bs1 = x1.dim(batched ? 1 : 0);
  const std::int64_t d = x0.dim(batched ? 2 : 1);
  const bool entropic = o.method != CouplingMethod::exact;
  if (args.json.to_stdout || !args.json.file.empty()) {
    nlohmann::json problems = nlohmann::json::array();
    for (const CouplingReport& p : r.problems) {
      nlohmann::json pj = {{"pair_cost", p.pair_cost},
                           {"ot", p.ot},
                           {"converged", p.converged},
                           {"iterations", p.iterations}};
      if (entropic) {
        pj["eps"] = p.eps;
        pj["residual"] = p.gap;
      } else {
        pj["gap"] = p.gap;
      }
      problems.push_back(pj);
    }
    nlohmann::json opts = {{"method", args.method},
                           {"cost", args.cost},
                           {"seed", seed},
                           {"backend", args.backend.backend}};
    if (entropic) {
      opts["eps"] = args.eps;
      opts["eps_relative"] = !args.eps_absolute;
      opts["rho"] = o.method == CouplingMethod::unbalanced ? nlohmann::json(args.rho) : nullptr;
      opts["per_row"] = args.per_row;
      opts["replacement"] =
          args.per_row ? nlohmann::json(nullptr) : nlohmann::json(args.replacement);
    }
    emit_json(args.json, {{"command", "couple"},
                          {"backend", std::string(to_string(r.backend))},
                          {"time_ms", r.time_ms},
                          {"K", r.batch},
                          {"bs0", bs0},
                          {"bs1", bs1},
                          {"d", d},
                          {"pairs", r.pairs},
                          {"options", opts},
                          {"problems", problems}});
    if (args.json.to_stdout) return;
  }
  std::fputs(
      fmt::format("{} coupling of K = {} minibatch(es), {} x {} points in d = {}: {} pairs "
                  "each, backend {}, {:.3f} ms\n",
                  args.method, r.batch, bs0, bs1, d, r.pairs, to_string(r.backend), r.time_ms)
          .c_str(),
      stdout);
  Table table({"minibatch", "pair cost", entropic ? "OT_eps" : "OT", entropic ? "eps" : "gap",
               "converged"});
  for (std::size_t k = 0; k < r.problems.size(); ++k) {
    const CouplingReport& p = r.problems[k];
    table.add_row({std::to_string(k), format_number(p.pair_cost), format_number(p.ot),
                   format_number(entropic ? p.eps : p.gap), p.converged ? "yes" : "no"});
  }
  std::fputs(table.render().c_str(), stdout);
}

}  // namespace

void add_couple_command(CLI::App& app) {
  auto args = std::make_shared<CoupleArgs>();
  auto* sub = app.add_subcommand(
      "couple",
      "Minibatch OT couplings for flow matching: index pairs (i, j) of x0 and x1 from the exact "
      "permutation or drawn from an entropic / unbalanced plan");
  sub->add_option("--x0", args->x0_path, "source minibatch(es) x0, [bs0, d] or [K, bs0, d] (.npy)")
      ->required();
  sub->add_option("--x1", args->x1_path, "target minibatch(es) x1, [bs1, d] or [K, bs1, d] (.npy)")
      ->required();
  sub->add_option("--method", args->method, "exact | sinkhorn | unbalanced (default sinkhorn)");
  sub->add_option("--cost", args->cost, "sqeuclidean | euclidean (default sqeuclidean)");
  sub->add_option("--eps", args->eps,
                  "entropic regularization, times each minibatch's mean cost (default 0.05)");
  sub->add_flag("--eps-absolute", args->eps_absolute, "--eps in cost units, not relative");
  sub->add_option("--rho", args->rho, "KL marginal penalty of --method unbalanced (default 1)");
  sub->add_option("--pairs", args->pairs,
                  "pairs drawn per minibatch from the joint plan (default bs0)");
  sub->add_flag("--replacement", args->replacement,
                "draw the pairs with replacement (default: without, distinct pairs)");
  sub->add_flag("--per-row", args->per_row,
                "one partner j per row i instead of joint draws (pairs (i, j_i), i = 0..bs0-1)");
  sub->add_option("--seed", args->seed, "seed of the draws, an integer in [0, 2^64) (default 0)");
  sub->add_option("--max-iter", args->max_iter, "Sinkhorn iteration cap (default 100000)");
  args->tol_opt = sub->add_option(
      "--tol", args->tol, "Sinkhorn tolerance (default 1e-6 on the CPU, 1e-4 on the fp32 GPU)");
  sub->add_option("--pairs-out", args->pairs_out, "write the pairs, int64 [K, P, 2] (.npy)");
  add_json_flags(*sub, args->json);
  add_backend_flags(*sub, args->backend);
  sub->callback([args] { run_couple(*args); });
}

}  // namespace otgpu::cli
