// Status check for cuBLAS calls, the companion of OTGPU_CUDA_CHECK (cuda_check.h):
// a failure is an otgpu::CudaError naming the call, the cuBLAS status, the file and
// the line. Host-only; a separate header so that code without cuBLAS does not need
// its include path.
#pragma once

#include <cublas_v2.h>

namespace otgpu::detail {

[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file,
                                     int line);

}  // namespace otgpu::detail

#define OTGPU_CUBLAS_CHECK(call)                                                          \
  do {                                                                                    \
    const cublasStatus_t otgpu_blas_status_ = (call);                                     \
    if (otgpu_blas_status_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::otgpu::detail::throw_cublas_error(otgpu_blas_status_, #call, __FILE__, __LINE__); \
  } while (0)
