// The throwing halves of OTGPU_CUDA_CHECK and OTGPU_CUBLAS_CHECK, out of line so the
// macros stay small at every call site.
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include "otgpu/error.h"
#include "otgpu_host/cuda_blas_check.h"
#include "otgpu_host/cuda_check.h"

namespace otgpu::detail {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw CudaError(fmt::format("{} failed: {} ({}) at {}:{}", call, cudaGetErrorString(status),
                              static_cast<int>(status), file, line),
                  static_cast<int>(status));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw CudaError(fmt::format("{} failed: {} ({}) at {}:{}", call, cublasGetStatusString(status),
                              static_cast<int>(status), file, line),
                  static_cast<int>(status));
}

}  // namespace otgpu::detail
