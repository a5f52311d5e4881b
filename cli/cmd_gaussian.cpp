// PLACEHOLDER — the 'gaussian' subcommand.
#include <CLI/CLI.hpp>

#include "commands.h"
#include "otgpu/error.h"

namespace otgpu::cli {

void add_gaussian_command(CLI::App& app) {
  auto* sub = app.add_subcommand("gaussian", "(not implemented yet)");
  sub->callback([] { throw Error("gaussian: not implemented yet"); });
}

}  // namespace otgpu::cli
