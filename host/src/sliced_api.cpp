// Public exact 1-D OT and sliced Wasserstein entry points: validate, pick the
// backend, dispatch, finish the per-problem values.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "cpu_sliced.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu/sliced.h"
#include "otgpu_host/backend.h"
#include "otgpu_host/cuda_backend.h"
#include "otgpu_host/sliced_cuda.h"
#include "sliced_validate.h"

namespace otgpu {

namespace {

SlicedResult run_sliced(GpuContext* ctx, const SlicedProblem& problem, const SlicedOptions& options,
                        std::string_view fn);

/// W_p^p sums mass |u - v|^p, which leaves fp64's normal range [2.2e-308, 1.8e308]
/// when p is large: |u - v| = 0.5 at p = 1e6 gives 0, |u - v| = 2 gives inf, and the
/// p-th root of that is no distance. A direction whose W_p^p is infinite, or below the
/// smallest normal double while its W_1 (the same directions at p = 1, run again only
/// in that case) is positive, is rejected with the range; exact zeros (equal
/// projected measures) pass.
void check_p_in_range(GpuContext* ctx, const SlicedProblem& problem, const SlicedOptions& options,
                      const SlicedResult& r, std::string_view fn) {
  if (!(options.p > 1.0)) return;
  constexpr double kMin = std::numeric_limits<double>::min();
  const auto out_of_range = [&](std::size_t k, double w1) {
    const auto L = static_cast<std::size_t>(r.projections);
    throw InvalidArgument(fmt::format(
        "{}: p = {}: the costs |u - v|^p leave the fp64 range [{:.3g}, {:.3g}] on these data "
        "(problem {}, direction {}: W_p^p = {}{}); use a smaller p",
        fn, options.p, kMin, std::numeric_limits<double>::max(), k / L, k % L, r.per_direction[k],
        std::isnan(w1) ? std::string() : fmt::format(" while W_1 = {}", w1)));
  };
  bool suspicious = false;
  for (std::size_t k = 0; k < r.per_direction.size(); ++k) {
    const double v = r.per_direction[k];
    if (std::isinf(v)) out_of_range(k, std::numeric_limits<double>::quiet_NaN());
    suspicious = suspicious || v < kMin;
  }
  if (!suspicious) return;
  SlicedOptions o1 = options;
  o1.p = 1.0;
  o1.gradients = false;
  o1.max_sliced = false;
  const SlicedResult r1 = run_sliced(ctx, problem, o1, fn);
  for (std::size_t k = 0; k < r.per_direction.size(); ++k) {
    if (r.per_direction[k] < kMin && r1.per_direction[k] > 0) out_of_range(k, r1.per_direction[k]);
  }
}

/// ctx == nullptr: the backend the options ask for (the CUDA path on the calling
/// thread's cached context); else the CUDA path on ctx.
SlicedResult run_sliced(GpuContext* ctx, const SlicedProblem& problem, const SlicedOptions& options,
                        std::string_view fn) {
  if (ctx != nullptr && options.backend == Backend::cpu) {
    throw InvalidArgument(
        fmt::format("{}: a GpuContext runs on the GPU; options.backend cpu is not allowed", fn));
  }
  const auto shape = detail::validate_sliced(problem, options, fn);
  const Backend backend =
      ctx != nullptr ? Backend::cuda
                     : detail::resolve_backend(options.backend, options.device, shape.space, fn);
  const auto t0 = std::chrono::steady_clock::now();
  SlicedResult r = backend == Backend::cuda
                       ? cuda_backend::sliced_wasserstein(ctx, problem, options, shape)
                       : cpu::sliced_wasserstein(problem, options, shape);
  detail::finalize_sliced_value(r, options);
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  check_p_in_range(ctx, problem, options, r, fn);
  return r;
}

/// x [n] -> [n, 1], x [B, n] -> [B, n, 1] (no copy).
TensorView as_points_1d(const TensorView& v, std::string_view fn, std::string_view name) {
  if (!v.present()) throw InvalidArgument(fmt::format("{}: {} is missing", fn, name));
  if (v.rank != 1 && v.rank != 2) {
    throw ShapeError(
        fmt::format("{}: {} must be [n] or [B, n] (1-D points), got {}", fn, name, v.describe()));
  }
  TensorView p = v;
  p.rank = v.rank + 1;
  p.shape[static_cast<std::size_t>(v.rank)] = 1;
  p.strides[static_cast<std::size_t>(v.rank)] = 1;
  return p;
}

SlicedProblem problem_1d(const TensorView& x, const TensorView& y, const TensorView& a,
                         const TensorView& b, std::string_view fn) {
  SlicedProblem pr;
  pr.x = as_points_1d(x, fn, "x");
  pr.y = as_points_1d(y, fn, "y");
  pr.a = a;
  pr.b = b;
  return pr;
}

}  // namespace

SlicedResult sliced_wasserstein(const SlicedProblem& problem, const SlicedOptions& options) {
  return run_sliced(nullptr, problem, options, "sliced_wasserstein");
}

SlicedResult sliced_wasserstein(GpuContext& ctx, const SlicedProblem& problem,
                                const SlicedOptions& options) {
  return run_sliced(&ctx, problem, options, "sliced_wasserstein");
}

std::vector<double> wasserstein_1d(const TensorView& x, const TensorView& y, const TensorView& a,
                                   const TensorView& b, double p, Backend backend, int device) {
  constexpr std::string_view fn = "wasserstein_1d";
  const SlicedProblem pr = problem_1d(x, y, a, b, fn);
  // In 1-D the single direction +1 makes the sliced value the exact W_p^p.
  static const double kUnit = 1.0;
  SlicedOptions o;
  o.p = p;
  o.backend = backend;
  o.device = device;
  o.directions = TensorView::contiguous(&kUnit, DType::f64, MemorySpace::host, {1, 1});
  if (x.present() && x.space == MemorySpace::device) {
    // Directions live with the problem; a device problem gets the seed's draw,
    // which in one dimension is +1 or -1: |u - v|^p does not see the sign.
    o.directions = TensorView{};
    o.projections = 1;
  }
  return run_sliced(nullptr, pr, o, fn).value_pp;
}

std::vector<Coupling1D> monotone_coupling_1d(const TensorView& x, const TensorView& y,
                                             const TensorView& a, const TensorView& b, double p) {
  constexpr std::string_view fn = "monotone_coupling_1d";
  const SlicedProblem pr = problem_1d(x, y, a, b, fn);
  SlicedOptions o;
  o.p = p;
  o.projections = 1;
  const auto shape = detail::validate_sliced(pr, o, fn);
  if (shape.space == MemorySpace::device) {
    throw InvalidArgument(fmt::format(
        "{}: x and y are in device memory; the coupling is computed on the host from host "
        "tensors",
        fn));
  }
  return cpu::monotone_coupling_1d(pr, p, shape);
}

std::vector<double> sliced_directions(std::int64_t d, int projections, std::uint64_t seed) {
  if (d < 1) throw InvalidArgument(fmt::format("sliced_directions: d must be >= 1, got {}", d));
  if (projections < 1) {
    throw InvalidArgument(
        fmt::format("sliced_directions: projections must be >= 1, got {}", projections));
  }
  detail::SlicedShape shape;
  shape.d = d;
  shape.projections = projections;
  SlicedOptions o;
  o.seed = seed;
  return detail::host_directions(o, shape);
}

}  // namespace otgpu
