#include "otgpu_host/backend.h"

#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"

namespace otgpu::detail {

Backend resolve_backend(Backend requested, int device, MemorySpace space, std::string_view fn) {
  if (requested == Backend::cpu) {
    if (space == MemorySpace::device) {
      throw InvalidArgument(fmt::format(
          "{}: backend cpu: the tensors are in device memory; use backend cuda or auto", fn));
    }
    return Backend::cpu;
  }
  if (requested == Backend::cuda || space == MemorySpace::device) {
    cuda_backend::require_device(device);
    return Backend::cuda;
  }
  return device >= 0 && cuda_backend::device_count() > device ? Backend::cuda : Backend::cpu;
}

}  // namespace otgpu::detail
