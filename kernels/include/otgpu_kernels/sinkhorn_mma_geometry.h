// Launch geometry of the tensor-core online half-step (sinkhorn_online_mma.cu) as
// plain constants and rules: the host planner reads them on any build (no CUDA
// header). The kernels and their launchers are in sinkhorn_mma.h.
#pragma once

#include <cstdint>

namespace otgpu::kernels::mma_geometry {

constexpr int kThreads = 128;        ///< 4 warps; each owns 16 rows of the block's 64
constexpr int kRowsPerBlock = 64;    ///< rows of X one block reduces
constexpr int kTileCols = 64;        ///< columns per tile (= geometry::kOnlineTileCols: the
                                     ///< split spans of the SIMT kernels apply unchanged)
constexpr int kChunk = 32;           ///< coordinates per shared-memory chunk (16 for dp = 16)
constexpr int kResidentMaxDim = 64;  ///< up to here a block's rows stay in shared memory
constexpr int kMinDim = 16;  ///< the squared-Euclidean half-step uses tensor cores from here

/// Whether the tensor-core half-step runs for a squared-Euclidean problem of dimension
/// d (point clouds, the online kernel): from d = 16, whatever the precision. The
/// Euclidean cost takes it only where the SIMT kernel's tile does not fit (its sqrt
/// amplifies the cancellation of |x|^2 + |y|^2 - 2<x,y> at near pairs).
constexpr bool sqeuclidean_uses_mma(std::int64_t d) { return d >= kMinDim; }

}  // namespace otgpu::kernels::mma_geometry
