// W5 on the GPU: microbenchmarks of the three bounds the Sinkhorn and sliced kernels
// are measured against. Each kernel is built so that only the unit under test limits
// it: many independent dependency chains per thread (ILP) and enough resident warps
// to hide latency, no memory traffic for the compute tests.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "event_timing.cuh"
#include "otgpu/error.h"
#include "otgpu_kernels/cuda_check.h"
#include "roofline.h"
#include "tensor_probe.h"

namespace otgpu::bench {

namespace {

constexpr int kChains = 8;
constexpr int kSteps = 1024;
constexpr int kThreads = 256;

__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// v <- 2^(-v) keeps every chain in (0, 1]; the negation is a free operand modifier,
// so each step is exactly one MUFU.EX2.
__global__ void exp_throughput_kernel(float* sink, float seed) {
  float v[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) v[c] = seed + 0.01f * static_cast<float>(c + threadIdx.x % 7);
  for (int s = 0; s < kSteps; ++s) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) v[c] = ex2_approx(-v[c]);
  }
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) acc += v[c];
  if (acc == -1.f) sink[threadIdx.x] = acc;  // never true; keeps the chains alive
}

__global__ void fma_throughput_kernel(float* sink, float a, float b) {
  float v[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) v[c] = static_cast<float>(threadIdx.x + c);
  for (int s = 0; s < kSteps; ++s) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) v[c] = fmaf(v[c], a, b);
  }
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) acc += v[c];
  if (acc == -1.f) sink[threadIdx.x] = acc;
}

__global__ void copy_kernel(const float4* __restrict__ src, float4* __restrict__ dst,
                            std::size_t n4) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t k = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n4;
       k += stride) {
    dst[k] = src[k];
  }
}

}  // namespace

bool query_gpu(int device, GpuInfo& info) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device >= count || device < 0) {
    cudaGetLastError();  // clear the sticky "no device" status
    return false;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return false;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.global_mem_gib = static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0);
  int khz = 0;
  if (cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device) == cudaSuccess) {
    info.sm_clock_mhz = khz / 1000;
  }
  if (cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, device) == cudaSuccess) {
    info.mem_clock_mhz = khz / 1000;
  }
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  return true;
}

Limits measure_gpu_limits(int device) {
  OTGPU_CUDA_CHECK(cudaSetDevice(device));
  int sms = 0;
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  float* sink = nullptr;
  OTGPU_CUDA_CHECK(cudaMalloc(&sink, kThreads * sizeof(float)));
  Limits lim;
  const int blocks = sms * 16;  // 16 x 256 threads: enough warps to cover MUFU/FMA latency
  const double per_launch =
      static_cast<double>(blocks) * kThreads * kChains * static_cast<double>(kSteps);
  const double exp_ms =
      detail::median_kernel_ms([&] { exp_throughput_kernel<<<blocks, kThreads>>>(sink, 0.5f); }, 5);
  lim.exp_per_s = per_launch / (exp_ms * 1e-3);
  const double fma_ms = detail::median_kernel_ms(
      [&] { fma_throughput_kernel<<<blocks, kThreads>>>(sink, 0.999f, 0.001f); }, 5);
  lim.fma_flop_per_s = 2.0 * per_launch / (fma_ms * 1e-3);

  const std::size_t bytes = std::size_t{1} << 30;  // 1 GiB each way: far past the 50 MB L2
  float4 *src = nullptr, *dst = nullptr;
  OTGPU_CUDA_CHECK(cudaMalloc(&src, bytes));
  OTGPU_CUDA_CHECK(cudaMalloc(&dst, bytes));
  OTGPU_CUDA_CHECK(cudaMemset(src, 0, bytes));
  const std::size_t n4 = bytes / sizeof(float4);
  const double copy_ms =
      detail::median_kernel_ms([&] { copy_kernel<<<sms * 8, 512>>>(src, dst, n4); }, 5);
  lim.copy_bytes_per_s = 2.0 * static_cast<double>(bytes) / (copy_ms * 1e-3);
  OTGPU_CUDA_CHECK(cudaFree(src));
  OTGPU_CUDA_CHECK(cudaFree(dst));
  OTGPU_CUDA_CHECK(cudaFree(sink));
  const TensorRates tc = measure_tensor_rates(device);
  lim.tf32_flop_per_s = tc.tf32_flop_per_s;
  lim.bf16_flop_per_s = tc.bf16_flop_per_s;
  return lim;
}

}  // namespace otgpu::bench
