// The CUDA coupling driver in builds without CUDA: a clean DeviceUnavailable.
#ifndef OTGPU_WITH_CUDA

#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/coupling_cuda.h"

namespace otgpu::coupling_cuda {

namespace {
[[noreturn]] void unavailable(int device) {
  throw DeviceUnavailable(
      fmt::format("couple: CUDA device {} unavailable: this libotgpu was built without CUDA "
                  "(configure with OTGPU_CUDA=ON and a CUDA toolkit)",
                  device));
}
}  // namespace

CouplingResult couple_entropic(const TensorView&, const TensorView&, const CouplingOptions& o,
                               const detail::CouplingShape&, GpuContext*) {
  unavailable(o.device);
}
void couple_entropic_async(GpuContext&, const TensorView&, const TensorView&,
                           const CouplingOptions& o, const detail::CouplingShape&, std::int64_t*,
                           std::int64_t*) {
  unavailable(o.device);
}
std::size_t entropic_workspace_bytes(const TensorView&, const TensorView&, const CouplingOptions& o,
                                     const detail::CouplingShape&) {
  unavailable(o.device);
}
void fill_row_indices(GpuContext&, std::int64_t*, std::int64_t, std::int64_t) { unavailable(0); }

}  // namespace otgpu::coupling_cuda

#endif  // OTGPU_WITH_CUDA
