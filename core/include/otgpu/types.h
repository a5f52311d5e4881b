// Backend-neutral value types: element types, memory spaces, backends, and the
// non-owning tensor views every entry point takes (pointer + shape + strides).
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace otgpu {

enum class DType : std::uint8_t { f32, f64 };
enum class MemorySpace : std::uint8_t { host, device };
enum class Backend : std::uint8_t { automatic, cpu, cuda };

/// Parses "auto" | "cpu" | "cuda"; throws InvalidArgument naming `arg_name`.
Backend parse_backend(std::string_view text, std::string_view arg_name = "backend");
std::string_view to_string(Backend b) noexcept;
std::string_view to_string(DType t) noexcept;
constexpr std::size_t dtype_size(DType t) noexcept { return t == DType::f32 ? 4 : 8; }

/// Non-owning read-only view of a rank-1..3 tensor. Strides are in elements (not
/// bytes) and may be any non-negative values; a default-constructed view is
/// "absent" (e.g. weights left uniform).
struct TensorView {
  static constexpr int kMaxRank = 3;

  const void* data = nullptr;
  DType dtype = DType::f32;
  MemorySpace space = MemorySpace::host;
  int rank = 0;
  std::array<std::int64_t, kMaxRank> shape{};
  std::array<std::int64_t, kMaxRank> strides{};

  bool present() const noexcept { return data != nullptr; }
  std::int64_t numel() const noexcept {
    std::int64_t n = rank > 0 ? 1 : 0;
    for (int k = 0; k < rank; ++k) n *= shape[static_cast<std::size_t>(k)];
    return n;
  }
  std::int64_t dim(int k) const noexcept { return shape[static_cast<std::size_t>(k)]; }
  std::int64_t stride(int k) const noexcept { return strides[static_cast<std::size_t>(k)]; }
  /// True when strides are the C-order (row-major) strides of the shape.
  bool is_contiguous() const noexcept;
  /// "[4, 100, 3] f32 host" for messages.
  std::string describe() const;

  /// Contiguous (C-order) view of `shape` (rank = shape.size(), 1..3).
  static TensorView contiguous(const void* data, DType dtype, MemorySpace space,
                               std::initializer_list<std::int64_t> shape);
  static TensorView host(const float* p, std::initializer_list<std::int64_t> shape) {
    return contiguous(p, DType::f32, MemorySpace::host, shape);
  }
  static TensorView host(const double* p, std::initializer_list<std::int64_t> shape) {
    return contiguous(p, DType::f64, MemorySpace::host, shape);
  }
  static TensorView device(const float* p, std::initializer_list<std::int64_t> shape) {
    return contiguous(p, DType::f32, MemorySpace::device, shape);
  }
  static TensorView device(const double* p, std::initializer_list<std::int64_t> shape) {
    return contiguous(p, DType::f64, MemorySpace::device, shape);
  }
};

/// Reads element (i0, i1, i2) of a host view as double (indices past rank ignored).
double load_as_double(const TensorView& v, std::int64_t i0, std::int64_t i1 = 0,
                      std::int64_t i2 = 0) noexcept;

}  // namespace otgpu
