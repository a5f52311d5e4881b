// otgpu::sinkhorn with SinkhornOptions::devices: the sharded CUDA solve of one
// problem over several devices (or logical shards) of this process. Internal to host/.
#pragma once

#include "otgpu/sinkhorn.h"
#include "validate.h"

namespace otgpu::dist {

/// Validates options.devices (typed errors naming devices[k] and its value, the
/// backend, n against the shard count) and solves: one entry = the plain solve on
/// that device; two or more = one thread per entry running dist::sinkhorn on its rows.
SinkhornResult sinkhorn_devices(const SinkhornProblem& problem, const SinkhornOptions& options,
                                const detail::SinkhornShape& shape);

}  // namespace otgpu::dist
