#include "otgpu/types.h"

#include <fmt/format.h>

#include <string>

#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu {

Backend parse_backend(std::string_view text, std::string_view arg_name) {
  if (text == "auto") return Backend::automatic;
  if (text == "cpu") return Backend::cpu;
  if (text == "cuda") return Backend::cuda;
  throw InvalidArgument(
      fmt::format("{}: unknown backend '{}' (expected auto, cpu or cuda)", arg_name, text));
}

std::string_view to_string(Backend b) noexcept {
  switch (b) {
    case Backend::automatic:
      return "auto";
    case Backend::cpu:
      return "cpu";
    case Backend::cuda:
      return "cuda";
  }
  return "?";
}

std::string_view to_string(DType t) noexcept { return t == DType::f32 ? "float32" : "float64"; }

CostKind parse_cost_kind(std::string_view text, std::string_view arg_name) {
  if (text == "sqeuclidean") return CostKind::sqeuclidean;
  if (text == "euclidean") return CostKind::euclidean;
  if (text == "matrix") return CostKind::matrix;
  if (text == "neg_dot") return CostKind::neg_dot;
  throw InvalidArgument(
      fmt::format("{}: unknown cost '{}' (expected sqeuclidean, euclidean, neg_dot or matrix)",
                  arg_name, text));
}

std::string_view to_string(CostKind c) noexcept {
  switch (c) {
    case CostKind::sqeuclidean:
      return "sqeuclidean";
    case CostKind::euclidean:
      return "euclidean";
    case CostKind::matrix:
      return "matrix";
    case CostKind::neg_dot:
      return "neg_dot";
  }
  return "?";
}

bool TensorView::is_contiguous() const noexcept {
  std::int64_t expect = 1;
  for (int k = rank - 1; k >= 0; --k) {
    const auto kk = static_cast<std::size_t>(k);
    if (shape[kk] != 1 && strides[kk] != expect) return false;
    expect *= shape[kk];
  }
  return true;
}

std::string TensorView::describe() const {
  if (!present()) return "(absent)";
  std::string s = "[";
  for (int k = 0; k < rank; ++k) {
    if (k) s += ", ";
    s += std::to_string(shape[static_cast<std::size_t>(k)]);
  }
  s += "] ";
  s += to_string(dtype);
  s += space == MemorySpace::host ? " host" : " device";
  return s;
}

TensorView TensorView::contiguous(const void* data, DType dtype, MemorySpace space,
                                  std::initializer_list<std::int64_t> shape) {
  if (shape.size() < 1 || shape.size() > static_cast<std::size_t>(kMaxRank)) {
    throw ShapeError(
        fmt::format("TensorView: rank {} not supported (1 to {})", shape.size(), kMaxRank));
  }
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.space = space;
  v.rank = static_cast<int>(shape.size());
  std::size_t k = 0;
  for (auto s : shape) v.shape[k++] = s;
  std::int64_t stride = 1;
  for (int j = v.rank - 1; j >= 0; --j) {
    v.strides[static_cast<std::size_t>(j)] = stride;
    stride *= v.shape[static_cast<std::size_t>(j)];
  }
  return v;
}

double load_as_double(const TensorView& v, std::int64_t i0, std::int64_t i1,
                      std::int64_t i2) noexcept {
  std::int64_t off = i0 * v.strides[0];
  if (v.rank > 1) off += i1 * v.strides[1];
  if (v.rank > 2) off += i2 * v.strides[2];
  return v.dtype == DType::f32 ? static_cast<double>(static_cast<const float*>(v.data)[off])
                               : static_cast<const double*>(v.data)[off];
}

}  // namespace otgpu
