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
//
// Both tables come from one loader (detail::LazyApi below): a library is a name for
// messages, a soname, a fallback folder and a list of (exported name, table field);
// adding a function is one line in kernels/src/cuda_libs.cpp and one field here.
#pragma once

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <atomic>
#include <mutex>
#include <span>

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

namespace detail {

/// One function of a table: its exported name and the store of its address into the
/// table's field (a function pointer of the field's own type).
template <class Api>
struct ApiSymbol {
  const char* name;
  void (*store)(Api& table, void* address);
};

template <class Field>
struct FieldOf;
template <class Api, class Fn>
struct FieldOf<Fn Api::*> {
  using Table = Api;
  using Pointer = Fn;
};

/// The ApiSymbol that fills `Field` (a pointer to a function pointer member) from the
/// exported function `name`.
template <auto Field>
constexpr ApiSymbol<typename FieldOf<decltype(Field)>::Table> api_symbol(const char* name) {
  using F = FieldOf<decltype(Field)>;
  return {name, [](typename F::Table& table, void* address) {
            table.*Field = reinterpret_cast<typename F::Pointer>(address);
          }};
}

/// What a table is loaded from. `library` names it in messages ("cuBLAS"); `soname` is
/// tried on the loader's path first, then as `fallback_dir`/`soname` when that folder
/// is not empty. The strings and `symbols` are not copied: they must outlive the loader
/// (static tables in practice).
template <class Api>
struct LibrarySpec {
  const char* library;
  const char* soname;
  const char* fallback_dir;
  std::span<const ApiSymbol<Api>> symbols;
};

/// dlopen of `soname`, then of `fallback_dir`/`soname`; the handle of the first that
/// loads (never closed). Throws DeviceUnavailable naming `library`, the files tried and
/// the loader's reason for each.
void* open_library(const char* library, const char* soname, const char* fallback_dir);
/// The address of the function `name` in `handle`; throws DeviceUnavailable naming the
/// file (`soname`) and the function.
void* find_symbol(void* handle, const char* soname, const char* name);

/// A table of function pointers filled from a shared library on the first get():
/// every symbol resolves or none is published (the table of a failed load is
/// discarded and the next get() tries again). Double-checked: published with a
/// release store, read after an acquire load, so a loaded table costs one atomic
/// load per call; the mutex serializes the first loads.
template <class Api>
class LazyApi {
 public:
  explicit constexpr LazyApi(LibrarySpec<Api> spec) : spec_(spec) {}
  LazyApi(const LazyApi&) = delete;
  LazyApi& operator=(const LazyApi&) = delete;

  const Api& get() {
    if (ready_.load(std::memory_order_acquire)) return table_;
    const std::lock_guard<std::mutex> lock(mutex_);
    if (!ready_.load(std::memory_order_relaxed)) {
      void* handle = open_library(spec_.library, spec_.soname, spec_.fallback_dir);
      Api t;
      for (const ApiSymbol<Api>& s : spec_.symbols) {
        s.store(t, find_symbol(handle, spec_.soname, s.name));
      }
      table_ = t;
      ready_.store(true, std::memory_order_release);
    }
    return table_;
  }

  /// The table when loaded already, else nullptr (never loads).
  const Api* if_loaded() const noexcept {
    return ready_.load(std::memory_order_acquire) ? &table_ : nullptr;
  }

 private:
  LibrarySpec<Api> spec_;
  std::mutex mutex_;
  Api table_{};
  std::atomic<bool> ready_{false};
};

}  // namespace detail

}  // namespace otgpu::kernels
