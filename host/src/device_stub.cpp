// The stream-ordered GPU API in builds without CUDA: constructing a GpuContext is a
// clean DeviceUnavailable, so code written against otgpu/device.h still links.
#ifndef OTGPU_WITH_CUDA

#include <fmt/format.h>

#include "otgpu/device.h"
#include "otgpu/error.h"

namespace otgpu {

struct GpuContext::Impl {};

GpuContext::GpuContext(int device, void*) {
  throw DeviceUnavailable(fmt::format(
      "GpuContext: CUDA device {} unavailable: this libotgpu was built without CUDA", device));
}
GpuContext::~GpuContext() = default;
int GpuContext::device() const noexcept { return -1; }
void* GpuContext::stream() const noexcept { return nullptr; }
void GpuContext::set_stream(void*) {}
std::size_t GpuContext::workspace_bytes() const noexcept { return 0; }
void GpuContext::reserve(std::size_t) {}
void GpuContext::synchronize() const {}
std::int64_t GpuContext::allocations() const noexcept { return 0; }

std::size_t sinkhorn_async_workspace_bytes(const SinkhornProblem&, const SinkhornOptions&) {
  throw DeviceUnavailable("sinkhorn_async: this libotgpu was built without CUDA");
}
void sinkhorn_async(GpuContext&, const SinkhornProblem&, const SinkhornOptions&,
                    const DeviceSinkhornOutputs&) {
  throw DeviceUnavailable("sinkhorn_async: this libotgpu was built without CUDA");
}

void barycentric_map_async(GpuContext&, const SinkhornProblem&, const SinkhornOptions&,
                           const float*, float*) {
  throw DeviceUnavailable("barycentric_map_async: this libotgpu was built without CUDA");
}
void gradient_x_async(GpuContext&, const SinkhornProblem&, const SinkhornOptions&, const float*,
                      const float*, float*) {
  throw DeviceUnavailable("gradient_x_async: this libotgpu was built without CUDA");
}
void sample_partners_async(GpuContext&, const SinkhornProblem&, const SinkhornOptions&,
                           const float*, std::uint64_t, std::int64_t*) {
  throw DeviceUnavailable("sample_partners_async: this libotgpu was built without CUDA");
}

}  // namespace otgpu

#endif  // OTGPU_WITH_CUDA
