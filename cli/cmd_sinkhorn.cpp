// `otgpu sinkhorn`: entropic OT between point clouds (or from a cost matrix) stored
// as .npy files; prints the per-problem report (table or one JSON object) and
// writes the potentials, barycentric map, gradient and sampled partners on request.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <algorithm>
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
#include "npy.h"
#include "otgpu/dist.h"
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
  bool distributed = false;  ///< one rank per process under mpirun, rows split
  std::string devices;       ///< --devices 0,1,...: one shard per device
  int shards = 0;            ///< --shards G: G shards over the devices (logical when G > count)

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
void finish(int code) { finish_command(code); }

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

/// --devices "0,1,3" as ordinals (InvalidArgument naming the flag otherwise).
std::vector<int> parse_devices(const std::string& text) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    int v = -1;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || v < 0) {
      throw InvalidArgument(fmt::format(
          "--devices: '{}' is not a device ordinal (expected a list like 0,1,2,3)", item));
    }
    out.push_back(v);
    pos = comma + 1;
  }
  return out;
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
  if (!args.devices.empty()) o.device = parse_devices(args.devices)[0];
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
/// The options that shaped the answer, as the solver ran them (the --json "options").
nlohmann::json options_json(const SinkhornArgs& args, const SinkhornOptions& options, double tol,
                            bool cost_matrix) {
  return {{"eps", options.eps},
          {"eps_relative", options.eps_relative},
          {"tol", tol},
          {"max_iter", options.max_iter},
          {"check_every", options.check_every},
          {"eps_init",
           options.eps_init == kAuto ? nlohmann::json("auto") : nlohmann::json(options.eps_init)},
          {"eps_decay", options.eps_decay},
          {"rho_a", options.rho_a},
          {"rho_b", options.rho_b},
          {"cost", std::string(cost_matrix ? "matrix" : args.cost)},
          {"backend", args.backend.backend}};
}

/// One problem's report in the --json "problems" array.
nlohmann::json report_json(const SinkhornReport& r, double tol) {
  nlohmann::json pj;
  pj["ot_eps"] = r.ot_eps;
  pj["transport_cost"] = r.transport_cost;
  pj["marginal_error"] = r.marginal_error;
  pj["residual"] = r.residual;
  pj["iterations"] = r.iterations;
  pj["converged"] = r.converged;
  pj["eps"] = r.eps;
  pj["tol"] = tol;
  pj["acceleration"] = r.acceleration == SinkhornAcceleration::overrelax ? "overrelax" : "none";
  return pj;
}

int report_unconverged(const SinkhornResult& result, bool strict) {
  std::int64_t bad = 0, first = -1;
  for (std::size_t k = 0; k < result.problems.size(); ++k) {
    if (result.problems[k].converged) continue;
    if (first < 0) first = static_cast<std::int64_t>(k);
    ++bad;
  }
  if (bad == 0) return 0;
  const SinkhornReport& r = result.problems[static_cast<std::size_t>(first)];
  warn(fmt::format(
      "{} of {} problem(s) did not converge (problem {}: "
      "residual {:.3g} > tol {:.3g} after {} iterations{}){}",
      bad, result.problems.size(), first, r.residual, result.tol, r.iterations,
      result.cancelled ? ", cancelled" : "", strict ? "" : "; --strict makes this an error"));
  return strict ? 3 : 0;
}

void run_distributed(const SinkhornArgs& args);

void run_sinkhorn(const SinkhornArgs& args) {
  // --devices 0,1,... / --shards G: the rows split over the devices' shards in this
  // process (SinkhornOptions::devices); G shards go round-robin over the devices, so
  // --shards 4 on one device runs 4 logical shards there.
  std::vector<int> shard_devices;
  if (!args.devices.empty() || args.shards != 0) {
    const auto listed =
        !args.devices.empty() ? parse_devices(args.devices) : std::vector<int>{args.backend.device};
    if (args.shards < 0) {
      throw InvalidArgument(fmt::format("--shards: {} (must be >= 1)", args.shards));
    }
    const std::size_t G = args.shards > 0 ? static_cast<std::size_t>(args.shards) : listed.size();
    for (std::size_t k = 0; k < G; ++k) shard_devices.push_back(listed[k % listed.size()]);
    if (shard_devices.size() > 1 && args.distributed) {
      throw InvalidArgument(
          "--devices / --shards split one process's solve over devices; --distributed splits it "
          "over MPI ranks: use one of them");
    }
    if (shard_devices.size() == 1) shard_devices.clear();  // one device: as --device
  }
  if (args.distributed) {
    run_distributed(args);
    return;
  }
  if (dist::launched_by_mpi()) {
    // Every rank would solve the whole problem and write the same files.
    std::fputs(
        "otgpu: warning: started by an MPI launcher without --distributed: every rank solves "
        "the whole problem (add --distributed to split its rows over the ranks)\n",
        stderr);
  }
  check_flag_combinations(args);
  SinkhornOptions options = make_options(args);
  options.devices = shard_devices;
  const std::uint64_t seed = parse_seed(args.seed);
  const LoadedProblem lp = load_problem(args);
  const SinkhornProblem& problem = lp.problem;

  auto progress = std::make_shared<ProgressLine>();
  if (show_progress(args.progress)) {
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
  if (args.divergence) {
    // The self terms run on one device (the first of --devices).
    SinkhornOptions single = options;
    single.devices.clear();
    divergence = sinkhorn_divergence(problem, result, single);
  }
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
    out["options"] = options_json(args, options, result.tol, lp.cost.present());
    if (!args.sample_out.empty()) out["options"]["seed"] = seed;
    if (!options.devices.empty()) out["options"]["devices"] = options.devices;
    auto problems = nlohmann::json::array();
    for (std::size_t k = 0; k < result.problems.size(); ++k) {
      const SinkhornReport& r = result.problems[k];
      nlohmann::json pj = report_json(r, result.tol);
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

/// This rank's rows of `flag`'s file (rank 2 [n, k], or rank 1 [n] for weights), with
/// the value checks of the whole-file loaders (finite; weights also >= 0), element
/// indices given in the file's (global) rows.
NpyInput load_row_slice(const std::string& flag, const std::string& path, dist::RowRange rows,
                        bool weights) {
  if (path.empty()) throw InvalidArgument(fmt::format("{}: empty file name", flag));
  NpyInput in{flag, npy::printable_path(path), npy::load_rows(path, flag, rows.begin, rows.end)};
  const std::int64_t width = in.array.numel() / std::max<std::int64_t>(1, rows.size());
  for (std::int64_t k = 0; k < in.array.numel(); ++k) {
    const double v = in.array.at(k);
    if (!std::isfinite(v) || (weights && v < 0)) {
      throw NonFiniteInput(fmt::format("{}: {}: element (row {}, column {}) is {}{}", flag, in.path,
                                       rows.begin + k / width, k % width, v,
                                       weights && v < 0 ? "; weights must be non-negative" : ""));
    }
  }
  return in;
}

/// This rank's rows of every problem of a batched file [B, n, k...] (rows = axis 1):
/// B contiguous blocks, each read at its own offset (pread; the other ranks' rows are
/// never read), as [B, n_r, k...], with load_row_slice's value checks. The npy reader
/// rejects trailing bytes, so the data are the file's last B n k... elements.
NpyInput load_row_blocks(const std::string& flag, const std::string& path, dist::RowRange rows,
                         bool weights) {
  if (path.empty()) throw InvalidArgument(fmt::format("{}: empty file name", flag));
  const std::vector<std::int64_t> shape = npy::load_shape(path, flag);
  // Zero rows read: the file's checks, its dtype and byte order.
  npy::Array a = npy::load_rows(path, flag, 0, 0);
  const std::size_t item = dtype_size(a.dtype);
  std::int64_t width = 1;
  for (std::size_t k = 2; k < shape.size(); ++k) width *= shape[k];
  const std::int64_t B = shape[0], n = shape[1];
  const auto row_bytes = static_cast<std::uint64_t>(width) * item;
  const std::string where = fmt::format("{}: {}", flag, npy::printable_path(path));
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) throw IoError(fmt::format("{}: cannot open", where));
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> guard(file, &std::fclose);
  // The header's byte order: '>' in its descr ('<' or '|' is little-endian / bytes).
  char head[12] = {};
  if (std::fread(head, 1, sizeof head, file) != sizeof head) {
    throw IoError(fmt::format("{}: cannot read the header", where));
  }
  const bool v1 = head[6] == 1;
  const std::size_t header_len =
      v1 ? static_cast<std::size_t>(static_cast<unsigned char>(head[8]) |
                                    (static_cast<unsigned char>(head[9]) << 8))
         : static_cast<std::size_t>(static_cast<unsigned char>(head[8]) |
                                    (static_cast<unsigned char>(head[9]) << 8) |
                                    (static_cast<unsigned char>(head[10]) << 16) |
                                    (static_cast<unsigned char>(head[11]) << 24));
  const std::uint64_t data_offset = (v1 ? 10u : 12u) + header_len;
  std::string header(header_len, '\0');
  if (std::fseek(file, static_cast<long>(v1 ? 10 : 12), SEEK_SET) != 0 ||
      std::fread(header.data(), 1, header_len, file) != header_len) {
    throw IoError(fmt::format("{}: cannot read the header", where));
  }
  const bool swap =
      header.find(">f") != std::string::npos || header.find(">i") != std::string::npos;
  a.shape = shape;
  a.shape[1] = rows.size();
  a.bytes.resize(static_cast<std::size_t>(B) * static_cast<std::size_t>(rows.size()) * row_bytes);
  for (std::int64_t b = 0; b < B; ++b) {
    const std::uint64_t offset =
        data_offset + (static_cast<std::uint64_t>(b * n + rows.begin)) * row_bytes;
    unsigned char* dst = a.bytes.data() + static_cast<std::size_t>(b) *
                                              static_cast<std::size_t>(rows.size()) *
                                              static_cast<std::size_t>(row_bytes);
    const auto len = static_cast<std::size_t>(rows.size()) * static_cast<std::size_t>(row_bytes);
    if (std::fseek(file, static_cast<long>(offset), SEEK_SET) != 0 ||
        std::fread(dst, 1, len, file) != len) {
      throw IoError(fmt::format("{}: the file shrank while being read", where));
    }
  }
  if (swap && item > 1) {
    for (std::size_t k = 0; k + item <= a.bytes.size(); k += item) {
      std::reverse(a.bytes.begin() + static_cast<std::ptrdiff_t>(k),
                   a.bytes.begin() + static_cast<std::ptrdiff_t>(k + item));
    }
  }
  a.source = where;
  NpyInput in{flag, npy::printable_path(path), std::move(a)};
  for (std::int64_t k = 0; k < in.array.numel(); ++k) {
    const double v = in.array.at(k);
    if (!std::isfinite(v) || (weights && v < 0)) {
      const std::int64_t row = k / width, b = row / rows.size();
      throw NonFiniteInput(fmt::format("{}: {}: element (problem {}, row {}, column {}) is {}{}",
                                       flag, in.path, b, rows.begin + row % rows.size(), k % width,
                                       v,
                                       weights && v < 0 ? "; weights must be non-negative" : ""));
    }
  }
  return in;
}

/// The inputs of this rank: its rows of X (or of the cost matrix) and of a, the whole
/// of Y and b; a batch [B, n, ...] gives this rank its rows of every problem.
LoadedProblem load_local_problem(const SinkhornArgs& args, dist::Communicator& comm,
                                 std::int64_t& n_total, dist::RowRange& rows) {
  LoadedProblem lp;
  SinkhornProblem& p = lp.problem;
  const std::string& rows_path = args.cost_matrix.empty() ? args.x : args.cost_matrix;
  const std::string rows_flag = args.cost_matrix.empty() ? "--x" : "--cost-matrix";
  const auto shape = npy::load_shape(rows_path, rows_flag);
  if (shape.size() != 2 && shape.size() != 3) {
    throw ShapeError(fmt::format(
        "{}: {} has shape {}; --distributed takes one problem ([n, d] or [n, m]) or a batch "
        "([B, n, d] or [B, n, m])",
        rows_flag, npy::printable_path(rows_path), npy::shape_to_string(shape)));
  }
  lp.batched = shape.size() == 3;
  lp.batch = lp.batched ? shape[0] : 1;
  n_total = shape[lp.batched ? 1 : 0];
  rows = dist::row_range(n_total, comm.rank(), comm.size());
  auto rows_of = [&](const char* flag, const std::string& path, bool weights) {
    return lp.batched ? load_row_blocks(flag, path, rows, weights)
                      : load_row_slice(flag, path, rows, weights);
  };
  if (args.cost_matrix.empty()) {
    lp.x = rows_of("--x", args.x, false);
    lp.y = load_points("--y", args.y);
    const int xr = lp.x.rank();
    if (lp.y.rank() != xr || lp.y.dim(xr - 1) != lp.x.dim(xr - 1) ||
        (lp.batched && lp.y.dim(0) != lp.batch)) {
      throw ShapeError(fmt::format(
          "{} and {}: --y must be {} with the {}d of --x ({})", lp.x.describe(), lp.y.describe(),
          lp.batched ? "[B, m, d]" : "[m, d]", lp.batched ? "B and " : "", lp.x.dim(xr - 1)));
    }
    lp.m = lp.y.dim(xr - 2);
    lp.d = lp.x.dim(xr - 1);
    p.x = lp.x.view();
    p.y = lp.y.view();
    p.cost_kind = parse_point_cost("--cost", args.cost);
  } else {
    lp.cost = rows_of("--cost-matrix", args.cost_matrix, false);
    lp.m = lp.cost.dim(lp.cost.rank() - 1);
    p.cost = lp.cost.view();
    p.cost_kind = CostKind::matrix;
  }
  lp.n = rows.size();
  if (!args.a.empty()) {
    const auto a_shape = npy::load_shape(args.a, "--a");
    const bool a_batched = a_shape.size() == 2 && lp.batched && a_shape[0] == lp.batch;
    if (!((a_shape.size() == 1 && a_shape[0] == n_total) || (a_batched && a_shape[1] == n_total))) {
      throw ShapeError(
          fmt::format("--a: {} has shape {} but ({},){} is expected (n from {})",
                      npy::printable_path(args.a), npy::shape_to_string(a_shape), n_total,
                      lp.batched ? fmt::format(" or ({}, {})", lp.batch, n_total) : "", rows_flag));
    }
    lp.a = a_batched ? load_row_blocks("--a", args.a, rows, true)
                     : load_row_slice("--a", args.a, rows, true);
    p.a = lp.a.view();
  }
  if (!args.b.empty()) {
    lp.b = load_weights("--b", args.b);
    check_weights(lp.b, lp.batch, lp.m, "m", args.cost_matrix.empty() ? "--y" : "--cost-matrix");
    p.b = lp.b.view();
  }
  return lp;
}

/// The blocks [B, n_r, width] of the ranks in global row order [B, n, width] on every
/// rank (one allgather per problem).
std::vector<double> gather_batch(dist::Communicator& comm, const std::vector<double>& local,
                                 std::int64_t B, std::int64_t width) {
  const auto per = local.size() / static_cast<std::size_t>(B);
  std::vector<double> out;
  for (std::int64_t b = 0; b < B; ++b) {
    const auto first =
        local.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(b) * per);
    const std::vector<double> all = dist::allgather_rows(
        comm, std::vector<double>(first, first + static_cast<std::ptrdiff_t>(per)), width);
    out.insert(out.end(), all.begin(), all.end());
  }
  return out;
}

/// An input's values as doubles (C order).
std::vector<double> values_of(const NpyInput& in) {
  std::vector<double> out(static_cast<std::size_t>(in.array.numel()));
  for (std::int64_t k = 0; k < in.array.numel(); ++k)
    out[static_cast<std::size_t>(k)] = in.array.at(k);
  return out;
}

/// Problem b's block [rows, width] of a [B, rows, width] (or shared [rows, width]) buffer.
const double* block_of(const std::vector<double>& v, bool batched, std::int64_t b,
                       std::int64_t rows, std::int64_t width) {
  return v.data() + (batched ? b * rows * width : 0);
}

/// --divergence under --distributed: S(a, b) = OT(a, b) - (OT(a, a) + OT(b, b)) / 2
/// (+ eps/2 (m_a - m_b)^2 when unbalanced, as sinkhorn_divergence). Both self terms are
/// sharded like the main solve, by the alternating dist::sinkhorn at the absolute eps
/// of the (x, y) problem: OT(b, b) splits y's rows over the ranks (y is replicated:
/// nothing to move); OT(a, a) needs x as its columns, so x (and a) is allgathered:
/// every rank then holds n x d values, what it holds of y already (no rank ever holds
/// a cost matrix). The single-process command's symmetric update converges faster; both
/// reach the same OT_eps to the tolerance.
std::vector<double> distributed_divergence(dist::Communicator& comm, const LoadedProblem& lp,
                                           const SinkhornResult& xy, const SinkhornOptions& options,
                                           std::int64_t n_total, dist::RowRange rows) {
  const bool balanced = std::isinf(options.rho_a) && std::isinf(options.rho_b);
  if (!balanced && !(options.rho_a == options.rho_b)) {
    throw InvalidArgument(fmt::format(
        "--divergence: rho_a = {} and rho_b = {} differ; the unbalanced divergence needs one "
        "marginal penalty (--rho)",
        options.rho_a, options.rho_b));
  }
  const std::int64_t B = lp.batch, d = lp.d, m = lp.m, nr = rows.size();
  const std::vector<double> x_local = values_of(lp.x), y_all = values_of(lp.y);
  const std::vector<double> x_all = gather_batch(comm, x_local, B, d);
  const bool a_batched = lp.a.present() && lp.a.rank() == 2;
  const bool b_batched = lp.b.present() && lp.b.rank() == 2;
  std::vector<double> a_local, a_all, b_all;
  if (lp.a.present()) {
    a_local = values_of(lp.a);
    a_all = gather_batch(comm, a_local, a_batched ? B : 1, 1);
  }
  if (lp.b.present()) b_all = values_of(lp.b);
  const dist::RowRange yrows = dist::row_range(m, comm.rank(), comm.size());
  SinkhornOptions self = options;
  self.eps_relative = false;
  self.f_init.clear();
  self.g_init.clear();
  self.progress = nullptr;
  std::vector<double> out(static_cast<std::size_t>(B));
  for (std::int64_t b = 0; b < B; ++b) {
    const auto& rep = xy.problems[static_cast<std::size_t>(b)];
    SinkhornOptions o = self;
    o.eps = rep.eps;
    if (options.eps_relative && options.eps_init > 0)
      o.eps_init = options.eps_init * (rep.eps / options.eps);
    // OT(a, a): this rank's rows of x against all of x.
    SinkhornProblem xx;
    xx.cost_kind = lp.problem.cost_kind;
    xx.x = TensorView::host(x_local.data() + b * nr * d, {nr, d});
    xx.y = TensorView::host(x_all.data() + b * n_total * d, {n_total, d});
    if (lp.a.present()) {
      xx.a = TensorView::host(block_of(a_local, a_batched, b, nr, 1), {nr});
      xx.b = TensorView::host(block_of(a_all, a_batched, b, n_total, 1), {n_total});
    }
    const double ot_xx = dist::sinkhorn(comm, xx, o).problems[0].ot_eps;
    // OT(b, b): this rank's rows of y against all of y.
    SinkhornProblem yy;
    yy.cost_kind = lp.problem.cost_kind;
    const double* yb = lp.batched ? y_all.data() + b * m * d : y_all.data();
    yy.x = TensorView::host(yb + yrows.begin * d, {yrows.size(), d});
    yy.y = TensorView::host(yb, {m, d});
    if (lp.b.present()) {
      const double* bb = block_of(b_all, b_batched, b, m, 1);
      yy.a = TensorView::host(bb + yrows.begin, {yrows.size()});
      yy.b = TensorView::host(bb, {m});
    }
    const double ot_yy = dist::sinkhorn(comm, yy, o).problems[0].ot_eps;
    double div = rep.ot_eps - 0.5 * (ot_xx + ot_yy);
    if (!balanced) {
      auto mass = [](const double* w, std::int64_t len) {
        double t = 0;
        for (std::int64_t k = 0; k < len; ++k) t += w[k];
        return t;
      };
      // Absent weights are uniform: mass 1.
      const double ma =
          lp.a.present() ? mass(block_of(a_all, a_batched, b, n_total, 1), n_total) : 1.0;
      const double mb = lp.b.present() ? mass(block_of(b_all, b_batched, b, m, 1), m) : 1.0;
      div += 0.5 * rep.eps * (ma - mb) * (ma - mb);
    }
    out[static_cast<std::size_t>(b)] = div;
  }
  return out;
}

/// `mpirun -np R otgpu sinkhorn --distributed ...`: every rank loads its rows and the
/// ranks agree on the inputs before solving (a rank with a bad file makes all of them
/// stop with that one error, printed by rank 0 only); the sharded solve, the derived
/// outputs of each rank's rows, then rank 0 gathers and writes everything. The report
/// and the outputs are those of the single-process command (to fp64 round-off).
void run_distributed(const SinkhornArgs& args) {
  auto comm = dist::mpi_world();
  const int rank = comm->rank();
  try {
    dist::agree(*comm, [&] { check_flag_combinations(args); });
    LoadedProblem lp;
    std::int64_t n_total = 0;
    dist::RowRange rows;
    std::uint64_t seed = 0;
    SinkhornOptions options;
    dist::agree(*comm, [&] {
      options = make_options(args);
      seed = parse_seed(args.seed);
      lp = load_local_problem(args, *comm, n_total, rows);
    });
    auto progress = std::make_shared<ProgressLine>();
    if (rank == 0 && (args.progress || isatty(fileno(stderr)) != 0)) {
      options.progress = [progress](const SinkhornProgress& p) { return (*progress)(p); };
    }
    std::vector<FlagName> names = sinkhorn_option_flag_names();
    for (const auto& [name, in] : {std::pair<const char*, const NpyInput*>{"x", &lp.x},
                                   {"y", &lp.y},
                                   {"cost", &lp.cost},
                                   {"a", &lp.a},
                                   {"b", &lp.b}}) {
      if (in->present()) names.push_back({name, in->label()});
    }
    const SinkhornResult result =
        call_library("sinkhorn", names, [&] { return dist::sinkhorn(*comm, lp.problem, options); });
    progress->finish();
    // Collectives first (every rank), then rank 0 alone writes.
    const std::int64_t B = lp.batch;
    const std::vector<double> f = gather_batch(*comm, result.f, B, 1);
    std::vector<double> map, grad, pairs, divergence;
    if (!args.map_out.empty()) {
      map = gather_batch(*comm, dist::barycentric_map(*comm, lp.problem, result), B, lp.d);
    }
    if (!args.grad_out.empty()) {
      grad = gather_batch(*comm, dist::gradient_x(*comm, lp.problem, result), B, lp.d);
    }
    if (!args.sample_out.empty()) {
      const auto local = dist::sample_partners(*comm, lp.problem, result, seed);
      // Indices below 2^53 travel exactly as doubles.
      pairs = gather_batch(*comm, std::vector<double>(local.begin(), local.end()), B, 1);
    }
    if (args.divergence) {
      divergence = call_library("sinkhorn_divergence", names, [&] {
        return distributed_divergence(*comm, lp, result, options, n_total, rows);
      });
    }
    if (rank != 0) return;
    const int exit_code = report_unconverged(result, args.strict);
    const bool bt = lp.batched;
    if (!args.f_out.empty())
      write_output("--f-out", args.f_out, f, batched_shape(bt, B, {n_total}));
    if (!args.g_out.empty()) {
      write_output("--g-out", args.g_out, result.g, batched_shape(bt, B, {result.m}));
    }
    if (!args.map_out.empty()) {
      write_output("--map-out", args.map_out, map, batched_shape(bt, B, {n_total, lp.d}));
    }
    if (!args.grad_out.empty()) {
      write_output("--grad-out", args.grad_out, grad, batched_shape(bt, B, {n_total, lp.d}));
    }
    if (!args.sample_out.empty()) {
      write_output("--sample-out", args.sample_out,
                   std::vector<std::int64_t>(pairs.begin(), pairs.end()),
                   batched_shape(bt, B, {n_total}));
    }
    if (args.json.to_stdout || !args.json.file.empty()) {
      nlohmann::json out;
      out["command"] = "sinkhorn";
      out["backend"] = std::string(to_string(result.backend));
      out["distributed"] = {{"ranks", comm->size()}, {"communicator", std::string(comm->name())}};
      out["time_ms"] = result.time_ms;
      out["B"] = B;
      out["n"] = n_total;
      out["m"] = result.m;
      out["d"] = lp.d > 0 ? nlohmann::json(lp.d) : nlohmann::json(nullptr);
      out["options"] = options_json(args, options, result.tol, lp.cost.present());
      if (!args.sample_out.empty()) out["options"]["seed"] = seed;
      nlohmann::json problems = nlohmann::json::array();
      for (std::int64_t k = 0; k < B; ++k) {
        nlohmann::json pj = report_json(result.problems[static_cast<std::size_t>(k)], result.tol);
        if (args.divergence) pj["sinkhorn_divergence"] = divergence[static_cast<std::size_t>(k)];
        problems.push_back(pj);
      }
      out["problems"] = problems;
      emit_json(args.json, out);
      if (args.json.to_stdout) {
        finish(exit_code);
        return;
      }
    }
    std::vector<std::string> headers = {"problem",        "ot_eps",   "transport_cost",
                                        "marginal_error", "residual", "iterations",
                                        "converged",      "eps"};
    if (args.divergence) headers.emplace_back("sinkhorn_divergence");
    Table table(headers);
    for (std::int64_t k = 0; k < B; ++k) {
      const SinkhornReport& r = result.problems[static_cast<std::size_t>(k)];
      std::vector<std::string> row = {std::to_string(k),
                                      format_number(r.ot_eps),
                                      format_number(r.transport_cost),
                                      format_number(r.marginal_error),
                                      format_number(r.residual),
                                      std::to_string(r.iterations),
                                      r.converged ? "yes" : "no",
                                      format_number(r.eps)};
      if (args.divergence) row.push_back(format_number(divergence[static_cast<std::size_t>(k)]));
      table.add_row(row);
    }
    std::fputs(table.render().c_str(), stdout);
    std::string sizes = fmt::format("B={} n={} m={}", B, n_total, result.m);
    if (lp.d > 0) sizes += fmt::format(" d={}", lp.d);
    std::fputs(fmt::format("backend: cpu ({} ranks over {})  time: {:.3f} ms  {}\n", comm->size(),
                           comm->name(), result.time_ms, sizes)
                   .c_str(),
               stdout);
    finish(exit_code);
  } catch (const Error&) {
    // Every rank holds the agreed error; rank 0 reports it (main prints one line), the
    // others leave with the same status silently.
    if (rank == 0) throw;
    std::fflush(stdout);
    std::exit(1);
  }
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
  sub->add_option(
      "--acceleration", args->acceleration,
      "overrelax (default: adaptive over-relaxation, CPU and the synchronous GPU loop) or none");
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
  sub->add_flag("--distributed", args->distributed,
                "one rank per process (mpirun -np R otgpu sinkhorn --distributed ...): each rank "
                "reads only its rows of --x / --cost-matrix / --a, rank 0 writes the outputs");
  sub->add_option("--devices", args->devices,
                  "GPUs to shard the rows over, e.g. 0,1,2,3 (one device: as --device); a repeated "
                  "ordinal is a logical shard");
  sub->add_option("--shards", args->shards,
                  "shards of the row split, round-robin over --devices (or --device): --shards 4 "
                  "on one GPU runs 4 logical shards");
  sub->callback([args] { run_sinkhorn(*args); });
}

}  // namespace otgpu::cli
