// Communicator::allreduce_device for the communicators without device buffers
// (LocalGroup, MPI): the device buffer is copied into pinned host memory on the
// caller's stream, reduced by the communicator's host allreduce (in double, so a float
// buffer sums in double and is rounded once), and copied back. Internal to
// host/src/dist. Built without CUDA, it throws DeviceUnavailable.
#pragma once

#include <cstddef>
#include <cstdint>

#include "otgpu/dist.h"

namespace otgpu::dist {

/// Grow-only pinned host memory of one communicator (freed with it).
class PinnedStage {
 public:
  PinnedStage() = default;
  PinnedStage(const PinnedStage&) = delete;
  PinnedStage& operator=(const PinnedStage&) = delete;
  ~PinnedStage();
  /// At least `bytes` of pinned host memory (the previous contents are not kept).
  void* get(std::size_t bytes);

 private:
  void* p_ = nullptr;
  std::size_t bytes_ = 0;
};

/// data (device, `count` elements of `dtype`) <- comm.allreduce over the ranks, ordered
/// on `stream` (a cudaStream_t; nullptr = the legacy default stream). Synchronizes the
/// stream (the host reduction needs the values). `who` names the communicator.
void staged_allreduce_device(Communicator& comm, PinnedStage& stage, void* data, std::int64_t count,
                             DType dtype, ReduceOp op, void* stream);

}  // namespace otgpu::dist
