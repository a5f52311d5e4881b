// Host-staged device allreduce (host_staged.h).
#include "host_staged.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "otgpu/error.h"

#if defined(OTGPU_WITH_CUDA)
#include <cuda_runtime_api.h>

#include "otgpu_kernels/cuda_check.h"
#endif

namespace otgpu::dist {

#if defined(OTGPU_WITH_CUDA)

PinnedStage::~PinnedStage() {
  if (p_ != nullptr) (void)cudaFreeHost(p_);
}

void* PinnedStage::get(std::size_t bytes) {
  if (bytes <= bytes_) return p_;
  if (p_ != nullptr) {
    OTGPU_CUDA_CHECK(cudaFreeHost(p_));
    p_ = nullptr;
    bytes_ = 0;
  }
  OTGPU_CUDA_CHECK(cudaMallocHost(&p_, bytes));
  bytes_ = bytes;
  return p_;
}

void staged_allreduce_device(Communicator& comm, PinnedStage& stage, void* data, std::int64_t count,
                             DType dtype, ReduceOp op, void* stream) {
  if (count < 0) {
    throw InvalidArgument(fmt::format("allreduce_device: count is {} (must be >= 0)", count));
  }
  if (count > 0 && data == nullptr) {
    throw InvalidArgument("allreduce_device: data is null");
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();
    throw DeviceUnavailable(fmt::format(
        "allreduce_device: the {} communicator stages device buffers through CUDA pinned "
        "memory, and no CUDA device is usable here",
        comm.name()));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  const std::size_t bytes = static_cast<std::size_t>(count) * dtype_size(dtype);
  void* host = stage.get(std::max<std::size_t>(bytes, 8));
  if (count > 0) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(host, data, bytes, cudaMemcpyDeviceToHost, s));
  }
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  // Every rank calls the host collective, with or without elements.
  if (dtype == DType::f64) {
    comm.allreduce(static_cast<double*>(host), count, op);
  } else {
    auto* f = static_cast<float*>(host);
    std::vector<double> wide(f, f + count);
    comm.allreduce(wide.data(), count, op);
    for (std::int64_t k = 0; k < count; ++k)
      f[k] = static_cast<float>(wide[static_cast<std::size_t>(k)]);
  }
  if (count > 0) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(data, host, bytes, cudaMemcpyHostToDevice, s));
    // The pinned buffer is reused by the next call: the copy must have read it.
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }
}

#else

PinnedStage::~PinnedStage() = default;

void* PinnedStage::get(std::size_t) {
  throw DeviceUnavailable("PinnedStage: libotgpu was built without CUDA");
}

void staged_allreduce_device(Communicator& comm, PinnedStage&, void*, std::int64_t, DType, ReduceOp,
                             void*) {
  throw DeviceUnavailable(fmt::format(
      "allreduce_device: the {} communicator stages device buffers through CUDA pinned memory, "
      "and this libotgpu was built without CUDA (configure with OTGPU_CUDA=ON)",
      comm.name()));
}

#endif

}  // namespace otgpu::dist
