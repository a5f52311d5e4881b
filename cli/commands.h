// Subcommands of the `otgpu` command. Each registers itself on the app and runs
// from its callback; errors propagate as otgpu::Error to main(), which prints one
// line on stderr and exits non-zero.
#pragma once

#include <vector>

namespace CLI {
class App;
}

namespace otgpu::cli {

void add_sinkhorn_command(CLI::App& app);  // cmd_sinkhorn.cpp
void add_bench_command(CLI::App& app);     // cmd_bench.cpp
void add_sliced_command(CLI::App& app);    // cmd_sliced.cpp
void add_gaussian_command(CLI::App& app);  // cmd_gaussian.cpp
void add_plan_command(CLI::App& app);      // cmd_plan.cpp
void add_assign_command(CLI::App& app);    // cmd_assign.cpp
void add_couple_command(CLI::App& app);    // cmd_couple.cpp

/// A command's registration function (the add_*_command above).
using AddCommand = void (*)(CLI::App&);
/// `otgpu batch` (cmd_batch.cpp): its jobs may name the commands `job_commands` register.
void add_batch_command(CLI::App& app, std::vector<AddCommand> job_commands);

}  // namespace otgpu::cli
