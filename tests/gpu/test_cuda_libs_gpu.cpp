// The lazy loader of cuBLAS and cuSOLVER (otgpu_kernels/cuda_libs.h): every function of
// the tables resolves in the toolkit's libraries. Loading needs no device, so this
// runs wherever the CUDA build runs (it is in the gpu suite for the CUDA headers).
#include <gtest/gtest.h>

#ifdef OTGPU_WITH_CUDA
#include <string>

#include "otgpu_kernels/cuda_libs.h"

TEST(CudaLibs, TablesResolveEveryFunction) {
  const auto& blas = otgpu::kernels::cublas();
  EXPECT_NE(otgpu::kernels::cublas_if_loaded(), nullptr);
  for (const void* p :
       {reinterpret_cast<const void*>(blas.create), reinterpret_cast<const void*>(blas.destroy),
        reinterpret_cast<const void*>(blas.set_stream),
        reinterpret_cast<const void*>(blas.set_math_mode),
        reinterpret_cast<const void*>(blas.sgemm),
        reinterpret_cast<const void*>(blas.dgemm_batched),
        reinterpret_cast<const void*>(blas.dgemm_strided_batched),
        reinterpret_cast<const void*>(blas.sgemm_strided_batched),
        reinterpret_cast<const void*>(blas.get_status_string)}) {
    EXPECT_NE(p, nullptr);
  }
  // A status string from the loaded library (no handle needed).
  EXPECT_NE(std::string(blas.get_status_string(CUBLAS_STATUS_NOT_INITIALIZED)), "");
  const auto& sol = otgpu::kernels::cusolver();
  EXPECT_NE(otgpu::kernels::cusolver_if_loaded(), nullptr);
  for (const void* p :
       {reinterpret_cast<const void*>(sol.create), reinterpret_cast<const void*>(sol.destroy),
        reinterpret_cast<const void*>(sol.set_stream),
        reinterpret_cast<const void*>(sol.create_params),
        reinterpret_cast<const void*>(sol.destroy_params),
        reinterpret_cast<const void*>(sol.create_syevj_info),
        reinterpret_cast<const void*>(sol.destroy_syevj_info),
        reinterpret_cast<const void*>(sol.xsyevj_set_max_sweeps),
        reinterpret_cast<const void*>(sol.dsyevj_batched_buffer_size),
        reinterpret_cast<const void*>(sol.dsyevj_batched),
        reinterpret_cast<const void*>(sol.xsyevd_buffer_size),
        reinterpret_cast<const void*>(sol.xsyevd)}) {
    EXPECT_NE(p, nullptr);
  }
  EXPECT_EQ(std::string(otgpu::kernels::cublas_soname()).rfind("libcublas.so.", 0), 0u);
  EXPECT_EQ(std::string(otgpu::kernels::cusolver_soname()).rfind("libcusolver.so.", 0), 0u);
}
#endif
