// The CUDA sliced Wasserstein path as seen by the dispatch layer. Implemented in
// host/src/cuda/sliced_cuda.cpp when the build has CUDA, and by
// host/src/sliced_cuda_stub.cpp otherwise (DeviceUnavailable). Never includes a
// CUDA header.
#pragma once

#include "otgpu/sliced.h"
#include "sliced_validate.h"

namespace otgpu {
class GpuContext;
}

namespace otgpu::cuda_backend {

/// Runs on ctx's device and stream or, when ctx is null, on the calling thread's
/// cached context of options.device. Fills per_direction ([B, L] W_p^p), grad_x / grad_y when
/// options.gradients, timings and device; value / value_pp are left to
/// detail::finalize_sliced_value. Synchronous: returns host vectors.
SlicedResult sliced_wasserstein(GpuContext* ctx, const SlicedProblem& problem,
                                const SlicedOptions& options, const detail::SlicedShape& shape);

}  // namespace otgpu::cuda_backend
