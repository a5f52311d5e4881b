// `otgpu bench`: runs the standard workloads (docs/benchmarks.md) and prints each
// figure next to the roofline that bounds it; --json FILE writes every row.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "bench.h"
#include "commands.h"
#include "otgpu/error.h"
#include "otgpu/types.h"

namespace otgpu::cli {

namespace {

struct BenchArgs {
  std::string suite = "quick";
  std::vector<std::string> workloads;
  std::string json_path;
  std::string backend = "auto";
  int repeats = 3;
  bool list = false;
};

void run_bench(const BenchArgs& args) {
  if (args.list) {
    for (const auto& w : bench::all_workloads()) {
      std::string suites;
      for (const auto& s : w.suites) suites += (suites.empty() ? "" : ",") + s;
      std::printf("%-4s [%s] %s\n", w.name.c_str(), suites.c_str(), w.description.c_str());
    }
    return;
  }
  bench::Context ctx;
  ctx.suite = args.suite;
  ctx.repeats = args.repeats;
  const Backend backend = parse_backend(args.backend, "--backend");
  ctx.cpu_only = backend == Backend::cpu;
  ctx.gpu_only = backend == Backend::cuda;
  // Open the JSON file before the (long) run so a bad path fails at once.
  std::unique_ptr<std::ofstream> json_out;
  if (!args.json_path.empty()) {
    json_out = std::make_unique<std::ofstream>(args.json_path);
    if (!*json_out) {
      throw IoError(
          fmt::format("--json: cannot write '{}': {}", args.json_path, std::strerror(errno)));
    }
  }
  const auto rows = bench::run(ctx, args.workloads);
  std::fputs(bench::format_table(ctx, rows).c_str(), stdout);
  if (json_out) {
    *json_out << bench::to_json(ctx, rows).dump(2) << "\n";
    json_out->close();
    if (!*json_out) throw IoError(fmt::format("--json: failed writing '{}'", args.json_path));
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  auto* sub = app.add_subcommand(
      "bench", "Run the standard benchmark workloads (W1-W5) and report roofline ratios");
  sub->add_option("--suite", args->suite, "quick (default) or full")
      ->check(CLI::IsMember({"quick", "full"}));
  sub->add_option("--workload", args->workloads, "run only these workloads (e.g. W1 W5)");
  sub->add_option("--json", args->json_path, "also write every row as JSON to this file");
  sub->add_option("--backend", args->backend, "auto (GPU rows when a GPU is present), cpu, cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sub->add_option("--repeats", args->repeats, "timed runs per row (median reported)")
      ->check(CLI::Range(1, 1000));
  sub->add_flag("--list", args->list, "list the workloads and exit");
  sub->callback([args] { run_bench(*args); });
}

}  // namespace otgpu::cli
