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

}  // namespace otgpu::detail
