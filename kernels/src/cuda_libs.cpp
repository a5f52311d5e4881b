// Lazy loading of cuBLAS and cuSOLVER (otgpu_kernels/cuda_libs.h): one loader
// (detail::LazyApi), two tables of (exported name, field).
#include "otgpu_kernels/cuda_libs.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <array>
#include <string>

#include "otgpu/error.h"

#ifndef OTGPU_CUDA_LIBRARY_DIR
#define OTGPU_CUDA_LIBRARY_DIR ""
#endif

namespace otgpu::kernels {

namespace detail {

void* open_library(const char* library, const char* soname, const char* fallback_dir) {
  void* h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (h != nullptr) return h;
  const char* first = dlerror();
  std::string reason = first != nullptr ? first : "not found";
  const std::string dir = fallback_dir != nullptr ? fallback_dir : "";
  if (!dir.empty()) {
    const std::string path = dir + "/" + soname;
    h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h != nullptr) return h;
    const char* second = dlerror();
    reason += fmt::format("; {}: {}", path, second != nullptr ? second : "not found");
  }
  throw DeviceUnavailable(fmt::format(
      "{} ({}) could not be loaded: {}; the CUDA paths that use it need the CUDA {} runtime "
      "libraries on the loader's path (LD_LIBRARY_PATH)",
      library, soname, reason, library));
}

void* find_symbol(void* handle, const char* soname, const char* name) {
  dlerror();  // clear a stale error: dlsym reports through it
  void* sym = dlsym(handle, name);
  if (sym == nullptr) {
    const char* err = dlerror();
    throw DeviceUnavailable(fmt::format("{} has no function {}: {}", soname, name,
                                        err != nullptr ? err : "symbol not found"));
  }
  return sym;
}

}  // namespace detail

namespace {

using detail::api_symbol;

#define OTGPU_STR2(x) #x
#define OTGPU_STR(x) OTGPU_STR2(x)
constexpr const char* kCublasSoname = "libcublas.so." OTGPU_STR(CUBLAS_VER_MAJOR);
constexpr const char* kCusolverSoname = "libcusolver.so." OTGPU_STR(CUSOLVER_VER_MAJOR);

constexpr std::array kCublasSymbols{
    api_symbol<&CublasApi::create>("cublasCreate_v2"),
    api_symbol<&CublasApi::destroy>("cublasDestroy_v2"),
    api_symbol<&CublasApi::set_stream>("cublasSetStream_v2"),
    api_symbol<&CublasApi::set_math_mode>("cublasSetMathMode"),
    api_symbol<&CublasApi::sgemm>("cublasSgemm_v2"),
    api_symbol<&CublasApi::dgemm_batched>("cublasDgemmBatched"),
    api_symbol<&CublasApi::dgemm_strided_batched>("cublasDgemmStridedBatched"),
    api_symbol<&CublasApi::sgemm_strided_batched>("cublasSgemmStridedBatched"),
    api_symbol<&CublasApi::get_status_string>("cublasGetStatusString"),
};

constexpr std::array kCusolverSymbols{
    api_symbol<&CusolverApi::create>("cusolverDnCreate"),
    api_symbol<&CusolverApi::destroy>("cusolverDnDestroy"),
    api_symbol<&CusolverApi::set_stream>("cusolverDnSetStream"),
    api_symbol<&CusolverApi::create_params>("cusolverDnCreateParams"),
    api_symbol<&CusolverApi::destroy_params>("cusolverDnDestroyParams"),
    api_symbol<&CusolverApi::create_syevj_info>("cusolverDnCreateSyevjInfo"),
    api_symbol<&CusolverApi::destroy_syevj_info>("cusolverDnDestroySyevjInfo"),
    api_symbol<&CusolverApi::xsyevj_set_max_sweeps>("cusolverDnXsyevjSetMaxSweeps"),
    api_symbol<&CusolverApi::dsyevj_batched_buffer_size>("cusolverDnDsyevjBatched_bufferSize"),
    api_symbol<&CusolverApi::dsyevj_batched>("cusolverDnDsyevjBatched"),
    api_symbol<&CusolverApi::xsyevd_buffer_size>("cusolverDnXsyevd_bufferSize"),
    api_symbol<&CusolverApi::xsyevd>("cusolverDnXsyevd"),
};

// Constant-initialized (constexpr constructor, constexpr tables): usable from any
// static initializer, no order-of-initialization question.
detail::LazyApi<CublasApi> g_cublas({"cuBLAS", kCublasSoname, OTGPU_CUDA_LIBRARY_DIR,
                                     kCublasSymbols});
detail::LazyApi<CusolverApi> g_cusolver({"cuSOLVER", kCusolverSoname, OTGPU_CUDA_LIBRARY_DIR,
                                         kCusolverSymbols});

}  // namespace

const char* cublas_soname() noexcept { return kCublasSoname; }
const char* cusolver_soname() noexcept { return kCusolverSoname; }

const CublasApi& cublas() { return g_cublas.get(); }
const CusolverApi& cusolver() { return g_cusolver.get(); }
const CublasApi* cublas_if_loaded() noexcept { return g_cublas.if_loaded(); }
const CusolverApi* cusolver_if_loaded() noexcept { return g_cusolver.if_loaded(); }

}  // namespace otgpu::kernels
