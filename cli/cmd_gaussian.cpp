// `otgpu gaussian`: closed-form OT between Gaussians N(m1, S1) and N(m2, S2) stored as
// .npy files: W2^2, Bures^2, the entropic value (with --eps) and the Monge map. Shapes,
// values and options are checked by gaussian_ot; the command names the flags.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "commands.h"
#include "common.h"
#include "otgpu/error.h"
#include "otgpu/gaussian.h"

namespace otgpu::cli {

namespace {

struct GaussianArgs {
  std::string m1_path, s1_path, m2_path, s2_path, map_out;
  double eps = 0;
  JsonFlags json;
  BackendFlags backend;
};

void run_gaussian(const GaussianArgs& args) {
  const Backend backend = resolve_backend_flag(args.backend);
  check_outputs({{"--m1", args.m1_path},
                 {"--s1", args.s1_path},
                 {"--m2", args.m2_path},
                 {"--s2", args.s2_path}},
                {{"--map-out", args.map_out}, args.json.output()});

  const NpyInput m1 = load_array("--m1", args.m1_path);
  const NpyInput s1 = load_array("--s1", args.s1_path);
  const NpyInput m2 = load_array("--m2", args.m2_path);
  const NpyInput s2 = load_array("--s2", args.s2_path);

  GaussianOTOptions options;
  options.eps = args.eps;
  options.want_map = !args.map_out.empty();
  options.backend = backend;
  options.device = args.backend.device;
  // The library names its inputs source.mean, ...; on the command line they are flags.
  const std::vector<FlagName> names = {{"source.mean", m1.label(), true},
                                       {"source.cov", s1.label(), true},
                                       {"target.mean", m2.label(), true},
                                       {"target.cov", s2.label(), true},
                                       {"eps", "--eps"},
                                       {"device", "--device"},
                                       {"backend", "--backend"}};
  const GaussianOTResult r = call_library("gaussian_ot", names, [&] {
    return gaussian_ot({m1.view(), s1.view()}, {m2.view(), s2.view()}, options);
  });

  if (options.want_map) {
    const bool batched = m1.rank() == 2 || s1.rank() == 3 || m2.rank() == 2 || s2.rank() == 3;
    write_output("--map-out", args.map_out, r.map_matrix,
                 batched_shape(batched, r.batch, {r.d, r.d}));
  }

  const bool entropic = args.eps > 0;
  if (args.json.to_stdout || !args.json.file.empty()) {
    nlohmann::json problems = nlohmann::json::array();
    for (std::size_t k = 0; k < r.w2_squared.size(); ++k) {
      nlohmann::json p{{"w2_squared", r.w2_squared[k]}, {"bures_squared", r.bures_squared[k]}};
      if (entropic) p["entropic"] = r.entropic[k];
      problems.push_back(std::move(p));
    }
    emit_json(args.json,
              {{"command", "gaussian"},
               {"backend", std::string(to_string(r.backend))},
               {"time_ms", r.time_ms},
               {"B", r.batch},
               {"d", r.d},
               {"options",
                {{"eps", args.eps}, {"map", options.want_map}, {"backend", args.backend.backend}}},
               {"problems", problems}});
    if (args.json.to_stdout) return;
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
  add_json_flags(*sub, args->json);
  add_backend_flags(*sub, args->backend, /*threads=*/false);
  sub->callback([args] { run_gaussian(*args); });
}

}  // namespace otgpu::cli
