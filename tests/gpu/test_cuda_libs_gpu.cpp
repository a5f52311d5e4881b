// The lazy loader of cuBLAS and cuSOLVER (otgpu_kernels/cuda_libs.h): every function of
// the tables resolves in the toolkit's libraries. Loading needs no device, so this
// runs wherever the CUDA build runs (it is in the gpu suite for the CUDA headers).
// The shared loader (detail::LazyApi) is also driven with tables of its own: a library
// that is absent and a function that is absent (nothing is loaded; the errors name the
// file and the function), and libc's strlen for a load that works.
#include <gtest/gtest.h>

#ifdef OTGPU_WITH_CUDA
#include <array>
#include <cstddef>
#include <string>
#include <thread>
#include <vector>

#include "otgpu/error.h"
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

namespace {

using otgpu::kernels::detail::api_symbol;
using otgpu::kernels::detail::LazyApi;

using StrlenFn = std::size_t (*)(const char*);

struct TwoFunctions {
  StrlenFn first = nullptr;
  StrlenFn second = nullptr;
};

std::string load_error(LazyApi<TwoFunctions>& api) {
  try {
    api.get();
  } catch (const otgpu::DeviceUnavailable& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(CudaLibs, AbsentLibraryIsDeviceUnavailableNamingEveryFileTried) {
  constexpr std::array symbols{api_symbol<&TwoFunctions::first>("strlen")};
  LazyApi<TwoFunctions> api({"cuNothing", "libotgpu-absent.so.0", "/otgpu-absent-dir", symbols});
  const std::string msg = load_error(api);
  EXPECT_TRUE(contains(msg, "cuNothing (libotgpu-absent.so.0) could not be loaded")) << msg;
  EXPECT_TRUE(contains(msg, "/otgpu-absent-dir/libotgpu-absent.so.0")) << msg;
  EXPECT_TRUE(contains(msg, "LD_LIBRARY_PATH")) << msg;
  EXPECT_EQ(api.if_loaded(), nullptr);
  // Not remembered as failed: the next call tries again and says the same.
  EXPECT_EQ(load_error(api), msg);
  EXPECT_EQ(api.if_loaded(), nullptr);
}

TEST(CudaLibs, AbsentFunctionNamesTheFileAndPublishesNoTable) {
  // The first function resolves, the second does not: no half-filled table.
  constexpr std::array symbols{api_symbol<&TwoFunctions::first>("strlen"),
                               api_symbol<&TwoFunctions::second>("otgpu_absent_function")};
  LazyApi<TwoFunctions> api({"libc", "libc.so.6", "", symbols});
  const std::string msg = load_error(api);
  EXPECT_TRUE(contains(msg, "libc.so.6 has no function otgpu_absent_function")) << msg;
  EXPECT_EQ(api.if_loaded(), nullptr);
}

TEST(CudaLibs, LoadedTableIsFilledOnceAndSharedAcrossThreads) {
  constexpr std::array symbols{api_symbol<&TwoFunctions::first>("strlen"),
                               api_symbol<&TwoFunctions::second>("strlen")};
  LazyApi<TwoFunctions> api({"libc", "libc.so.6", "", symbols});
  EXPECT_EQ(api.if_loaded(), nullptr);
  std::vector<const TwoFunctions*> seen(8, nullptr);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < seen.size(); ++t) {
    threads.emplace_back([&api, &seen, t] { seen[t] = &api.get(); });
  }
  for (auto& th : threads) th.join();
  for (const TwoFunctions* p : seen) EXPECT_EQ(p, api.if_loaded());
  ASSERT_NE(api.if_loaded(), nullptr);
  EXPECT_EQ(api.get().first("otgpu"), 5u);
  EXPECT_EQ(api.get().second, api.get().first);
}

}  // namespace
#endif
