// The GPU runtime: device discovery, cached device properties, and the Context that
// owns a device's stream-ordered resources (otgpu_host/gpu_runtime.h).
#include "otgpu_host/gpu_runtime.h"

#include <fmt/format.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/cuda_libs.h"

namespace otgpu::runtime {

namespace {

/// Why no device can be used, in words a person acts on (CUDA's own text for a
/// missing driver is "CUDA driver version is insufficient for CUDA runtime version").
std::string no_device_reason(cudaError_t st) {
  switch (st) {
    case cudaErrorInsufficientDriver:
    case cudaErrorNoDevice:
    case cudaErrorInitializationError:
      return fmt::format("no usable NVIDIA GPU or driver was found ({})", cudaGetErrorName(st));
    default:
      return fmt::format("{} ({})", cudaGetErrorString(st), cudaGetErrorName(st));
  }
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the status
    return 0;
  }
  return count;
}

void require_device(int device) {
  int count = 0;
  const cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess) {
    cudaGetLastError();
    throw DeviceUnavailable(
        fmt::format("backend cuda: CUDA device {} unavailable: {}", device, no_device_reason(st)));
  }
  if (count == 0) {
    throw DeviceUnavailable(fmt::format(
        "backend cuda: CUDA device {} unavailable: no usable NVIDIA GPU was found", device));
  }
  if (device < 0 || device >= count) {
    throw DeviceUnavailable(
        fmt::format("backend cuda: CUDA device {} unavailable: {} device(s) present (valid: 0..{})",
                    device, count, count - 1));
  }
}

const DeviceProps& device_props(int device) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<DeviceProps>> cache;
  require_device(device);
  const std::lock_guard<std::mutex> lock(mu);
  const auto k = static_cast<std::size_t>(device);
  if (cache.size() <= k) cache.resize(k + 1);
  if (!cache[k]) {
    auto p = std::make_unique<DeviceProps>();
    cudaDeviceProp prop{};
    OTGPU_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    p->ordinal = device;
    p->name = prop.name;
    p->cc_major = prop.major;
    p->cc_minor = prop.minor;
    p->sm_count = prop.multiProcessorCount;
    p->max_threads_per_sm = prop.maxThreadsPerMultiProcessor;
    p->smem_per_block_optin = prop.sharedMemPerBlockOptin;
    p->smem_per_sm = prop.sharedMemPerMultiprocessor;
    p->total_memory = prop.totalGlobalMem;
    p->max_grid_y = prop.maxGridSize[1];
    p->max_grid_z = prop.maxGridSize[2];
    cache[k] = std::move(p);
  }
  return *cache[k];
}

// ------------------------------------------------------------------- Context --

Context::Context(int device, cudaStream_t stream) : device_(device), stream_(stream) {
  require_device(device);
  activate();
  OTGPU_CUDA_CHECK(cudaEventCreateWithFlags(&pin_event_, cudaEventDisableTiming));
  OTGPU_CUDA_CHECK(cudaEventCreateWithFlags(&switch_event_, cudaEventDisableTiming));
}

Context::~Context() {
  // Never throws: at process exit the CUDA runtime may already be unloading, and
  // every status here is ignored on purpose.
  if (cudaSetDevice(device_) != cudaSuccess) return;
  (void)cudaStreamSynchronize(stream_);
  if (ws_ != nullptr) (void)cudaFree(ws_);
  if (pin_ != nullptr) (void)cudaFreeHost(pin_);
  if (poll_ != nullptr) (void)cudaFreeHost(poll_);
  for (cudaEvent_t e : poll_events_) {
    if (e != nullptr) (void)cudaEventDestroy(e);
  }
  // A handle exists only if its library was loaded: nothing is loaded here.
  if (const kernels::CublasApi* blas = kernels::cublas_if_loaded(); blas != nullptr) {
    if (blas_ != nullptr) (void)blas->destroy(blas_);
  }
  if (const kernels::CusolverApi* sol = kernels::cusolver_if_loaded(); sol != nullptr) {
    if (solver_ != nullptr) (void)sol->destroy(solver_);
    if (syevj_ != nullptr) (void)sol->destroy_syevj_info(syevj_);
    if (params_ != nullptr) (void)sol->destroy_params(params_);
  }
  if (pin_event_ != nullptr) (void)cudaEventDestroy(pin_event_);
  if (switch_event_ != nullptr) (void)cudaEventDestroy(switch_event_);
  cudaGetLastError();
}

void Context::activate() const { OTGPU_CUDA_CHECK(cudaSetDevice(device_)); }

void Context::set_stream(cudaStream_t stream) {
  if (stream == stream_) return;
  activate();
  // The workspace and the staging memory are shared by both streams: the new stream
  // must not start on them before the old stream's queued work is done with them.
  OTGPU_CUDA_CHECK(cudaEventRecord(switch_event_, stream_));
  OTGPU_CUDA_CHECK(cudaStreamWaitEvent(stream, switch_event_, 0));
  stream_ = stream;
  if (blas_ != nullptr) OTGPU_CUDA_CHECK(kernels::cublas().set_stream(blas_, stream_));
  if (solver_ != nullptr) OTGPU_CUDA_CHECK(kernels::cusolver().set_stream(solver_, stream_));
}

void* Context::workspace(std::size_t bytes) {
  if (bytes <= ws_bytes_) return ws_;
  activate();
  if (ws_ != nullptr) {
    // Work queued before this point may still read the old buffer: free it in stream
    // order, after that work.
    OTGPU_CUDA_CHECK(cudaFreeAsync(ws_, stream_));
    ws_ = nullptr;
    ws_bytes_ = 0;
  }
  OTGPU_CUDA_CHECK(cudaMallocAsync(&ws_, bytes, stream_));
  ws_bytes_ = bytes;
  ++allocations_;
  return ws_;
}

void* Context::staging(std::size_t bytes) {
  if (pin_event_recorded_) OTGPU_CUDA_CHECK(cudaEventSynchronize(pin_event_));
  if (bytes <= pin_bytes_) return pin_;
  activate();
  if (pin_ != nullptr) {
    OTGPU_CUDA_CHECK(cudaFreeHost(pin_));
    pin_ = nullptr;
    pin_bytes_ = 0;
  }
  // Round up so that a sequence of slightly growing calls does not reallocate each time.
  const std::size_t grown = std::max<std::size_t>(bytes, 2 * pin_bytes_);
  OTGPU_CUDA_CHECK(cudaMallocHost(&pin_, grown));
  pin_bytes_ = grown;
  ++allocations_;
  return pin_;
}

void Context::staging_done() {
  OTGPU_CUDA_CHECK(cudaEventRecord(pin_event_, stream_));
  pin_event_recorded_ = true;
}

int* Context::poll_slots() {
  if (poll_ == nullptr) {
    activate();
    for (cudaEvent_t& e : poll_events_) {
      if (e == nullptr) OTGPU_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    void* p = nullptr;
    OTGPU_CUDA_CHECK(cudaMallocHost(&p, 8 * sizeof(int)));  // 2 ints, pad, 2 doubles
    poll_ = static_cast<int*>(p);
    std::memset(p, 0, 8 * sizeof(int));
    ++allocations_;
  }
  return poll_;
}

cublasHandle_t Context::blas() {
  if (blas_ == nullptr) {
    activate();
    OTGPU_CUDA_CHECK(kernels::cublas().create(&blas_));
    ++allocations_;
  }
  OTGPU_CUDA_CHECK(kernels::cublas().set_stream(blas_, stream_));
  return blas_;
}

cusolverDnHandle_t Context::solver() {
  if (solver_ == nullptr) {
    activate();
    OTGPU_CUDA_CHECK(kernels::cusolver().create(&solver_));
    ++allocations_;
  }
  OTGPU_CUDA_CHECK(kernels::cusolver().set_stream(solver_, stream_));
  return solver_;
}

syevjInfo_t Context::syevj_info() {
  if (syevj_ == nullptr) {
    OTGPU_CUDA_CHECK(kernels::cusolver().create_syevj_info(&syevj_));
    ++allocations_;
    // The sweep cap is stated, not inherited: a matrix that needs more reports
    // info > 0 and fails the call.
    OTGPU_CUDA_CHECK(kernels::cusolver().xsyevj_set_max_sweeps(syevj_, 100));
  }
  return syevj_;
}

cusolverDnParams_t Context::solver_params() {
  if (params_ == nullptr) {
    OTGPU_CUDA_CHECK(kernels::cusolver().create_params(&params_));
    ++allocations_;
  }
  return params_;
}

Context& thread_context(int device) {
  thread_local std::vector<std::unique_ptr<Context>> contexts;
  require_device(device);
  const auto k = static_cast<std::size_t>(device);
  if (contexts.size() <= k) contexts.resize(k + 1);
  if (!contexts[k]) contexts[k] = std::make_unique<Context>(device, nullptr);
  return *contexts[k];
}

}  // namespace otgpu::runtime

namespace otgpu::cuda_backend {

int device_count() noexcept { return runtime::device_count(); }
void require_device(int device) { runtime::require_device(device); }

}  // namespace otgpu::cuda_backend
