// PLACEHOLDER — the 'sliced' subcommand.
#include <CLI/CLI.hpp>

#include "commands.h"
#include "otgpu/error.h"

namespace otgpu::cli {

void add_sliced_command(CLI::App& app) {
  auto* sub = app.add_subcommand("sliced", "(not implemented yet)");
  sub->callback([] { throw Error("sliced: not implemented yet"); });
}

}  // namespace otgpu::cli
