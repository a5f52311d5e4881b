// The one GPU runtime every solver runs on (Sinkhorn and its derived outputs,
// sliced, 1-D, Gaussian): a Context owns, for one device, the stream the work is
// ordered on, a stream-ordered device workspace that only grows, pinned host staging
// memory that only grows, lazily created cuBLAS / cuSOLVER handles bound to the
// stream, and the events that make reuse safe. otgpu::GpuContext (otgpu/device.h) is
// the public face of a Context; synchronous entry points without one use
// thread_context(device), cached per host thread and device, so that after the first
// call of a size no call allocates or creates a handle.
//
// Stream semantics (documented for users in otgpu/device.h):
//   - all work of a call is queued on ctx.stream(), in order, after whatever the caller
//     queued on that stream before the call (inputs in device memory may be written by
//     the caller's kernels right before the call);
//   - the cached per-thread contexts use the legacy default stream (stream 0), which is
//     ordered after the work of every blocking stream of the device;
//   - set_stream(s) is safe while work is in flight: the new stream waits
//     (cudaStreamWaitEvent, no host sync) for everything queued on the old stream up to
//     the switch, so new work never overwrites buffers the old work still reads.
// Internal header (CUDA builds only): includes CUDA headers.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace otgpu::runtime {

/// Facts about one device that the planner and the drivers need, queried once per
/// device and cached for the life of the process (thread-safe).
struct DeviceProps {
  int ordinal = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  int max_threads_per_sm = 0;
  std::size_t smem_per_block_optin = 0;  ///< max dynamic shared memory one block may opt into
  std::size_t smem_per_sm = 0;
  std::size_t total_memory = 0;
  int max_grid_y = 0, max_grid_z = 0;  ///< grid limits (batch axes of some launches)
};

/// Throws DeviceUnavailable naming `device` when it cannot be used (no driver, no
/// device, bad ordinal) with a message a person understands.
void require_device(int device);
/// Number of usable devices (0 without a driver or device); never throws.
int device_count() noexcept;
/// Cached properties of `device` (require_device first).
const DeviceProps& device_props(int device);

class Context {
 public:
  /// stream == nullptr: the legacy default stream of `device`. Throws DeviceUnavailable.
  Context(int device, cudaStream_t stream);
  /// Waits for the work queued on the stream, then releases the workspace, the pinned
  /// memory, the handles and the events. Never throws.
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const noexcept { return device_; }
  cudaStream_t stream() const noexcept { return stream_; }
  /// Makes `device()` current on the calling thread (cudaSetDevice).
  void activate() const;
  /// Later work is queued on `stream`; safe while work is in flight (see the header).
  void set_stream(cudaStream_t stream);

  /// A device workspace of at least `bytes`, valid for work queued on stream() until the
  /// next call of workspace() on this context (callers carve it; they never free it).
  /// Grows only: a larger request frees the old buffer stream-ordered and allocates
  /// anew on the stream (cudaFreeAsync / cudaMallocAsync), without a host sync.
  void* workspace(std::size_t bytes);
  std::size_t workspace_bytes() const noexcept { return ws_bytes_; }

  /// Pinned host memory of at least `bytes` to stage host data through. Blocks until
  /// the copies queued from the previous use have completed (the event recorded by
  /// staging_done()), so the caller may overwrite it at once. Grows only.
  void* staging(std::size_t bytes);
  /// Records that the copies reading (or writing) the staging memory are queued on
  /// stream(): the next staging() waits for them.
  void staging_done();
  std::size_t staging_bytes() const noexcept { return pin_bytes_; }

  /// Two pinned slots with one event each, for reads of device counters one period late
  /// (the synchronous Sinkhorn's convergence poll), created on first use: ints [0], [1]
  /// and doubles at (double*)(p + 4) [0], [1] (the largest residual of the check). The
  /// event k marks the copies into slot k; callers record it on stream() after them.
  int* poll_slots();
  cudaEvent_t poll_event(int k) const noexcept { return poll_events_[k & 1]; }

  /// cuBLAS / cuSOLVER handles, created on first use and bound to stream().
  cublasHandle_t blas();
  cusolverDnHandle_t solver();
  /// cuSOLVER's Jacobi settings (at most 100 sweeps, tolerance machine accuracy) and
  /// 64-bit API parameters, created on first use and kept with the solver handle.
  syevjInfo_t syevj_info();
  cusolverDnParams_t solver_params();

  /// Allocations (device workspace growths, pinned growths) and handle creations made by
  /// this context so far: a test reads it to prove a call of a known size allocates
  /// nothing.
  std::int64_t allocations() const noexcept { return allocations_; }

  /// State a solver's driver keeps with the context between calls (the Sinkhorn
  /// loop's instantiated CUDA graphs); destroyed with the context, after its stream
  /// drained.
  struct Cache {
    virtual ~Cache() = default;
  };
  std::unique_ptr<Cache>& loop_cache() noexcept { return loop_cache_; }

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  void* ws_ = nullptr;
  std::size_t ws_bytes_ = 0;
  void* pin_ = nullptr;
  std::size_t pin_bytes_ = 0;
  cudaEvent_t pin_event_ = nullptr;     ///< end of the last use of the pinned memory
  cudaEvent_t switch_event_ = nullptr;  ///< end of the old stream's work at set_stream
  bool pin_event_recorded_ = false;
  int* poll_ = nullptr;
  cudaEvent_t poll_events_[2] = {nullptr, nullptr};
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  syevjInfo_t syevj_ = nullptr;
  cusolverDnParams_t params_ = nullptr;
  std::int64_t allocations_ = 0;
  std::unique_ptr<Cache> loop_cache_;  ///< last member: released first
};

/// The calling thread's cached context for `device` on the legacy default stream
/// (created on first use, destroyed at thread exit).
Context& thread_context(int device);

}  // namespace otgpu::runtime
