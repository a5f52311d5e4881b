// The definition of otgpu::GpuContext::Impl (otgpu/device.h): the public context IS
// the runtime's Context (otgpu_host/gpu_runtime.h). Internal to host/src/cuda, so
// that every driver taking a GpuContext (Sinkhorn, sliced, Gaussian) reaches the same
// runtime object.
#pragma once

#include "otgpu/device.h"
#include "otgpu_host/gpu_runtime.h"

namespace otgpu {

struct GpuContext::Impl : runtime::Context {
  using runtime::Context::Context;
};

namespace runtime {

/// ctx's runtime context, or the calling thread's cached one for `device` when ctx
/// is null (the synchronous entry points without a context).
inline Context& context_or_thread(GpuContext* ctx, int device) {
  if (ctx != nullptr) return ctx->impl();
  return thread_context(device);
}

}  // namespace runtime

}  // namespace otgpu
