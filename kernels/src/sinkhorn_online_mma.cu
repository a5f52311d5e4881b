// Online point-cloud Sinkhorn on tensor cores (see sinkhorn_mma.h for the contract and
// the algebra of the score).
//
// Block: 4 warps, 64 rows of X. A column tile is 64 columns of Y; the tile of dot
// products <x_i, y_j> is accumulated in fp32 registers by mma.sync over chunks of 32
// coordinates (16 for dp = 16) staged in shared memory by cp.async, double-buffered:
// the loads of the next (tile, chunk) stage fly while the current one multiplies. Up to
// dp = 64 the block's rows stay in shared memory for the whole launch and only Y
// streams; above, X and Y chunks stream together (any dp, the same shared memory: no
// padding cliff and no size limit).
//
// Warp w owns rows [16 w, 16 w + 16) and every column of the tile: 8 accumulator tiles
// m16n8, 32 floats per thread. Lane (g = lane / 4, t = lane % 4) holds, per tile q,
// rows g and g + 8, columns 8 q + 2 t and 8 q + 2 t + 1: 16 scores of each of its two
// rows per column tile, pushed into a running base-2 (max, sum) with one rescale per 16
// scores. The four lanes of a quad share rows and merge their states at the end.
//
// Operands in shared memory (otgpu/detail/tf32.h: mma_quad_offset, mma_dot_model).
// Each 16-coordinate group is read by lane quad t as coordinates 4t..4t+3, one LDS.128
// per row, so a fragment's k index maps to a permuted coordinate (a dot product does not
// care; the CPU model replays the permutation). Y chunks: rows of KC floats, swizzled
// (odd rows swap the halves of each 32-float segment) instead of padded, split once per
// stage for the block (TF32 rounding in place, 3xTF32 remainders beside). X (TF32
// arithmetics): split once per block (resident rows, read from global memory) or per
// stage (streamed chunks) into fragment order, so that each A fragment of a k-step is
// one LDS.128 with no register moves. 3xTF32 with streamed rows accumulates the two
// small products apart (acc_lo), added to big*big once per tile: shorter dependent
// HMMA chains where shared memory, not registers, limits the blocks per SM.
//
// Counts (static SASS, scripts/sass-mma-report, bench/results/
// sass-sm90-cuda13.0-2026-11-29-mma-s8.md): at dp = 64 a warp issues 37.7
// instructions per 32 pairs with 3xTF32 (was 47.8), 24.7 with TF32 (29.3), 23.1 with
// bf16 (24.8); 6 HMMA per 32 pairs with 3xTF32. At 4 issues and ~1 HMMA.1688 per clock
// and SM, 3xTF32 stays issue-bound (3.4 pairs per clock and SM against 5.3 for the
// tensor pipe): ~9.7 ms per iteration at n = m = 65536 on an H200 (the target is 6).
// Shared memory: 3xTF32 takes 59,136 bytes at dp = 33..64 and above (3 blocks per SM),
// 42,752 at dp = 32 (4 blocks by its 105 registers). Unmeasured: this machine has no GPU.
//
// 3xTF32: the operands are split x = big + small (otgpu/detail/tf32.h: the rounding is
// two integer instructions, the same code the CPU test proves). The epilogue rounds as
// the SIMT kernels do; the cancellation of |x|^2 + |y|^2 - 2<x,y> is bounded by the
// centring of the staging (tests/test_mma_emulation.cpp measures it on the CPU model).
// The Euclidean cost's root would still turn that residue into ~2e-3 |x| at x = y:
// pairs with c2 < 2^-6 (|x|^2 + |y|^2) are redone by direct fp32 differences from the
// staged points in global memory, the whole warp per pair (euclid_tile_c2,
// near_pairs_direct; the rule and its bound in otgpu/detail/tf32.h). Unflagged tiles
// pay ~2 instructions per 32 pairs for the check (one FMUL, one FSETP.OR per pair and
// one vote per tile: the epilogue's 659 -> 718 per 1024 pairs in the half-step).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdint>

#include "otgpu/detail/math.h"
#include "otgpu/detail/tf32.h"
#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "otgpu_kernels/sinkhorn_mma.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {

namespace {

using detail::ex2;
using detail::kLn2;
using detail::kLog2e;
using detail::Lse2;
using detail::lse2_empty;
using detail::lse2_merge;
using detail::lse2_push;
using detail::lse2_value;
using detail::potential_from_lse2;
using detail::scaled_term;
using otgpu::detail::MmaArith;

constexpr int kThreads = mma_geometry::kThreads;
constexpr int kBM = mma_geometry::kRowsPerBlock;
constexpr int kBN = mma_geometry::kTileCols;
constexpr std::int64_t kMaxGridY = geometry::kMaxBatchPerLaunch;

static_assert(kBN == geometry::kOnlineTileCols, "split spans are whole SIMT tiles");
static_assert(kBM == 16 * (kThreads / 32), "one m16 row slab per warp");

enum class Mode { half, stats, sample };

// ------------------------------------------------------------ PTX wrappers ----

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: zero-fill, nothing read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

/// D = A B + D, A 16x8 row-major, B 8x8 column-major, TF32 operands, fp32 accumulate.
__device__ __forceinline__ void mma_tf32(float (&c)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// D = A B + D, A 16x16 row-major, B 16x8 column-major, bf16 operands, fp32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Two fp32 values as one bf16x2 register: lo in bits 0-15 (the lower k index).
__device__ __forceinline__ std::uint32_t bf16_pair(float2 v) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(v.x, v.y);
  return *reinterpret_cast<const std::uint32_t*>(&h);
}

// ------------------------------------------------------------------ the tile ----

using otgpu::detail::mma_quad_offset;

__device__ __forceinline__ float4 lds4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

/// The TF32 operand registers of k-step s (0, 1) from a quad of coordinates 4t..4t+3:
/// coordinates 4t + 2s and 4t + 2s + 1 feed the fragment's k = t and k = t + 4.
__device__ __forceinline__ std::uint32_t lo_of(float4 v, int s) {
  return __float_as_uint(s == 0 ? v.x : v.z);
}
__device__ __forceinline__ std::uint32_t hi_of(float4 v, int s) {
  return __float_as_uint(s == 0 ? v.y : v.w);
}

__device__ __forceinline__ float4 tf32_big4(float4 v) {
  return make_float4(otgpu::detail::tf32_rna_finite(v.x), otgpu::detail::tf32_rna_finite(v.y),
                     otgpu::detail::tf32_rna_finite(v.z), otgpu::detail::tf32_rna_finite(v.w));
}
__device__ __forceinline__ float4 tf32_small4(float4 v, float4 big) {
  return make_float4(
      otgpu::detail::tf32_rna_finite(v.x - big.x), otgpu::detail::tf32_rna_finite(v.y - big.y),
      otgpu::detail::tf32_rna_finite(v.z - big.z), otgpu::detail::tf32_rna_finite(v.w - big.w));
}

/// Accumulates one chunk of KC coordinates of the warp's 16 x 64 dot-product tile.
/// xb: the warp's first row at the chunk's first coordinate (row stride ldx); yb: the
/// tile's first column at the chunk's first coordinate (row stride KC). Layout: rows of
/// quads, swizzled when kSwz (otgpu::detail::mma_quad_offset); lane (g, t) reads quad t
/// of each 16-coordinate group with one LDS.128 per row (rows g, g + 8 of the slab;
/// column 8 q + g of tile q), and the fragments take the coordinates in the permuted
/// order of otgpu::detail::mma_dot_model (its CPU replay).
/// kPresplit (TF32 arithmetics): xb and yb hold the TF32 roundings and xsm, ysm (same
/// layouts) the rounded remainders (3xTF32), split once in shared memory; otherwise
/// the split is done here from raw fp32 values. kFragX: xb, xsm point at the lane's
/// fragment-order rows (stage_x_fragments). 3xTF32 issues per k-step small*big, then
/// big*small into lo and big*big into acc; lo may alias acc (one accumulator), or be
/// a second one that the caller adds to acc once per tile: shorter dependent HMMA
/// chains (ptxas pads a chain with NOPs) for 32 more registers.
template <MmaArith A, int KC, bool kSwz, bool kPresplit, bool kFragX = false>
__device__ __forceinline__ void mma_chunk(const float* xb, const float* xsm, int ldx,
                                          const float* yb, const float* ysm, float (&acc)[8][4],
                                          float (&lo)[8][4]) {
  static_assert(!kFragX || (kPresplit && A != MmaArith::bf16), "fragment order: split TF32 rows");
  static_assert(KC % 16 == 0, "whole 16-coordinate groups");
  constexpr bool k3 = A == MmaArith::x3tf32;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int c = 0; c < KC / 16; ++c) {
    const int off = mma_quad_offset(4 * c + t, g, kSwz);  // rows g, g + 8, 8 q + g: same parity
    float4 xr0{}, xr1{};
    if constexpr (!kFragX) {
      xr0 = lds4(xb + g * ldx + off);
      xr1 = lds4(xb + (g + 8) * ldx + off);
    }
    if constexpr (kFragX) {
      // The A fragments of both k-steps, big and small, as stored (stage_x_fragments).
      float4 fb[2], fs[2];
#pragma unroll
      for (int st = 0; st < 2; ++st) {
        fb[st] = lds4(xb + 32 * c + 4 * st);
        if constexpr (k3) fs[st] = lds4(xsm + 32 * c + 4 * st);
      }
      // Column tiles in blocks of kQB: each product is issued for the block's tiles in
      // turn, so consecutive HMMA write different accumulators (each keeps the order
      // small*big, big*small, big*big per k-step).
      constexpr int kQB = 4;
#pragma unroll
      for (int qb = 0; qb < 8; qb += kQB) {
        float4 yv[kQB], ys[kQB];
#pragma unroll
        for (int j = 0; j < kQB; ++j) {
          const int at = ((qb + j) * 8 + g) * KC + off;
          yv[j] = lds4(yb + at);
          if constexpr (k3) ys[j] = lds4(ysm + at);
        }
#pragma unroll
        for (int st = 0; st < 2; ++st) {
          const std::uint32_t ab[4] = {__float_as_uint(fb[st].x), __float_as_uint(fb[st].y),
                                       __float_as_uint(fb[st].z), __float_as_uint(fb[st].w)};
          if constexpr (k3) {
            const std::uint32_t as[4] = {__float_as_uint(fs[st].x), __float_as_uint(fs[st].y),
                                         __float_as_uint(fs[st].z), __float_as_uint(fs[st].w)};
#pragma unroll
            for (int j = 0; j < kQB; ++j)
              mma_tf32(lo[qb + j], as, lo_of(yv[j], st), hi_of(yv[j], st));
#pragma unroll
            for (int j = 0; j < kQB; ++j)
              mma_tf32(lo[qb + j], ab, lo_of(ys[j], st), hi_of(ys[j], st));
          }
#pragma unroll
          for (int j = 0; j < kQB; ++j)
            mma_tf32(acc[qb + j], ab, lo_of(yv[j], st), hi_of(yv[j], st));
        }
      }
    } else if constexpr (A == MmaArith::bf16) {
      const std::uint32_t a[4] = {
          bf16_pair(make_float2(xr0.x, xr0.y)), bf16_pair(make_float2(xr1.x, xr1.y)),
          bf16_pair(make_float2(xr0.z, xr0.w)), bf16_pair(make_float2(xr1.z, xr1.w))};
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const float4 y = lds4(yb + (q * 8 + g) * KC + off);
        mma_bf16(acc[q], a, bf16_pair(make_float2(y.x, y.y)), bf16_pair(make_float2(y.z, y.w)));
      }
    } else {
      float4 xb0 = xr0, xb1 = xr1, xs0{}, xs1{};
      if constexpr (kPresplit) {
        if constexpr (k3) {
          xs0 = lds4(xsm + g * ldx + off);
          xs1 = lds4(xsm + (g + 8) * ldx + off);
        }
      } else {
        xb0 = tf32_big4(xr0);
        xb1 = tf32_big4(xr1);
        if constexpr (k3) {
          xs0 = tf32_small4(xr0, xb0);
          xs1 = tf32_small4(xr1, xb1);
        }
      }
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const int at = (q * 8 + g) * KC + off;
        float4 yv = lds4(yb + at), ys{};
        if constexpr (kPresplit) {
          if constexpr (k3) ys = lds4(ysm + at);
        } else {
          const float4 raw = yv;
          yv = tf32_big4(raw);
          if constexpr (k3) ys = tf32_small4(raw, yv);
        }
#pragma unroll
        for (int st = 0; st < 2; ++st) {
          const std::uint32_t ab[4] = {lo_of(xb0, st), lo_of(xb1, st), hi_of(xb0, st),
                                       hi_of(xb1, st)};
          if constexpr (k3) {
            const std::uint32_t as[4] = {lo_of(xs0, st), lo_of(xs1, st), hi_of(xs0, st),
                                         hi_of(xs1, st)};
            mma_tf32(lo[q], as, lo_of(yv, st), hi_of(yv, st));
            mma_tf32(lo[q], ab, lo_of(ys, st), hi_of(ys, st));
          }
          mma_tf32(acc[q], ab, lo_of(yv, st), hi_of(yv, st));
        }
      }
    }
  }
}

/// Once per chunk for the whole block (every thread calls it; no barrier): thread t
/// takes half a row of the [64][KC] tile (row t / 2, coordinates KC/2 (t % 2) +
/// [0, KC/2), visited from a row-dependent quad so that an LDS.128 phase spreads over
/// the banks), adds their squares to ny when kNorm (the column norm, from the raw
/// values; the layout only permutes a row's quads) and, for the TF32 arithmetics,
/// replaces them in place by their TF32 rounding and writes the rounded remainder to
/// sm (3xTF32): the 4 warps then read ready operands instead of each converting them.
template <MmaArith A, int KC, bool kNorm>
__device__ __forceinline__ void presplit_chunk(float* v, float* sm, float& ny) {
  static_assert(2 * kBN == kThreads && kBN == kBM, "two threads per row");
  constexpr int kQuads = KC / 8;  // per half row
  const int row = threadIdx.x >> 1;
  const int base = row * KC + (threadIdx.x & 1) * (KC / 2);
  const int rot = (KC == 16 ? row >> 1 : row) & (kQuads - 1);
#pragma unroll
  for (int i = 0; i < kQuads; ++i) {
    const int at = base + 4 * ((i + rot) & (kQuads - 1));
    const float4 x = lds4(v + at);
    if constexpr (kNorm) ny = fmaf(x.x, x.x, fmaf(x.y, x.y, fmaf(x.z, x.z, fmaf(x.w, x.w, ny))));
    if constexpr (A != MmaArith::bf16) {
      const float4 big = tf32_big4(x);
      *reinterpret_cast<float4*>(v + at) = big;
      if constexpr (A == MmaArith::x3tf32)
        *reinterpret_cast<float4*>(sm + at) = tf32_small4(x, big);
    }
  }
}

/// Fragment order of the resident rows (TF32 arithmetics): per row pair p = 8 w + g
/// (rows 16 w + g and 16 w + g + 8 of the block), 16-coordinate group G, lane quad t
/// and k-step s, the float4 of the A fragment {x[g][k], x[g+8][k], x[g][k+1],
/// x[g+8][k+1]}, k = 16 G + 4 t + 2 s, at float4 index p * pair_stride + 8 G + 2 t + s:
/// one LDS.128 per fragment (no register moves to assemble it). pair_stride = 8 NG + 1
/// float4s (NG groups): the 8 lanes of an LDS.128 phase (g, g + 1; t) hit 32 banks.
__host__ __device__ __forceinline__ int frag_pair_stride(int ldx) { return 2 * ldx + 4; }

/// Splits rows (3xTF32: big and small; TF32: big) and stores them in fragment order,
/// big into fb, small into fs, ng 16-coordinate groups per row pair. load(row, k)
/// returns coordinates [k, k + 4) of row `row` of the block. No barrier.
template <MmaArith A, class Load>
__device__ __forceinline__ void store_x_fragments(float* fb, float* fs, int ng, Load&& load) {
  const int stride = frag_pair_stride(16 * ng);
  for (int idx = threadIdx.x; idx < 32 * ng * 4; idx += kThreads) {
    const int tq = idx & 3, G = (idx >> 2) % ng, pr = (idx >> 2) / ng;
    const int row = (pr >> 3) * 16 + (pr & 7);  // rows row and row + 8
    const int k = 16 * G + 4 * tq;
    const float4 v0 = load(row, k), v1 = load(row + 8, k);
    const float4 big0 = tf32_big4(v0), big1 = tf32_big4(v1);
    float* db = fb + pr * stride + 4 * (8 * G + 2 * tq);
    *reinterpret_cast<float4*>(db) = make_float4(big0.x, big1.x, big0.y, big1.y);
    *reinterpret_cast<float4*>(db + 4) = make_float4(big0.z, big1.z, big0.w, big1.w);
    if constexpr (A == MmaArith::x3tf32) {
      const float4 sm0 = tf32_small4(v0, big0), sm1 = tf32_small4(v1, big1);
      float* ds = fs + (db - fb);
      *reinterpret_cast<float4*>(ds) = make_float4(sm0.x, sm1.x, sm0.y, sm1.y);
      *reinterpret_cast<float4*>(ds + 4) = make_float4(sm0.z, sm1.z, sm0.w, sm1.w);
    }
  }
}

/// The resident rows: read from global memory once per block (zero past n and dp).
template <MmaArith A>
__device__ __forceinline__ void stage_x_fragments(float* fb, float* fs, int ldx,
                                                  const float* rows_b, std::int64_t r0,
                                                  std::int64_t n, int dp) {
  store_x_fragments<A>(fb, fs, ldx / 16, [&](int row, int k) {
    const std::int64_t i = r0 + row;
    return i < n && k < dp ? *reinterpret_cast<const float4*>(rows_b + i * dp + k)
                           : make_float4(0.f, 0.f, 0.f, 0.f);
  });
}

/// Issues the cp.async copies of rows [r0, r0 + 64) x coordinates [k0, k0 + KC) of a
/// [n, dp] point array into dst (row stride KC, quads placed by mma_quad_offset),
/// zero-filling rows past n and coordinates past dp. Thread t always copies the same
/// quad (t % (KC/4)) of rows t / (KC/4) + u * (128 / (KC/4)) (one row parity): one
/// 64-bit address per call, no division.
template <int KC, bool kSwz>
__device__ __forceinline__ void load_chunk(float* dst, const float* src, std::int64_t r0,
                                           std::int64_t n, int dp, int k0) {
  constexpr int kQuads = KC / 4;
  constexpr int kRowsPerPass = kThreads / kQuads;
  constexpr int kPasses = kBM / kRowsPerPass;
  static_assert(kPasses * kRowsPerPass == kBM, "whole rows per pass");
  static_assert(kRowsPerPass % 2 == 0, "one row parity per thread");
  const int r = threadIdx.x / kQuads, q = threadIdx.x % kQuads;
  const int k = k0 + 4 * q;
  // Rows left from this thread's first row, clamped: 32-bit tests per pass.
  const std::int64_t left64 = n - r0 - r;
  const int left = left64 < kBM ? static_cast<int>(left64) : kBM;
  const bool k_ok = k < dp;
  const float* s = src + (r0 + r) * dp + k;  // dereferenced only where valid
  const std::int64_t step = static_cast<std::int64_t>(kRowsPerPass) * dp;
  float* d = dst + r * KC + mma_quad_offset(q, r, kSwz);
#pragma unroll
  for (int u = 0; u < kPasses; ++u) {
    const bool valid = k_ok && u * kRowsPerPass < left;
    cp_async16(d + u * kRowsPerPass * KC, valid ? s + u * step : src, valid);
  }
}

/// Issues the cp.async copies of rows [r0, r0 + 64) x coordinates [0, ld) of a [n, dp]
/// point array into dst (row stride ld, quads placed by mma_quad_offset); rows past n
/// and coordinates past dp are zero-filled. dp is a multiple of 4 (16-byte copies).
template <bool kSwz>
__device__ __forceinline__ void load_block(float* dst, int ld, const float* src, std::int64_t r0,
                                           std::int64_t n, int dp) {
  const int quads = ld / 4;
  for (int idx = threadIdx.x; idx < 64 * quads; idx += kThreads) {
    const int r = idx / quads, q = idx - r * quads;
    const int k = 4 * q;
    const bool valid = r0 + r < n && k < dp;
    const float* s = valid ? src + (r0 + r) * dp + k : src;
    cp_async16(dst + r * ld + mma_quad_offset(q, r, kSwz), s, valid);
  }
}

/// |x_r|^2 of the block's 64 rows into nx (warp w: its 16 rows), fp32, read from global
/// memory once per block. No barrier.
__device__ __forceinline__ void row_norms(const float* rows_b, std::int64_t r0, std::int64_t n,
                                          int dp, float* nx) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int rr = 0; rr < 16; ++rr) {
    const int r = warp * 16 + rr;
    float s = 0.f;
    if (r0 + r < n) {
      const float* x = rows_b + (r0 + r) * dp;
      for (int k = lane; k < dp; k += 32) s = fmaf(x[k], x[k], s);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) nx[r] = s;
  }
}

/// Euclidean cost near x = y (otgpu/detail/tf32.h, kMmaNearRel): c2 holds the warp's
/// 16 x 64 tile of |x|^2 + |y|^2 - 2<x,y> as formed (lane (g, t): c2[q][2h + e] is row
/// g + 8h, column 8q + 2t + e), nx the warp's 16 row norms, ny the tile's 64 column
/// norms. The pairs with c2 < tau (|x|^2 + |y|^2) get their c2 again from direct fp32
/// differences of the staged (centred) coordinates in global memory, one pair at a
/// time for the whole warp: the flagged lanes are balloted, the lanes split d (coalesced
/// loads) and meet by an xor butterfly (otgpu::detail::mma_direct_sq_model replays the
/// order). rows: the warp's first row (rows_left valid from it), cols: the tile's first
/// column (cols_left valid). The caller enters only when some lane flagged a pair (a
/// diagonal tile of a self term: 16 pairs per warp), so the hot loop pays the flag only.
__device__ __forceinline__ void near_pairs_direct(float (&c2)[8][4], const float* nx,
                                                  const float* ny, const float* rows,
                                                  std::int64_t rows_left, const float* cols,
                                                  std::int64_t cols_left, int dp) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned near = 0;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int q = 0; q < 8; ++q)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float sum = nx[g + 8 * h] + ny[q * 8 + 2 * t + e];
        if (otgpu::detail::mma_near_pair(c2[q][2 * h + e], sum)) near |= 1u << (16 * h + 2 * q + e);
      }
  for (;;) {
    const unsigned lanes = __ballot_sync(0xffffffffu, near != 0);
    if (lanes == 0) break;
    const int src = __ffs(static_cast<int>(lanes)) - 1;
    const int bit = __ffs(static_cast<int>(__shfl_sync(0xffffffffu, near, src))) - 1;
    const int row = (src >> 2) + 8 * (bit >> 4);
    const int col = ((bit >> 1) & 7) * 8 + 2 * (src & 3) + (bit & 1);
    float d2 = 0.f;
    if (row < rows_left && col < cols_left) {  // warp-uniform; else the pair is never used
      const float* x = rows + static_cast<std::int64_t>(row) * dp;
      const float* y = cols + static_cast<std::int64_t>(col) * dp;
#pragma unroll 4
      for (int k = lane; k < dp; k += 32) {
        const float df = x[k] - y[k];
        d2 = fmaf(df, df, d2);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) d2 += __shfl_xor_sync(0xffffffffu, d2, off);
    if (lane == src) {
      near &= near - 1;  // bit was its lowest
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int q = 0; q < 8; ++q)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (16 * h + 2 * q + e == bit) c2[q][2 * h + e] = d2;
    }
  }
}

/// The Euclidean tile's c2 in place of the dot products (acc), with the near pairs
/// redone directly (near_pairs_direct): one FMUL and one predicate-accumulating FSETP
/// per pair on top of the norm form, one vote per tile. nx: the warp's 16 row norms;
/// wr: the warp's first row, j0: the tile's first column, j_end: the columns' end. The
/// point addresses are formed only on the rare path (fewer live registers in the loop).
__device__ __forceinline__ void euclid_tile_c2(float (&acc)[8][4], const float* nx, const float* ny,
                                               const OnlinePass& p, std::int64_t b, std::int64_t wr,
                                               std::int64_t j0, std::int64_t j_end) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  bool any = false;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float nxr = nx[g + 8 * h];
#pragma unroll
    for (int q = 0; q < 8; ++q)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float sum = nxr + ny[q * 8 + 2 * t + e];
        const float c2 = fmaf(-2.f, acc[q][2 * h + e], sum);
        any = any || otgpu::detail::mma_near_pair(c2, sum);
        acc[q][2 * h + e] = c2;
      }
  }
  if (__any_sync(0xffffffffu, any)) {
    const std::int64_t dp = p.dp;
    near_pairs_direct(acc, nx, ny, p.rows + (b * p.n_rows + wr) * dp, p.n_rows - wr,
                      p.cols + (b * p.n_cols + j0) * dp, j_end - j0, p.dp);
  }
}

/// Running base-2 (max, sum w, sum w c) of the report's row statistics.
struct Stat2 {
  float max, s0, s1;
};

__device__ __forceinline__ Stat2 stat2_merge(Stat2 a, Stat2 b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  const float m = fmaxf(a.max, b.max);
  const float fa = ex2(a.max - m), fb = ex2(b.max - m);
  return {m, a.s0 * fa + b.s0 * fb, a.s1 * fa + b.s1 * fb};
}

struct Args {
  OnlinePass p;
  const float* lambda = nullptr;  // half: [B] or nullptr (1)
  float* out = nullptr;           // half: potentials; stats: lse
  float* out2 = nullptr;          // stats: cost means (nullptr: not written)
  int out_stride = 1;             // stats: element stride of out between rows
  std::int64_t* idx = nullptr;    // sample
  std::uint64_t seed = 0;         // sample
};

/// Shared memory of the main kernel, in floats: X, then its 3xTF32 remainders (resident
/// TF32 rows: split once, in fragment order, 32 row pairs of frag_pair_stride; resident
/// bf16 rows: [kBM][ldx]; streamed rows: two raw [kBM][KC] chunk buffers, then the
/// current chunk split in fragment order, and its remainders), two Y chunk buffers and
/// the current one's remainders, then per column / row terms. Rows of KC = 32 floats
/// (and resident bf16 rows, a multiple of 32) are swizzled, not padded. 3xTF32 at
/// dp = 33..64 and streamed takes 59,136 bytes (opt-in above 48 KB; 3 blocks per SM).
struct Smem {
  int ldx, x_floats, xsm_floats, y_floats, ysm_floats;
  __host__ __device__ int floats() const {
    return x_floats + xsm_floats + 2 * y_floats + ysm_floats + 2 * kBN + kBM;
  }
};

template <MmaArith A, int KC, bool kResident>
__host__ __device__ __forceinline__ Smem smem_layout(int dp) {
  constexpr bool k3 = A == MmaArith::x3tf32;
  Smem s;
  s.y_floats = kBN * KC;
  s.ysm_floats = k3 ? s.y_floats : 0;
  s.ldx = kResident ? (dp + KC - 1) / KC * KC : KC;
  if (A == MmaArith::bf16) {
    s.x_floats = kResident ? kBM * s.ldx : 2 * kBM * KC;
    s.xsm_floats = 0;
  } else {
    // Resident: the split rows only. Streamed: two raw chunk buffers, then the current
    // chunk's split in fragment order.
    const int frag = 32 * frag_pair_stride(s.ldx);
    s.x_floats = (kResident ? 0 : 2 * kBM * KC) + frag;
    s.xsm_floats = k3 ? frag : 0;
  }
  return s;
}

// ---------------------------------------------------------------- main kernel ----

/// Half-step (any precision), row statistics or Gumbel-max sampling of 64 rows
/// against a range of columns (a split in the half-step, all columns otherwise).
template <MmaArith A, int KC, bool kResident, Mode M, bool kEuclid>
__device__ __forceinline__ void online_mma_body(Args args) {
  extern __shared__ __align__(16) float smem[];
  const OnlinePass& p = args.p;
  constexpr bool kFold = M == Mode::half && !kEuclid;  // row constant after the LSE
  const std::int64_t b = blockIdx.y;
  if (M == Mode::half && p.active != nullptr && p.active[b] == 0) return;  // block-uniform
  const int dp = p.dp;
  constexpr bool kSwz = KC == 32;               // rows of a multiple of 32 floats
  constexpr bool kFragX = A != MmaArith::bf16;  // X split (fragment order) in xf, xsm
  const Smem L = smem_layout<A, KC, kResident>(dp);
  float* xs = smem;              // resident: [kBM][ldx]; else two [kBM][KC] buffers
  float* xsm = xs + L.x_floats;  // 3xTF32 remainders of the split rows
  float* xf = kResident ? xs : xs + 2 * kBM * KC;  // the split rows (TF32 arithmetics)
  float* ys = xsm + L.xsm_floats;                  // two [kBN][KC] buffers
  float* ysm = ys + 2 * L.y_floats;  // [kBN][KC] 3xTF32 remainders of the current chunk
  float* hs = ysm + L.ysm_floats;    // [kBN] column term (folded: minus scale |y_j|^2)
  float* nys = hs + kBN;             // [kBN] |y_j|^2
  float* nxs = nys + kBN;            // [kBM] |x_i|^2
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.x) * kBM;
  const float* rows_b = p.rows + b * p.n_rows * dp;
  const float* cols_b = p.cols + b * p.n_cols * dp;
  const float* logw_b = p.col_logw + b * p.n_cols;
  const float* pot_b = p.col_pot + b * p.n_cols;

  std::int64_t j_begin = 0, j_end = p.n_cols;
  if (M == Mode::half && p.splits > 1) {
    const std::int64_t span = geometry::online_split_span(p.n_cols, p.splits);
    j_begin = static_cast<std::int64_t>(blockIdx.z) * span;
    j_end = j_begin + span < p.n_cols ? j_begin + span : p.n_cols;
    if (j_begin > j_end) j_begin = j_end;  // an empty split: the identity partial
  }
  const int nk = (dp + KC - 1) / KC;
  const std::int64_t tiles = (j_end - j_begin + kBN - 1) / kBN;
  const std::int64_t stages = tiles * nk;

  // Stages run (tile, chunk) in order; stage s lands in buffer s & 1. The next stage to
  // copy is chunk nkc of the tile ysrc points into, the one being multiplied (j0, kc):
  // counters, no division. The Y copies run on per-thread state (a global pointer
  // advanced per stage, the rows left from the thread's first row): thread t copies
  // quad t % (KC/4) of rows t / (KC/4) + 16 u, u < kYPasses (one row parity, so one
  // swizzled shared-memory offset).
  int nkc = 0;
  constexpr int kYQuads = KC / 4, kYRowsPerPass = kThreads / kYQuads;
  constexpr int kYPasses = kBN / kYRowsPerPass;
  static_assert(kYPasses * kYRowsPerPass == kBN && kYRowsPerPass % 2 == 0, "whole rows");
  const int yr = threadIdx.x / kYQuads, yq = threadIdx.x % kYQuads;
  const float* ysrc = cols_b + (j_begin + yr) * dp + 4 * yq;  // dereferenced only where valid
  std::int64_t yleft = j_end - j_begin - yr;
  float* const ydst = ys + yr * KC + mma_quad_offset(yq, yr, kSwz);
  const std::int64_t ystep = static_cast<std::int64_t>(kYRowsPerPass) * dp;
  auto issue = [&](int buf) {
    const bool k_ok = nkc * KC + 4 * yq < dp;
    const int left = yleft < kBN ? static_cast<int>(yleft) : kBN;
#pragma unroll
    for (int u = 0; u < kYPasses; ++u) {
      const bool valid = k_ok && u * kYRowsPerPass < left;
      cp_async16(ydst + buf * L.y_floats + u * kYRowsPerPass * KC,
                 valid ? ysrc + u * ystep : cols_b, valid);
    }
    if (!kResident) load_chunk<KC, kSwz>(xs + buf * kBM * KC, rows_b, r0, p.n_rows, dp, nkc * KC);
    if (++nkc == nk) {
      nkc = 0;
      ysrc += static_cast<std::int64_t>(kBN) * dp - (nk - 1) * KC;
      yleft -= kBN;
    } else {
      ysrc += KC;
    }
  };
  if constexpr (kFragX && kResident) {
    stage_x_fragments<A>(xf, xsm, L.ldx, rows_b, r0, p.n_rows, dp);
  } else if constexpr (kResident) {
    load_block<kSwz>(xs, L.ldx, rows_b, r0, p.n_rows, dp);
  }
  if (stages > 0) issue(0);
  cp_async_commit();
  row_norms(rows_b, r0, p.n_rows, dp, nxs);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  float acc[8][4], acc_lo[8][4];  // 3xTF32: big*big, and the small products (mma_chunk)
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.f;
    acc_lo[q][0] = acc_lo[q][1] = acc_lo[q][2] = acc_lo[q][3] = 0.f;
  }
  Lse2 st[2] = {lse2_empty(), lse2_empty()};
  Stat2 ss[2] = {{-INFINITY, 0.f, 0.f}, {-INFINITY, 0.f, 0.f}};
  float best[2] = {-INFINITY, -INFINITY};
  std::int64_t arg[2] = {-1, -1};
  // Thread t: column t / 2 of the tile (its term on the even thread, half its norm each).
  float h_col = -INFINITY, ny_col = 0.f;
  const float two_scale = 2.f * scale;

  std::int64_t j0 = j_begin;
  int kc = 0;
  for (std::int64_t s = 0; s < stages; ++s) {
    const int buf = static_cast<int>(s & 1);
    cp_async_wait_all();
    __syncthreads();  // stage s landed; every warp is done with stage s - 1's buffers
    if (s + 1 < stages) issue(buf ^ 1);
    cp_async_commit();
    float* ysb = ys + buf * L.y_floats;
    if (kc == 0) {
      const std::int64_t j = j0 + (threadIdx.x >> 1);
      h_col =
          (threadIdx.x & 1) == 0 && j < j_end ? scaled_term(logw_b[j], pot_b[j], scale) : -INFINITY;
      ny_col = 0.f;
    }
    // A streamed X chunk is split with its stage (resident rows once, before the loop),
    // the Y chunk every stage.
    if constexpr (kFragX && !kResident) {
      const float* xraw = xs + buf * kBM * KC;
      store_x_fragments<A>(xf, xsm, KC / 16, [&](int row, int k) {
        return lds4(xraw + row * KC + mma_quad_offset(k / 4, row, kSwz));
      });
    }
    presplit_chunk<A, KC, true>(ysb, ysm, ny_col);
    if constexpr (A != MmaArith::bf16) __syncthreads();  // the operands are ready
    if constexpr (kFragX) {
      const int xo =
          (warp * 8 + g) * frag_pair_stride(L.ldx) + 8 * t + (kResident ? 2 * KC * kc : 0);
      // Streamed rows: the small products in acc_lo (shorter HMMA chains; the block
      // is limited by shared memory, not the 32 extra registers). Resident rows: in
      // acc (lo aliases it), which keeps dp <= 32 at 5 blocks per SM.
      if constexpr (kResident) {
        mma_chunk<A, KC, kSwz, true, true>(xf + xo, xsm + xo, 0, ysb, ysm, acc, acc);
      } else {
        mma_chunk<A, KC, kSwz, true, true>(xf + xo, xsm + xo, 0, ysb, ysm, acc, acc_lo);
      }
    } else {
      const int xo = kResident ? warp * 16 * L.ldx + kc * KC : warp * 16 * KC;
      const float* xsw = kResident ? xs + xo : xs + buf * kBM * KC + xo;
      mma_chunk<A, KC, kSwz, false>(xsw, nullptr, L.ldx, ysb, nullptr, acc, acc);
    }
    if (kc != nk - 1) {
      ++kc;
      continue;
    }
    kc = 0;  // the tile's last chunk: its epilogue, then the next tile

    if constexpr (A == MmaArith::x3tf32 && !kResident) {  // big*big + the small terms
#pragma unroll
      for (int q = 0; q < 8; ++q)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc[q][e] += acc_lo[q][e];
          acc_lo[q][e] = 0.f;
        }
    }
    // ---- epilogue of the column tile ----
    {
      const float ny = ny_col + __shfl_xor_sync(0xffffffffu, ny_col, 1);  // both halves
      if ((threadIdx.x & 1) == 0) {
        hs[threadIdx.x >> 1] = kFold ? h_col - scale * ny : h_col;  // -inf stays -inf
        nys[threadIdx.x >> 1] = ny;
      }
    }
    __syncthreads();
    if constexpr (kEuclid) {  // c2 in place of the dot products, near pairs redone
      euclid_tile_c2(acc, nxs + warp * 16, nys, p, b, r0 + warp * 16, j0, j_end);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // row g (h = 0) and g + 8 (h = 1) of the warp's slab
      const int r = warp * 16 + g + 8 * h;
      float sc[16], cost[16];
#pragma unroll
      for (int q = 0; q < 8; ++q) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = q * 8 + 2 * t + e;
          const float dot = acc[q][2 * h + e];
          if (kFold) {
            sc[2 * q + e] = fmaf(two_scale, dot, hs[c]);
          } else {
            const float c2 = fmaxf(kEuclid ? dot : fmaf(-2.f, dot, nxs[r] + nys[c]), 0.f);
            // sqrt as c2 rsqrt(c2) (MUFU.RSQ, ~1e-7 relative): sqrtf's IEEE slow-path
            // call spills registers around it in this kernel.
            cost[2 * q + e] = kEuclid ? (c2 > 0.f ? c2 * rsqrtf(c2) : 0.f) : c2;
            sc[2 * q + e] = fmaf(-scale, cost[2 * q + e], hs[c]);
          }
        }
      }
      if (M == Mode::half) {
        lse2_push(st[h], sc);
      } else if (M == Mode::stats) {
        float cmax = sc[0];
#pragma unroll
        for (int q = 1; q < 16; ++q) cmax = fmaxf(cmax, sc[q]);
        const float nmax = fmaxf(ss[h].max, cmax);
        if (nmax != -INFINITY) {
          const float f = ex2(ss[h].max - nmax);
          float s0 = ss[h].s0 * f, s1 = ss[h].s1 * f;
#pragma unroll
          for (int q = 0; q < 16; ++q) {
            const float e = ex2(sc[q] - nmax);
            s0 += e;
            s1 = fmaf(e, cost[q], s1);
          }
          ss[h] = {nmax, s0, s1};
        }
      } else {  // sample
        const std::int64_t i = r0 + r;
#pragma unroll
        for (int q = 0; q < 16; ++q) {
          const int c = (q >> 1) * 8 + 2 * t + (q & 1);
          if (hs[c] == -INFINITY) continue;  // zero weight or past the end: never sampled
          const std::int64_t j = j0 + c;
          const float v =
              sc[q] + kLog2e * static_cast<float>(otgpu::detail::gumbel(
                                   args.seed, static_cast<std::uint64_t>(p.batch_offset + b),
                                   static_cast<std::uint64_t>(p.row_offset + i),
                                   static_cast<std::uint64_t>(j)));
          if (v > best[h] || (v == best[h] && j < arg[h])) {
            best[h] = v;
            arg[h] = j;
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < 8; ++q) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.f;
    j0 += kBN;
  }
  cp_async_wait_all();  // no copy may outlive the block
  __syncthreads();      // nxs written by row_norms (also when there was no stage)

  // ---- the quad's four lanes share rows: merge, then lane t == 0 writes ----
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      if (M == Mode::half) {
        const Lse2 o{__shfl_xor_sync(0xffffffffu, st[h].max, off),
                     __shfl_xor_sync(0xffffffffu, st[h].sum, off)};
        st[h] = lse2_merge(st[h], o);
      } else if (M == Mode::stats) {
        const Stat2 o{__shfl_xor_sync(0xffffffffu, ss[h].max, off),
                      __shfl_xor_sync(0xffffffffu, ss[h].s0, off),
                      __shfl_xor_sync(0xffffffffu, ss[h].s1, off)};
        ss[h] = stat2_merge(ss[h], o);
      } else {
        const float ob = __shfl_xor_sync(0xffffffffu, best[h], off);
        const long long oa = __shfl_xor_sync(0xffffffffu, static_cast<long long>(arg[h]), off);
        if (ob > best[h] || (ob == best[h] && oa >= 0 && (arg[h] < 0 || oa < arg[h]))) {
          best[h] = ob;
          arg[h] = oa;
        }
      }
    }
    const int r = warp * 16 + g + 8 * h;
    const std::int64_t i = r0 + r;
    if (t != 0 || i >= p.n_rows) continue;
    const std::int64_t o = b * p.n_rows + i;
    if (M == Mode::half) {
      const float shift = kFold ? scale * nxs[r] : 0.f;
      if (p.splits > 1) {
        const float m = st[h].max == -INFINITY ? -INFINITY : st[h].max - shift;
        reinterpret_cast<float2*>(p.partials)[(b * p.splits + blockIdx.z) * p.n_rows + i] =
            make_float2(m, st[h].sum);
      } else {
        const float lam = args.lambda != nullptr ? args.lambda[b] : 1.f;
        const float v = lse2_value(st[h]);
        args.out[o] = potential_from_lse2(v == -INFINITY ? v : v - shift, lam, eps);
      }
    } else if (M == Mode::stats) {
      args.out[o * args.out_stride] =
          ss[h].max == -INFINITY ? -INFINITY : kLn2 * (ss[h].max + log2f(ss[h].s0));
      if (args.out2 != nullptr) args.out2[o] = ss[h].s0 > 0.f ? ss[h].s1 / ss[h].s0 : 0.f;
    } else {
      args.idx[o] = arg[h];
    }
  }
}

template <MmaArith A, int KC, bool kResident, Mode M, bool kEuclid>
__global__ void __launch_bounds__(kThreads) online_mma_kernel(Args args) {
  online_mma_body<A, KC, kResident, M, kEuclid>(args);
}

/// 3xTF32 with streamed rows: its 59,136 bytes of shared memory hold it to 3 blocks per
/// SM, so asking ptxas for 3 (<= 168 registers) costs no occupancy and lets it
/// interleave the HMMA chains without NOP padding (scripts/sass-mma-report, dp = 3072
/// Euclidean half-step: 597 -> 556 chunk instructions, 117 -> 0 NOP per 32 pairs). The
/// other configurations keep the plain bound: an explicit minimum of 1 changes ptxas's
/// register target for them (bf16 72 -> 137 registers).
template <MmaArith A, int KC, bool kResident, Mode M, bool kEuclid>
__global__ void __launch_bounds__(kThreads, 3) online_mma_kernel_3b(Args args) {
  online_mma_body<A, KC, kResident, M, kEuclid>(args);
}

/// The compiled kernel of a configuration.
template <MmaArith A, int KC, bool kResident, Mode M, bool kEuclid>
constexpr auto mma_kernel() {
  if constexpr (A == MmaArith::x3tf32 && !kResident) {
    return &online_mma_kernel_3b<A, KC, kResident, M, kEuclid>;
  } else {
    return &online_mma_kernel<A, KC, kResident, M, kEuclid>;
  }
}

/// Merges the splits' partial pairs of each row into the potential (the SIMT kernels'
/// (max, sum) merge, the same partials layout).
__global__ void __launch_bounds__(256)
    mma_merge_splits_kernel(OnlinePass p, const float* __restrict__ lambda,
                            float* __restrict__ out) {
  const std::int64_t b = blockIdx.y;
  if (p.active != nullptr && p.active[b] == 0) return;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= p.n_rows) return;
  const float2* part = reinterpret_cast<const float2*>(p.partials);
  Lse2 acc = lse2_empty();
  for (int z = 0; z < p.splits; ++z) {
    const float2 v = part[(b * p.splits + z) * p.n_rows + i];
    acc = lse2_merge(acc, Lse2{v.x, v.y});
  }
  const float lam = lambda != nullptr ? lambda[b] : 1.f;
  out[b * p.n_rows + i] = potential_from_lse2(lse2_value(acc), lam, p.eps[b]);
}

// ------------------------------------------------------- weighted mean (tiled) ----

constexpr int kMeanCols = 64;  // output coordinates per block (grid z)

/// out[b,i,k0:k0+64] = sum_j u_ij v_jk / sum_j w_ij, w_ij = 2^(s_ij - m_i) with a running
/// row max m_i; mode 0: u = w, v = y_j; mode 1: u = w / c_ij, and out = (x_i sum u -
/// sum u y_j) / sum w (the Euclidean gradient's direction, 0 at c = 0). Scores by the
/// 3xTF32 tile over all of dp, recomputed per coordinate chunk (grid z).
template <bool kEuclid>
__global__ void __launch_bounds__(kThreads)
    online_mma_mean_kernel(OnlinePass p, int mode, float* out) {
  constexpr int KC = mma_geometry::kChunk;
  constexpr int ld = KC;        // swizzled rows (mma_quad_offset)
  constexpr int ldu = kBN + 4;  // padded: the rows of us are written by column
  __shared__ __align__(16) float chunk[(kBM + kBN) * ld];
  float* xs = chunk;
  float* ys = chunk + kBM * ld;
  __shared__ float us[kBM * ldu];
  __shared__ float hs[kBN], nys[kBN], nxs[kBM], rescale[kBM], wsum[kBM], usum[kBM];
  float* yc = chunk;  // [kBN][kMeanCols] coordinate chunk of the tile, after the k loop
  static_assert((kBM + kBN) * ld >= kBN * kMeanCols, "yc aliases the chunk buffers");

  const std::int64_t b = blockIdx.y;
  const int dp = p.dp;
  const int k0 = static_cast<int>(blockIdx.z) * kMeanCols;
  const float eps = p.eps[b];
  const float scale = kLog2e / eps;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.x) * kBM;
  const float* rows_b = p.rows + b * p.n_rows * dp;
  const float* cols_b = p.cols + b * p.n_cols * dp;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  row_norms(rows_b, r0, p.n_rows, dp, nxs);
  if (threadIdx.x < kBM) {
    rescale[threadIdx.x] = 1.f;
    wsum[threadIdx.x] = 0.f;
    usum[threadIdx.x] = 0.f;
  }
  float run_max[2] = {-INFINITY, -INFINITY};  // rows g, g + 8 (identical in the quad)
  // Output ownership: row tid / 2, coordinates k0 + 32 (tid & 1) + [0, 32).
  const int orow = threadIdx.x >> 1, ocol = (threadIdx.x & 1) * 32;
  float o[32];
#pragma unroll
  for (int k = 0; k < 32; ++k) o[k] = 0.f;

  for (std::int64_t j0 = 0; j0 < p.n_cols; j0 += kBN) {
    float acc[8][4];
#pragma unroll
    for (int q = 0; q < 8; ++q) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.f;
    float ny = 0.f;
    for (int kc = 0; kc < dp; kc += KC) {
      load_chunk<KC, true>(xs, rows_b, r0, p.n_rows, dp, kc);
      load_chunk<KC, true>(ys, cols_b, j0, p.n_cols, dp, kc);
      cp_async_commit();
      cp_async_wait_all();
      __syncthreads();
      if (threadIdx.x < kBN) {
#pragma unroll
        for (int k = 0; k < KC; ++k)
          ny = fmaf(ys[threadIdx.x * ld + k], ys[threadIdx.x * ld + k], ny);
      }
      mma_chunk<MmaArith::x3tf32, KC, true, false>(xs + warp * 16 * ld, nullptr, ld, ys, nullptr,
                                                   acc, acc);
      __syncthreads();
    }
    if (threadIdx.x < kBN) {
      const std::int64_t j = j0 + threadIdx.x;
      hs[threadIdx.x] = j < p.n_cols ? scaled_term(p.col_logw[b * p.n_cols + j],
                                                   p.col_pot[b * p.n_cols + j], scale)
                                     : -INFINITY;
      nys[threadIdx.x] = ny;
    }
    // The tile's coordinate chunk (aliases the chunk buffers, free after the barrier).
    for (int idx = threadIdx.x; idx < kBN * kMeanCols; idx += kThreads) {
      const int c = idx / kMeanCols, k = idx - c * kMeanCols;
      const std::int64_t j = j0 + c;
      yc[idx] = j < p.n_cols && k0 + k < dp ? cols_b[j * dp + k0 + k] : 0.f;
    }
    __syncthreads();
    if constexpr (kEuclid) {  // c2 in place of the dot products, near pairs redone
      euclid_tile_c2(acc, nxs + warp * 16, nys, p, b, r0 + warp * 16, j0, p.n_cols);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp * 16 + g + 8 * h;
      float sc[16], inv_c[16];
      float cmax = -INFINITY;
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        const int c = (q >> 1) * 8 + 2 * t + (q & 1);
        const float a = acc[q >> 1][2 * h + (q & 1)];  // Euclidean: c2 already
        const float c2 = fmaxf(kEuclid ? a : fmaf(-2.f, a, nxs[r] + nys[c]), 0.f);
        inv_c[q] = c2 > 0.f ? rsqrtf(c2) : 0.f;
        const float cost = kEuclid ? c2 * inv_c[q] : c2;
        sc[q] = fmaf(-scale, cost, hs[c]);
        cmax = fmaxf(cmax, sc[q]);
      }
      cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, 1));
      cmax = fmaxf(cmax, __shfl_xor_sync(0xffffffffu, cmax, 2));
      const float nmax = fmaxf(run_max[h], cmax);
      const float f = nmax == -INFINITY ? 1.f : ex2(run_max[h] - nmax);
      float ws = 0.f, ucs = 0.f;
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        const int c = (q >> 1) * 8 + 2 * t + (q & 1);
        const float w = nmax == -INFINITY ? 0.f : ex2(sc[q] - nmax);
        const float u = mode == 1 ? w * inv_c[q] : w;
        us[r * ldu + c] = u;
        ws += w;
        ucs += u;
      }
      ws += __shfl_xor_sync(0xffffffffu, ws, 1);
      ws += __shfl_xor_sync(0xffffffffu, ws, 2);
      ucs += __shfl_xor_sync(0xffffffffu, ucs, 1);
      ucs += __shfl_xor_sync(0xffffffffu, ucs, 2);
      run_max[h] = nmax;
      if (t == 0) {
        rescale[r] = f;
        wsum[r] = wsum[r] * f + ws;
        usum[r] = usum[r] * f + ucs;
      }
    }
    __syncthreads();
    const float fr = rescale[orow];
#pragma unroll
    for (int k = 0; k < 32; ++k) o[k] *= fr;
    for (int c = 0; c < kBN; ++c) {
      const float u = us[orow * ldu + c];
      const float* y = yc + c * kMeanCols + ocol;
#pragma unroll
      for (int k = 0; k < 32; ++k) o[k] = fmaf(u, y[k], o[k]);
    }
    __syncthreads();  // us, yc and the chunk buffers are rewritten by the next tile
  }
  const std::int64_t i = r0 + orow;
  if (i < p.n_rows) {
    const float ws = wsum[orow];
    const float inv = ws > 0.f ? 1.f / ws : 0.f;
    float* dst = out + (b * p.n_rows + i) * dp;
    const float* x = rows_b + i * dp;
    for (int k = 0; k < 32; ++k) {
      const int kk = k0 + ocol + k;
      if (kk >= dp) break;
      dst[kk] = (mode == 1 ? fmaf(x[kk], usum[orow], -o[k]) : o[k]) * inv;
    }
  }
}

// ------------------------------------------------------------------ launchers ----

void check_mma_pass(const OnlinePass& p, const char* what) {
  if (p.B <= 0 || p.n_rows <= 0 || p.n_cols <= 0 || p.dp <= 0) {
    throw InvalidArgument(
        fmt::format("{}: sizes must be positive (B={}, n_rows={}, n_cols={}, dp={})", what, p.B,
                    p.n_rows, p.n_cols, p.dp));
  }
  if (p.B > kMaxGridY) {
    throw InvalidArgument(
        fmt::format("{}: batch B={} exceeds {} per launch", what, p.B, kMaxGridY));
  }
  if (p.cost != CostKind::sqeuclidean && p.cost != CostKind::euclidean) {
    throw InvalidArgument(fmt::format("{}: cost must be sqeuclidean or euclidean", what));
  }
  if (p.dp % 4 != 0) {
    throw InvalidArgument(fmt::format(
        "{}: padded dimension dp={} must be a multiple of 4 (16-byte copies)", what, p.dp));
  }
  const auto misaligned = [](const void* ptr) {
    return (reinterpret_cast<std::uintptr_t>(ptr) & 15u) != 0;
  };
  if (misaligned(p.rows) || misaligned(p.cols)) {
    throw InvalidArgument(fmt::format("{}: point arrays must be 16-byte aligned", what));
  }
}

/// Raises the kernel's dynamic shared-memory limit when it needs more than the
/// default 48 KB (per device: set before every launch or occupancy query, cheap).
void allow_smem(const void* fn, std::size_t bytes) {
  if (bytes > 48 * 1024) {
    OTGPU_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
  }
}

template <MmaArith A, int KC, bool kResident, Mode M, bool kEuclid>
void launch_main(const Args& args, dim3 grid, cudaStream_t s) {
  const std::size_t smem =
      static_cast<std::size_t>(smem_layout<A, KC, kResident>(args.p.dp).floats()) * sizeof(float);
  auto* fn = mma_kernel<A, KC, kResident, M, kEuclid>();
  allow_smem(reinterpret_cast<const void*>(fn), smem);
  fn<<<grid, kThreads, smem, s>>>(args);
}

/// The configuration for dp: resident rows up to 64 (chunks of 16 at dp <= 16), else
/// streamed rows in chunks of 32.
template <MmaArith A, Mode M, bool kEuclid>
void launch_dp(const Args& args, dim3 grid, cudaStream_t s) {
  const int dp = args.p.dp;
  if constexpr (M == Mode::half && !kEuclid) {
    if (dp <= 16) return launch_main<A, 16, true, M, kEuclid>(args, grid, s);
    if (dp <= mma_geometry::kResidentMaxDim)
      return launch_main<A, 32, true, M, kEuclid>(args, grid, s);
  }
  launch_main<A, mma_geometry::kChunk, false, M, kEuclid>(args, grid, s);
}

dim3 mma_grid(const OnlinePass& p, int z) {
  return dim3(static_cast<unsigned>((p.n_rows + kBM - 1) / kBM), static_cast<unsigned>(p.B),
              static_cast<unsigned>(z));
}

}  // namespace

Precision mma_precision(const OnlinePass& p) {
  return p.cost == CostKind::euclidean ? Precision::fp32 : p.precision;
}

void online_half_step_mma(const OnlinePass& p, const float* lambda, float* out,
                          cudaStream_t stream) {
  check_mma_pass(p, "online_half_step_mma");
  if (p.splits < 1 || p.splits > geometry::kOnlineMaxSplits ||
      (p.splits > 1 && p.partials == nullptr)) {
    throw InvalidArgument(fmt::format(
        "online_half_step_mma: splits={} must be in [1, {}] and splits > 1 needs partials",
        p.splits, geometry::kOnlineMaxSplits));
  }
  Args a;
  a.p = p;
  a.lambda = lambda;
  a.out = out;
  const dim3 grid = mma_grid(p, p.splits);
  if (p.cost == CostKind::euclidean) {
    launch_dp<MmaArith::x3tf32, Mode::half, true>(a, grid, stream);
  } else {
    switch (p.precision) {
      case Precision::tf32:
        launch_dp<MmaArith::tf32, Mode::half, false>(a, grid, stream);
        break;
      case Precision::bf16:
        launch_dp<MmaArith::bf16, Mode::half, false>(a, grid, stream);
        break;
      default:
        launch_dp<MmaArith::x3tf32, Mode::half, false>(a, grid, stream);
        break;
    }
  }
  OTGPU_LAUNCH_CHECK();
  if (p.splits > 1) {
    const dim3 g2(static_cast<unsigned>((p.n_rows + 255) / 256), static_cast<unsigned>(p.B));
    mma_merge_splits_kernel<<<g2, 256, 0, stream>>>(p, lambda, out);
    OTGPU_LAUNCH_CHECK();
  }
}

void online_row_stats_mma(const OnlinePass& p, float* lse, float* cost_mean, cudaStream_t stream) {
  check_mma_pass(p, "online_row_stats_mma");
  Args a;
  a.p = p;
  a.out = lse;
  a.out2 = cost_mean;
  if (p.cost == CostKind::euclidean) {
    launch_dp<MmaArith::x3tf32, Mode::stats, true>(a, mma_grid(p, 1), stream);
  } else {
    launch_dp<MmaArith::x3tf32, Mode::stats, false>(a, mma_grid(p, 1), stream);
  }
  OTGPU_LAUNCH_CHECK();
}

void online_sample_mma(const OnlinePass& p, std::uint64_t seed, std::int64_t* out,
                       cudaStream_t stream) {
  check_mma_pass(p, "online_sample_mma");
  Args a;
  a.p = p;
  a.idx = out;
  a.seed = seed;
  if (p.cost == CostKind::euclidean) {
    launch_dp<MmaArith::x3tf32, Mode::sample, true>(a, mma_grid(p, 1), stream);
  } else {
    launch_dp<MmaArith::x3tf32, Mode::sample, false>(a, mma_grid(p, 1), stream);
  }
  OTGPU_LAUNCH_CHECK();
}

void online_weighted_mean_tiled(const OnlinePass& p, int mode, float* out, cudaStream_t stream) {
  check_mma_pass(p, "online_weighted_mean_tiled");
  if (mode != 0 && mode != 1) {
    throw InvalidArgument(
        fmt::format("online_weighted_mean_tiled: mode {} (expected 0 or 1)", mode));
  }
  const dim3 grid = mma_grid(p, (p.dp + kMeanCols - 1) / kMeanCols);
  if (p.cost == CostKind::euclidean) {
    online_mma_mean_kernel<true><<<grid, kThreads, 0, stream>>>(p, mode, out);
  } else {
    online_mma_mean_kernel<false><<<grid, kThreads, 0, stream>>>(p, mode, out);
  }
  OTGPU_LAUNCH_CHECK();
}

bool derived_needs_mma(const OnlinePass& p) {
  if (p.dp <= geometry::kOnlineMaxFixedDim) return false;
  int dev = 0, limit = 0;
  OTGPU_CUDA_CHECK(cudaGetDevice(&dev));
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return geometry::online_smem_bytes(p.dp) > static_cast<std::size_t>(limit);
}

OnlineKernelHandle online_half_step_mma_handle(int dp) {
  if (dp <= 0 || dp % 4 != 0) {
    throw InvalidArgument(fmt::format(
        "online_half_step_mma_handle: padded dimension dp={} must be a positive multiple of 4",
        dp));
  }
  constexpr MmaArith k3 = MmaArith::x3tf32;
  const auto floats = [dp]() {
    if (dp <= 16) return smem_layout<k3, 16, true>(dp).floats();
    if (dp <= mma_geometry::kResidentMaxDim) return smem_layout<k3, 32, true>(dp).floats();
    return smem_layout<k3, mma_geometry::kChunk, false>(dp).floats();
  }();
  const void* fn =
      dp <= 16 ? reinterpret_cast<const void*>(mma_kernel<k3, 16, true, Mode::half, false>())
      : dp <= mma_geometry::kResidentMaxDim
          ? reinterpret_cast<const void*>(mma_kernel<k3, 32, true, Mode::half, false>())
          : reinterpret_cast<const void*>(
                mma_kernel<k3, mma_geometry::kChunk, false, Mode::half, false>());
  // The occupancy query sees the launch's limit.
  allow_smem(fn, static_cast<std::size_t>(floats) * sizeof(float));
  return {fn, static_cast<std::size_t>(floats) * sizeof(float)};
}

}  // namespace otgpu::kernels
