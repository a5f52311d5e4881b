// The CUDA Gaussian OT path as seen by the dispatch layer. Implemented in
// host/src/cuda/gaussian_cuda.cpp when the build has CUDA, and by
// host/src/gaussian_cuda_stub.cpp otherwise (DeviceUnavailable). Never includes a
// CUDA header.
#pragma once

#include "gaussian_validate.h"
#include "otgpu/gaussian.h"

namespace otgpu {
class GpuContext;
}

namespace otgpu::cuda_backend {

/// Closed-form Gaussian OT of every pair in float64 (cuSOLVER eigen-decompositions,
/// cuBLAS products) on ctx's device and stream, or, when ctx is null, on the calling
/// thread's cached context of options.device. `shape` comes from
/// detail::validate_gaussian_shapes; the element values are checked here
/// (detail::validate_gaussian_values; device views are read back through the
/// context's pinned staging memory once). Synchronous: returns host vectors, with
/// time_ms measured from the end of the validation.
GaussianOTResult gaussian_ot(GpuContext* ctx, const GaussianBatch& source,
                             const GaussianBatch& target, const detail::GaussianShape& shape,
                             const GaussianOTOptions& options);

}  // namespace otgpu::cuda_backend
