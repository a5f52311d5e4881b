// Random directions of the sliced Wasserstein distance, shared verbatim by the CPU
// reference and the CUDA kernels so that both draw the same directions for a seed.
// Coordinate k of direction l is a standard normal drawn with Philox4x32-10 keyed by
// (seed, l, k) and Box-Muller; normalizing the Gaussian vector gives a direction
// uniform on the sphere. Stateless: any thread can draw any coordinate.
#pragma once

#include <cmath>
#include <cstdint>

#include "otgpu/config.h"
#include "otgpu/detail/math.h"

namespace otgpu::detail {

using std::cos;
using std::sin;
using std::sqrt;

/// Domain tag in the counter so these draws never collide with other Philox users
/// (the Gumbel sampler keys its counters by problem and row).
inline constexpr std::uint32_t kDirectionStreamTag = 0x534C4344u;  // "SLCD"

/// Standard normal coordinate k of (unnormalized) direction l.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double direction_gaussian(std::uint64_t seed, std::uint64_t l,
                                                              std::uint64_t k) {
  // One Philox block yields a Box-Muller pair: coordinates 2q and 2q + 1 share it.
  const std::uint64_t q = k >> 1;
  Philox4 ctr{{static_cast<std::uint32_t>(q), static_cast<std::uint32_t>(q >> 32),
               static_cast<std::uint32_t>(l),
               kDirectionStreamTag ^ static_cast<std::uint32_t>(l >> 32)}};
  const Philox4 r =
      philox4x32_10(ctr, static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  constexpr double k2m32 = 1.0 / 4294967296.0;
  // 64 random bits per uniform (rounded to double); u1 lies in (0, 1], so the log
  // is finite and never positive.
  const double u1 =
      (static_cast<double>(r.v[0]) + (static_cast<double>(r.v[1]) + 0.5) * k2m32) * k2m32;
  const double u2 = (static_cast<double>(r.v[2]) + static_cast<double>(r.v[3]) * k2m32) * k2m32;
  const double radius = sqrt(-2.0 * log(u1));
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  return (k & 1u) ? radius * sin(kTwoPi * u2) : radius * cos(kTwoPi * u2);
}

}  // namespace otgpu::detail
