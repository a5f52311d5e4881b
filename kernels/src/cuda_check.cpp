// The throwing halves of OTGPU_CUDA_CHECK (otgpu_kernels/cuda_check.h), out of line so
// the macro stays small at every call site.
#include "otgpu_kernels/cuda_check.h"

#include <fmt/format.h>

#include <string>

#include "otgpu/error.h"
#include "otgpu_kernels/cuda_libs.h"

namespace otgpu::detail {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  std::string msg = fmt::format("{} failed: {} ({}) at {}:{}", call, cudaGetErrorString(status),
                                static_cast<int>(status), file, line);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it so the next call starts clean
    std::size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      msg += fmt::format(" ({} bytes free of {})", free_b, total_b);
    }
    throw OutOfMemory(msg);
  }
  throw CudaError(msg, static_cast<int>(status));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  // The status came from cuBLAS, so it is loaded; its own name for the status.
  const kernels::CublasApi* api = kernels::cublas_if_loaded();
  const char* text = api != nullptr ? api->get_status_string(status) : "(cuBLAS not loaded)";
  throw CudaError(fmt::format("{} failed: cuBLAS status {} ({}) at {}:{}", call, text,
                              static_cast<int>(status), file, line),
                  static_cast<int>(status));
}

void throw_cusolver_error(cusolverStatus_t status, const char* call, const char* file, int line) {
  throw CudaError(fmt::format("{} failed: cuSOLVER status {} at {}:{}", call,
                              static_cast<int>(status), file, line),
                  static_cast<int>(status));
}

}  // namespace otgpu::detail
