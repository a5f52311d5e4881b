// Helpers shared by the `otgpu` subcommands (sinkhorn, sliced, gaussian, ...):
// loading .npy inputs with rank/finiteness checks whose messages name the flag and
// the file, writing outputs, checking numeric flags, the common backend flags, and
// JSON / table printing. Every failure is an otgpu::Error with a one-line message,
// which main() prints as "otgpu: error: ..." and turns into a non-zero exit.
//
// Typical use in a subcommand:
//   auto x = load_points("--x", args.x_path);          // [n,d] or [B,n,d], finite
//   auto a = load_weights("--a", args.a_path);         // [n] or [B,n], finite, >= 0
//   check_output_path("--f-out", args.f_out);          // before the long solve
//   problem.x = x.view();                              // f32 files stay f32
//   ...
//   write_output("--f-out", args.f_out, result.f, batched_shape(x.rank() == 3, B, {n}));
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "npy.h"
#include "otgpu/sinkhorn.h"
#include "otgpu/types.h"

namespace CLI {
class App;
}

namespace otgpu::cli {

/// A loaded .npy input and the flag that named it. view() borrows the array's
/// bytes: keep the NpyInput alive while the view is in use.
struct NpyInput {
  std::string flag;  ///< "--x"
  std::string path;  ///< as given on the command line
  npy::Array array;

  bool present() const { return !flag.empty(); }
  TensorView view() const { return array.view(); }
  int rank() const { return static_cast<int>(array.shape.size()); }
  std::int64_t dim(int k) const { return array.shape[static_cast<std::size_t>(k)]; }
  /// "--x (X.npy)", to name the input in messages.
  std::string label() const;
  /// "--x: X.npy has shape (100, 3) float64", for messages.
  std::string describe() const;
};

/// What load_input verifies about the values (the shape rules are separate).
enum class ValueCheck : std::uint8_t {
  none,         ///< any value, NaN included
  finite,       ///< no NaN / infinity
  nonnegative,  ///< finite and >= 0 (weights)
};

/// Loads `path` for `flag`, requires min_rank <= rank <= max_rank, every dimension
/// > 0, and the value check. `layout` describes the accepted shapes for the
/// message ("[n, d] or [B, n, d]"). Throws IoError / DTypeError (from the reader),
/// ShapeError or NonFiniteInput, each naming the flag and the file.
NpyInput load_input(const std::string& flag, const std::string& path, int min_rank, int max_rank,
                    const char* layout, ValueCheck check = ValueCheck::finite);

/// Point clouds: [n, d] or [B, n, d], finite.
NpyInput load_points(const std::string& flag, const std::string& path);
/// Weights: [n] or [B, n], finite and non-negative.
NpyInput load_weights(const std::string& flag, const std::string& path);
/// Cost matrices: [n, m] or [B, n, m], finite.
NpyInput load_cost_matrix(const std::string& flag, const std::string& path);

/// Fails early (before a long computation) when `path` cannot be an output file:
/// empty, a directory, or in a folder that does not exist or is not writable.
/// Does nothing for an empty path when `optional` (the output was not asked for).
void check_output_path(const std::string& flag, const std::string& path, bool optional = true);

/// [B, rest...] when `batched`, else [rest...].
std::vector<std::int64_t> batched_shape(bool batched, std::int64_t batch,
                                        std::initializer_list<std::int64_t> rest);

/// Writes a C-order float64 / int64 array of `shape` to `path` (size checked against
/// the shape); errors are prefixed with `flag`.
void write_output(const std::string& flag, const std::string& path, const std::vector<double>& data,
                  const std::vector<std::int64_t>& shape);
void write_output(const std::string& flag, const std::string& path,
                  const std::vector<std::int64_t>& data, const std::vector<std::int64_t>& shape);

// ---- numeric flags (CLI11 only converts; these give the library-style message) --

/// value > 0 and finite, else InvalidArgument "--eps: must be a positive finite number, got -1".
void require_positive_finite(const std::string& flag, double value);
/// value >= 0 and finite.
void require_nonnegative_finite(const std::string& flag, double value);
/// value > 0 (+infinity allowed, NaN not).
void require_positive(const std::string& flag, double value);
/// value >= minimum.
void require_at_least(const std::string& flag, long long value, long long minimum);

// ---- backend / device / threads / cost -----------------------------------------

struct BackendFlags {
  std::string backend = "auto";
  int device = 0;
  int threads = 0;
};
/// Registers --backend auto|cpu|cuda, --device I and --threads N on `sub`.
void add_backend_flags(CLI::App& sub, BackendFlags& flags);
/// Parses and checks the flags (throws InvalidArgument naming the flag).
Backend resolve_backend_flag(const BackendFlags& flags);

/// Parses --cost sqeuclidean|euclidean (the point-cloud costs; a matrix comes from a
/// file, not from this flag).
CostKind parse_point_cost(const std::string& flag, const std::string& text);

// ---- printing ------------------------------------------------------------------

/// Prints `j` as exactly one compact JSON object and a newline on stdout. Doubles
/// keep round-trip precision; non-finite numbers become null.
void print_json(const nlohmann::json& j);

/// A number for a human-readable table (10 significant digits).
std::string format_number(double v);

/// A plain-text table with a header row; columns are right-aligned (numbers) and
/// separated by two spaces.
class Table {
 public:
  explicit Table(std::vector<std::string> headers);
  /// Throws InvalidArgument when the row has the wrong number of cells.
  void add_row(std::vector<std::string> cells);
  std::string render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace otgpu::cli
