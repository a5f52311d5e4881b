// Raw staging of caller tensors, shared by the sliced and Gaussian drivers: a host
// view's bytes are copied as they are (any dtype, any strides) into the context's
// pinned staging memory and on to the device, where the same gather kernels that
// read device views lay them out (otgpu_kernels/gather.h). Device views can be read
// back the same way for host-side checks. Internal to host/src/cuda.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "otgpu/types.h"
#include "otgpu_host/gpu_runtime.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/gather.h"

namespace otgpu::cuda_backend {

/// Bump allocator over one workspace (counting only while base is null); every buffer
/// 256-byte aligned and at least one element long, so that no pointer it hands out is
/// null once the workspace exists (library calls such as cuSOLVER's reject null
/// buffers even when they are empty).
struct Carve {
  std::size_t offset = 0;
  char* base = nullptr;
  template <class T>
  T* take(std::int64_t count) {
    const std::size_t at = (offset + 255) & ~std::size_t{255};
    offset = at + static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * sizeof(T);
    return base == nullptr ? nullptr : reinterpret_cast<T*>(base + at);
  }
};

/// Bytes from the first to one past the last element a view touches (strides are
/// validated non-negative): the raw span copied as is.
inline std::size_t view_span_bytes(const TensorView& v) {
  if (!v.present()) return 0;
  std::int64_t last = 0;
  for (int k = 0; k < v.rank; ++k) {
    if (v.dim(k) == 0) return 0;
    last += (v.dim(k) - 1) * v.stride(k);
  }
  return static_cast<std::size_t>(last + 1) * dtype_size(v.dtype);
}

/// The view as a rank-3 strided source whose first element is at `data` (the
/// caller's device pointer, or where its raw bytes were staged); a lower rank is
/// padded in front with size-1 dimensions.
inline kernels::Strided3 strided3(const TensorView& v, const void* data) {
  kernels::Strided3 s;
  s.data = data;
  s.is_f64 = v.dtype == DType::f64;
  const int pad = 3 - v.rank;
  for (int k = 0; k < v.rank; ++k) {
    s.dim[pad + k] = v.dim(k);
    s.stride[pad + k] = v.stride(k);
  }
  return s;
}

/// Byte offsets of several raw spans packed into one buffer (256-byte aligned each);
/// an absent view gets no space.
struct RawLayout {
  std::vector<std::size_t> offset;
  std::size_t bytes = 0;

  /// Adds `size` bytes; returns their offset.
  std::size_t add(std::size_t size) {
    const std::size_t at = (bytes + 255) & ~std::size_t{255};
    offset.push_back(at);
    bytes = at + size;
    return at;
  }
  std::size_t add(const TensorView& v) { return add(v.present() ? view_span_bytes(v) : 0); }
};

/// Copies the raw spans of device views into pinned host memory (one buffer, laid
/// out by `layout`, which must hold one entry per view), on ctx's stream, and waits.
/// Returns the pinned base: host views over it (same shapes and strides) read what
/// the device views hold. Valid until the next ctx.staging().
inline const unsigned char* read_back(runtime::Context& ctx,
                                      const std::vector<const TensorView*>& views,
                                      const RawLayout& layout) {
  auto* pin = static_cast<unsigned char*>(ctx.staging(layout.bytes));
  for (std::size_t k = 0; k < views.size(); ++k) {
    const TensorView& v = *views[k];
    if (!v.present()) continue;
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(pin + layout.offset[k], v.data, view_span_bytes(v),
                                     cudaMemcpyDefault, ctx.stream()));
  }
  ctx.staging_done();
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  return pin;
}

/// Copies the raw spans of host views into pinned memory (offsets from `layout`)
/// without queuing anything: the caller adds its own host data behind them and
/// queues one upload (then ctx.staging_done()). Returns the pinned base.
inline unsigned char* stage_raw(runtime::Context& ctx, const std::vector<const TensorView*>& views,
                                const RawLayout& layout) {
  auto* pin = static_cast<unsigned char*>(ctx.staging(layout.bytes));
  for (std::size_t k = 0; k < views.size(); ++k) {
    const TensorView& v = *views[k];
    if (!v.present() || v.space != MemorySpace::host) continue;
    std::memcpy(pin + layout.offset[k], v.data, view_span_bytes(v));
  }
  return pin;
}

/// Restores the calling thread's current device on scope exit (the drivers make the
/// context's device current; the caller's choice survives the call).
class DeviceRestore {
 public:
  DeviceRestore() { OTGPU_CUDA_CHECK(cudaGetDevice(&saved_)); }
  ~DeviceRestore() { (void)cudaSetDevice(saved_); }
  DeviceRestore(const DeviceRestore&) = delete;
  DeviceRestore& operator=(const DeviceRestore&) = delete;

 private:
  int saved_ = 0;
};

}  // namespace otgpu::cuda_backend
