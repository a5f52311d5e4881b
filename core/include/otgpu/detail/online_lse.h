// The arithmetic of the online Sinkhorn half-step, shared verbatim by the CUDA kernels
// (kernels/src/sinkhorn_online.cu) and the CPU tests that pin its fp32 accuracy
// (tests/test_online_lse_cpu.cpp): the score transformation, the branch-free base-2
// log-sum-exp with a finite sentinel, and the merge of partial states.
// Header-only, host+device; on the host the fused multiply-add is std::fma on floats
// (one rounding, as FFMA) and ex2 is std::exp2 (the device's ex2.approx is within 2 ulp).
//
// Scores (squared Euclidean cost, base 2, scale = log2(e)/eps):
//   s_ij = log2(e) log b_j + scale (g_j - C_ij)
//        = [log2(e) log b_j + scale (g_j - |y_j|^2)] + <2 scale x_i, y_j> - scale |x_i|^2
//        =              h_j                         +    <x'_i, y_j>      -     r_i
// h_j is one term per column (computed once per tile), x'_i is the row prescaled once per
// launch, and r_i is a constant of the row added after the LSE. A pair then costs d FMAs
// (the FMA chain starts at h_j) where the difference form (x - y)^2 costs 2d. On centered
// data the rounding of h_j + <x', y> is ~ u scale (|x|^2 + |y|^2), so eps times the score
// error is ~ u (|x|^2 + |y|^2): fp32 relative to the cost scale, whatever eps
// (tests/test_online_lse_cpu.cpp measures it at eps = 1e-4 of the mean cost).
// The Euclidean cost keeps differences (a sqrt of a cancelled |x|^2 + |y|^2 - 2<x,y> would
// lose half the digits of near pairs) and takes the root as c2 * rsqrt(c2).
#pragma once

#include <cmath>

#include "otgpu/config.h"

// Unrolling hint for the device pass only (host compilers warn on the pragma).
#if defined(__CUDA_ARCH__)
#define OTGPU_ONLINE_UNROLL _Pragma("unroll")
#else
#define OTGPU_ONLINE_UNROLL
#endif

namespace otgpu::detail::online {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/// The running max of an empty state: finite, so that max - max is 0 and
/// ex2(sentinel - real max) is 0, with no -inf - -inf = NaN to test for. Any real base-2
/// score is far above it (|s| < 2^100 for any eps the fp32 scores resolve), and it is
/// far enough from -FLT_MAX that sentinel - s never overflows.
constexpr float kSentinel = -1e30f;

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float fma32(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

/// 2^x: MUFU.EX2 on the device (ex2.approx.ftz: 2^-inf = +0, arguments <= 0 here).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float ex2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

/// 1/sqrt(x): MUFU.RSQ on the device, without sqrtf's range fix-ups.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float rsqrt(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.0f / std::sqrt(x);
#endif
}

/// sqrt(c2) for c2 >= 0 as c2 * rsqrt(c2): one MUFU and one multiply. The floor keeps
/// rsqrt finite at c2 = 0 (the result is then 1e-15, far below any resolvable cost).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float euclid_from_sq(float c2) {
  const float c = c2 > 1e-30f ? c2 : 1e-30f;
  return c * rsqrt(c);
}

/// Column term of the squared Euclidean half-step:
/// h_j = log2(e) logw + scale (pot - |y|^2); -inf for a zero weight whatever pot
/// (a +inf potential next to a zero weight never makes NaN).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float col_term_sq(float logw, float pot, float norm_y,
                                                      float scale) {
  return logw == -INFINITY ? -INFINITY : fma32(scale, pot - norm_y, logw * kLog2e);
}

/// Column term of the Euclidean (difference form) half-step: log2(e) logw + scale pot.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float col_term(float logw, float pot, float scale) {
  return logw == -INFINITY ? -INFINITY : fma32(pot, scale, logw * kLog2e);
}

/// |v|^2 of D coordinates as the kernels compute it (one FMA chain).
template <int D>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float norm2(const float* v) {
  float acc = 0.0f;
  OTGPU_ONLINE_UNROLL
  for (int k = 0; k < D; ++k) acc = fma32(v[k], v[k], acc);
  return acc;
}

/// The squared Euclidean score before the row constant: h + <xs, y> with xs = 2 scale x.
template <int D>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float score_sq(const float* xs, const float* y, float h) {
  float acc = h;
  OTGPU_ONLINE_UNROLL
  for (int k = 0; k < D; ++k) acc = fma32(xs[k], y[k], acc);
  return acc;
}

/// |x - y|^2 in the difference form (no cancellation).
template <int D>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float sqdist(const float* x, const float* y) {
  float acc = 0.0f;
  OTGPU_ONLINE_UNROLL
  for (int k = 0; k < D; ++k) {
    const float t = x[k] - y[k];
    acc = fma32(t, t, acc);
  }
  return acc;
}

/// Running base-2 log-sum-exp: value = max + log2(sum), sum relative to max.
struct Lse {
  float max;
  float sum;
};

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE Lse lse_empty() { return {kSentinel, 0.0f}; }

/// Pairwise (tree) sum of K values, K a power of two: log2(K) rounding depth instead of
/// K. Halves by recursion so that every index is a compile-time constant (a halving
/// loop is not unrolled by nvcc, and the array then goes to local memory).
template <int K>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float tree_sum_n(float* v) {
  if constexpr (K == 1) {
    return v[0];
  } else {
    static_assert(K % 2 == 0, "tree_sum: K must be a power of two");
    OTGPU_ONLINE_UNROLL
    for (int q = 0; q < K / 2; ++q) v[q] += v[q + K / 2];
    return tree_sum_n<K / 2>(v);
  }
}

template <int K>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float tree_sum(float (&v)[K]) {
  return tree_sum_n<K>(v);
}

/// Adds K scores (K a power of two): one rescale exponential per chunk, one per score,
/// no branch. -inf scores (zero weights) add ex2(-inf) = 0; a chunk of them leaves the
/// state as it was (the max stays at least the sentinel, so max - max is never NaN).
/// The chunk's terms are summed as a tree and then added to the running sum once, so
/// the long sum sees n/K additions, not n.
template <int K>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE void lse_push(Lse& acc, const float (&s)[K]) {
  float m = acc.max;
  OTGPU_ONLINE_UNROLL
  for (int q = 0; q < K; ++q) m = fmaxf(m, s[q]);
  float e[K];
  OTGPU_ONLINE_UNROLL
  for (int q = 0; q < K; ++q) e[q] = ex2(s[q] - m);
  acc.sum = fma32(acc.sum, ex2(acc.max - m), tree_sum(e));
  acc.max = m;
}

/// Merge of two partial states (column splits), branch-free for finite maxima.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE Lse lse_merge(Lse a, Lse b) {
  const float m = fmaxf(a.max, b.max);
  return {m, fma32(a.sum, ex2(a.max - m), b.sum * ex2(b.max - m))};
}

/// log2 of the sum; -inf when every term was zero (sum = 0).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float lse_value(Lse acc) {
#if defined(__CUDA_ARCH__)
  return acc.max + log2f(acc.sum);
#else
  return acc.max + std::log2(acc.sum);
#endif
}

/// Potential from a base-2 LSE (row constant already subtracted):
/// -lambda eps ln(2) lse2, +inf for lse2 = -inf (lambda > 0).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float potential(float lse2, float lambda, float eps) {
  return -lambda * eps * kLn2 * lse2;
}

}  // namespace otgpu::detail::online
