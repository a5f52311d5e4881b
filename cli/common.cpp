#include "common.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "batch_capture.h"
#include "otgpu/error.h"

namespace otgpu::cli {

namespace {

/// "[3, 1]": the C-order multi-index of flat element k.
std::string multi_index(const std::vector<std::int64_t>& shape, std::int64_t k) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t r = shape.size(); r-- > 0;) {
    idx[r] = k % shape[r];
    k /= shape[r];
  }
  std::string s = "[";
  for (std::size_t r = 0; r < idx.size(); ++r) s += (r ? ", " : "") + std::to_string(idx[r]);
  return s + "]";
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void check_size(const std::string& flag, const std::string& path, std::size_t size,
                const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (const auto dim : shape) n *= dim;
  if (static_cast<std::size_t>(n) != size) {
    throw InvalidArgument(fmt::format("{}: {}: internal error: {} values for shape {}", flag,
                                      npy::printable_path(path), size,
                                      npy::shape_to_string(shape)));
  }
}

}  // namespace

std::string NpyInput::label() const {
  return fmt::format("{} ({})", flag, npy::printable_path(path));
}

std::string NpyInput::describe() const {
  return fmt::format("{}: {} has shape {}", flag, npy::printable_path(path), array.describe());
}

NpyInput load_input(const std::string& flag, const std::string& path, int min_rank, int max_rank,
                    const char* layout, ValueCheck check) {
  if (path.empty()) throw InvalidArgument(fmt::format("{}: empty file name", flag));
  NpyInput in{flag, npy::printable_path(path), npy::load(path, flag)};
  const int rank = in.rank();
  if (rank < min_rank || rank > max_rank) {
    throw ShapeError(fmt::format("{}: {} has shape {} but {} is expected", flag,
                                 npy::printable_path(path), in.array.describe(), layout));
  }
  for (const auto dim : in.array.shape) {
    if (dim == 0) {
      throw ShapeError(fmt::format("{}: {} has shape {}: empty dimensions are not allowed", flag,
                                   path, in.array.describe()));
    }
  }
  if (check != ValueCheck::none) {
    const std::int64_t n = in.array.numel();
    for (std::int64_t k = 0; k < n; ++k) {
      const double v = in.array.at(k);
      if (!std::isfinite(v)) {
        throw NonFiniteInput(fmt::format("{}: {}: element {} is {}", flag,
                                         npy::printable_path(path), multi_index(in.array.shape, k),
                                         v));
      }
      if (check == ValueCheck::nonnegative && v < 0) {
        throw NonFiniteInput(fmt::format("{}: {}: element {} is {}; weights must be non-negative",
                                         flag, npy::printable_path(path),
                                         multi_index(in.array.shape, k), v));
      }
    }
  }
  return in;
}

NpyInput load_array(const std::string& flag, const std::string& path) {
  if (path.empty()) throw InvalidArgument(fmt::format("{}: empty file name", flag));
  return NpyInput{flag, npy::printable_path(path), npy::load(path, flag)};
}

NpyInput load_points(const std::string& flag, const std::string& path) {
  return load_input(flag, npy::printable_path(path), 2, 3, "[n, d] or [B, n, d]",
                    ValueCheck::finite);
}

NpyInput load_weights(const std::string& flag, const std::string& path) {
  return load_input(flag, npy::printable_path(path), 1, 2, "[n] or [B, n]",
                    ValueCheck::nonnegative);
}

NpyInput load_cost_matrix(const std::string& flag, const std::string& path) {
  return load_input(flag, npy::printable_path(path), 2, 3, "[n, m] or [B, n, m]",
                    ValueCheck::finite);
}

void check_output_path(const std::string& flag, const std::string& path, bool optional) {
  if (path.empty()) {
    if (optional) return;
    throw InvalidArgument(fmt::format("{}: empty file name", flag));
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    throw IoError(fmt::format("{}: {} is a directory", flag, npy::printable_path(path)));
  }
  const std::string dir = parent_dir(path);
  if (::stat(dir.c_str(), &st) != 0) {
    throw IoError(fmt::format("{}: {}: folder {} does not exist: {}", flag,
                              npy::printable_path(path), npy::printable_path(dir),
                              std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    throw IoError(fmt::format("{}: {}: {} is not a folder", flag, npy::printable_path(path),
                              npy::printable_path(dir)));
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    throw IoError(fmt::format("{}: {}: cannot write in {}: {}", flag, npy::printable_path(path),
                              npy::printable_path(dir), std::strerror(errno)));
  }
}

namespace {

/// What makes two paths one file: (device, inode) when it exists, else the canonical
/// folder plus the file name (an output that is not there yet).
struct FileIdentity {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  std::string canonical;

  bool same_as(const FileIdentity& o) const {
    if (exists != o.exists) return false;
    return exists ? dev == o.dev && ino == o.ino : canonical == o.canonical;
  }
};

FileIdentity identify(const std::string& path) {
  FileIdentity id;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    id.exists = true;
    id.dev = st.st_dev;
    id.ino = st.st_ino;
    return id;
  }
  const auto slash = path.find_last_of('/');
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  char* dir = ::realpath(parent_dir(path).c_str(), nullptr);
  id.canonical = dir != nullptr ? std::string(dir) + "/" + name : path;
  std::free(dir);
  return id;
}

}  // namespace

void check_outputs(const std::vector<FlagPath>& inputs, const std::vector<FlagPath>& outputs) {
  std::vector<std::pair<const FlagPath*, FileIdentity>> ins, outs;
  for (const auto& in : inputs) {
    if (!in.path.empty()) ins.emplace_back(&in, identify(in.path));
  }
  for (const auto& out : outputs) {
    if (out.path.empty()) continue;
    check_output_path(out.flag, out.path);
    const FileIdentity id = identify(out.path);
    for (const auto& [in, in_id] : ins) {
      if (id.same_as(in_id)) {
        throw InvalidArgument(fmt::format(
            "{}: {} is the input file of {}; refusing to write over an input (choose another "
            "output file)",
            out.flag, npy::printable_path(out.path), in->flag));
      }
    }
    for (const auto& [other, other_id] : outs) {
      if (id.same_as(other_id)) {
        throw InvalidArgument(fmt::format("{} and {} both name {}; give each output its own file",
                                          other->flag, out.flag, npy::printable_path(out.path)));
      }
    }
    outs.emplace_back(&out, id);
  }
}

std::vector<std::int64_t> batched_shape(bool batched, std::int64_t batch,
                                        std::initializer_list<std::int64_t> rest) {
  std::vector<std::int64_t> shape;
  if (batched) shape.push_back(batch);
  shape.insert(shape.end(), rest.begin(), rest.end());
  return shape;
}

void write_output(const std::string& flag, const std::string& path, const std::vector<double>& data,
                  const std::vector<std::int64_t>& shape) {
  check_size(flag, npy::printable_path(path), data.size(), shape);
  try {
    npy::save(path, data.data(), shape);
  } catch (const IoError& e) {
    throw IoError(fmt::format("{}: {}", flag, e.what()));
  }
}

void write_output(const std::string& flag, const std::string& path,
                  const std::vector<std::int64_t>& data, const std::vector<std::int64_t>& shape) {
  check_size(flag, npy::printable_path(path), data.size(), shape);
  try {
    npy::save(path, data.data(), shape);
  } catch (const IoError& e) {
    throw IoError(fmt::format("{}: {}", flag, e.what()));
  }
}

std::uint64_t parse_u64(const std::string& flag, const std::string& text) {
  std::uint64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (text.empty() || ec != std::errc() || ptr != end) {
    throw InvalidArgument(fmt::format("{}: expected an integer in [0, {}], got '{}'", flag,
                                      std::numeric_limits<std::uint64_t>::max(), text));
  }
  return v;
}

std::uint64_t parse_seed(const std::string& text) { return parse_u64("--seed", text); }

void add_json_flags(CLI::App& sub, JsonFlags& flags) {
  sub.add_flag("--json", flags.to_stdout,
               "print one JSON object on stdout instead of the table (problem sizes, options "
               "and results)");
  sub.add_option("--json-file", flags.file,
                 "also write that JSON object, indented, to this file (the table still prints)");
}

void emit_json(const JsonFlags& flags, const nlohmann::json& j) {
  if (flags.to_stdout) print_json(j);
  if (flags.file.empty()) return;
  std::FILE* fh = std::fopen(flags.file.c_str(), "w");
  if (fh == nullptr) {
    throw IoError(fmt::format("--json-file: cannot write {}: {}", npy::printable_path(flags.file),
                              std::strerror(errno)));
  }
  const std::string text = j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const bool ok = std::fwrite(text.data(), 1, text.size(), fh) == text.size();
  if (std::fclose(fh) != 0 || !ok) {
    throw IoError(fmt::format("--json-file: failed writing {}", npy::printable_path(flags.file)));
  }
}

void reject_json_value(int argc, const char* const* argv) {
  for (int k = 1; k < argc; ++k) {
    const std::string arg = argv[k];
    std::string value;
    if (arg.rfind("--json=", 0) == 0) {
      value = arg.substr(7);
    } else if (arg == "--json" && k + 1 < argc && argv[k + 1][0] != '-') {
      value = argv[k + 1];
    } else {
      continue;
    }
    throw InvalidArgument(fmt::format(
        "--json takes no value (it prints the JSON object on stdout); to write it to {} use "
        "--json-file {}",
        npy::printable_path(value), npy::printable_path(value)));
  }
}

std::string with_flag_names(const std::string& message, const std::string& fn,
                            const std::vector<FlagName>& names) {
  std::string msg = message;
  if (!fn.empty() && msg.rfind(fn + ": ", 0) == 0) msg.erase(0, fn.size() + 2);
  auto is_word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '.';
  };
  std::string out;
  bool opening = true;
  for (std::size_t i = 0; i < msg.size();) {
    if (!is_word(msg[i])) {
      out += msg[i++];
      continue;
    }
    std::size_t j = i;
    while (j < msg.size() && is_word(msg[j])) ++j;
    std::string word = msg.substr(i, j - i);
    std::size_t trail = 0;  // a sentence's full stop is not part of the name
    while (trail < word.size() && word[word.size() - 1 - trail] == '.') ++trail;
    const std::string dots = word.substr(word.size() - trail);
    word.resize(word.size() - trail);
    const auto hit = std::find_if(names.begin(), names.end(), [&](const FlagName& f) {
      return f.name == word && (f.anywhere || opening);
    });
    out += hit != names.end() ? hit->flag : word;
    out += dots;
    opening = false;
    i = j;
  }
  return out;
}

std::vector<FlagName> sinkhorn_option_flag_names() {
  return {{"eps", "--eps"},
          {"eps_relative", "--eps-relative"},
          {"tol", "--tol"},
          {"max_iter", "--max-iter"},
          {"check_every", "--check-every"},
          {"eps_init", "--eps-init"},
          {"eps_decay", "--eps-decay"},
          {"rho_a", "--rho-a"},
          {"rho_b", "--rho-b"},
          {"cpu_threads", "--threads"},
          {"device", "--device"},
          {"backend", "--backend"}};
}

void rethrow_with_flag_names(const Error& e, const std::string& fn,
                             const std::vector<FlagName>& names) {
  const std::string m = with_flag_names(e.what(), fn, names);
  if (dynamic_cast<const NonFiniteInput*>(&e) != nullptr) throw NonFiniteInput(m);
  if (dynamic_cast<const DTypeError*>(&e) != nullptr) throw DTypeError(m);
  if (dynamic_cast<const ShapeError*>(&e) != nullptr) throw ShapeError(m);
  if (dynamic_cast<const InvalidArgument*>(&e) != nullptr) throw InvalidArgument(m);
  if (dynamic_cast<const DeviceUnavailable*>(&e) != nullptr) throw DeviceUnavailable(m);
  if (const auto* c = dynamic_cast<const CudaError*>(&e)) throw CudaError(m, c->code());
  if (dynamic_cast<const OutOfMemory*>(&e) != nullptr) throw OutOfMemory(m);
  if (dynamic_cast<const IoError*>(&e) != nullptr) throw IoError(m);
  throw Error(m);
}

void require_positive_finite(const std::string& flag, double value) {
  if (!(value > 0) || !std::isfinite(value)) {
    throw InvalidArgument(fmt::format("{}: must be a positive finite number, got {}", flag, value));
  }
}

void require_nonnegative_finite(const std::string& flag, double value) {
  if (!(value >= 0) || !std::isfinite(value)) {
    throw InvalidArgument(
        fmt::format("{}: must be a non-negative finite number, got {}", flag, value));
  }
}

void require_positive(const std::string& flag, double value) {
  if (!(value > 0)) {
    throw InvalidArgument(fmt::format("{}: must be positive (inf allowed), got {}", flag, value));
  }
}

void require_at_least(const std::string& flag, long long value, long long minimum) {
  if (value < minimum) {
    throw InvalidArgument(fmt::format("{}: must be at least {}, got {}", flag, minimum, value));
  }
}

namespace {

/// A typed non-negative int flag: digits only, in [0, INT_MAX] (CLI11 alone would
/// accept -1 and print its range as a 300-digit number).
CLI::Validator non_negative_int() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        int v = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, v);
        if (text.empty() || ec != std::errc() || ptr != end || v < 0) {
          return fmt::format("expected an integer in [0, {}], got '{}'",
                             std::numeric_limits<int>::max(), text);
        }
        return {};
      },
      "INT >= 0");
}

}  // namespace

void add_backend_flags(CLI::App& sub, BackendFlags& flags, bool threads) {
  sub.add_option("--backend", flags.backend, "auto (GPU when usable, default), cpu or cuda");
  sub.add_option("--device", flags.device, "CUDA device ordinal (default 0)")
      ->check(non_negative_int());
  if (threads) {
    sub.add_option(
           "--threads", flags.threads,
           "CPU worker threads (default 0: the idle hardware threads, one for small problems)")
        ->check(non_negative_int());
  }
}

Backend resolve_backend_flag(const BackendFlags& flags) {
  return parse_backend(flags.backend, "--backend");
}

CostKind parse_point_cost(const std::string& flag, const std::string& text) {
  if (text == "sqeuclidean") return CostKind::sqeuclidean;
  if (text == "euclidean") return CostKind::euclidean;
  throw InvalidArgument(fmt::format(
      "{}: unknown cost '{}' (expected sqeuclidean or euclidean; give a matrix with --cost-matrix)",
      flag, text));
}

void warn(const std::string& text) {
  if (JobCapture* job = current_job_capture()) {
    job->warnings.push_back(text);
    return;
  }
  std::fputs(("otgpu: warning: " + text + "\n").c_str(), stderr);
}

void finish_command(int code) {
  if (code == 0) return;
  if (JobCapture* job = current_job_capture()) {
    job->exit_code = code;
    return;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(code);
}

bool show_progress(bool forced) {
  if (current_job_capture() != nullptr) return false;
  return forced || isatty(fileno(stderr)) != 0;
}

void print_json(const nlohmann::json& j) {
  if (JobCapture* job = current_job_capture()) {
    job->result = j;
    job->has_result = true;
    return;
  }
  // error_handler replace: a non-UTF-8 byte in a string (a file name) must not
  // turn a finished run into an exception.
  const std::string text = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::fputs(text.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

std::string format_number(double v) { return fmt::format("{:.10g}", v); }

Table::Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}

void Table::add_row(std::vector<std::string> cells) {
  if (cells.size() != headers_.size()) {
    throw InvalidArgument(
        fmt::format("Table: row has {} cells, header has {}", cells.size(), headers_.size()));
  }
  rows_.push_back(std::move(cells));
}

std::string Table::render() const {
  std::vector<std::size_t> width(headers_.size());
  for (std::size_t c = 0; c < headers_.size(); ++c) {
    width[c] = headers_[c].size();
    for (const auto& row : rows_) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    for (std::size_t c = 0; c < cells.size(); ++c) {
      if (c) out += "  ";
      out += fmt::format("{:>{}}", cells[c], width[c]);
    }
    out += '\n';
  };
  line(headers_);
  for (const auto& row : rows_) line(row);
  return out;
}

}  // namespace otgpu::cli
