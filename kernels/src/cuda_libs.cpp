// Lazy loading of cuBLAS and cuSOLVER (otgpu_kernels/cuda_libs.h).
#include "otgpu_kernels/cuda_libs.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <atomic>
#include <mutex>
#include <string>

#include "otgpu/error.h"

#ifndef OTGPU_CUDA_LIBRARY_DIR
#define OTGPU_CUDA_LIBRARY_DIR ""
#endif

namespace otgpu::kernels {

namespace {

#define OTGPU_STR2(x) #x
#define OTGPU_STR(x) OTGPU_STR2(x)
constexpr const char* kCublasSoname = "libcublas.so." OTGPU_STR(CUBLAS_VER_MAJOR);
constexpr const char* kCusolverSoname = "libcusolver.so." OTGPU_STR(CUSOLVER_VER_MAJOR);

/// dlopen by soname (the loader's search path), then in the build toolkit's folder.
/// Handles are never closed: the tables stay valid until the process exits.
void* open_library(const char* soname, const char* what) {
  void* h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (h != nullptr) return h;
  const char* first = dlerror();
  std::string reason = first != nullptr ? first : "not found";
  const std::string dir = OTGPU_CUDA_LIBRARY_DIR;
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
      what, soname, reason, what));
}

template <class Fn>
void bind(void* lib, const char* soname, const char* name, Fn& out) {
  dlerror();
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    const char* err = dlerror();
    throw DeviceUnavailable(fmt::format("{} has no function {}: {}", soname, name,
                                        err != nullptr ? err : "symbol not found"));
  }
  out = reinterpret_cast<Fn>(sym);
}

std::mutex g_mutex;
CublasApi g_cublas;
CusolverApi g_cusolver;
std::atomic<bool> g_cublas_ready{false};
std::atomic<bool> g_cusolver_ready{false};

}  // namespace

const char* cublas_soname() noexcept { return kCublasSoname; }
const char* cusolver_soname() noexcept { return kCusolverSoname; }

const CublasApi& cublas() {
  if (g_cublas_ready.load(std::memory_order_acquire)) return g_cublas;
  const std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_cublas_ready.load(std::memory_order_relaxed)) {
    void* lib = open_library(kCublasSoname, "cuBLAS");
    CublasApi t;
    const char* so = kCublasSoname;
    bind(lib, so, "cublasCreate_v2", t.create);
    bind(lib, so, "cublasDestroy_v2", t.destroy);
    bind(lib, so, "cublasSetStream_v2", t.set_stream);
    bind(lib, so, "cublasSetMathMode", t.set_math_mode);
    bind(lib, so, "cublasSgemm_v2", t.sgemm);
    bind(lib, so, "cublasDgemmBatched", t.dgemm_batched);
    bind(lib, so, "cublasDgemmStridedBatched", t.dgemm_strided_batched);
    bind(lib, so, "cublasSgemmStridedBatched", t.sgemm_strided_batched);
    bind(lib, so, "cublasGetStatusString", t.get_status_string);
    g_cublas = t;
    g_cublas_ready.store(true, std::memory_order_release);
  }
  return g_cublas;
}

const CublasApi* cublas_if_loaded() noexcept {
  return g_cublas_ready.load(std::memory_order_acquire) ? &g_cublas : nullptr;
}

const CusolverApi* cusolver_if_loaded() noexcept {
  return g_cusolver_ready.load(std::memory_order_acquire) ? &g_cusolver : nullptr;
}

const CusolverApi& cusolver() {
  if (g_cusolver_ready.load(std::memory_order_acquire)) return g_cusolver;
  const std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_cusolver_ready.load(std::memory_order_relaxed)) {
    void* lib = open_library(kCusolverSoname, "cuSOLVER");
    CusolverApi t;
    const char* so = kCusolverSoname;
    bind(lib, so, "cusolverDnCreate", t.create);
    bind(lib, so, "cusolverDnDestroy", t.destroy);
    bind(lib, so, "cusolverDnSetStream", t.set_stream);
    bind(lib, so, "cusolverDnCreateParams", t.create_params);
    bind(lib, so, "cusolverDnDestroyParams", t.destroy_params);
    bind(lib, so, "cusolverDnCreateSyevjInfo", t.create_syevj_info);
    bind(lib, so, "cusolverDnDestroySyevjInfo", t.destroy_syevj_info);
    bind(lib, so, "cusolverDnXsyevjSetMaxSweeps", t.xsyevj_set_max_sweeps);
    bind(lib, so, "cusolverDnDsyevjBatched_bufferSize", t.dsyevj_batched_buffer_size);
    bind(lib, so, "cusolverDnDsyevjBatched", t.dsyevj_batched);
    bind(lib, so, "cusolverDnXsyevd_bufferSize", t.xsyevd_buffer_size);
    bind(lib, so, "cusolverDnXsyevd", t.xsyevd);
    g_cusolver = t;
    g_cusolver_ready.store(true, std::memory_order_release);
  }
  return g_cusolver;
}

}  // namespace otgpu::kernels
