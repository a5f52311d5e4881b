#include "batch_jobs.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <utility>

#include "npy.h"
#include "otgpu/error.h"

namespace otgpu::cli {

namespace {

/// nlohmann's "[json.exception.parse_error.101] parse error at ..." without the tag.
std::string json_message(const std::exception& e) {
  std::string m = e.what();
  if (!m.empty() && m.front() == '[') {
    const auto close = m.find("] ");
    if (close != std::string::npos) m.erase(0, close + 2);
  }
  return m;
}

const char* json_type_word(const nlohmann::json& v) {
  if (v.is_array()) return "an array";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_null()) return "null";
  return "an object";
}

/// A scalar job value as the text a shell would pass. Doubles print in their
/// shortest round-trip form ("0.05", "1e-06"), so the flag sees the same number.
std::string scalar_text(const std::string& key, const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_unsigned()) return std::to_string(v.get<std::uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<std::int64_t>());
  if (v.is_number_float()) return fmt::format("{}", v.get<double>());
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  throw InvalidArgument(fmt::format(
      "\"{}\": {} cannot be a flag value (give a string, a number, a boolean or an array of them)",
      key, json_type_word(v)));
}

/// "eps" -> "--eps", "f_out" -> "--f-out"; a key that starts with '-' is kept.
std::string flag_of(const std::string& key) {
  if (!key.empty() && key.front() == '-') return key;
  std::string flag = "--" + key;
  for (char& c : flag) {
    if (c == '_') c = '-';
  }
  return flag;
}

/// The integer in environment variable `name`, or `fallback` when it is not set.
int env_int(const char* name, int fallback, int minimum) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  int value = 0;
  const char* end = text + std::strlen(text);
  const auto [ptr, ec] = std::from_chars(text, end, value);
  if (ec != std::errc() || ptr != end || value < minimum) {
    throw InvalidArgument(fmt::format("environment variable {}={}: expected an integer >= {}", name,
                                      npy::printable_path(text), minimum));
  }
  return value;
}

bool env_set(const char* name) {
  const char* text = std::getenv(name);
  return text != nullptr && *text != '\0';
}

/// Holds flock(fd, how) for its lifetime.
class FileLock {
 public:
  FileLock(int fd, int how, const std::string& what) : fd_(fd) {
    while (flock(fd_, how) != 0) {
      if (errno != EINTR) {
        throw IoError(fmt::format("{}: cannot lock: {}", what, std::strerror(errno)));
      }
    }
  }
  ~FileLock() { flock(fd_, LOCK_UN); }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_;
};

}  // namespace

std::string Placement::name() const { return gpu ? fmt::format("cuda:{}", device) : "cpu"; }

std::vector<Job> read_jobs(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw IoError(fmt::format("{}: cannot read {}: {}", flag, npy::printable_path(path),
                              std::strerror(errno)));
  }
  std::vector<Job> jobs;
  std::map<std::string, int> line_of_id;
  std::string text;
  int line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    Job job;
    job.line = line;
    job.index = jobs.size();
    const std::string where = fmt::format("{} line {}", npy::printable_path(path), line);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      job.error = fmt::format("{}: not valid JSON ({})", where, json_message(e));
      jobs.push_back(std::move(job));
      continue;
    }
    if (!j.is_object()) {
      job.error = fmt::format("{}: a job is a JSON object, got {}", where, json_type_word(j));
    } else if (!j.contains("id") || !j["id"].is_string() || j["id"].get<std::string>().empty()) {
      job.error = fmt::format("{}: the job has no \"id\" (a non-empty string)", where);
    } else {
      job.has_id = true;
      job.id = j["id"].get<std::string>();
      const auto [it, fresh] = line_of_id.emplace(job.id, line);
      if (!fresh) {
        throw InvalidArgument(
            fmt::format("{}: id \"{}\" is on lines {} and {} (ids must be unique)", flag, job.id,
                        it->second, line));
      }
      if (!j.contains("command") || !j["command"].is_string()) {
        job.error =
            fmt::format("{}: the job has no \"command\" (a string such as \"sinkhorn\")", where);
      } else {
        job.command = j["command"].get<std::string>();
      }
      j.erase("id");
      j.erase("command");
      job.fields = std::move(j);
    }
    jobs.push_back(std::move(job));
  }
  if (in.bad()) {
    throw IoError(fmt::format("{}: failed reading {}", flag, npy::printable_path(path)));
  }
  return jobs;
}

std::vector<std::string> job_argv(const Job& job, const CLI::App& sub, const Placement& where) {
  std::vector<std::string> argv{job.command};
  bool threads_given = false;
  for (const auto& [key, value] : job.fields.items()) {
    const std::string flag = flag_of(key);
    if (flag == "--device" || flag == "--backend") {
      throw InvalidArgument(fmt::format(
          "\"{}\": otgpu batch places every job itself (--devices); a job cannot set {}", key,
          flag));
    }
    if (flag == "--help" || flag == "--version") {
      throw InvalidArgument(fmt::format("\"{}\" is not a job field", key));
    }
    // Every job prints its JSON (that is its result); "json": true changes nothing.
    if (flag == "--json") {
      if (!value.is_boolean()) {
        throw InvalidArgument(
            fmt::format("\"{}\": --json is a switch (every job's result is its --json object; "
                        "\"json_file\" also writes it to a file)",
                        key));
      }
      continue;
    }
    if (flag == "--threads") threads_given = true;
    if (value.is_null()) continue;
    const CLI::Option* opt = sub.get_option_no_throw(flag);
    if (opt != nullptr && opt->get_expected_min() == 0) {
      // A switch such as --divergence: only true and false mean something.
      if (!value.is_boolean()) {
        throw InvalidArgument(fmt::format("\"{}\": {} is a switch: give true or false, got {}", key,
                                          flag, value.dump()));
      }
      if (value.get<bool>()) argv.push_back(flag);
      continue;
    }
    if (opt == nullptr && value.is_boolean() && value.get<bool>()) {
      argv.push_back(flag);  // an unknown switch: CLI11 names it
      continue;
    }
    argv.push_back(flag);
    if (value.is_array()) {
      for (const auto& v : value) argv.push_back(scalar_text(key, v));
    } else {
      argv.push_back(scalar_text(key, value));
    }
  }
  if (sub.get_option_no_throw("--backend") != nullptr) {
    argv.emplace_back("--backend");
    argv.emplace_back(where.gpu ? "cuda" : "cpu");
  }
  if (where.gpu && sub.get_option_no_throw("--device") != nullptr) {
    argv.emplace_back("--device");
    argv.push_back(std::to_string(where.device));
  }
  if (!where.gpu && where.cpu_threads > 0 && !threads_given &&
      sub.get_option_no_throw("--threads") != nullptr) {
    argv.emplace_back("--threads");
    argv.push_back(std::to_string(where.cpu_threads));
  }
  argv.emplace_back("--json");
  return argv;
}

std::string parse_error_message(const CLI::ParseError& e) {
  // The wording of main.cpp's handler, so that a job's error reads as the command's.
  static const std::regex what(R"(Could not convert: (--[A-Za-z0-9-]+) = (.*))");
  static const std::regex integer(R"([-+]?[0-9]+)");
  std::cmatch m;
  if (dynamic_cast<const CLI::ConversionError*>(&e) != nullptr &&
      std::regex_match(e.what(), m, what)) {
    if (std::regex_match(m[2].str(), integer)) {
      return fmt::format(
          "{}: {} is out of range (this flag takes an integer in [{}, {}]; see otgpu --help)",
          m[1].str(), m[2].str(), std::numeric_limits<int>::min(), std::numeric_limits<int>::max());
    }
    return fmt::format("{}: expected a number, got '{}' (see otgpu --help)", m[1].str(),
                       m[2].str());
  }
  return fmt::format("{} (see otgpu --help)", e.what());
}

RankInfo rank_from_environment() {
  RankInfo r;
  const char* rank_var = nullptr;
  const char* size_var = nullptr;
  const char* local_rank_var = nullptr;
  const char* local_size_var = nullptr;
  if (env_set("OMPI_COMM_WORLD_SIZE") || env_set("OMPI_COMM_WORLD_RANK")) {
    r.source = "OMPI_COMM_WORLD";
    rank_var = "OMPI_COMM_WORLD_RANK";
    size_var = "OMPI_COMM_WORLD_SIZE";
    local_rank_var = "OMPI_COMM_WORLD_LOCAL_RANK";
    local_size_var = "OMPI_COMM_WORLD_LOCAL_SIZE";
  } else if (env_set("PMI_SIZE") || env_set("PMI_RANK")) {
    r.source = "PMI";
    rank_var = "PMI_RANK";
    size_var = "PMI_SIZE";
    local_rank_var = "MPI_LOCALRANKID";
    local_size_var = "MPI_LOCALNRANKS";
  } else {
    return r;
  }
  if (!env_set(rank_var) || !env_set(size_var)) {
    throw InvalidArgument(
        fmt::format("environment: {} and {} must both be set (an MPI launch) or "
                    "neither",
                    rank_var, size_var));
  }
  r.size = env_int(size_var, 1, 1);
  r.rank = env_int(rank_var, 0, 0);
  if (r.rank >= r.size) {
    throw InvalidArgument(
        fmt::format("environment: {}={} is not below {}={}", rank_var, r.rank, size_var, r.size));
  }
  r.local_size = env_int(local_size_var, 1, 1);
  r.local_rank = env_int(local_rank_var, 0, 0);
  if (r.local_rank >= r.local_size) {
    // A launcher that sets only one of the pair: treat the rank as alone on its node.
    r.local_rank = 0;
    r.local_size = 1;
  }
  return r;
}

ResultsFile::ResultsFile(const std::string& flag, const std::string& path, bool truncate)
    : flag_(flag), path_(path) {
  const int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (truncate ? O_TRUNC : 0);
  fd_ = ::open(path.c_str(), flags, 0644);
  if (fd_ < 0) {
    throw IoError(fmt::format("{}: cannot open {} for appending: {}", flag,
                              npy::printable_path(path), std::strerror(errno)));
  }
}

ResultsFile::~ResultsFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ResultsFile::append(const std::string& line) {
  const std::string what = fmt::format("{}: {}", flag_, npy::printable_path(path_));
  std::lock_guard<std::mutex> hold(mutex_);  // flock does not order threads sharing fd_
  FileLock lock(fd_, LOCK_EX, what);
  std::string text = line + "\n";
  // A run killed in the middle of a line leaves it unended: end it, so that this
  // line stays whole (reading back skips the cut one).
  struct stat st {};
  if (fstat(fd_, &st) == 0 && st.st_size > 0) {
    const int rd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (rd >= 0) {
      char last = '\n';
      if (pread(rd, &last, 1, st.st_size - 1) == 1 && last != '\n') text.insert(0, "\n");
      ::close(rd);
    }
  }
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw IoError(fmt::format("{}: write failed: {}", what, std::strerror(errno)));
    }
    done += static_cast<std::size_t>(n);
  }
}

ExistingResults read_existing_results(const std::string& flag, const std::string& path) {
  ExistingResults out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return out;
    throw IoError(fmt::format("{}: cannot read {}: {}", flag, npy::printable_path(path),
                              std::strerror(errno)));
  }
  out.exists = true;
  std::string data;
  {
    FileLock lock(fd, LOCK_SH, fmt::format("{}: {}", flag, npy::printable_path(path)));
    char buf[1 << 16];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        throw IoError(fmt::format("{}: failed reading {}: {}", flag, npy::printable_path(path),
                                  std::strerror(err)));
      }
      if (n == 0) break;
      data.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  std::size_t start = 0;
  while (start < data.size()) {
    std::size_t end = data.find('\n', start);
    if (end == std::string::npos) end = data.size();
    const std::string text = data.substr(start, end - start);
    start = end + 1;
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("id") || !j["id"].is_string()) continue;
    const std::string id = j["id"].get<std::string>();
    out.ids.insert(id);
    if (j.contains("status") && j["status"] == "ok") out.ok_ids.insert(id);
  }
  return out;
}

}  // namespace otgpu::cli
