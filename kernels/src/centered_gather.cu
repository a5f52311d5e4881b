// Centred staging of point clouds (otgpu_kernels/centered_gather.h). Two passes over
// the input: the per-problem mean of y in double, then one grid-stride pass that
// writes every padded output element once. Reads are as coalesced as the caller's
// strides allow; the cost is O((n + m) d) per problem, negligible next to any solve.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "grid.cuh"
#include "otgpu/detail/staging.h"
#include "otgpu/error.h"
#include "otgpu_kernels/centered_gather.h"
#include "otgpu_kernels/cuda_check.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

constexpr int kThreads = 256;
/// Independent partial sums per thread in the mean: loads in flight per thread.
constexpr int kUnroll = 4;
/// Most blocks on the grid's y axis (coordinates loop past it).
constexpr std::int64_t kMaxGridY = 65535;

__device__ __forceinline__ double load(const Strided3& s, std::int64_t i0, std::int64_t i1,
                                       std::int64_t i2) {
  const std::int64_t off = i0 * s.stride[0] + i1 * s.stride[1] + i2 * s.stride[2];
  return s.is_f64 ? static_cast<const double*>(s.data)[off]
                  : static_cast<double>(static_cast<const float*>(s.data)[off]);
}

/// Block (b, k0): the coordinates k = k0, k0 + gridDim.y, ... of problem b. Each thread
/// sums rows tid, tid + kThreads, ... into kUnroll interleaved partials (a fixed
/// order: the same bits on every run), then the block sums the threads.
__global__ void __launch_bounds__(kThreads)
    row_means_kernel(Strided3 y, int ld, double* __restrict__ center) {
  __shared__ double shared[kThreads / 32];
  const std::int64_t b = blockIdx.x;
  const std::int64_t src_b = y.dim[0] == 1 ? 0 : b;
  const std::int64_t rows = y.dim[1], d = y.dim[2];
  for (std::int64_t k = blockIdx.y; k < ld; k += gridDim.y) {
    if (k >= d || rows == 0) {  // block-uniform branch
      if (threadIdx.x == 0) center[b * ld + k] = 0.0;
      continue;
    }
    double part[kUnroll] = {};
    std::int64_t j = threadIdx.x;
    for (; j + (kUnroll - 1) * kThreads < rows; j += kUnroll * kThreads) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) part[u] += load(y, src_b, j + u * kThreads, k);
    }
    for (; j < rows; j += kThreads) part[0] += load(y, src_b, j, k);
    double acc = 0;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc += part[u];
    acc = detail::block_sum<kThreads>(acc, shared);
    if (threadIdx.x == 0) center[b * ld + k] = acc / static_cast<double>(rows);
  }
}

__global__ void __launch_bounds__(kThreads)
    gather_centered_kernel(Strided3 src, std::int64_t B, int ld, const double* __restrict__ center,
                           float* __restrict__ dst) {
  const std::int64_t rows = src.dim[1], d = src.dim[2];
  const std::int64_t total = B * rows * ld;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t k = e % ld;
    const std::int64_t i = (e / ld) % rows;
    const std::int64_t b = e / (ld * rows);
    if (k >= d) {
      dst[e] = 0.f;
      continue;
    }
    const double v = load(src, src.dim[0] == 1 ? 0 : b, i, k);
    dst[e] = ::otgpu::detail::staged_coordinate(v, center != nullptr ? center[b * ld + k] : 0.0);
  }
}

void check_shape(const Strided3& s, std::int64_t B, int ld, const char* what) {
  if (B <= 0 || B > 2147483647LL || (s.dim[0] != 1 && s.dim[0] != B) || ld < s.dim[2]) {
    throw InvalidArgument(
        fmt::format("{}: batch B={} with source batch {} and row length {} "
                    "(padded to {}) do not fit",
                    what, B, s.dim[0], s.dim[2], ld));
  }
}

}  // namespace

void row_means(const Strided3& y, std::int64_t B, int ld, double* center, cudaStream_t stream) {
  check_shape(y, B, ld, "row_means");
  if (ld <= 0) return;
  const dim3 grid(static_cast<unsigned>(B),
                  static_cast<unsigned>(std::min<std::int64_t>(ld, kMaxGridY)));
  row_means_kernel<<<grid, kThreads, 0, stream>>>(y, ld, center);
  OTGPU_LAUNCH_CHECK();
}

void gather_centered(const Strided3& src, std::int64_t B, int ld, const double* center, float* dst,
                     cudaStream_t stream) {
  check_shape(src, B, ld, "gather_centered");
  const std::int64_t total = B * src.dim[1] * ld;
  if (total <= 0) return;
  gather_centered_kernel<<<detail::grid_stride_blocks(total, kThreads, 65535 * 8), kThreads, 0,
                           stream>>>(src, B, ld, center, dst);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
