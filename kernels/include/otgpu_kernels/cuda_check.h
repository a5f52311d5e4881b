// The one status-check family of libotgpu's CUDA code (kernels/ and host/ alike):
// OTGPU_CUDA_CHECK(call) accepts a cudaError_t, a cublasStatus_t or a
// cusolverStatus_t, and turns a failure into an otgpu::CudaError (otgpu::OutOfMemory
// for cudaErrorMemoryAllocation) naming the call, the status, the file and the line.
// OTGPU_LAUNCH_CHECK() checks the last kernel launch. Host-only, plain C++: it lives in
// kernels/ because launchers check their launches and kernels/ may not include host/.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime_api.h>
#include <cusolver_common.h>

namespace otgpu::detail {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                   int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file,
                                     int line);
[[noreturn]] void throw_cusolver_error(cusolverStatus_t status, const char* call, const char* file,
                                       int line);

inline void check_status(cudaError_t s, const char* call, const char* file, int line) {
  if (s != cudaSuccess) throw_cuda_error(s, call, file, line);
}
inline void check_status(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_cublas_error(s, call, file, line);
}
inline void check_status(cusolverStatus_t s, const char* call, const char* file, int line) {
  if (s != CUSOLVER_STATUS_SUCCESS) throw_cusolver_error(s, call, file, line);
}

}  // namespace otgpu::detail

#define OTGPU_CUDA_CHECK(call) ::otgpu::detail::check_status((call), #call, __FILE__, __LINE__)
#define OTGPU_LAUNCH_CHECK() \
  ::otgpu::detail::check_status(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
