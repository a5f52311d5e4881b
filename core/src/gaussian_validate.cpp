// Validation of Gaussian OT inputs (gaussian_validate.h).
#include "gaussian_validate.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_gaussian.h"
#include "otgpu/detail/gaussian_math.h"
#include "otgpu/error.h"

namespace otgpu::detail {

namespace {

constexpr const char* kFn = "gaussian_ot";

/// One of the four input tensors with its name and role.
struct Input {
  const TensorView* view;
  const char* name;  ///< "source.cov"
  bool is_cov;
};

std::array<Input, 4> inputs_of(const GaussianBatch& source, const GaussianBatch& target) {
  return {{{&source.mean, "source.mean", false},
           {&source.cov, "source.cov", true},
           {&target.mean, "target.mean", false},
           {&target.cov, "target.cov", true}}};
}

/// Rank, dtype, memory space, sizes and strides of one view.
void check_view(const TensorView& v, const char* name, bool is_cov) {
  const char* layout = is_cov ? "[d, d] or [B, d, d]" : "[d] or [B, d]";
  if (!v.present())
    throw InvalidArgument(fmt::format("{}: {} is missing (expected {})", kFn, name, layout));
  const int lo = is_cov ? 2 : 1;
  if (v.rank < lo || v.rank > lo + 1) {
    throw ShapeError(fmt::format("{}: {} must be {}, got {}", kFn, name, layout, v.describe()));
  }
  if (v.dtype != DType::f32 && v.dtype != DType::f64) {
    throw DTypeError(
        fmt::format("{}: {} has unsupported dtype code {} (float32 or float64 expected)", kFn, name,
                    static_cast<int>(v.dtype)));
  }
  if (v.space != MemorySpace::host && v.space != MemorySpace::device) {
    throw InvalidArgument(fmt::format("{}: {} has unknown memory space code {}", kFn, name,
                                      static_cast<int>(v.space)));
  }
  for (int k = 0; k < v.rank; ++k) {
    if (v.dim(k) <= 0) {
      throw ShapeError(fmt::format("{}: {} has size {} in dimension {} of {} (sizes must be > 0)",
                                   kFn, name, v.dim(k), k, v.describe()));
    }
    if (v.stride(k) < 0) {
      throw ShapeError(fmt::format("{}: {} has negative stride {} in dimension {} of {}", kFn, name,
                                   v.stride(k), k, v.describe()));
    }
  }
  if (is_cov && v.dim(v.rank - 1) != v.dim(v.rank - 2)) {
    throw ShapeError(
        fmt::format("{}: {} must be square ({}), got {}", kFn, name, layout, v.describe()));
  }
}

/// "source.cov of pair 3" or "source.cov (shared by all pairs)".
std::string which(const char* name, std::int64_t count, std::int64_t block) {
  if (count == 1) return fmt::format("{} (shared by all pairs)", name);
  return fmt::format("{} of pair {}", name, block);
}

/// Element (i, j) of block `block` of a rank-lower (shared) or batched view; means
/// are read with j = 0 as (block, i).
double element(const TensorView& v, bool is_cov, std::int64_t block, std::int64_t i,
               std::int64_t j) {
  const bool batched = v.rank == (is_cov ? 3 : 2);
  if (is_cov) return batched ? load_as_double(v, block, i, j) : load_as_double(v, i, j);
  return batched ? load_as_double(v, block, i) : load_as_double(v, i);
}

std::int64_t blocks_of(const TensorView& v, bool is_cov) {
  return v.rank == (is_cov ? 3 : 2) ? v.dim(0) : 1;
}

void check_finite(const TensorView& v, const char* name, bool is_cov, std::int64_t d) {
  const std::int64_t count = blocks_of(v, is_cov);
  const std::int64_t cols = is_cov ? d : 1;
  for (std::int64_t b = 0; b < count; ++b) {
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t j = 0; j < cols; ++j) {
        const double x = element(v, is_cov, b, i, j);
        if (std::isfinite(x)) continue;
        const std::string where = is_cov ? fmt::format("[{}, {}]", i, j) : fmt::format("[{}]", i);
        throw NonFiniteInput(
            fmt::format("{}: {}: element {} is {}", kFn, which(name, count, b), where, x));
      }
    }
  }
}

/// Block b of a covariance view as a contiguous row-major d x d matrix.
void load_cov(const TensorView& v, std::int64_t b, std::int64_t d, double* out) {
  for (std::int64_t i = 0; i < d; ++i) {
    for (std::int64_t j = 0; j < d; ++j) out[i * d + j] = element(v, true, b, i, j);
  }
}

/// a <- (a + a^T) / 2; returns the trace.
double symmetrize(double* a, std::int64_t d) {
  double trace = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    for (std::int64_t j = i + 1; j < d; ++j) {
      const double sym = 0.5 * (a[i * d + j] + a[j * d + i]);
      a[i * d + j] = sym;
      a[j * d + i] = sym;
    }
    trace += a[i * d + i];
  }
  return trace;
}

/// Symmetry within kGaussianSymmetryRelTol and PSD: lambda_min >= -kGaussianNullRelTol
/// * trace. A Cholesky factorization of S + tol * I proves the bound cheaply; only a
/// failure pays for the eigenvalues, which then decide (and go into the message).
void check_covariances(const TensorView& v, const char* name, std::int64_t d) {
  const std::int64_t count = blocks_of(v, true);
  std::vector<double> block(static_cast<std::size_t>(d * d));
  for (std::int64_t b = 0; b < count; ++b) {
    double* a = block.data();
    load_cov(v, b, d, a);
    double max_abs = 0, max_asym = 0;
    std::int64_t ai = 0, aj = 0;
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t j = 0; j < d; ++j) {
        max_abs = std::max(max_abs, std::fabs(a[i * d + j]));
        const double asym = std::fabs(a[i * d + j] - a[j * d + i]);
        if (asym > max_asym) {
          max_asym = asym;
          ai = i;
          aj = j;
        }
      }
    }
    if (max_asym > kGaussianSymmetryRelTol * max_abs) {
      throw InvalidArgument(fmt::format(
          "{}: {} is not symmetric: max |S_ij - S_ji| = {} at (i, j) = ({}, {}) ({} and {}), "
          "relative to max |S_ij| = {}: {} > tolerance {}",
          kFn, which(name, count, b), max_asym, ai, aj, a[ai * d + aj], a[aj * d + ai], max_abs,
          max_asym / max_abs, kGaussianSymmetryRelTol));
    }
    const double trace = symmetrize(a, d);
    const double tol = kGaussianNullRelTol * std::max(trace, 0.0);
    if (trace >= 0 && cpu::cholesky_succeeds(a, d, tol)) continue;
    std::vector<double> work(block), lambda;
    cpu::symmetric_eigen(work, d, lambda, nullptr);
    if (lambda.front() < -tol) {
      throw InvalidArgument(fmt::format(
          "{}: {} is not positive semi-definite: smallest eigenvalue {} < -{} * trace = {} "
          "(trace {})",
          kFn, which(name, count, b), lambda.front(), kGaussianNullRelTol, -tol, trace));
    }
  }
}

std::vector<double> pack(const TensorView& v, bool is_cov, std::int64_t d) {
  const std::int64_t count = blocks_of(v, is_cov);
  const std::int64_t cols = is_cov ? d : 1;
  std::vector<double> out(static_cast<std::size_t>(count * d * cols));
  std::size_t k = 0;
  for (std::int64_t b = 0; b < count; ++b) {
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t j = 0; j < cols; ++j) out[k++] = element(v, is_cov, b, i, j);
    }
  }
  if (is_cov) {
    for (std::int64_t b = 0; b < count; ++b) symmetrize(out.data() + b * d * d, d);
  }
  return out;
}

}  // namespace

GaussianShape validate_gaussian_shapes(const GaussianBatch& source, const GaussianBatch& target,
                                       const GaussianOTOptions& options) {
  if (!std::isfinite(options.eps) || options.eps < 0) {
    throw InvalidArgument(fmt::format(
        "{}: eps must be finite and >= 0 (0 = unregularized W2), got {}", kFn, options.eps));
  }
  if (options.device < 0) {
    throw InvalidArgument(fmt::format("{}: device must be >= 0, got {}", kFn, options.device));
  }
  if (options.backend != Backend::automatic && options.backend != Backend::cpu &&
      options.backend != Backend::cuda) {
    throw InvalidArgument(
        fmt::format("{}: unknown backend code {}", kFn, static_cast<int>(options.backend)));
  }
  const auto inputs = inputs_of(source, target);
  for (const Input& in : inputs) check_view(*in.view, in.name, in.is_cov);
  GaussianShape shape;
  shape.d = source.mean.dim(source.mean.rank - 1);
  const char* batch_from = nullptr;
  for (const Input& in : inputs) {
    const TensorView& v = *in.view;
    if (v.dim(v.rank - 1) != shape.d) {
      throw ShapeError(fmt::format("{}: {} has shape {} but source.mean {} fixes d = {}", kFn,
                                   in.name, v.describe(), source.mean.describe(), shape.d));
    }
    const bool batched = v.rank == (in.is_cov ? 3 : 2);
    if (!batched) continue;
    if (batch_from == nullptr) {
      shape.batch = v.dim(0);
      batch_from = in.name;
    } else if (v.dim(0) != shape.batch) {
      throw ShapeError(fmt::format(
          "{}: {} has batch size {} ({}) but {} has batch size {} (batched inputs must agree; "
          "an input without the batch dimension is shared by all pairs)",
          kFn, in.name, v.dim(0), v.describe(), batch_from, shape.batch));
    }
  }
  shape.space = source.mean.space;
  for (const Input& in : inputs) {
    if (in.view->space != shape.space) {
      throw InvalidArgument(fmt::format(
          "{}: {} is in {} memory but source.mean is in {} memory (all tensors must be in one "
          "memory space)",
          kFn, in.name, in.view->space == MemorySpace::host ? "host" : "device",
          shape.space == MemorySpace::host ? "host" : "device"));
    }
  }
  shape.count_m1 = blocks_of(source.mean, false);
  shape.count_s1 = blocks_of(source.cov, true);
  shape.count_m2 = blocks_of(target.mean, false);
  shape.count_s2 = blocks_of(target.cov, true);
  return shape;
}

void validate_gaussian_values(const GaussianBatch& source, const GaussianBatch& target,
                              const GaussianShape& shape) {
  for (const Input& in : inputs_of(source, target)) {
    if (in.view->space != MemorySpace::host) {
      throw InvalidArgument(fmt::format(
          "{}: internal: {} must be read back to host memory before its values are checked", kFn,
          in.name));
    }
    check_finite(*in.view, in.name, in.is_cov, shape.d);
  }
  check_covariances(source.cov, "source.cov", shape.d);
  check_covariances(target.cov, "target.cov", shape.d);
}

GaussianPairs pack_gaussian_pairs(const GaussianBatch& source, const GaussianBatch& target,
                                  const GaussianShape& shape) {
  GaussianPairs pairs;
  pairs.batch = shape.batch;
  pairs.d = shape.d;
  pairs.m1 = pack(source.mean, false, shape.d);
  pairs.s1 = pack(source.cov, true, shape.d);
  pairs.m2 = pack(target.mean, false, shape.d);
  pairs.s2 = pack(target.cov, true, shape.d);
  return pairs;
}

}  // namespace otgpu::detail
