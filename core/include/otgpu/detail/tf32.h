// Reduced-precision operands of the tensor-core cost tile, shared verbatim by the CPU
// emulation (tests/test_mma_emulation.cpp) and the kernels
// (kernels/src/sinkhorn_online_mma.cu).
//
// TF32 keeps fp32's 8-bit exponent and 10 of its 23 mantissa bits. tf32_rna(x) is
// PTX cvt.rna.tf32.f32: round to the nearest TF32 value, ties away from zero, returned
// as an fp32 bit pattern whose 13 low bits are zero (what mma.sync .tf32 reads). On
// the host it is emulated on the bits: adding 2^12 to the magnitude carries into bit
// 13 exactly when the dropped bits are >= half an ulp (ties go up in magnitude, i.e.
// away from zero), and the mask drops them; a carry out of the mantissa increments the
// exponent, which is the correctly rounded result (up to +inf past the largest TF32).
// NaN and inf pass unchanged.
//
// 3xTF32: x = big + small with big = tf32_rna(x) and small = tf32_rna(x - big). x - big
// is exact in fp32 (Sterbenz: both share the exponent range of x) and |x - big| <=
// 2^-11 |x|, so |x - big - small| <= 2^-11 |x - big| <= 2^-22 |x|. The product
//   x y = big_x big_y + big_x small_y + small_x big_y + small_x small_y + O(2^-22 |x y|)
// loses only the last two terms, both below 2^-22 |x y|: each TF32 x TF32 product is
// exact in fp32 (11 x 11 significant bits), so the three mma.sync products and their
// fp32 accumulation give a dot product with fp32's error, not TF32's.
//
// bf16_rn(x): round to nearest even to bf16 (8 significant bits), returned as fp32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "otgpu/config.h"

namespace otgpu::detail {

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE std::uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float bits_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

/// The host emulation of cvt.rna.tf32.f32 (see the header comment), on any build.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float tf32_rna_emulated(float x) {
  const std::uint32_t u = float_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf, NaN
  const std::uint32_t sign = u & 0x80000000u;
  const std::uint32_t mag = ((u & 0x7fffffffu) + 0x1000u) & 0xffffe000u;
  return bits_float(sign | mag);
}

/// tf32_rna for a finite x in two integer instructions (the kernels' rounding: their
/// inputs are finite by validation). For finite x the carry of + 2^12 never reaches
/// the sign bit (the largest finite magnitude 0x7f7fffff + 0x1000 stays below it, and
/// rounds to +-inf exactly as cvt.rna does), so the sign needs no separate handling;
/// tests/test_mma_emulation.cpp checks it bit for bit against tf32_rna_emulated.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float tf32_rna_finite(float x) {
  return bits_float((float_bits(x) + 0x1000u) & 0xffffe000u);
}

/// Round to the nearest TF32 value, ties away from zero (cvt.rna.tf32.f32 on the device).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float tf32_rna(float x) {
#if defined(__CUDA_ARCH__)
  std::uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
#else
  return tf32_rna_emulated(x);
#endif
}

/// Round to nearest even to bf16, as fp32 (NaN kept quiet; overflow rounds to inf).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float bf16_rn(float x) {
  const std::uint32_t u = float_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u)
    return (u & 0x007fffffu) != 0 ? bits_float(u | 0x00400000u) : x;
  const std::uint32_t lsb = (u >> 16) & 1u;
  return bits_float((u + 0x7fffu + lsb) & 0xffff0000u);
}

/// x = big + small (+ at most 2^-22 |x|), both TF32 values.
struct Tf32Split {
  float big, small;
};

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE Tf32Split tf32_split(float x) {
  const float big = tf32_rna_finite(x);
  return {big, tf32_rna_finite(x - big)};
}

/// The operand precision of a tensor-core dot product.
enum class MmaArith : std::uint8_t {
  x3tf32,  ///< big*big + big*small + small*big (fp32-level)
  tf32,    ///< one TF32 product
  bf16,    ///< one bf16 product
};

/// The K of one mma.sync: 8 for TF32 (m16n8k8), 16 for bf16 (m16n8k16).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int mma_k(MmaArith a) { return a == MmaArith::bf16 ? 16 : 8; }

/// Shared-memory layout of the tensor-core tiles (kernels/src/sinkhorn_online_mma.cu):
/// every row of x or y coordinates is stored as quads of 4 floats; a thread reads one
/// quad per row and 16-coordinate group with one 16-byte load (LDS.128). Rows whose
/// stride is a multiple of 32 floats (swizzle) keep their quads in place on even rows
/// and with bit 2 of the quad index flipped on odd rows: the 8 threads of one LDS.128
/// phase (lane quads t = 0..3 of two consecutive rows g, g + 1) then cover the 32 banks
/// once. Returns the float offset of quad `quad` of row `row` within the row.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE constexpr int mma_quad_offset(int quad, int row, bool swizzle) {
  return 4 * (swizzle ? quad ^ ((row & 1) << 2) : quad);
}

/// CPU model of the kernel's dot product <x, y> over d coordinates (zero past d, as the
/// kernel's zero-filled tiles). The coordinates run in groups of 16; lane quad t of
/// the mma.sync fragments holds coordinates 16 G + 4 t + [0, 4) of group G (one LDS.128)
/// and the products are permuted accordingly (a dot product is any order of its terms):
///  - TF32 (m16n8k8, two k-steps per group): k-step s in {0, 1} feeds coordinates
///    16 G + 4 t + 2 s (as k = t) and 16 G + 4 t + 2 s + 1 (as k = t + 4), t = 0..3;
///  - bf16 (m16n8k16, one step per group): all 16 coordinates of the group.
/// Each mma adds its exact sum of exact operand products to an fp32 accumulator with
/// one rounding. With 3xTF32 each k-step issues small_x*big_y, big_x*small_y, then
/// big_x*big_y; with small_apart (the kernel's streamed rows, padded d > 64) the two
/// small products go to a second accumulator, added to the first once after all d
/// coordinates (one more rounding), else all three to the one accumulator in that
/// order. The operands are split once (x = big + small by tf32_split); the hardware's
/// internal order within one mma is not specified by NVIDIA, and the model's error
/// bound (the test's) leaves room for it.
inline float mma_dot_model(const float* x, const float* y, int d, MmaArith a,
                           bool small_apart = false) {
  float acc = 0.f, lo = 0.f;
  float& small = small_apart ? lo : acc;
  auto at = [d](const float* v, int k) { return k < d ? v[k] : 0.f; };
  for (int g0 = 0; g0 < d; g0 += 16) {
    if (a == MmaArith::bf16) {
      double s = 0;
      for (int k = g0; k < g0 + 16; ++k)
        s += static_cast<double>(bf16_rn(at(x, k))) * bf16_rn(at(y, k));
      acc = static_cast<float>(acc + s);
      continue;
    }
    for (int step = 0; step < 2; ++step) {
      double sb = 0, bs = 0, bb = 0;
      for (int q = 0; q < 4; ++q) {
        for (int e = 0; e < 2; ++e) {
          const int k = g0 + 4 * q + 2 * step + e;
          const Tf32Split sx = tf32_split(at(x, k)), sy = tf32_split(at(y, k));
          sb += static_cast<double>(sx.small) * sy.big;
          bs += static_cast<double>(sx.big) * sy.small;
          bb += static_cast<double>(sx.big) * sy.big;
        }
      }
      if (a == MmaArith::x3tf32) {
        small = static_cast<float>(small + sb);
        small = static_cast<float>(small + bs);
      }
      acc = static_cast<float>(acc + bb);
    }
  }
  return small_apart && a == MmaArith::x3tf32 ? acc + lo : acc;
}

/// Near-coincident pairs of the Euclidean cost (kernels/src/sinkhorn_online_mma.cu).
/// The tile forms c2 = |x|^2 + |y|^2 - 2<x,y> with an absolute error E <= delta s,
/// s = |x|^2 + |y|^2, delta the 3xTF32 bound of the cost (tests/test_mma_emulation.cpp:
/// <= 1.5e-6 up to d = 100, 6e-6 at d = 3072, ~2^-18). The root turns it into
/// |sqrt(c2 + E) - sqrt(c2)| <= E / (2 sqrt(c2)): at c2 ~ s that is delta sqrt(s) / 2,
/// but at x = y (c2 = 0) it is sqrt(delta s) ~ 2e-3 |x|. A pair is flagged when
/// c2 < tau s; for the others the root's error stays below
/// delta s / (2 sqrt(tau s)) = (delta / (2 sqrt(tau))) sqrt(s), i.e. within a factor
/// 1 / sqrt(tau) = 8 of the error of a typical pair (c2 ~ s); a flagged pair
/// (|x - y| < sqrt(s) / 8) gets its c2 again from direct differences in fp32
/// (mma_direct_sq_model), relative error ~ d 2^-24 of c2 itself, 0 at x = y exactly.
/// Only the Euclidean cost (always 3xTF32) checks: the squared cost has no root and
/// keeps the absolute error delta s in every precision (TF32/bf16 are opt-ins for it).
inline constexpr float kMmaNearRel = 0x1p-6f;

/// The flag rule, c2 as formed (before the clamp at 0) and s = |x|^2 + |y|^2 as summed.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool mma_near_pair(float c2, float s) {
  return c2 < kMmaNearRel * s;
}

/// CPU replay of the kernels' warp-cooperative direct form of a flagged pair: lane l
/// sums (x_k - y_k)^2 for k = l, l + 32, ... in fp32 (fma), then the 32 lane sums
/// meet by an xor butterfly (offsets 16, 8, 4, 2, 1; every lane ends with the same
/// value, addition being commutative).
inline float mma_direct_sq_model(const float* x, const float* y, int d) {
  float lane_sum[32] = {};
  for (int l = 0; l < 32; ++l)
    for (int k = l; k < d; k += 32) {
      const float df = x[k] - y[k];
      lane_sum[l] = std::fma(df, df, lane_sum[l]);
    }
  for (int off = 16; off > 0; off >>= 1) {
    float next[32];
    for (int l = 0; l < 32; ++l) next[l] = lane_sum[l] + lane_sum[l ^ off];
    for (int l = 0; l < 32; ++l) lane_sum[l] = next[l];
  }
  return lane_sum[0];
}

/// The Euclidean cost tile's c2 for one pair given the norms and the model's dot
/// product: the norm form, replaced by the direct form when flagged (as the kernels).
inline float mma_euclid_sq_model(const float* x, const float* y, int d, float nx, float ny,
                                 float dot) {
  const float s = nx + ny;
  const float c2 = std::fma(-2.f, dot, s);
  return mma_near_pair(c2, s) ? mma_direct_sq_model(x, y, d) : c2;
}

}  // namespace otgpu::detail
