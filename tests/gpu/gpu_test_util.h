// Helpers shared by the GPU suites: the clean skip without a device, the seeded
// uniform data every comparison with the CPU reference starts from (seeded_data.h),
// and (CUDA builds) the one owning device buffer the suites upload inputs into and
// read outputs from.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "seeded_data.h"

#ifdef OTGPU_WITH_CUDA
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "otgpu_kernels/cuda_check.h"
#endif

/// Skips the test (not a failure) when no CUDA device is usable: CI has none.
#define REQUIRE_GPU()                                                      \
  do {                                                                     \
    if (!otgpu::cuda_available()) GTEST_SKIP() << "no usable CUDA device"; \
  } while (0)

namespace otgpu_test {

#ifdef OTGPU_WITH_CUDA
/// An owning device array of `size()` elements of T (contiguous, no padding), freed
/// on destruction; movable, not copyable. An empty buffer holds no allocation and
/// data() is nullptr. Every CUDA call is checked with OTGPU_CUDA_CHECK (a failure
/// throws otgpu::CudaError or otgpu::OutOfMemory, which gtest reports as the test's
/// failure). The constructors and upload() return with the bytes in place (they wait
/// for the legacy default stream), so work on any stream, non-blocking ones included,
/// may read them at once.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// `count` elements, every byte zero.
  explicit DeviceBuffer(std::size_t count) : size_(count) {
    if (count == 0) return;
    OTGPU_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T)));
    OTGPU_CUDA_CHECK(cudaMemset(ptr_, 0, count * sizeof(T)));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  }
  /// A copy of `host`.
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);  // no throw from a destructor
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : size_(std::exchange(other.size_, 0)), ptr_(std::exchange(other.ptr_, nullptr)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      if (ptr_ != nullptr) (void)cudaFree(ptr_);
      size_ = std::exchange(other.size_, 0);
      ptr_ = std::exchange(other.ptr_, nullptr);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t bytes() const noexcept { return size_ * sizeof(T); }

  /// Writes `host` into elements [offset, offset + host.size()).
  void upload(const std::vector<T>& host, std::size_t offset = 0) {
    if (offset + host.size() > size_) {
      throw std::out_of_range("DeviceBuffer::upload: " + std::to_string(host.size()) +
                              " elements at offset " + std::to_string(offset) +
                              " overrun a buffer of " + std::to_string(size_));
    }
    if (host.empty()) return;
    OTGPU_CUDA_CHECK(
        cudaMemcpy(ptr_ + offset, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    // A pageable-source copy may return before its DMA lands.
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  }

  /// Every element, copied back to the host.
  std::vector<T> to_host() const {
    std::vector<T> out(size_);
    if (size_ > 0) {
      OTGPU_CUDA_CHECK(cudaMemcpy(out.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    }
    return out;
  }

 private:
  std::size_t size_ = 0;
  T* ptr_ = nullptr;
};
#endif

}  // namespace otgpu_test
