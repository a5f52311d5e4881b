// `otgpu gaussian`: closed-form OT between Gaussians N(m1, S1) and N(m2, S2) stored as
// .npy files: W2^2, Bures^2, the entropic value (with --eps) and the Monge map.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "commands.h"
#include "common.h"
#include "otgpu/error.h"
#include "otgpu/gaussian.h"

namespace otgpu::cli {

namespace {

struct GaussianArgs {
  std::string m1_path, s1_path, m2_path, s2_path, map_out;
  double eps = 0;
  bool json = false;
  std::string backend = "auto";
  int device = 0;
};

/// The library names its inputs source.mean, ...; on the command line they are flags.
std::string with_flag_names(std::string msg) {
  const std::pair<const char*, const char*> names[] = {{"source.mean", "--m1 (source.mean)"},
                                                       {"source.cov", "--s1 (source.cov)"},
                                                       {"target.mean", "--m2 (target.mean)"},
                                                       {"target.cov", "--s2 (target.cov)"}};
  for (const auto& [from, to] : names) {
    const std::string f(from), t(to);
    for (std::size_t pos = msg.find(f); pos != std::string::npos;
         pos = msg.find(f, pos + t.size())) {
      msg.replace(pos, f.size(), t);
    }
  }
  return msg;
}

GaussianOTResult solve(const GaussianBatch& src, const GaussianBatch& tgt,
                       const GaussianOTOptions& options) {
  // Same error types, messages with the flag names.
  try {
    return gaussian_ot(src, tgt, options);
  } catch (const NonFiniteInput& e) {
    throw NonFiniteInput(with_flag_names(e.what()));
  } catch (const DTypeError& e) {
    throw DTypeError(with_flag_names(e.what()));
  } catch (const ShapeError& e) {
    throw ShapeError(with_flag_names(e.what()));
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(with_flag_names(e.what()));
  }
}

void run_gaussian(const GaussianArgs& args) {
  require_nonnegative_finite("--eps", args.eps);
  BackendFlags flags;
  flags.backend = args.backend;
  flags.device = args.device;
  const Backend backend = resolve_backend_flag(flags);
  check_output_path("--map-out", args.map_out);

  const NpyInput m1 = load_input("--m1", args.m1_path, 1, 2, "[d] or [B, d]");
  const NpyInput s1 = load_input("--s1", args.s1_path, 2, 3, "[d, d] or [B, d, d]");
  const NpyInput m2 = load_input("--m2", args.m2_path, 1, 2, "[d] or [B, d]");
  const NpyInput s2 = load_input("--s2", args.s2_path, 2, 3, "[d, d] or [B, d, d]");

  GaussianOTOptions options;
  options.eps = args.eps;
  options.want_map = !args.map_out.empty();
  options.backend = backend;
  options.device = args.device;
  const GaussianOTResult r = solve({m1.view(), s1.view()}, {m2.view(), s2.view()}, options);

  if (options.want_map) {
    const bool batched = m1.rank() == 2 || s1.rank() == 3 || m2.rank() == 2 || s2.rank() == 3;
    write_output("--map-out", args.map_out, r.map_matrix,
                 batched_shape(batched, r.batch, {r.d, r.d}));
  }

  const bool entropic = args.eps > 0;
  if (args.json) {
    nlohmann::json problems = nlohmann::json::array();
    for (std::size_t k = 0; k < r.w2_squared.size(); ++k) {
      nlohmann::json p{{"w2_squared", r.w2_squared[k]}, {"bures_squared", r.bures_squared[k]}};
      if (entropic) p["entropic"] = r.entropic[k];
      problems.push_back(std::move(p));
    }
    print_json({{"backend", std::string(to_string(r.backend))},
                {"time_ms", r.time_ms},
                {"problems", problems}});
    return;
  }
  std::fputs(fmt::format("Gaussian OT, d = {}, {} pair{}, {}backend {}, {:.3f} ms\n", r.d, r.batch,
                         r.batch == 1 ? "" : "s",
                         entropic ? fmt::format("eps = {}, ", format_number(args.eps)) : "",
                         to_string(r.backend), r.time_ms)
                 .c_str(),
             stdout);
  std::vector<std::string> headers{"problem", "W2^2", "Bures^2"};
  if (entropic) headers.emplace_back("OT_eps");
  Table table(headers);
  for (std::size_t k = 0; k < r.w2_squared.size(); ++k) {
    std::vector<std::string> row{std::to_string(k), format_number(r.w2_squared[k]),
                                 format_number(r.bures_squared[k])};
    if (entropic) row.push_back(format_number(r.entropic[k]));
    table.add_row(std::move(row));
  }
  std::fputs(table.render().c_str(), stdout);
}

}  // namespace

void add_gaussian_command(CLI::App& app) {
  auto args = std::make_shared<GaussianArgs>();
  auto* sub = app.add_subcommand(
      "gaussian",
      "Closed-form OT between Gaussians N(m1, S1) and N(m2, S2): W2^2 = |m1 - m2|^2 + "
      "Bures^2(S1, S2), the entropic value OT_eps (--eps > 0, cost |x - y|^2, eps KL "
      "regularization as in `otgpu sinkhorn`) and the Monge map T(x) = m2 + A (x - m1)");
  sub->add_option("--m1", args->m1_path, "source means, [d] or [B, d] (.npy)")->required();
  sub->add_option("--s1", args->s1_path, "source covariances, [d, d] or [B, d, d] (.npy)")
      ->required();
  sub->add_option("--m2", args->m2_path, "target means, [d] or [B, d] (.npy)")->required();
  sub->add_option("--s2", args->s2_path, "target covariances, [d, d] or [B, d, d] (.npy)")
      ->required();
  sub->add_option("--eps", args->eps, "entropic regularization (default 0: unregularized W2 only)");
  sub->add_option("--map-out", args->map_out,
                  "write the Monge map matrices A, [d, d] or [B, d, d] float64 (.npy)");
  sub->add_flag("--json", args->json, "print one JSON object instead of a table");
  sub->add_option("--backend", args->backend, "auto (GPU when usable, default), cpu or cuda");
  sub->add_option("--device", args->device, "CUDA device ordinal (default 0)");
  sub->callback([args] { run_gaussian(*args); });
}

}  // namespace otgpu::cli
