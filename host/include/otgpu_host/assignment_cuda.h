// The CUDA exact assignment path as seen by the dispatch layer. Implemented in
// host/src/cuda/assignment_cuda.cpp when the build has CUDA, and by
// host/src/assignment_cuda_stub.cpp otherwise (DeviceUnavailable). Never includes a
// CUDA header.
#pragma once

#include "assignment_validate.h"
#include "otgpu/assignment.h"

namespace otgpu {
class GpuContext;
}

namespace otgpu::cuda_backend {

/// Runs on ctx's device and stream or, when ctx is null, on the calling thread's
/// cached context of options.device. Synchronous: returns host vectors, every
/// problem's report certified. Throws Infeasible naming the first infeasible problem.
AssignmentResult assignment(GpuContext* ctx, const AssignmentProblem& problem,
                            const AssignmentOptions& options, const detail::AssignmentShape& shape);

/// Stream-ordered solve on ctx (device views only, validated by the caller).
void assignment_async(GpuContext& ctx, const AssignmentProblem& problem,
                      const AssignmentOptions& options, const detail::AssignmentShape& shape,
                      const DeviceAssignmentOutputs& outputs);

}  // namespace otgpu::cuda_backend
