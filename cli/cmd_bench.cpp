// PLACEHOLDER — the 'bench' subcommand.
#include <CLI/CLI.hpp>

#include "commands.h"
#include "otgpu/error.h"

namespace otgpu::cli {

void add_bench_command(CLI::App& app) {
  auto* sub = app.add_subcommand("bench", "(not implemented yet)");
  sub->callback([] { throw Error("bench: not implemented yet"); });
}

}  // namespace otgpu::cli
