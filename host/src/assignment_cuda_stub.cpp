// The CUDA assignment path for builds without CUDA: a clean DeviceUnavailable.
#ifndef OTGPU_WITH_CUDA

#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/assignment_cuda.h"

namespace otgpu::cuda_backend {

namespace {
[[noreturn]] void unavailable(int device) {
  throw DeviceUnavailable(
      fmt::format("backend cuda: CUDA device {} unavailable: this libotgpu was built without CUDA "
                  "(configure with OTGPU_CUDA=ON and a CUDA toolkit)",
                  device));
}
}  // namespace

AssignmentResult assignment(GpuContext*, const AssignmentProblem&, const AssignmentOptions& options,
                            const detail::AssignmentShape&) {
  unavailable(options.device);
}

void assignment_async(GpuContext&, const AssignmentProblem&, const AssignmentOptions& options,
                      const detail::AssignmentShape&, const DeviceAssignmentOutputs&) {
  unavailable(options.device);
}

}  // namespace otgpu::cuda_backend

#endif  // OTGPU_WITH_CUDA
