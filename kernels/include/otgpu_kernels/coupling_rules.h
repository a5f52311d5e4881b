// The index rules of the coupling draws (kernels/src/coupling.cu): the Gumbel-top-k
// radix select's key, order-preserving key bits, the bin a pass keeps and the ties taken
// per tile; the draws with replacement's row uniform and column score. The kernels call
// these and the tests replay them on the CPU against the CPU's couple(), so the keys
// (Philox streams, argument order) and the tie and NaN rules are pinned without a
// device. No CUDA header (OTGPU_HOST_DEVICE).
#pragma once

#include <cstdint>
#include <cstring>

#include "otgpu/config.h"
#include "otgpu/detail/coupling_math.h"

namespace otgpu::kernels::topk {

/// Order-preserving map of a float to 32 bits (larger float, larger key). A NaN key (a
/// NaN potential, or 0 x inf when eps is 0) maps to 0, below every number: the bit
/// pattern of a positive NaN would rank it above +inf and take it first, while the
/// CPU's heap never prefers a NaN key to a number. -0 and +0 map alike (they compare
/// equal, so they tie and the smaller index goes first, as on the CPU).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE std::uint32_t ordered_bits(float z) {
  if (z != z) return 0u;
  if (z == 0.0f) return 0x80000000u;
#if defined(__CUDA_ARCH__)
  const std::uint32_t u = __float_as_uint(z);
#else
  std::uint32_t u;
  std::memcpy(&u, &z, sizeof(u));
#endif
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

/// The fp32 key of entry (i, j) of problem k: z = (f_i + g_j - C_ij) / eps + the Gumbel
/// variate of (key_seed, k, i, j), key_seed = stream_seed(seed, kStreamTopK): the CPU's
/// key (cpu_coupling.cpp) less the constant log a_i + log b_j of uniform weights. On the
/// device every operation is explicitly rounded, so that the passes of the select (three
/// kernels) compute bit-identical keys: no FMA contraction in one and not in another.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float key_value(float f, float g, float c, double inv_eps,
                                                    std::uint64_t key_seed, std::int64_t k,
                                                    std::int64_t i, std::int64_t j) {
  const double gumbel =
      otgpu::detail::stream_gumbel(key_seed, static_cast<std::uint64_t>(k),
                                   static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(j));
#if defined(__CUDA_ARCH__)
  const float s = __fsub_rn(__fadd_rn(f, g), c);
  const double z = __dadd_rn(__dmul_rn(static_cast<double>(s), inv_eps), gumbel);
#else
  const float s = (f + g) - c;
  const double z = static_cast<double>(s) * inv_eps + gumbel;
#endif
  return static_cast<float>(z);
}

/// One pass of the select: hist[b] counts the keys that share the prefix found so far
/// and have b in the 8 bits of this pass; `need` (>= 1) is the rank wanted among them,
/// counted from the largest. Returns the bin that holds it and sets `above` to the keys
/// of the larger bins (the next pass wants rank need - above within the bin). When the
/// bins hold fewer than `need` keys (never: num_pairs <= n m is validated) it returns
/// bin 0 with above = all of them.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int pick_bin(const std::uint32_t* hist, std::uint32_t need,
                                                 std::uint32_t& above) {
  above = 0;
  for (int b = 255; b >= 0; --b) {
    if (above + hist[b] >= need) return b;
    above += hist[b];
  }
  return 0;
}

/// Keys equal to the threshold that a tile takes: the ties rank in increasing linear
/// index, `need` of them are taken, `before` lie in earlier tiles and the tile holds
/// `eq`.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE std::int64_t ties_taken(std::int64_t need, std::int64_t before,
                                                            std::int64_t eq) {
  const std::int64_t left = need - before;
  return left <= 0 ? 0 : (left < eq ? left : eq);
}

}  // namespace otgpu::kernels::topk

namespace otgpu::kernels::draws {

/// The uniform of draw t's row in problem k (draws with replacement): keyed by the
/// user's seed itself in the row stream, as on the CPU.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double row_uniform(std::uint64_t seed, std::int64_t k,
                                                       std::int64_t t) {
  return otgpu::detail::keyed_uniform(seed, otgpu::detail::kStreamRowUniform,
                                      static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(t));
}

/// The score of column j for draw t of problem k (row i_t, with C = C_{i_t j}): (g_j -
/// C) / eps + the Gumbel variate of (col_seed, k, t, j), col_seed = stream_seed(seed,
/// kStreamJointColumn); the draw takes the argmax (ties to the smaller j). The CPU adds
/// log b_j, the same for every j under uniform weights.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double column_score(float g, float c, double inv_eps,
                                                        std::uint64_t col_seed, std::int64_t k,
                                                        std::int64_t t, std::int64_t j) {
  return static_cast<double>(g - c) * inv_eps +
         otgpu::detail::stream_gumbel(col_seed, static_cast<std::uint64_t>(k),
                                      static_cast<std::uint64_t>(t), static_cast<std::uint64_t>(j));
}

}  // namespace otgpu::kernels::draws
