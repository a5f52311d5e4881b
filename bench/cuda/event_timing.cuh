// Timing of the bench's device probes (W5: copy bandwidth, exp and tensor-core rates):
// the median of `repeats` launches between two events on the legacy default stream,
// after one warm-up launch. Shared by roofline.cu and tensor_probe.cu.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "otgpu_kernels/cuda_check.h"

namespace otgpu::bench::detail {

/// Two events, destroyed on every path (a failed check throws).
class EventPair {
 public:
  EventPair() {
    OTGPU_CUDA_CHECK(cudaEventCreate(&t0));
    if (const cudaError_t e = cudaEventCreate(&t1); e != cudaSuccess) {
      cudaEventDestroy(t0);
      OTGPU_CUDA_CHECK(e);
    }
  }
  ~EventPair() {
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  cudaEvent_t t0 = nullptr, t1 = nullptr;
};

/// Median milliseconds of `launch()` (which enqueues kernels on the legacy default
/// stream) over `repeats` timed runs after one warm-up; every launch is checked.
template <class Launch>
double median_kernel_ms(Launch&& launch, int repeats) {
  EventPair ev;
  launch();  // warm-up
  OTGPU_LAUNCH_CHECK();
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    OTGPU_CUDA_CHECK(cudaEventRecord(ev.t0));
    launch();
    OTGPU_CUDA_CHECK(cudaEventRecord(ev.t1));
    OTGPU_CUDA_CHECK(cudaEventSynchronize(ev.t1));
    OTGPU_LAUNCH_CHECK();
    float e = 0;
    OTGPU_CUDA_CHECK(cudaEventElapsedTime(&e, ev.t0, ev.t1));
    ms.push_back(e);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace otgpu::bench::detail
