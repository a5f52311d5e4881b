// Public exact assignment entry points: validate, pick the backend, dispatch, time.
#include <fmt/format.h>

#include <chrono>

#include "assignment_validate.h"
#include "cpu_assignment.h"
#include "otgpu/assignment.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu_host/assignment_cuda.h"
#include "otgpu_host/backend.h"

namespace otgpu {

namespace {

AssignmentResult run_assignment(GpuContext* ctx, const AssignmentProblem& problem,
                                const AssignmentOptions& options) {
  constexpr std::string_view fn = "assignment";
  if (ctx != nullptr && options.backend == Backend::cpu) {
    throw InvalidArgument(
        fmt::format("{}: a GpuContext runs on the GPU; options.backend cpu is not allowed", fn));
  }
  const auto shape = detail::validate_assignment(problem, options);
  const Backend backend =
      ctx != nullptr ? Backend::cuda
                     : detail::resolve_backend(options.backend, options.device, shape.space, fn);
  const auto t0 = std::chrono::steady_clock::now();
  AssignmentResult r = backend == Backend::cuda
                           ? cuda_backend::assignment(ctx, problem, options, shape)
                           : cpu::assignment(problem, options, shape);
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace

AssignmentResult assignment(const AssignmentProblem& problem, const AssignmentOptions& options) {
  return run_assignment(nullptr, problem, options);
}

AssignmentResult assignment(GpuContext& ctx, const AssignmentProblem& problem,
                            const AssignmentOptions& options) {
  return run_assignment(&ctx, problem, options);
}

void assignment_async(GpuContext& ctx, const AssignmentProblem& problem,
                      const AssignmentOptions& options, const DeviceAssignmentOutputs& outputs) {
  if (options.backend == Backend::cpu) {
    throw InvalidArgument(
        "assignment_async: a GpuContext runs on the GPU; options.backend cpu is not allowed");
  }
  const auto shape = detail::validate_assignment(problem, options);
  if (shape.space != MemorySpace::device) {
    throw InvalidArgument(
        fmt::format("assignment_async: every view must be in device memory, got {} in host memory",
                    problem.cost_kind == CostKind::matrix ? "cost" : "x"));
  }
  if (outputs.row_to_col == nullptr) {
    throw InvalidArgument("outputs.row_to_col: required (a device buffer of K * n int64)");
  }
  cuda_backend::assignment_async(ctx, problem, options, shape, outputs);
}

}  // namespace otgpu
