// `otgpu sinkhorn`: entropic OT between point clouds (or from a cost matrix) stored
// as .npy files; prints the per-problem report (table or one JSON object) and
// writes the potentials, barycentric map, gradient and sampled partners on request.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "common.h"
#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu::cli {

namespace {

struct SinkhornArgs {
  std::string x, y, a, b, cost_matrix;
  std::string cost = "sqeuclidean";
  // Values of flags that were given; the library's defaults apply to the others.
  double eps = 0;
  bool eps_relative = false;
  int max_iter = 0;
  double tol = 0;
  int check_every = 0;
  double eps_init = 0;
  double eps_decay = 0;
  bool no_eps_scaling = false;
  std::string acceleration;
  std::string precision;
  bool progress = false;
  bool strict = false;
  double rho_a = std::numeric_limits<double>::infinity();
  double rho_b = std::numeric_limits<double>::infinity();
  BackendFlags backend;
  std::string f_out, g_out, map_out, grad_out, sample_out;
  std::string seed = "0";
  bool divergence = false;
  JsonFlags json;

  // Set when the flag was given (CLI11 fills these in after parsing).
  CLI::Option* cost_opt = nullptr;
  CLI::Option* max_iter_opt = nullptr;
  CLI::Option* tol_opt = nullptr;
  CLI::Option* check_every_opt = nullptr;
  CLI::Option* eps_init_opt = nullptr;
  CLI::Option* eps_decay_opt = nullptr;
  CLI::Option* seed_opt = nullptr;
};

/// The inputs, loaded and checked against each other; owns the arrays the
/// problem's views point into.
struct LoadedProblem {
  NpyInput x, y, cost, a, b;
  SinkhornProblem problem;
  bool batched = false;  ///< inputs are [B, ...] (outputs get the leading B axis)
  std::int64_t batch = 1, n = 0, m = 0, d = 0;
};

/// Ends the command with `code` (3: a problem did not converge under --strict), after
/// everything was written.
void finish(int code) {
  if (code == 0) return;
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(code);
}

void check_flag_combinations(const SinkhornArgs& args) {
  const bool points = !args.x.empty() || !args.y.empty();
  if (!args.cost_matrix.empty() && points) {
    throw InvalidArgument(
        "--cost-matrix replaces --x/--y: give either --cost-matrix or --x and --y, not both");
  }
  if (args.cost_matrix.empty()) {
    if (!points) throw InvalidArgument("give --x and --y (point clouds) or --cost-matrix");
    if (args.x.empty()) throw InvalidArgument("--x is required with --y");
    if (args.y.empty()) throw InvalidArgument("--y is required with --x");
  } else {
    if (args.cost_opt->count() > 0) {
      throw InvalidArgument("--cost does not apply with --cost-matrix (the matrix is the cost)");
    }
    const char* needs_points = !args.map_out.empty()    ? "--map-out"
                               : !args.grad_out.empty() ? "--grad-out"
                               : args.divergence        ? "--divergence"
                                                        : nullptr;
    if (needs_points != nullptr) {
      throw InvalidArgument(
          fmt::format("{} needs point clouds --x and --y; it is not available with --cost-matrix",
                      needs_points));
    }
  }
  if (args.no_eps_scaling && (args.eps_init_opt->count() > 0 || args.eps_decay_opt->count() > 0)) {
    throw InvalidArgument("--no-eps-scaling cannot be combined with --eps-init or --eps-decay");
  }
  if (args.seed_opt->count() > 0 && args.sample_out.empty()) {
    throw InvalidArgument("--seed is only used with --sample-out");
  }

  // -1 is the library's "automatic" value of tol and eps_init (kAuto): a -1 typed by
  // the user must be an error, not a silent default, and only the command can tell.
  if (args.tol_opt->count() > 0) require_nonnegative_finite("--tol", args.tol);
  if (args.eps_init_opt->count() > 0) require_positive_finite("--eps-init", args.eps_init);

  check_outputs({{"--x", args.x},
                 {"--y", args.y},
                 {"--a", args.a},
                 {"--b", args.b},
                 {"--cost-matrix", args.cost_matrix}},
                {{"--f-out", args.f_out},
                 {"--g-out", args.g_out},
                 {"--map-out", args.map_out},
                 {"--grad-out", args.grad_out},
                 {"--sample-out", args.sample_out},
                 args.json.output()});
}

/// A weight file must be [n] (shared by the batch) or [B, n].
void check_weights(const NpyInput& w, std::int64_t batch, std::int64_t len, const char* len_name,
                   const std::string& from) {
  const bool ok =
      (w.rank() == 1 && w.dim(0) == len) || (w.rank() == 2 && w.dim(0) == batch && w.dim(1) == len);
  if (!ok) {
    throw ShapeError(fmt::format("{} but ({},) or (B, {}) = ({}, {}) is expected ({} from {})",
                                 w.describe(), len, len_name, batch, len, len_name, from));
  }
}

LoadedProblem load_problem(const SinkhornArgs& args) {
  LoadedProblem lp;
  SinkhornProblem& p = lp.problem;
  std::string n_from, m_from;
  if (args.cost_matrix.empty()) {
    lp.x = load_points("--x", args.x);
    lp.y = load_points("--y", args.y);
    if (lp.x.rank() != lp.y.rank()) {
      throw ShapeError(fmt::format("{} and {}: both must be [n, d] or both [B, n, d]",
                                   lp.x.describe(), lp.y.describe()));
    }
    lp.batched = lp.x.rank() == 3;
    const int r = lp.x.rank();
    if (lp.x.dim(r - 1) != lp.y.dim(r - 1)) {
      throw ShapeError(fmt::format("{} and {}: the point dimensions d differ ({} vs {})",
                                   lp.x.describe(), lp.y.describe(), lp.x.dim(r - 1),
                                   lp.y.dim(r - 1)));
    }
    if (lp.batched && lp.x.dim(0) != lp.y.dim(0)) {
      throw ShapeError(fmt::format("{} and {}: the batch sizes B differ ({} vs {})",
                                   lp.x.describe(), lp.y.describe(), lp.x.dim(0), lp.y.dim(0)));
    }
    lp.batch = lp.batched ? lp.x.dim(0) : 1;
    lp.n = lp.x.dim(r - 2);
    lp.m = lp.y.dim(r - 2);
    lp.d = lp.x.dim(r - 1);
    p.x = lp.x.view();
    p.y = lp.y.view();
    p.cost_kind = parse_point_cost("--cost", args.cost);
    n_from = "--x";
    m_from = "--y";
  } else {
    lp.cost = load_cost_matrix("--cost-matrix", args.cost_matrix);
    const int r = lp.cost.rank();
    lp.batched = r == 3;
    lp.batch = lp.batched ? lp.cost.dim(0) : 1;
    lp.n = lp.cost.dim(r - 2);
    lp.m = lp.cost.dim(r - 1);
    p.cost = lp.cost.view();
    p.cost_kind = CostKind::matrix;
    n_from = m_from = "--cost-matrix";
  }
  if (!args.a.empty()) {
    lp.a = load_weights("--a", args.a);
    check_weights(lp.a, lp.batch, lp.n, "n", n_from);
    p.a = lp.a.view();
  }
  if (!args.b.empty()) {
    lp.b = load_weights("--b", args.b);
    check_weights(lp.b, lp.batch, lp.m, "m", m_from);
    p.b = lp.b.view();
  }
  return lp;
}

SinkhornAcceleration parse_acceleration(const std::string& text) {
  if (text == "overrelax") return SinkhornAcceleration::overrelax;
  if (text == "none") return SinkhornAcceleration::none;
  throw InvalidArgument(
      fmt::format("--acceleration: unknown value '{}' (expected overrelax or none)", text));
}

/// The options the flags ask for: only what was given is set; everything else keeps
/// the library's defaults (SinkhornOptions{}), resolved by the library for the
/// backend that runs.
SinkhornOptions make_options(const SinkhornArgs& args) {
  SinkhornOptions o;
  o.eps = args.eps;
  o.eps_relative = args.eps_relative;
  if (args.max_iter_opt->count() > 0) o.max_iter = args.max_iter;
  if (args.tol_opt->count() > 0) o.tol = args.tol;
  if (args.check_every_opt->count() > 0) o.check_every = args.check_every;
  if (args.no_eps_scaling) o.eps_init = 0;
  if (args.eps_init_opt->count() > 0) o.eps_init = args.eps_init;
  if (args.eps_decay_opt->count() > 0) o.eps_decay = args.eps_decay;
  if (!args.acceleration.empty()) o.acceleration = parse_acceleration(args.acceleration);
  if (!args.precision.empty()) o.precision = parse_precision(args.precision, "--precision");
  o.rho_a = args.rho_a;
  o.rho_b = args.rho_b;
  o.backend = resolve_backend_flag(args.backend);
  o.device = args.backend.device;
  o.cpu_threads = args.backend.threads;
  return o;
}

/// A live progress line on stderr (rewritten in place with \r), at most ~10 per
/// second; finish() ends it with a newline so later output starts on a fresh line.
class ProgressLine {
 public:
  bool operator()(const SinkhornProgress& p) {
    const double now = p.elapsed_s;
    if (shown_ && now - last_ < 0.1) return true;
    last_ = now;
    shown_ = true;
    const std::string who =
        p.problem >= 0 ? fmt::format("problem {}", p.problem) : std::string("batch");
    std::fprintf(stderr,
                 "\rotgpu: sinkhorn %s  iteration %d  eps %.3g  residual %.3g  %lld active  "
                 "%.1f s   ",
                 who.c_str(), p.iteration, p.eps, p.residual, static_cast<long long>(p.active),
                 now);
    std::fflush(stderr);
    return true;
  }
  void finish() const {
    if (shown_) std::fputs("\n", stderr);
  }

 private:
  bool shown_ = false;
  double last_ = 0;
};

/// One stderr line when some problem did not converge (exit 3 with --strict).
int report_unconverged(const SinkhornResult& result, bool strict) {
  std::int64_t bad = 0, first = -1;
  for (std::size_t k = 0; k < result.problems.size(); ++k) {
    if (result.problems[k].converged) continue;
    if (first < 0) first = static_cast<std::int64_t>(k);
    ++bad;
  }
  if (bad == 0) return 0;
  const SinkhornReport& r = result.problems[static_cast<std::size_t>(first)];
  std::fputs(fmt::format("otgpu: warning: {} of {} problem(s) did not converge (problem {}: "
                         "residual {:.3g} > tol {:.3g} after {} iterations{}){}\n",
                         bad, result.problems.size(), first, r.residual, result.tol, r.iterations,
                         result.cancelled ? ", cancelled" : "",
                         strict ? "" : "; --strict makes this an error")
                 .c_str(),
             stderr);
  return strict ? 3 : 0;
}

void run_sinkhorn(const SinkhornArgs& args) {
  check_flag_combinations(args);
  SinkhornOptions options = make_options(args);
  const std::uint64_t seed = parse_seed(args.seed);
  const LoadedProblem lp = load_problem(args);
  const SinkhornProblem& problem = lp.problem;

  auto progress = std::make_shared<ProgressLine>();
  if (args.progress || isatty(fileno(stderr)) != 0) {
    options.progress = [progress](const SinkhornProgress& p) { return (*progress)(p); };
  }
  // The library validates the options and the data; its messages come back in the
  // command's words (eps -> --eps, x -> --x (X.npy), ...).
  std::vector<FlagName> names = sinkhorn_option_flag_names();
  for (const auto& [name, in] : {std::pair<const char*, const NpyInput*>{"x", &lp.x},
                                 {"y", &lp.y},
                                 {"cost", &lp.cost},
                                 {"a", &lp.a},
                                 {"b", &lp.b}}) {
    if (in->present()) names.push_back({name, in->label()});
  }
  const SinkhornResult result =
      call_library("sinkhorn", names, [&] { return sinkhorn(problem, options); });
  const auto B = result.batch;
  std::vector<double> divergence;
  if (args.divergence) divergence = sinkhorn_divergence(problem, result, options);
  progress->finish();
  const int exit_code = report_unconverged(result, args.strict);

  if (!args.f_out.empty()) {
    write_output("--f-out", args.f_out, result.f, batched_shape(lp.batched, B, {result.n}));
  }
  if (!args.g_out.empty()) {
    write_output("--g-out", args.g_out, result.g, batched_shape(lp.batched, B, {result.m}));
  }
  if (!args.map_out.empty()) {
    write_output("--map-out", args.map_out, barycentric_map(problem, result),
                 batched_shape(lp.batched, B, {result.n, lp.d}));
  }
  if (!args.grad_out.empty()) {
    write_output("--grad-out", args.grad_out, gradient_x(problem, result),
                 batched_shape(lp.batched, B, {result.n, lp.d}));
  }
  if (!args.sample_out.empty()) {
    write_output("--sample-out", args.sample_out, sample_partners(problem, result, seed),
                 batched_shape(lp.batched, B, {result.n}));
  }

  if (args.json.to_stdout || !args.json.file.empty()) {
    nlohmann::json out;
    out["command"] = "sinkhorn";
    out["backend"] = std::string(to_string(result.backend));
    out["precision"] = std::string(to_string(result.precision));
    out["tensor_cores"] = result.tensor_cores;
    out["time_ms"] = result.time_ms;
    out["B"] = B;
    out["n"] = result.n;
    out["m"] = result.m;
    out["d"] = lp.d > 0 ? nlohmann::json(lp.d) : nlohmann::json(nullptr);  // null: cost matrix
    // The options that shaped the answer, as the solver ran them.
    out["options"] = {{"eps", options.eps},
                      {"eps_relative", options.eps_relative},
                      {"tol", result.tol},
                      {"max_iter", options.max_iter},
                      {"check_every", options.check_every},
                      {"eps_init", options.eps_init == kAuto ? nlohmann::json("auto")
                                                             : nlohmann::json(options.eps_init)},
                      {"eps_decay", options.eps_decay},
                      {"rho_a", options.rho_a},
                      {"rho_b", options.rho_b},
                      {"cost", std::string(lp.cost.present() ? "matrix" : args.cost)},
                      {"backend", args.backend.backend}};
    if (!args.sample_out.empty()) out["options"]["seed"] = seed;
    auto problems = nlohmann::json::array();
    for (std::size_t k = 0; k < result.problems.size(); ++k) {
      const SinkhornReport& r = result.problems[k];
      nlohmann::json pj;
      pj["ot_eps"] = r.ot_eps;
      pj["transport_cost"] = r.transport_cost;
      pj["marginal_error"] = r.marginal_error;
      pj["residual"] = r.residual;
      pj["iterations"] = r.iterations;
      pj["converged"] = r.converged;
      pj["eps"] = r.eps;
      pj["tol"] = result.tol;
      pj["acceleration"] = r.acceleration == SinkhornAcceleration::overrelax ? "overrelax" : "none";
      if (args.divergence) pj["sinkhorn_divergence"] = divergence[k];
      problems.push_back(std::move(pj));
    }
    out["problems"] = std::move(problems);
    emit_json(args.json, out);
    if (args.json.to_stdout) {
      finish(exit_code);
      return;
    }
  }

  const bool unbalanced = std::isfinite(options.rho_a) || std::isfinite(options.rho_b);
  std::vector<std::string> headers = {"problem",  "ot_eps",     "transport_cost", "marginal_error",
                                      "residual", "iterations", "converged",      "eps"};
  if (args.divergence) headers.emplace_back("sinkhorn_divergence");
  Table table(headers);
  for (std::size_t k = 0; k < result.problems.size(); ++k) {
    const SinkhornReport& r = result.problems[k];
    std::vector<std::string> row = {std::to_string(k),
                                    format_number(r.ot_eps),
                                    format_number(r.transport_cost),
                                    format_number(r.marginal_error),
                                    format_number(r.residual),
                                    std::to_string(r.iterations),
                                    r.converged ? "yes" : "no",
                                    format_number(r.eps)};
    if (args.divergence) row.push_back(format_number(divergence[k]));
    table.add_row(std::move(row));
  }
  std::fputs(table.render().c_str(), stdout);
  std::string where(to_string(result.backend));
  if (result.backend == Backend::cuda) where += fmt::format(" (device {})", result.device);
  if (result.tensor_cores) where += fmt::format(", {} tensor cores", to_string(result.precision));
  std::string sizes = fmt::format("B={} n={} m={}", B, result.n, result.m);
  if (lp.d > 0) sizes += fmt::format(" d={}", lp.d);
  std::fputs(
      fmt::format("backend: {}  time: {:.3f} ms  {}\n", where, result.time_ms, sizes).c_str(),
      stdout);
  if (unbalanced) {
    // What "converged" tested: not the marginals, which the KL penalty only pulls at.
    std::fputs(fmt::format("converged: residual <= tol = {:.3g}; unbalanced, so the residual is "
                           "the fixed-point residual of the potentials and marginal_error "
                           "(||P 1 - a||_1) may stay large\n",
                           result.tol)
                   .c_str(),
               stdout);
  }
  finish(exit_code);
}

}  // namespace

void add_sinkhorn_command(CLI::App& app) {
  auto args = std::make_shared<SinkhornArgs>();
  auto* sub = app.add_subcommand(
      "sinkhorn", "Entropic OT (log-domain Sinkhorn) between point clouds or from a cost matrix");
  sub->add_option("--x", args->x, "source points X.npy: [n, d] or [B, n, d], float32/float64");
  sub->add_option("--y", args->y, "target points Y.npy: [m, d] or [B, m, d]");
  sub->add_option("--a", args->a, "source weights A.npy: [n] or [B, n] (default uniform)");
  sub->add_option("--b", args->b, "target weights B.npy: [m] or [B, m] (default uniform)");
  args->cost_opt =
      sub->add_option("--cost", args->cost, "point cost: sqeuclidean (default) or euclidean");
  sub->add_option("--cost-matrix", args->cost_matrix,
                  "cost matrix C.npy: [n, m] or [B, n, m], instead of --x/--y");
  sub->add_option("--eps", args->eps, "entropic regularization (> 0, in cost units)")->required();
  sub->add_flag("--eps-relative", args->eps_relative, "eps is relative to the mean cost");
  args->max_iter_opt =
      sub->add_option("--max-iter", args->max_iter,
                      "iteration cap (default 100000; hitting it is reported, converged = false)");
  args->tol_opt = sub->add_option(
      "--tol", args->tol,
      "tolerance on the L1 marginal error (default 1e-6 on the CPU, 1e-4 on the fp32 GPU)");
  args->check_every_opt =
      sub->add_option("--check-every", args->check_every,
                      "check convergence every K iterations (default 10; 0 = never)");
  sub->add_option("--acceleration", args->acceleration,
                  "CPU iteration: overrelax (default, adaptive over-relaxation) or none");
  sub->add_option("--precision", args->precision,
                  "GPU cost tile for d >= 16: fp32 (default: 3xTF32 tensor cores, fp32-level), "
                  "tf32 or bf16 (faster, coarser); the CPU ignores it");
  sub->add_flag("--progress", args->progress,
                "show a live progress line on stderr (default: only when stderr is a terminal)");
  sub->add_flag("--strict", args->strict,
                "exit with status 3 when a problem did not converge (default: a warning)");
  args->eps_init_opt = sub->add_option("--eps-init", args->eps_init,
                                       "epsilon scaling: start from this eps (same units as --eps; "
                                       "default 1024 x eps)");
  sub->add_flag("--no-eps-scaling", args->no_eps_scaling,
                "run every iteration at --eps (no epsilon scaling)");
  args->eps_decay_opt =
      sub->add_option("--eps-decay", args->eps_decay,
                      "epsilon scaling factor per iteration, in (0, 1) (default 0.5)");
  sub->add_option("--rho-a", args->rho_a, "KL penalty on the source marginal (default inf)");
  sub->add_option("--rho-b", args->rho_b, "KL penalty on the target marginal (default inf)");
  add_backend_flags(*sub, args->backend);
  sub->add_option("--f-out", args->f_out, "write potentials f ([n] or [B, n], float64)");
  sub->add_option("--g-out", args->g_out, "write potentials g ([m] or [B, m], float64)");
  sub->add_option("--map-out", args->map_out, "write the barycentric map ([n, d] or [B, n, d])");
  sub->add_option("--grad-out", args->grad_out,
                  "write the gradient of OT_eps w.r.t. x ([n, d] or [B, n, d])");
  sub->add_option("--sample-out", args->sample_out,
                  "write one sampled partner index per source point ([n] or [B, n], int64)");
  args->seed_opt = sub->add_option("--seed", args->seed, "seed for --sample-out (default 0)");
  sub->add_flag("--divergence", args->divergence, "also report the debiased Sinkhorn divergence");
  add_json_flags(*sub, args->json);
  sub->callback([args] { run_sinkhorn(*args); });
}

}  // namespace otgpu::cli
