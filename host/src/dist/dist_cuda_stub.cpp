// The sharded CUDA Sinkhorn for builds without CUDA: clean DeviceUnavailable errors.
#ifndef OTGPU_WITH_CUDA

#include <string>

#include "dist_cuda.h"
#include "otgpu/error.h"

namespace otgpu::cuda_backend {

namespace {
[[noreturn]] void unavailable(const char* what) {
  throw DeviceUnavailable(
      std::string(what) +
      ": backend cuda is unavailable: this libotgpu was built without CUDA (configure with "
      "OTGPU_CUDA=ON and a CUDA toolkit)");
}
}  // namespace

SinkhornResult sinkhorn_sharded(dist::Communicator&, const SinkhornProblem&, const SinkhornOptions&,
                                const detail::SinkhornShape&, std::int64_t, std::int64_t) {
  unavailable("dist::sinkhorn");
}
std::vector<double> barycentric_map_sharded(const SinkhornProblem&, const SinkhornResult&,
                                            const detail::SinkhornShape&) {
  unavailable("dist::barycentric_map");
}
std::vector<double> gradient_x_sharded(const SinkhornProblem&, const SinkhornResult&,
                                       const detail::SinkhornShape&) {
  unavailable("dist::gradient_x");
}
std::vector<std::int64_t> sample_partners_sharded(const SinkhornProblem&, const SinkhornResult&,
                                                  const detail::SinkhornShape&, std::uint64_t,
                                                  std::int64_t) {
  unavailable("dist::sample_partners");
}

}  // namespace otgpu::cuda_backend

#endif
