// `otgpu assign`: exact linear assignment (batched) of a cost matrix or of two point
// clouds stored as .npy files. The command maps flags to AssignmentOptions and the
// library's errors to flag names; every check of shapes and values is the library's.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "common.h"
#include "otgpu/assignment.h"
#include "otgpu/error.h"

namespace otgpu::cli {

namespace {

struct AssignArgs {
  std::string cost_path, x_path, y_path, cost_kind = "sqeuclidean";
  std::string out, col_out, u_out, v_out;
  JsonFlags json;
  BackendFlags backend;
};

CostKind parse_assign_cost_kind(const std::string& text) {
  if (text == "sqeuclidean") return CostKind::sqeuclidean;
  if (text == "euclidean") return CostKind::euclidean;
  if (text == "neg_dot") return CostKind::neg_dot;
  throw InvalidArgument(fmt::format(
      "--cost-kind: unknown cost '{}' (expected sqeuclidean, euclidean or neg_dot; give a "
      "matrix with --cost)",
      text));
}

void run_assign(const AssignArgs& args, bool cost_kind_given) {
  const Backend backend = resolve_backend_flag(args.backend);
  const bool matrix = !args.cost_path.empty();
  if (matrix && (!args.x_path.empty() || !args.y_path.empty())) {
    throw InvalidArgument(fmt::format("{}: give either --cost or --x and --y, not both",
                                      args.x_path.empty() ? "--y" : "--x"));
  }
  if (!matrix && (args.x_path.empty() || args.y_path.empty())) {
    throw InvalidArgument(fmt::format(
        "{}: required (give a cost matrix with --cost, or point clouds with --x and --y)",
        args.x_path.empty() ? "--x" : "--y"));
  }
  if (matrix && cost_kind_given) {
    throw InvalidArgument(fmt::format(
        "--cost-kind: applies to --x/--y point clouds; --cost {} is already the cost matrix",
        args.cost_path));
  }
  const CostKind kind = matrix ? CostKind::matrix : parse_assign_cost_kind(args.cost_kind);
  check_outputs({{"--cost", args.cost_path}, {"--x", args.x_path}, {"--y", args.y_path}},
                {{"--out", args.out},
                 {"--col-out", args.col_out},
                 {"--u-out", args.u_out},
                 {"--v-out", args.v_out},
                 args.json.output()});

  NpyInput cost, x, y;
  AssignmentProblem problem;
  problem.cost_kind = kind;
  std::vector<FlagName> names = {{"cpu_threads", "--threads"},
                                 {"device", "--device"},
                                 {"backend", "--backend"},
                                 {"cost_kind", "--cost-kind"}};
  if (matrix) {
    cost = load_array("--cost", args.cost_path);
    problem.cost = cost.view();
    names.push_back({"cost", cost.label()});
  } else {
    x = load_array("--x", args.x_path);
    y = load_array("--y", args.y_path);
    problem.x = x.view();
    problem.y = y.view();
    names.push_back({"x", x.label()});
    names.push_back({"y", y.label()});
    names.push_back({"x, y", "--x, --y"});
  }
  AssignmentOptions options;
  options.backend = backend;
  options.device = args.backend.device;
  options.cpu_threads = args.backend.threads;
  const AssignmentResult r =
      call_library("assignment", names, [&] { return assignment(problem, options); });

  const bool batched = (matrix ? cost.rank() : x.rank()) == 3;
  if (!args.out.empty()) {
    write_output("--out", args.out, r.row_to_col, batched_shape(batched, r.batch, {r.n}));
  }
  if (!args.col_out.empty()) {
    write_output("--col-out", args.col_out, r.col_to_row, batched_shape(batched, r.batch, {r.m}));
  }
  if (!args.u_out.empty()) {
    write_output("--u-out", args.u_out, r.u, batched_shape(batched, r.batch, {r.n}));
  }
  if (!args.v_out.empty()) {
    write_output("--v-out", args.v_out, r.v, batched_shape(batched, r.batch, {r.m}));
  }

  if (args.json.to_stdout || !args.json.file.empty()) {
    nlohmann::json problems = nlohmann::json::array();
    for (const auto& p : r.problems) {
      problems.push_back({{"cost", p.cost},
                          {"dual", p.dual},
                          {"gap", p.gap},
                          {"max_violation", p.max_violation},
                          {"iterations", p.iterations}});
    }
    emit_json(args.json,
              {{"command", "assign"},
               {"backend", std::string(to_string(r.backend))},
               {"time_ms", r.time_ms},
               {"B", r.batch},
               {"n", r.n},
               {"m", r.m},
               {"d", matrix ? nlohmann::json(nullptr) : nlohmann::json(x.dim(x.rank() - 1))},
               {"options",
                {{"backend", args.backend.backend}, {"cost_kind", std::string(to_string(kind))}}},
               {"problems", problems}});
    if (args.json.to_stdout) return;
  }
  std::fputs(
      fmt::format("exact assignment, {} x {} ({} pairs), cost {}, backend {}, {:.3f} ms\n", r.n,
                  r.m, r.n < r.m ? r.n : r.m, to_string(kind), to_string(r.backend), r.time_ms)
          .c_str(),
      stdout);
  Table table({"problem", "cost", "gap", "max_violation"});
  for (std::size_t k = 0; k < r.problems.size(); ++k) {
    const auto& p = r.problems[k];
    table.add_row({std::to_string(k), format_number(p.cost), format_number(p.gap),
                   format_number(p.max_violation)});
  }
  std::fputs(table.render().c_str(), stdout);
}

}  // namespace

void add_assign_command(CLI::App& app) {
  auto args = std::make_shared<AssignArgs>();
  auto* sub = app.add_subcommand(
      "assign",
      "Exact linear assignment: the min-cost matching of min(n, m) pairs, with certified "
      "dual potentials");
  sub->add_option("--cost,--cost-matrix", args->cost_path,
                  "cost matrix C.npy: [n, m] or [K, n, m]; +inf marks a forbidden pair");
  sub->add_option("--x", args->x_path, "points X.npy: [n, d] or [K, n, d]");
  sub->add_option("--y", args->y_path, "points Y.npy: [m, d] or [K, m, d]");
  auto* kind = sub->add_option("--cost-kind", args->cost_kind,
                               "point cost: sqeuclidean (default), euclidean or neg_dot (-<x, y>)");
  sub->add_option("--out", args->out,
                  "write the column of each row ([n] or [K, n] int64; -1 = unmatched)");
  sub->add_option("--col-out", args->col_out,
                  "write the row of each column ([m] or [K, m] int64; -1 = unmatched)");
  sub->add_option("--u-out", args->u_out, "write the row potentials u ([n] or [K, n] float64)");
  sub->add_option("--v-out", args->v_out, "write the column potentials v ([m] or [K, m] float64)");
  add_json_flags(*sub, args->json);
  add_backend_flags(*sub, args->backend);
  sub->callback([args, kind] { run_assign(*args, kind->count() > 0); });
}

}  // namespace otgpu::cli
