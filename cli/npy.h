// Reading and writing NumPy .npy files (format versions 1.0, 2.0, 3.0; C order;
// little-endian float32/float64 data). The reader is defensive: a missing,
// truncated, corrupt or hostile file is an otgpu::IoError (or DTypeError for
// integer/complex/object data) with one clear message naming the file; it never
// crashes, hangs, or allocates more than the file holds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "otgpu/types.h"

namespace otgpu::npy {

struct Array {
  DType dtype = DType::f64;
  std::vector<std::int64_t> shape;  ///< empty for a 0-d array
  std::vector<unsigned char> bytes; ///< C-order element data, native endianness

  std::int64_t numel() const;
  /// Host view of the data (rank 1..3; throws ShapeError otherwise).
  TensorView view() const;
  /// Element k (flat, C order) as double.
  double at(std::int64_t k) const;
};

/// Loads `path`; `what` (e.g. "--x") prefixes every error message.
Array load(const std::string& path, const std::string& what);

/// Parses an in-memory .npy image (used by load and by the fuzz tests).
Array parse(const unsigned char* data, std::size_t size, const std::string& what);

/// Writes a float64 (or float32) C-order array.
void save(const std::string& path, const double* data, const std::vector<std::int64_t>& shape);
void save(const std::string& path, const float* data, const std::vector<std::int64_t>& shape);

}  // namespace otgpu::npy
