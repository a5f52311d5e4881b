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
#include "otgpu/error.h"
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
/// Any .npy array (reader errors only): shapes and values are the library's to check.
NpyInput load_array(const std::string& flag, const std::string& path);

/// Fails early (before a long computation) when `path` cannot be an output file:
/// empty, a directory, or in a folder that does not exist or is not writable.
/// Does nothing for an empty path when `optional` (the output was not asked for).
void check_output_path(const std::string& flag, const std::string& path, bool optional = true);

/// A file named on the command line, and the flag that named it.
struct FlagPath {
  std::string flag;  ///< "--f-out"
  std::string path;  ///< as given; empty = not asked for
};

/// Before anything runs: check_output_path for every output that was asked for, and
/// refuses (InvalidArgument) an output that names the same file as an input (nothing
/// is ever written over an input file) or as another output. "Same file" is the same
/// (device, inode) for files that exist (links and "./x" vs "x" included), else the
/// same canonical folder and file name. Empty paths are skipped.
void check_outputs(const std::vector<FlagPath>& inputs, const std::vector<FlagPath>& outputs);

/// [B, rest...] when `batched`, else [rest...].
std::vector<std::int64_t> batched_shape(bool batched, std::int64_t batch,
                                        std::initializer_list<std::int64_t> rest);

/// Writes a C-order float64 / int64 array of `shape` to `path` (size checked against
/// the shape); errors are prefixed with `flag`.
void write_output(const std::string& flag, const std::string& path, const std::vector<double>& data,
                  const std::vector<std::int64_t>& shape);
void write_output(const std::string& flag, const std::string& path,
                  const std::vector<std::int64_t>& data, const std::vector<std::int64_t>& shape);

// ---- typed flags ---------------------------------------------------------------

/// An unsigned 64-bit integer written in decimal, nothing else (no sign, no
/// fraction, no spaces): InvalidArgument "--seed: expected an integer in [0,
/// 18446744073709551615], got '-1'" otherwise. CLI11 would wrap "-1" to 2^64 - 1.
std::uint64_t parse_u64(const std::string& flag, const std::string& text);
/// parse_u64 for --seed, the one seed parser of every command.
std::uint64_t parse_seed(const std::string& text);

/// --json (flag: the JSON object on stdout instead of the table) and --json-file FILE
/// (the same object, indented, written to FILE; the table still goes to stdout).
struct JsonFlags {
  bool to_stdout = false;
  std::string file;
  FlagPath output() const { return {"--json-file", file}; }
};
void add_json_flags(CLI::App& sub, JsonFlags& flags);
/// Prints and/or writes `j` as the flags ask (print_json for stdout).
void emit_json(const JsonFlags& flags, const nlohmann::json& j);
/// `--json FILE` (or --json=FILE) meant "write FILE" in older `otgpu bench`: now an
/// InvalidArgument telling to use --json-file. Scans the raw arguments before CLI11
/// (which would only say that FILE was not expected).
void reject_json_value(int argc, const char* const* argv);

// ---- library errors in the command's words ----------------------------------------

/// How the library names an argument in its messages and what the command calls it.
/// `anywhere`: replace every occurrence (for distinctive names like "source.mean");
/// otherwise only the name that opens the message ("p must be ...": one-letter names
/// like a, b, x, y, p are also English words further in).
struct FlagName {
  std::string name;  ///< "p", "source.mean"
  std::string flag;  ///< "--p", "--m1 (m1.npy)"
  bool anywhere = false;
};

/// The library's message with the "fn: " prefix dropped and argument names replaced
/// by flags: "sliced_wasserstein: p must be finite and >= 1, got 0.5" -> "--p must be
/// finite and >= 1, got 0.5".
std::string with_flag_names(const std::string& message, const std::string& fn,
                            const std::vector<FlagName>& names);
/// The SinkhornOptions fields as `otgpu sinkhorn` spells them (eps -> --eps, max_iter
/// -> --max-iter, cpu_threads -> --threads, ...), for call_library around sinkhorn().
/// Inputs (x, y, a, b, cost) are added by the caller with their files.
std::vector<FlagName> sinkhorn_option_flag_names();
/// Rethrows `e` as the same otgpu::Error type with with_flag_names(e.what(), ...).
[[noreturn]] void rethrow_with_flag_names(const Error& e, const std::string& fn,
                                          const std::vector<FlagName>& names);
/// Runs `call` (a library entry point); its errors come back in the command's words.
template <class F>
auto call_library(const std::string& fn, const std::vector<FlagName>& names, F&& call)
    -> decltype(call()) {
  try {
    return call();
  } catch (const Error& e) {
    rethrow_with_flag_names(e, fn, names);
  }
}

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
/// Registers --backend auto|cpu|cuda, --device I and (with `threads`) --threads N on
/// `sub`; --device and --threads are typed non-negative integers (CLI11 rejects -1).
void add_backend_flags(CLI::App& sub, BackendFlags& flags, bool threads = true);
/// Maps --backend to the enum (InvalidArgument naming the flag for other text).
/// Whether the backend can run is the library's question, not the command's.
Backend resolve_backend_flag(const BackendFlags& flags);

/// Parses --cost sqeuclidean|euclidean (the point-cloud costs; a matrix comes from a
/// file, not from this flag).
CostKind parse_point_cost(const std::string& flag, const std::string& text);

// ---- how a command reports and ends (shared with `otgpu batch`) -----------------
// A command that ran as a job of `otgpu batch` (batch_capture.h) prints nothing and
// does not exit: these helpers and print_json record what it would have done instead.

/// "otgpu: warning: <text>" on stderr; inside a batch job, recorded for its result line.
void warn(const std::string& text);
/// Ends a command whose outputs are all written with exit status `code`: returns for
/// 0, else exits the process (flushing stdout and stderr); inside a batch job, records
/// the status and returns. Commands end non-zero through this, never std::exit.
void finish_command(int code);
/// Whether a command shows its live progress line on stderr: `forced` (--progress) or
/// stderr is a terminal, and never inside a batch job (the batch shows its own).
bool show_progress(bool forced);

// ---- printing ------------------------------------------------------------------

/// Prints `j` as exactly one compact JSON object and a newline on stdout. Doubles
/// keep round-trip precision; non-finite numbers become null. Inside a batch job the
/// object is recorded as the job's result instead.
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
