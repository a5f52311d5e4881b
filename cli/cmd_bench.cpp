// `otgpu bench`: runs the standard workloads (docs/benchmarks.md) and prints each
// figure next to the measured limit that bounds it, as a table (default), JSON or
// CSV; --plot draws time against size with scripts/plot-bench.
#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench.h"
#include "commands.h"
#include "common.h"
#include "otgpu/error.h"
#include "otgpu/types.h"
#include "peers.h"
#include "plot.h"

namespace otgpu::cli {

namespace {

struct BenchArgs {
  std::string suite = "quick";
  std::vector<std::string> workloads;
  JsonFlags json;
  bool csv = false;
  std::string csv_file;
  std::string plot_file;
  std::string backend = "auto";
  int repeats = 3;
  bool list = false;
  std::string peers_file;
};

void write_text(const std::string& flag, const std::string& path, const std::string& text) {
  std::FILE* fh = std::fopen(path.c_str(), "w");
  if (fh == nullptr) {
    throw IoError(fmt::format("{}: cannot write {}: {}", flag, npy::printable_path(path),
                              std::strerror(errno)));
  }
  const bool ok = std::fwrite(text.data(), 1, text.size(), fh) == text.size();
  if (std::fclose(fh) != 0 || !ok) {
    throw IoError(fmt::format("{}: failed writing {}", flag, npy::printable_path(path)));
  }
}

/// A private temporary file for the JSON the plot script reads, removed on exit.
class TempJson {
 public:
  TempJson() {
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl =
        std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/otgpu-bench-XXXXXX.json";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    const int fd = ::mkstemps(buf.data(), 5);
    if (fd < 0) {
      throw IoError(
          fmt::format("--plot: cannot create a temporary file: {}", std::strerror(errno)));
    }
    ::close(fd);
    path_ = buf.data();
  }
  ~TempJson() { std::remove(path_.c_str()); }
  TempJson(const TempJson&) = delete;
  TempJson& operator=(const TempJson&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void run_bench(const BenchArgs& args) {
  if (args.list) {
    std::fputs(bench::format_list().c_str(), stdout);
    return;
  }
  if (args.json.to_stdout && args.csv) {
    throw InvalidArgument(
        "--json and --csv both print on stdout: give one (or use --json-file / --csv-file)");
  }
  bench::check_workload_names(args.workloads);
  check_outputs({},
                {args.json.output(), {"--csv-file", args.csv_file}, {"--plot", args.plot_file}});
  if (!args.plot_file.empty()) bench::check_plot_prerequisites();
  // Read before the (long) run, so that a bad file fails at once.
  const bench::PeerFile peers =
      args.peers_file.empty() ? bench::PeerFile{} : bench::load_peers(args.peers_file, "--peers");

  bench::Context ctx;
  ctx.suite = args.suite;
  ctx.repeats = args.repeats;
  const Backend backend = parse_backend(args.backend, "--backend");
  ctx.cpu_only = backend == Backend::cpu;
  ctx.gpu_only = backend == Backend::cuda;
  auto rows = bench::run(ctx, args.workloads);
  if (!args.peers_file.empty()) bench::attach_peers(rows, peers);

  const nlohmann::json report = bench::to_json(ctx, rows);
  emit_json(args.json, report);
  if (args.csv) std::fputs(bench::to_csv(rows).c_str(), stdout);
  if (!args.csv_file.empty()) write_text("--csv-file", args.csv_file, bench::to_csv(rows));
  if (!args.json.to_stdout && !args.csv) {
    std::fputs(bench::format_table(ctx, rows).c_str(), stdout);
  }
  if (!args.plot_file.empty()) {
    if (!args.json.file.empty()) {
      bench::draw_plot(args.json.file, args.plot_file);
    } else {
      const TempJson tmp;
      write_text("--plot", tmp.path(), report.dump(2) + "\n");
      bench::draw_plot(tmp.path(), args.plot_file);
    }
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  auto* sub = app.add_subcommand(
      "bench",
      "Run the standard benchmark workloads and report each figure against the measured limit "
      "that bounds it (see --list)");
  sub->add_option("--suite", args->suite, "quick (default) or full")
      ->check(CLI::IsMember({"quick", "full"}));
  sub->add_option("--workload", args->workloads,
                  "run only these workloads (e.g. --workload W1 W5; see --list)");
  add_json_flags(*sub, args->json);
  sub->add_flag("--csv", args->csv, "print the rows as CSV on stdout instead of the table");
  sub->add_option("--csv-file", args->csv_file, "also write the rows as CSV to this file");
  sub->add_option("--plot", args->plot_file,
                  "also draw time against size per solver, with the bounds, to this PNG "
                  "(needs python3 and matplotlib)");
  sub->add_option("--backend", args->backend,
                  "auto (GPU rows when a GPU is present, default), cpu, cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sub->add_option("--repeats", args->repeats, "timed runs per row (median reported, default 3)")
      ->check(CLI::Range(1, 1000));
  sub->add_option("--peers", args->peers_file,
                  "peer timings (JSON of bench/peers/run_peers.py): adds the columns best peer, "
                  "its time and our speedup (its time / ours) to every matching row");
  sub->add_flag("--list", args->list, "list the workloads and exit");
  sub->callback([args] { run_bench(*args); });
}

}  // namespace otgpu::cli
