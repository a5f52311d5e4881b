// A command run as one job of `otgpu batch`: what it would have printed and how it
// would have ended, recorded on the worker thread that runs it. While a capture is
// installed on a thread, print_json, warn and finish_command (common.h) record into
// it instead of writing to stdout / stderr or exiting, so the batch runs the same
// command code as `otgpu <command> --json` and turns the record into a result line.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace otgpu::cli {

struct JobCapture {
  bool has_result = false;
  nlohmann::json result;              ///< the object `--json` would print
  int exit_code = 0;                  ///< the status the command would end with (3: --strict)
  std::vector<std::string> warnings;  ///< warning lines, without "otgpu: warning: "
};

/// The capture installed on the calling thread; nullptr outside a batch job.
JobCapture* current_job_capture() noexcept;

/// Installs `capture` on the calling thread for the lifetime of this object (the
/// previous one, normally none, comes back after).
class ScopedJobCapture {
 public:
  explicit ScopedJobCapture(JobCapture& capture) noexcept;
  ~ScopedJobCapture();
  ScopedJobCapture(const ScopedJobCapture&) = delete;
  ScopedJobCapture& operator=(const ScopedJobCapture&) = delete;

 private:
  JobCapture* previous_;
};

}  // namespace otgpu::cli
