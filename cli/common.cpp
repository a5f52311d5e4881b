#include "common.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

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

void add_backend_flags(CLI::App& sub, BackendFlags& flags) {
  sub.add_option("--backend", flags.backend, "auto (GPU when usable, default), cpu or cuda");
  sub.add_option("--device", flags.device, "CUDA device ordinal (default 0)");
  sub.add_option("--threads", flags.threads, "CPU worker threads (default: all cores)");
}

Backend resolve_backend_flag(const BackendFlags& flags) {
  const Backend b = parse_backend(flags.backend, "--backend");
  require_at_least("--device", flags.device, 0);
  require_at_least("--threads", flags.threads, 0);
  return b;
}

CostKind parse_point_cost(const std::string& flag, const std::string& text) {
  if (text == "sqeuclidean") return CostKind::sqeuclidean;
  if (text == "euclidean") return CostKind::euclidean;
  throw InvalidArgument(fmt::format(
      "{}: unknown cost '{}' (expected sqeuclidean or euclidean; give a matrix with --cost-matrix)",
      flag, text));
}

void print_json(const nlohmann::json& j) {
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
