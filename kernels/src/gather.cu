// Gathers of strided tensors into contiguous arrays (otgpu_kernels/gather.h). One
// pass over the output with a grid-stride loop; the reads are as coalesced as the
// caller's strides allow.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "grid.cuh"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/gather.h"

namespace otgpu::kernels {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(std::int64_t total) {
  return detail::grid_stride_blocks(total, kThreads, 65535 * 8);
}

__device__ __forceinline__ double load(const Strided3& s, std::int64_t i0, std::int64_t i1,
                                       std::int64_t i2) {
  const std::int64_t off = i0 * s.stride[0] + i1 * s.stride[1] + i2 * s.stride[2];
  return s.is_f64 ? static_cast<const double*>(s.data)[off]
                  : static_cast<double>(static_cast<const float*>(s.data)[off]);
}

template <class Tout>
__global__ void __launch_bounds__(kThreads) gather_kernel(Strided3 src, Tout* __restrict__ dst) {
  const std::int64_t d1 = src.dim[1], d2 = src.dim[2];
  const std::int64_t total = src.dim[0] * d1 * d2;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i2 = e % d2;
    const std::int64_t i1 = (e / d2) % d1;
    const std::int64_t i0 = e / (d1 * d2);
    if constexpr (sizeof(Tout) == sizeof(float)) {
      // Read f32 as f32 (no detour through double for the common sliced input).
      const std::int64_t off = i0 * src.stride[0] + i1 * src.stride[1] + i2 * src.stride[2];
      dst[e] = src.is_f64 ? static_cast<float>(static_cast<const double*>(src.data)[off])
                          : static_cast<const float*>(src.data)[off];
    } else {
      dst[e] = load(src, i0, i1, i2);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    gather_symmetrized_kernel(Strided3 src, double* __restrict__ dst) {
  const std::int64_t d = src.dim[2];
  const std::int64_t dd = d * d;
  const std::int64_t total = src.dim[0] * dd;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = e / dd;
    const std::int64_t i = (e % dd) / d;
    const std::int64_t j = e % d;
    // The upper element first, as the host forms (S_ij + S_ji) / 2 for i < j.
    const std::int64_t lo = i < j ? i : j, hi = i < j ? j : i;
    dst[e] = i == j ? load(src, b, i, i) : 0.5 * (load(src, b, lo, hi) + load(src, b, hi, lo));
  }
}

template <class Tout>
void launch_gather(const Strided3& src, Tout* dst, cudaStream_t stream) {
  const std::int64_t total = src.dim[0] * src.dim[1] * src.dim[2];
  if (total <= 0) return;
  gather_kernel<Tout><<<grid_for(total), kThreads, 0, stream>>>(src, dst);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace

void gather(const Strided3& src, float* dst, cudaStream_t stream) {
  launch_gather(src, dst, stream);
}

void gather(const Strided3& src, double* dst, cudaStream_t stream) {
  launch_gather(src, dst, stream);
}

void gather_symmetrized(const Strided3& src, double* dst, cudaStream_t stream) {
  const std::int64_t total = src.dim[0] * src.dim[1] * src.dim[2];
  if (total <= 0) return;
  gather_symmetrized_kernel<<<grid_for(total), kThreads, 0, stream>>>(src, dst);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
