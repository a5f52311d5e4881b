// The CUDA Gaussian OT path for builds without CUDA: a clean DeviceUnavailable.
#ifndef OTGPU_WITH_CUDA

#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/gaussian_cuda.h"

namespace otgpu::cuda_backend {

namespace {
[[noreturn]] void gaussian_unavailable(int device) {
  throw DeviceUnavailable(
      fmt::format("gaussian_ot: backend cuda: CUDA device {} unavailable: this libotgpu was built "
                  "without CUDA (configure with OTGPU_CUDA=ON and a CUDA toolkit)",
                  device));
}
}  // namespace

GaussianOTResult gaussian_ot(const detail::GaussianPairs&, const GaussianOTOptions& options) {
  gaussian_unavailable(options.device);
}

std::vector<double> download_as_double(const TensorView&, int device) {
  gaussian_unavailable(device);
}

}  // namespace otgpu::cuda_backend

#endif  // OTGPU_WITH_CUDA
