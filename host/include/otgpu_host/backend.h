// Backend resolution shared by every public entry point (Sinkhorn, sliced, Gaussian).
#pragma once

#include <string_view>

#include "otgpu/types.h"

namespace otgpu::detail {

/// The backend that will run: cuda when asked (DeviceUnavailable if unusable), cpu
/// when asked (InvalidArgument, naming `fn`, if the tensors are in device memory),
/// and for automatic the GPU when device `device` is usable, else the CPU.
/// Device-memory tensors force the GPU.
Backend resolve_backend(Backend requested, int device, MemorySpace space, std::string_view fn);

}  // namespace otgpu::detail
