// Status checks for CUDA runtime and library calls: every call in host/ goes through
// one of these, so a failure is an otgpu::CudaError naming the call, the status, the
// file and the line. Host-only; include after <cuda_runtime_api.h>.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

namespace otgpu::detail {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                   int line);

}  // namespace otgpu::detail

#define OTGPU_CUDA_CHECK(call)                                                     \
  do {                                                                             \
    const cudaError_t otgpu_status_ = (call);                                      \
    if (otgpu_status_ != cudaSuccess)                                              \
      ::otgpu::detail::throw_cuda_error(otgpu_status_, #call, __FILE__, __LINE__); \
  } while (0)
