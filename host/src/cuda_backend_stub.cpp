// CUDA backend entry points for builds without CUDA: every call is a clean
// DeviceUnavailable, so `--backend cuda` fails with a message, never a crash.
#ifndef OTGPU_WITH_CUDA

#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"

namespace otgpu::cuda_backend {

namespace {
[[noreturn]] void unavailable(int device) {
  throw DeviceUnavailable(
      fmt::format("backend cuda: CUDA device {} unavailable: this libotgpu was built without CUDA "
                  "(configure with OTGPU_CUDA=ON and a CUDA toolkit)",
                  device));
}
}  // namespace

int device_count() noexcept { return 0; }
void require_device(int device) { unavailable(device); }
SinkhornResult sinkhorn(const SinkhornProblem&, const SinkhornOptions& o,
                        const detail::SinkhornShape&, GpuContext*) {
  unavailable(o.device);
}
std::vector<double> barycentric_map(const SinkhornProblem&, const SinkhornResult&,
                                    const detail::SinkhornShape&, int device, GpuContext*) {
  unavailable(device);
}
std::vector<double> gradient_x(const SinkhornProblem&, const SinkhornResult&,
                               const detail::SinkhornShape&, int device, GpuContext*) {
  unavailable(device);
}
std::vector<std::int64_t> sample_partners(const SinkhornProblem&, const SinkhornResult&,
                                          const detail::SinkhornShape&, std::uint64_t, int device,
                                          GpuContext*) {
  unavailable(device);
}

SinkhornResult sinkhorn_symmetric(const SinkhornProblem&, const SinkhornOptions& options,
                                  const detail::SinkhornShape&) {
  unavailable(options.device);
}

std::vector<double> weight_masses(const TensorView&, bool, std::int64_t, int device) {
  unavailable(device);
}

}  // namespace otgpu::cuda_backend

#endif  // OTGPU_WITH_CUDA
