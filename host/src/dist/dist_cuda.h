// The CUDA half of the sharded Sinkhorn (otgpu/dist.h), called by dist_sinkhorn.cpp
// once the ranks have agreed on the options and the row layout. Implemented in
// host/src/cuda/sinkhorn_sharded.cpp; built without CUDA, dist_cuda_stub.cpp throws
// DeviceUnavailable. Internal to host/.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/dist.h"
#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::cuda_backend {

/// This rank's solve of a problem whose rows are split over comm's ranks: rows
/// [row_offset, row_offset + shape.n) of total_rows, on CUDA device o.device (options
/// resolved for the cuda backend, validated on every rank). Returns f of this rank's
/// rows, g and the reports of the whole problem, identical on every rank, and keeps
/// the staged shard on the device (SinkhornResult::state) for the derived outputs.
SinkhornResult sinkhorn_sharded(dist::Communicator& comm, const SinkhornProblem& local,
                                const SinkhornOptions& o, const detail::SinkhornShape& shape,
                                std::int64_t row_offset, std::int64_t total_rows);

/// Derived outputs of this rank's rows from the result sinkhorn_sharded returned here
/// (its kept state: the gradient's balancing factor and the sampler need the shard's
/// staged problem). Sampled partners key the Philox stream by the global row
/// row_offset + i.
std::vector<double> barycentric_map_sharded(const SinkhornProblem& local,
                                            const SinkhornResult& result,
                                            const detail::SinkhornShape& shape);
std::vector<double> gradient_x_sharded(const SinkhornProblem& local, const SinkhornResult& result,
                                       const detail::SinkhornShape& shape);
std::vector<std::int64_t> sample_partners_sharded(const SinkhornProblem& local,
                                                  const SinkhornResult& result,
                                                  const detail::SinkhornShape& shape,
                                                  std::uint64_t seed, std::int64_t row_offset);

}  // namespace otgpu::cuda_backend
