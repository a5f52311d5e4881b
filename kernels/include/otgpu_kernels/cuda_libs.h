// cuBLAS and cuSOLVER, loaded when a GPU path first needs them (dlopen), not at
// process start: together they map ~265 MB and cost 0.1-0.2 s, which every CPU-only
// run (and `otgpu --version`) paid while the library linked them. The headers give
// the types and the prototypes (decltype of a declared function needs no link); the
// tables below hold pointers to exactly the functions libotgpu calls.
//
// The libraries are looked up by soname (libcublas.so.<CUBLAS_VER_MAJOR>,
// libcusolver.so.<CUSOLVER_VER_MAJOR> of the toolkit the build used) on the dynamic
// loader's path, then in the toolkit's library folder of the build. A library that
// cannot be loaded, or lacks a function, throws otgpu::DeviceUnavailable naming the
// file and the loader's reason; the next call tries again. Thread-safe.
// Statuses of the functions keep going through OTGPU_CUDA_CHECK.
#pragma once

#include <cublas_v2.h>
#include <cusolverDn.h>

namespace otgpu::kernels {

struct CublasApi {
  decltype(&::cublasCreate_v2) create = nullptr;
  decltype(&::cublasDestroy_v2) destroy = nullptr;
  decltype(&::cublasSetStream_v2) set_stream = nullptr;
  decltype(&::cublasSetMathMode) set_math_mode = nullptr;
  decltype(&::cublasSgemm_v2) sgemm = nullptr;
  decltype(&::cublasDgemmBatched) dgemm_batched = nullptr;
  decltype(&::cublasDgemmStridedBatched) dgemm_strided_batched = nullptr;
  decltype(&::cublasSgemmStridedBatched) sgemm_strided_batched = nullptr;
  decltype(&::cublasGetStatusString) get_status_string = nullptr;
};

struct CusolverApi {
  decltype(&::cusolverDnCreate) create = nullptr;
  decltype(&::cusolverDnDestroy) destroy = nullptr;
  decltype(&::cusolverDnSetStream) set_stream = nullptr;
  decltype(&::cusolverDnCreateParams) create_params = nullptr;
  decltype(&::cusolverDnDestroyParams) destroy_params = nullptr;
  decltype(&::cusolverDnCreateSyevjInfo) create_syevj_info = nullptr;
  decltype(&::cusolverDnDestroySyevjInfo) destroy_syevj_info = nullptr;
  decltype(&::cusolverDnXsyevjSetMaxSweeps) xsyevj_set_max_sweeps = nullptr;
  decltype(&::cusolverDnDsyevjBatched_bufferSize) dsyevj_batched_buffer_size = nullptr;
  decltype(&::cusolverDnDsyevjBatched) dsyevj_batched = nullptr;
  decltype(&::cusolverDnXsyevd_bufferSize) xsyevd_buffer_size = nullptr;
  decltype(&::cusolverDnXsyevd) xsyevd = nullptr;
};

/// The cuBLAS table, loading the library on the first call.
const CublasApi& cublas();
/// The cuSOLVER table, loading the library on the first call.
const CusolverApi& cusolver();
/// The cuBLAS table when it is loaded already, else nullptr (never loads).
const CublasApi* cublas_if_loaded() noexcept;
/// The cuSOLVER table when it is loaded already, else nullptr (never loads).
const CusolverApi* cusolver_if_loaded() noexcept;

/// The file names tried first (sonames), for messages and tests.
const char* cublas_soname() noexcept;
const char* cusolver_soname() noexcept;

}  // namespace otgpu::kernels
