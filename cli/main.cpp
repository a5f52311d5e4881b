// `otgpu`: solve, benchmark and inspect optimal transport problems from .npy files.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <limits>
#include <new>
#include <regex>
#include <string>

#include "commands.h"
#include "common.h"
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
  otgpu::cli::add_assign_command(app);
  otgpu::cli::add_couple_command(app);
  // A job of `otgpu batch` runs one of these commands (its flags, checks and --json).
  otgpu::cli::add_batch_command(app,
                                {otgpu::cli::add_sinkhorn_command, otgpu::cli::add_sliced_command,
                                 otgpu::cli::add_gaussian_command, otgpu::cli::add_assign_command,
                                 otgpu::cli::add_couple_command});
  try {
    otgpu::cli::reject_json_value(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ConversionError& e) {
    // CLI11 says "Could not convert: --max-iter = 1000000000000": say what fits. Every
    // integer flag of the command is a 32-bit int except --seed (parsed by the command).
    static const std::regex what(R"(Could not convert: (--[A-Za-z0-9-]+) = (.*))");
    std::cmatch m;
    if (std::regex_match(e.what(), m, what)) {
      // A plain integer that failed to convert can only have overflowed an int flag (a
      // floating-point flag takes it); anything else is not a number at all.
      const bool integer = std::regex_match(m[2].str(), std::regex(R"([-+]?[0-9]+)"));
      if (integer) {
        std::fprintf(stderr,
                     "otgpu: error: %s: %s is out of range (this flag takes an integer in "
                     "[%d, %d]; see otgpu --help)\n",
                     m[1].str().c_str(), m[2].str().c_str(), std::numeric_limits<int>::min(),
                     std::numeric_limits<int>::max());
      } else {
        std::fprintf(stderr, "otgpu: error: %s: expected a number, got '%s' (see otgpu --help)\n",
                     m[1].str().c_str(), m[2].str().c_str());
      }
    } else {
      std::fprintf(stderr, "otgpu: error: %s (see otgpu --help)\n", e.what());
    }
    return 2;
  } catch (const CLI::ParseError& e) {
    // An unknown command reads as "A subcommand is required" in CLI11: name it instead.
    if (argc > 1 && argv[1][0] != '-' && app.get_subcommands().empty()) {
      std::string known;
      for (const CLI::App* sub : app.get_subcommands({})) {
        known += (known.empty() ? "" : ", ") + sub->get_name();
      }
      std::fprintf(stderr, "otgpu: error: unknown command '%s' (commands: %s; see otgpu --help)\n",
                   argv[1], known.c_str());
      return 2;
    }
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
