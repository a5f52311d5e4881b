// Device helpers shared by the dense and small-problem Sinkhorn kernels (private to
// kernels/src): base-2 exponentials, the chunked online (max, sum) update, the merge
// of partial pairs, and the launch check.
#pragma once

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>

#include "otgpu/detail/sinkhorn_rules.h"
#include "otgpu/error.h"
#include "otgpu_kernels/cuda_check.h"

namespace otgpu::kernels::detail {

// log2(e) and ln(2) in fp32: every kernel works in base 2 so that the score scale
// log2(e)/eps folds into one multiply and the exponential is a single ex2.approx.
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// MUFU.EX2 directly: exp2f() adds range handling we do not need (arguments are
// <= 0 after the max shift, and ex2.approx.ftz(-inf) is +0).
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

/// Running base-2 log-sum-exp state: value = max + log2(sum), sum relative to max.
struct Lse2 {
  float max;
  float sum;
};

__device__ __forceinline__ Lse2 lse2_empty() { return {-INFINITY, 0.0f}; }

/// Adds K scores at once: one rescale exponential per chunk, one per score.
/// A chunk of -inf scores leaves the state unchanged (no -inf - -inf = NaN).
template <int K>
__device__ __forceinline__ void lse2_push(Lse2& acc, const float (&s)[K]) {
  float cmax = s[0];
#pragma unroll
  for (int q = 1; q < K; ++q) cmax = fmaxf(cmax, s[q]);
  const float nmax = fmaxf(acc.max, cmax);
  if (nmax != -INFINITY) {
    float sum = acc.sum * ex2(acc.max - nmax);
#pragma unroll
    for (int q = 0; q < K; ++q) sum += ex2(s[q] - nmax);
    acc.sum = sum;
    acc.max = nmax;
  }
}

__device__ __forceinline__ Lse2 lse2_merge(Lse2 a, Lse2 b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  if (a.max >= b.max) return {a.max, a.sum + b.sum * ex2(b.max - a.max)};
  return {b.max, b.sum + a.sum * ex2(a.max - b.max)};
}

/// Merges the states of the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ Lse2 lse2_warp_allreduce(Lse2 acc) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Lse2 other{__shfl_xor_sync(0xffffffffu, acc.max, off),
               __shfl_xor_sync(0xffffffffu, acc.sum, off)};
    acc = lse2_merge(acc, other);
  }
  return acc;
}

/// log2 of sum_k 2^{s_k}; -inf for an empty state.
__device__ __forceinline__ float lse2_value(Lse2 acc) {
  return acc.max == -INFINITY ? -INFINITY : acc.max + log2f(acc.sum);
}

/// Potential from a base-2 LSE: -lambda * eps * ln(2) * lse2 (+inf for -inf).
__device__ __forceinline__ float potential_from_lse2(float lse2, float lambda, float eps) {
  return lse2 == -INFINITY ? INFINITY : -lambda * eps * kLn2 * lse2;
}

/// Scaled log-domain weight term log2(e) * logw + pot * scale, where
/// scale = log2(e)/eps; -inf for a zero weight whatever the potential (so that a
/// +inf potential next to a zero weight never makes NaN).
__device__ __forceinline__ float scaled_term(float logw, float pot, float scale) {
  return logw == -INFINITY ? -INFINITY : fmaf(pot, scale, logw * kLog2e);
}

/// Block-wide sum of a double over a block of kThreads threads (a multiple of 32);
/// every thread gets the result. All threads must call it; `shared` holds
/// kThreads / 32 doubles and may be reused by the next call.
template <int kThreads>
__device__ __forceinline__ double block_sum(double v, double* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();  // shared may still be read by a previous call
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  return total;
}

}  // namespace otgpu::kernels::detail
