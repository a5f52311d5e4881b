// Small math shared verbatim by the CPU reference and the CUDA kernels: costs,
// the streaming log-sum-exp accumulator, and a counter-based RNG (Philox4x32-10)
// with the Gumbel transform used for sampling. Header-only, host+device.
#pragma once

#include <cmath>
#include <cstdint>

#include "otgpu/config.h"

namespace otgpu::detail {

using std::exp;
using std::isinf;
using std::log;

/// Streaming log-sum-exp state: value = max + log(sum). sum is relative to max.
template <class T>
struct LseAcc {
  T max;
  T sum;
};

template <class T>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE LseAcc<T> lse_empty() {
  return {-INFINITY, T(0)};
}

/// Adds one term s to the accumulator (one exp per term except when the max moves).
template <class T>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE void lse_push(LseAcc<T>& acc, T s) {
  if (s <= acc.max) {
    acc.sum += exp(s - acc.max);
  } else {
    acc.sum = acc.sum * exp(acc.max - s) + T(1);
    acc.max = s;
  }
}

/// Merges two partial accumulators (flash-decoding style combine).
template <class T>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE LseAcc<T> lse_merge(LseAcc<T> a, LseAcc<T> b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  if (a.max >= b.max) return {a.max, a.sum + b.sum * exp(b.max - a.max)};
  return {b.max, b.sum + a.sum * exp(a.max - b.max)};
}

template <class T>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE T lse_value(LseAcc<T> acc) {
  return acc.max == -INFINITY ? T(-INFINITY) : acc.max + log(acc.sum);
}

/// Squared Euclidean distance computed as sum of squared differences (no
/// cancellation, unlike |x|^2 + |y|^2 - 2<x,y>).
template <class T, class U, class V>
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE T sqdist(const U* x, const V* y, std::int64_t d,
                                             std::int64_t sx = 1, std::int64_t sy = 1) {
  T acc = T(0);
  for (std::int64_t k = 0; k < d; ++k) {
    T diff = T(x[k * sx]) - T(y[k * sy]);
    acc += diff * diff;
  }
  return acc;
}

/// Unbalanced damping factor rho / (rho + eps); 1 for rho = +infinity.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double unbalanced_lambda(double rho, double eps) {
  return isinf(rho) ? 1.0 : rho / (rho + eps);
}

// ---- Philox4x32-10 (Salmon et al., SC'11), counter-based: no state, any order ----

struct Philox4 {
  std::uint32_t v[4];
};

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE void mulhilo32(std::uint32_t a, std::uint32_t b,
                                                   std::uint32_t& hi, std::uint32_t& lo) {
  std::uint64_t p = static_cast<std::uint64_t>(a) * static_cast<std::uint64_t>(b);
  hi = static_cast<std::uint32_t>(p >> 32);
  lo = static_cast<std::uint32_t>(p);
}

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE Philox4 philox4x32_10(Philox4 ctr, std::uint32_t k0,
                                                          std::uint32_t k1) {
  constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr std::uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    std::uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kM0, ctr.v[0], hi0, lo0);
    mulhilo32(kM1, ctr.v[2], hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

/// Standard Gumbel variate for the pair (seed, problem, i, j); identical on host
/// and device. Uses 32 random bits mapped to the open interval (0, 1).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double gumbel(std::uint64_t seed, std::uint64_t problem,
                                                  std::uint64_t i, std::uint64_t j) {
  Philox4 ctr{{static_cast<std::uint32_t>(j), static_cast<std::uint32_t>(j >> 32),
               static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(problem)}};
  // i above 2^32 is folded into the key so the full index range stays distinct.
  Philox4 r =
      philox4x32_10(ctr, static_cast<std::uint32_t>(seed),
                    static_cast<std::uint32_t>(seed >> 32) ^ static_cast<std::uint32_t>(i >> 32));
  double u = (static_cast<double>(r.v[0]) + 0.5) * (1.0 / 4294967296.0);
  return -log(-log(u));
}

}  // namespace otgpu::detail
