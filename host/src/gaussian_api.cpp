// Public Gaussian OT entry point: validate (shapes, finiteness, symmetry, PSD), pick
// the backend, pack the inputs as float64, dispatch.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_gaussian.h"
#include "gaussian_pairs.h"
#include "otgpu/detail/gaussian_math.h"
#include "otgpu/error.h"
#include "otgpu/gaussian.h"
#include "otgpu_host/backend.h"
#include "otgpu_host/cuda_backend.h"
#include "otgpu_host/gaussian_cuda.h"

namespace otgpu {

namespace {

constexpr const char* kFn = "gaussian_ot";

/// One of the four input tensors with its name and role.
struct Input {
  const TensorView* view;
  const char* name;  ///< "source.cov"
  bool is_cov;
};

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

/// The view's elements, C order, as float64 on the host.
std::vector<double> pack(const TensorView& v, int device) {
  if (v.space == MemorySpace::device) return cuda_backend::download_as_double(v, device);
  std::vector<double> out(static_cast<std::size_t>(v.numel()));
  const std::int64_t d0 = v.dim(0);
  const std::int64_t d1 = v.rank > 1 ? v.dim(1) : 1;
  const std::int64_t d2 = v.rank > 2 ? v.dim(2) : 1;
  std::size_t k = 0;
  for (std::int64_t i0 = 0; i0 < d0; ++i0) {
    for (std::int64_t i1 = 0; i1 < d1; ++i1) {
      for (std::int64_t i2 = 0; i2 < d2; ++i2) out[k++] = load_as_double(v, i0, i1, i2);
    }
  }
  return out;
}

/// "source.cov of pair 3" or "source.cov (shared by all pairs)".
std::string which(const char* name, std::int64_t count, std::int64_t block) {
  if (count == 1) return fmt::format("{} (shared by all pairs)", name);
  return fmt::format("{} of pair {}", name, block);
}

void check_finite(const std::vector<double>& data, const char* name, std::int64_t count,
                  std::int64_t block_size, bool is_cov, std::int64_t d) {
  for (std::size_t k = 0; k < data.size(); ++k) {
    if (std::isfinite(data[k])) continue;
    const auto idx = static_cast<std::int64_t>(k);
    const std::int64_t block = idx / block_size;
    const std::int64_t within = idx % block_size;
    const std::string where =
        is_cov ? fmt::format("[{}, {}]", within / d, within % d) : fmt::format("[{}]", within);
    throw NonFiniteInput(
        fmt::format("{}: {}: element {} is {}", kFn, which(name, count, block), where, data[k]));
  }
}

/// Symmetry within kGaussianSymmetryRelTol (then symmetrized in place) and PSD:
/// lambda_min >= -kGaussianNullRelTol * trace. A Cholesky factorization of
/// S + tol * I proves the bound cheaply; only a failure pays for the eigenvalues,
/// which then decide (and go into the message).
void check_covariances(std::vector<double>& s, const char* name, std::int64_t d) {
  const std::int64_t dd = d * d;
  const std::int64_t count = static_cast<std::int64_t>(s.size()) / dd;
  for (std::int64_t b = 0; b < count; ++b) {
    double* a = s.data() + b * dd;
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
    if (max_asym > detail::kGaussianSymmetryRelTol * max_abs) {
      throw InvalidArgument(fmt::format(
          "{}: {} is not symmetric: max |S_ij - S_ji| = {} at (i, j) = ({}, {}) ({} and {}), "
          "relative to max |S_ij| = {}: {} > tolerance {}",
          kFn, which(name, count, b), max_asym, ai, aj, a[ai * d + aj], a[aj * d + ai], max_abs,
          max_asym / max_abs, detail::kGaussianSymmetryRelTol));
    }
    double trace = 0;
    for (std::int64_t i = 0; i < d; ++i) {
      for (std::int64_t j = i + 1; j < d; ++j) {
        const double sym = 0.5 * (a[i * d + j] + a[j * d + i]);
        a[i * d + j] = sym;
        a[j * d + i] = sym;
      }
      trace += a[i * d + i];
    }
    const double tol = detail::kGaussianNullRelTol * std::max(trace, 0.0);
    if (trace >= 0 && cpu::cholesky_succeeds(a, d, tol)) continue;
    std::vector<double> work(a, a + dd), lambda;
    cpu::symmetric_eigen(work, d, lambda, nullptr);
    if (lambda.front() < -tol) {
      throw InvalidArgument(fmt::format(
          "{}: {} is not positive semi-definite: smallest eigenvalue {} < -{} * trace = {} "
          "(trace {})",
          kFn, which(name, count, b), lambda.front(), detail::kGaussianNullRelTol, -tol, trace));
    }
  }
}

}  // namespace

GaussianOTResult gaussian_ot(const GaussianBatch& source, const GaussianBatch& target,
                             const GaussianOTOptions& options) {
  // ---- options ----
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

  // ---- shapes ----
  const std::array<Input, 4> inputs{{{&source.mean, "source.mean", false},
                                     {&source.cov, "source.cov", true},
                                     {&target.mean, "target.mean", false},
                                     {&target.cov, "target.cov", true}}};
  for (const Input& in : inputs) check_view(*in.view, in.name, in.is_cov);
  const std::int64_t d = source.mean.dim(source.mean.rank - 1);
  std::int64_t batch = 1;
  const char* batch_from = nullptr;
  for (const Input& in : inputs) {
    const TensorView& v = *in.view;
    if (v.dim(v.rank - 1) != d) {
      throw ShapeError(fmt::format("{}: {} has shape {} but source.mean {} fixes d = {}", kFn,
                                   in.name, v.describe(), source.mean.describe(), d));
    }
    const bool batched = v.rank == (in.is_cov ? 3 : 2);
    if (!batched) continue;
    if (batch_from == nullptr) {
      batch = v.dim(0);
      batch_from = in.name;
    } else if (v.dim(0) != batch) {
      throw ShapeError(fmt::format(
          "{}: {} has batch size {} ({}) but {} has batch size {} (batched inputs must agree; "
          "an input without the batch dimension is shared by all pairs)",
          kFn, in.name, v.dim(0), v.describe(), batch_from, batch));
    }
  }
  const MemorySpace space = source.mean.space;
  for (const Input& in : inputs) {
    if (in.view->space != space) {
      throw InvalidArgument(fmt::format(
          "{}: {} is in {} memory but source.mean is in {} memory (all tensors must be in one "
          "memory space)",
          kFn, in.name, in.view->space == MemorySpace::host ? "host" : "device",
          space == MemorySpace::host ? "host" : "device"));
    }
  }
  const Backend backend = detail::resolve_backend(options.backend, options.device, space, kFn);

  // ---- data ----
  detail::GaussianPairs pairs;
  pairs.batch = batch;
  pairs.d = d;
  pairs.m1 = pack(source.mean, options.device);
  pairs.s1 = pack(source.cov, options.device);
  pairs.m2 = pack(target.mean, options.device);
  pairs.s2 = pack(target.cov, options.device);
  check_finite(pairs.m1, "source.mean", pairs.count_m1(), d, false, d);
  check_finite(pairs.s1, "source.cov", pairs.count_s1(), d * d, true, d);
  check_finite(pairs.m2, "target.mean", pairs.count_m2(), d, false, d);
  check_finite(pairs.s2, "target.cov", pairs.count_s2(), d * d, true, d);
  check_covariances(pairs.s1, "source.cov", d);
  check_covariances(pairs.s2, "target.cov", d);

  const auto t0 = std::chrono::steady_clock::now();
  GaussianOTResult r = backend == Backend::cuda ? cuda_backend::gaussian_ot(pairs, options)
                                                : cpu::gaussian_ot(pairs, options);
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace otgpu
