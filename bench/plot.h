// `otgpu bench --plot FILE.png`: draws the report with scripts/plot-bench (Python,
// matplotlib), found as $OTGPU_PLOT_BENCH, next to an installed otgpu
// (../share/otgpu/plot-bench), or in the source tree it was built from.
#pragma once

#include <string>

namespace otgpu::bench {

/// Fails early (before the long run) with one line when the plot cannot be drawn:
/// no script, no python3 ($OTGPU_PYTHON or python3 on PATH), or no matplotlib.
void check_plot_prerequisites();

/// Runs the script on a bench JSON file; IoError with the script's last error line
/// when it fails.
void draw_plot(const std::string& json_path, const std::string& png_path);

}  // namespace otgpu::bench
