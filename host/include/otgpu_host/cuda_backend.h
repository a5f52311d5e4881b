// The CUDA backend as seen by the dispatch layer. Implemented in host/src/cuda/
// when the build has CUDA, and by host/src/cuda_backend_stub.cpp otherwise (where
// every call throws DeviceUnavailable). Never includes a CUDA header.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::cuda_backend {

/// Number of usable CUDA devices (0 when built without CUDA or without a driver).
int device_count() noexcept;
/// Throws DeviceUnavailable naming `device` when it cannot be used.
void require_device(int device);

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options,
                        const detail::SinkhornShape& shape);
std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape, int device);
std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape, int device);
std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed,
                                          int device);

}  // namespace otgpu::cuda_backend
