// The CUDA coupling driver as seen by the dispatch (host/src/coupling_api.cpp).
// Implemented in host/src/cuda/coupling_cuda.cpp with CUDA, by
// host/src/coupling_cuda_stub.cpp without (every call throws DeviceUnavailable).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_coupling.h"
#include "otgpu/coupling.h"
#include "otgpu/device.h"

namespace otgpu::coupling_cuda {

/// Entropic coupling on the GPU (ctx, or the thread's cached context of
/// options.device when null), synchronous; x0 / x1 host or device views.
CouplingResult couple_entropic(const TensorView& x0, const TensorView& x1,
                               const CouplingOptions& options, const detail::CouplingShape& shape,
                               GpuContext* ctx);

/// The stream-ordered entropic coupling: device views, caller-owned i_out / j_out
/// [K * shape.pairs]; no host synchronization, no allocation after the first call
/// of a size.
void couple_entropic_async(GpuContext& ctx, const TensorView& x0, const TensorView& x1,
                           const CouplingOptions& options, const detail::CouplingShape& shape,
                           std::int64_t* i_out, std::int64_t* j_out);

/// Workspace bytes of couple_entropic_async (and of the synchronous path on device views).
std::size_t entropic_workspace_bytes(const TensorView& x0, const TensorView& x1,
                                     const CouplingOptions& options,
                                     const detail::CouplingShape& shape);

/// i_out[k * n + i] = i for every problem k (the rows of a permutation or of the
/// one-partner-per-row pairs), on ctx's stream.
void fill_row_indices(GpuContext& ctx, std::int64_t* i_out, std::int64_t batch, std::int64_t n);

}  // namespace otgpu::coupling_cuda
