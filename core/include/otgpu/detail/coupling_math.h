// Keys of the coupling samplers and of the minibatch estimator, shared verbatim by the
// CPU reference and the CUDA kernels (OTGPU_HOST_DEVICE). Every random number is a
// Philox4x32-10 block of a counter that names what it is for, so a draw depends on
// (seed, stream, problem, index) only: never on the order, the tiling or the backend.
#pragma once

#include <cstdint>

#include "otgpu/config.h"
#include "otgpu/detail/math.h"

namespace otgpu::detail {

/// Streams of the coupling samplers: each derives its own seed from the user's, so
/// that the one-partner-per-row Gumbel (sample_partners, keyed by the seed itself),
/// the row draws, the column draws and the top-k keys are independent.
enum CouplingStream : std::uint32_t {
  kStreamRowUniform = 1,   ///< joint with replacement: the uniform of draw t's row
  kStreamJointColumn = 2,  ///< joint with replacement: the Gumbel of draw t's column
  kStreamTopK = 3,         ///< joint without replacement: the Gumbel of entry (i, j)
  kStreamMinibatchX = 4,   ///< minibatch estimator: the keys of the rows of x
  kStreamMinibatchY = 5,   ///< minibatch estimator: the keys of the rows of y
};

/// A 64-bit seed for `stream`, derived from the user's seed by one Philox block.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE std::uint64_t stream_seed(std::uint64_t seed,
                                                              std::uint32_t stream) {
  Philox4 r =
      philox4x32_10(Philox4{{stream, 0x636f7570u, 0u, 0u}}, static_cast<std::uint32_t>(seed),
                    static_cast<std::uint32_t>(seed >> 32));
  return static_cast<std::uint64_t>(r.v[0]) | (static_cast<std::uint64_t>(r.v[1]) << 32);
}

/// 64 random bits for (seed, stream, problem, t).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE std::uint64_t keyed_bits(std::uint64_t seed,
                                                             std::uint32_t stream,
                                                             std::uint64_t problem,
                                                             std::uint64_t t) {
  Philox4 r =
      philox4x32_10(Philox4{{static_cast<std::uint32_t>(t), static_cast<std::uint32_t>(t >> 32),
                             static_cast<std::uint32_t>(problem),
                             stream ^ static_cast<std::uint32_t>(problem >> 32)}},
                    static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  return static_cast<std::uint64_t>(r.v[0]) | (static_cast<std::uint64_t>(r.v[1]) << 32);
}

/// A uniform variate in the open interval (0, 1) from the top 53 of those bits.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double keyed_uniform(std::uint64_t seed, std::uint32_t stream,
                                                         std::uint64_t problem, std::uint64_t t) {
  const std::uint64_t bits = keyed_bits(seed, stream, problem, t) >> 11;
  return (static_cast<double>(bits) + 0.5) * (1.0 / 9007199254740992.0);
}

/// The Gumbel variate of entry (i, j) of problem k in `stream` (the one of math.h,
/// keyed by the stream's derived seed).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double stream_gumbel(std::uint64_t derived_seed,
                                                         std::uint64_t problem, std::uint64_t i,
                                                         std::uint64_t j) {
  return gumbel(derived_seed, problem, i, j);
}

}  // namespace otgpu::detail
