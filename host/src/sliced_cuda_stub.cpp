// The CUDA sliced path for builds without CUDA: a clean DeviceUnavailable.
#ifndef OTGPU_WITH_CUDA

#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/sliced_cuda.h"

namespace otgpu::cuda_backend {

SlicedResult sliced_wasserstein(GpuContext*, const SlicedProblem&, const SlicedOptions& options,
                                const detail::SlicedShape&) {
  throw DeviceUnavailable(
      fmt::format("backend cuda: CUDA device {} unavailable: this libotgpu was built without CUDA "
                  "(configure with OTGPU_CUDA=ON and a CUDA toolkit)",
                  options.device));
}

}  // namespace otgpu::cuda_backend

#endif  // OTGPU_WITH_CUDA
