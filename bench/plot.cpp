#include "plot.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "otgpu/error.h"

namespace otgpu::bench {

namespace {

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string python() {
  const char* env = std::getenv("OTGPU_PYTHON");
  return env != nullptr && *env != '\0' ? env : "python3";
}

std::string script_path() {
  const char* env = std::getenv("OTGPU_PLOT_BENCH");
  if (env != nullptr && *env != '\0') return env;
  char exe[PATH_MAX];
  const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len > 0) {
    std::string dir(exe, static_cast<std::size_t>(len));
    dir = dir.substr(0, dir.find_last_of('/'));
    const std::string installed = dir + "/../share/otgpu/plot-bench";
    if (is_file(installed)) return installed;
  }
#ifdef OTGPU_PLOT_BENCH_SOURCE
  if (is_file(OTGPU_PLOT_BENCH_SOURCE)) return OTGPU_PLOT_BENCH_SOURCE;
#endif
  return "";
}

/// Runs argv (PATH lookup for argv[0]); returns the exit status, 127 when it could
/// not be started. The last non-empty stderr line goes to `last_error`.
int run_process(const std::vector<std::string>& args, std::string& last_error) {
  int fds[2];
  if (::pipe(fds) != 0) return 127;
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return 127;
  }
  if (pid == 0) {
    ::dup2(fds[1], STDERR_FILENO);
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t got; (got = ::read(fds[0], buf, sizeof(buf))) != 0;) {
    if (got < 0) {
      if (errno == EINTR) continue;
      break;
    }
    text.append(buf, static_cast<std::size_t>(got));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const std::size_t end = text.find_last_not_of("\n\r ");
  if (end != std::string::npos) {
    const std::size_t nl = text.rfind('\n', end);
    const std::size_t start = nl == std::string::npos ? 0 : nl + 1;
    last_error = text.substr(start, end + 1 - start);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

}  // namespace

void check_plot_prerequisites() {
  if (script_path().empty()) {
    throw IoError(
        "--plot: scripts/plot-bench not found (set OTGPU_PLOT_BENCH to its path); --json-file "
        "FILE keeps the data for plotting later");
  }
  std::string err;
  const int rc = run_process({python(), "-c", "import matplotlib"}, err);
  if (rc == 127) {
    throw IoError(fmt::format(
        "--plot: {} was not found (the plot is drawn by a Python script; set OTGPU_PYTHON or "
        "install python3)",
        python()));
  }
  if (rc != 0) {
    throw IoError(fmt::format(
        "--plot: {} cannot import matplotlib (install it: {} -m pip install matplotlib)", python(),
        python()));
  }
}

void draw_plot(const std::string& json_path, const std::string& png_path) {
  const std::string script = script_path();
  std::string err;
  const int rc = run_process({python(), script, json_path, png_path}, err);
  if (rc != 0) {
    throw IoError(fmt::format("--plot: {} failed (exit {}): {}", script, rc,
                              err.empty() ? std::string("no message") : err));
  }
}

}  // namespace otgpu::bench
