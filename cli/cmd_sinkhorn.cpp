// PLACEHOLDER — the 'sinkhorn' subcommand.
#include <CLI/CLI.hpp>

#include "commands.h"
#include "otgpu/error.h"

namespace otgpu::cli {

void add_sinkhorn_command(CLI::App& app) {
  auto* sub = app.add_subcommand("sinkhorn", "(not implemented yet)");
  sub->callback([] { throw Error("sinkhorn: not implemented yet"); });
}

}  // namespace otgpu::cli
