// The CUDA Gaussian OT path for builds without CUDA: a clean DeviceUnavailable.
#ifndef OTGPU_WITH_CUDA

#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/gaussian_cuda.h"

namespace otgpu::cuda_backend {

GaussianOTResult gaussian_ot(GpuContext*, const GaussianBatch&, const GaussianBatch&,
                             const detail::GaussianShape&, const GaussianOTOptions& options) {
  throw DeviceUnavailable(
      fmt::format("gaussian_ot: backend cuda: CUDA device {} unavailable: this libotgpu was built "
                  "without CUDA (configure with OTGPU_CUDA=ON and a CUDA toolkit)",
                  options.device));
}

}  // namespace otgpu::cuda_backend

#endif  // OTGPU_WITH_CUDA
