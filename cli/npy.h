// Reading and writing NumPy .npy files (format versions 1.0, 2.0, 3.0; C order;
// float32/float64 data in either byte order, converted to native on load). The
// reader is defensive: a missing, truncated, corrupt or hostile file is an
// otgpu::IoError (or DTypeError for integer/bool/complex/object/string data) with
// one clear single-line message naming the file; it never crashes, hangs, or
// allocates more than the file holds.
//
// Messages start with a prefix built from `what` and the path, e.g.
//   "--x: X.npy: truncated: header says shape (100, 3) float64 = 2400 bytes but only 1200 follow"
//   "--x: X.npy has dtype int64 ('<i8'); expected float32 or float64"
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "otgpu/types.h"

namespace otgpu::npy {

/// Header fields are capped: longer headers are rejected as hostile (NumPy itself
/// refuses headers above 10000 bytes unless told otherwise).
inline constexpr std::size_t kMaxHeaderBytes = 64 * 1024;
/// More dimensions than NumPy supports (64) is a corrupt header.
inline constexpr std::size_t kMaxDims = 64;

struct Array {
  DType dtype = DType::f64;
  std::vector<std::int64_t> shape;   ///< empty for a 0-d array
  std::vector<unsigned char> bytes;  ///< C-order element data, native endianness
  std::string source;                ///< "--x: X.npy" (the message prefix), may be empty

  /// Product of the dimensions (1 for a 0-d array).
  std::int64_t numel() const;
  /// Host view of the data (rank 1..3; throws ShapeError naming `source` otherwise).
  /// The view borrows `bytes`: the Array must outlive it and stay unmodified.
  TensorView view() const;
  /// Element k (flat, C order) as double. Precondition: 0 <= k < numel().
  double at(std::int64_t k) const;
  /// "(100, 3) float64" for messages.
  std::string describe() const;
};

/// `path` with control characters escaped (\x0a), so that an error message that
/// names a hostile file name still fits on one line.
std::string printable_path(const std::string& path);

/// Python-style tuple text of a shape: "()", "(5,)", "(100, 3)".
std::string shape_to_string(const std::vector<std::int64_t>& shape);

/// Loads `path`; `what` (e.g. "--x") prefixes every error message (then the path).
/// Only regular files are read (a FIFO or device could block or never end).
Array load(const std::string& path, const std::string& what);

/// The shape in the header of `path` (the file is checked as load checks it; the data
/// is not read).
std::vector<std::int64_t> load_shape(const std::string& path, const std::string& what);

/// Rows [begin, end) of the first axis of `path` (shape[0] becomes end - begin): only
/// those bytes are read, at the header's data offset plus begin rows (a rank of a
/// sharded solve reads its own slice of X.npy). ShapeError when the range does not fit.
Array load_rows(const std::string& path, const std::string& what, std::int64_t begin,
                std::int64_t end);

/// Parses an in-memory .npy image (used by load and by the fuzz tests); `what` is
/// the whole message prefix (load passes "--x: X.npy").
Array parse(const unsigned char* data, std::size_t size, const std::string& what);

/// Writes a C-order array as '<f8' / '<f4' / '<i8' (native order on a big-endian
/// host, flagged as such), format 1.0 (2.0 when the header needs it), data aligned
/// to 64 bytes. The product of `shape` (1 for an empty shape) is the element count.
/// Throws IoError naming `path` on failure.
void save(const std::string& path, const double* data, const std::vector<std::int64_t>& shape);
void save(const std::string& path, const float* data, const std::vector<std::int64_t>& shape);
void save(const std::string& path, const std::int64_t* data,
          const std::vector<std::int64_t>& shape);

/// The bytes `save` would write, without touching the file system (tests build
/// valid images with it).
std::vector<unsigned char> encode(const void* data, char kind, std::size_t itemsize,
                                  const std::vector<std::int64_t>& shape);

}  // namespace otgpu::npy
