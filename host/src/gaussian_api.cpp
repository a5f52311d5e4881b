// Public Gaussian OT entry points: validate (core/src/gaussian_validate.h), pick the
// backend, dispatch. The CPU reference reads the inputs packed as float64; the CUDA
// driver checks the values itself (device views through a read-back) and stages the
// raw inputs on the device.
#include <chrono>

#include "cpu_gaussian.h"
#include "gaussian_validate.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu/gaussian.h"
#include "otgpu_host/backend.h"
#include "otgpu_host/gaussian_cuda.h"

namespace otgpu {

GaussianOTResult gaussian_ot(const GaussianBatch& source, const GaussianBatch& target,
                             const GaussianOTOptions& options) {
  const auto shape = detail::validate_gaussian_shapes(source, target, options);
  const Backend backend =
      detail::resolve_backend(options.backend, options.device, shape.space, "gaussian_ot");
  if (backend == Backend::cuda) {
    return cuda_backend::gaussian_ot(nullptr, source, target, shape, options);
  }
  detail::validate_gaussian_values(source, target, shape);
  const detail::GaussianPairs pairs = detail::pack_gaussian_pairs(source, target, shape);
  const auto t0 = std::chrono::steady_clock::now();
  GaussianOTResult r = cpu::gaussian_ot(pairs, options);
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

GaussianOTResult gaussian_ot(GpuContext& ctx, const GaussianBatch& source,
                             const GaussianBatch& target, const GaussianOTOptions& options) {
  if (options.backend == Backend::cpu) {
    throw InvalidArgument(
        "gaussian_ot: a GpuContext runs on the GPU; options.backend cpu is not allowed");
  }
  const auto shape = detail::validate_gaussian_shapes(source, target, options);
  return cuda_backend::gaussian_ot(&ctx, source, target, shape, options);
}

}  // namespace otgpu
