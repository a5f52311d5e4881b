// Public exact 1-D OT and sliced Wasserstein entry points: validate, pick the
// backend, dispatch, finish the per-problem values.
#include <fmt/format.h>

#include <chrono>
#include <cmath>

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
