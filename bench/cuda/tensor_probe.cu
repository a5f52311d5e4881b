// W5 on the GPU, tensor cores: the throughput of the mma.sync instructions the
// tensor-core Sinkhorn kernels issue (kernels/src/sinkhorn_online_mma.cu), measured on
// register operands so that nothing but the tensor pipe and the issue of HMMA limits it:
// every warp runs kAcc independent accumulators (consecutive HMMA never wait on each
// other), 4 warps per block and 8 blocks per SM.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "event_timing.cuh"
#include "otgpu_kernels/cuda_check.h"
#include "tensor_probe.h"

namespace otgpu::bench {

namespace {

constexpr int kAcc = 8;
constexpr int kSteps = 1024;
constexpr int kThreads = 128;

/// kBf16: m16n8k16 bf16 (4096 FLOP per warp instruction); else m16n8k8 TF32 (2048).
template <bool kBf16>
__global__ void __launch_bounds__(kThreads) mma_throughput_kernel(float* sink, std::uint32_t seed) {
  // Small operands (2^-10 .. 2^-9, varied in low mantissa bits) keep 8 x 1024
  // accumulations far from overflow.
  const std::uint32_t v = kBf16 ? 0x3a803a80u ^ (seed & 0x00070007u)
                                : 0x3a800000u ^ ((threadIdx.x & 7u) << 13) ^ (seed & 0xe000u);
  const std::uint32_t m = kBf16 ? 0x00010001u : 0x2000u;  // the lowest mantissa bit
  const std::uint32_t a0 = v, a1 = v ^ m, a2 = v ^ 2 * m, a3 = v ^ 3 * m;
  const std::uint32_t b0 = v ^ 4 * m, b1 = v ^ 5 * m;
  float acc[kAcc][4];
#pragma unroll
  for (int q = 0; q < kAcc; ++q) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.f;
  for (int s = 0; s < kSteps; ++s) {
#pragma unroll
    for (int q = 0; q < kAcc; ++q) {
      if constexpr (kBf16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(acc[q][0]), "+f"(acc[q][1]), "+f"(acc[q][2]), "+f"(acc[q][3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
      } else {
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
            "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(acc[q][0]), "+f"(acc[q][1]), "+f"(acc[q][2]), "+f"(acc[q][3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
      }
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int q = 0; q < kAcc; ++q) sum += acc[q][0] + acc[q][1] + acc[q][2] + acc[q][3];
  if (sum == -1.f) sink[threadIdx.x] = sum;  // never true; keeps the accumulators alive
}

}  // namespace

TensorRates measure_tensor_rates(int device) {
  OTGPU_CUDA_CHECK(cudaSetDevice(device));
  int sms = 0;
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  float* sink = nullptr;
  OTGPU_CUDA_CHECK(cudaMalloc(&sink, kThreads * sizeof(float)));
  const int blocks = sms * 8;
  const double warp_mmas = static_cast<double>(blocks) * (kThreads / 32) * kSteps * kAcc;
  TensorRates r;
  const double tf32_ms = detail::median_kernel_ms(
      [&] { mma_throughput_kernel<false><<<blocks, kThreads>>>(sink, 1u); }, 5);
  r.tf32_flop_per_s = warp_mmas * (2.0 * 16 * 8 * 8) / (tf32_ms * 1e-3);
  const double bf16_ms = detail::median_kernel_ms(
      [&] { mma_throughput_kernel<true><<<blocks, kThreads>>>(sink, 1u); }, 5);
  r.bf16_flop_per_s = warp_mmas * (2.0 * 16 * 8 * 16) / (bf16_ms * 1e-3);
  OTGPU_CUDA_CHECK(cudaFree(sink));
  return r;
}

}  // namespace otgpu::bench
