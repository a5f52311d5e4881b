// `otgpu`: solve, benchmark and inspect optimal transport problems from .npy files.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <new>

#include "commands.h"
#include "otgpu/error.h"

int main(int argc, char** argv) {
  CLI::App app{"otgpu: GPU-native optimal transport (Sinkhorn, sliced and Gaussian OT)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "otgpu 0.1.0");
  otgpu::cli::add_sinkhorn_command(app);
  otgpu::cli::add_sliced_command(app);
  otgpu::cli::add_gaussian_command(app);
  otgpu::cli::add_bench_command(app);
  otgpu::cli::add_plan_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, whatever CLI11 would have printed.
    std::fprintf(stderr, "otgpu: error: %s (see otgpu --help)\n", e.what());
    return 2;
  } catch (const otgpu::Error& e) {
    std::fprintf(stderr, "otgpu: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "otgpu: error: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "otgpu: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
