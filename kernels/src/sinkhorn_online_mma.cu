// Online point-cloud Sinkhorn on tensor cores (see sinkhorn_mma.h for the contract and
// the algebra of the score).
//
// Block: 4 warps, 64 rows of X. A column tile is 64 columns of Y; the tile of dot
// products <x_i, y_j> is accumulated in fp32 registers by mma.sync over chunks of 32
// coordinates (16 for dp = 16) staged in shared memory by cp.async, double-buffered:
// the loads of the next (tile, chunk) stage fly while the current one multiplies. Up to
// dp = 64 the block's rows stay in shared memory for the whole launch and only Y
// streams; above, X and Y chunks stream together (any dp, the same 46 KB of shared
// memory: no padding cliff and no size limit).
//
// Warp w owns rows [16 w, 16 w + 16) and every column of the tile: 8 accumulator tiles
// m16n8, 32 floats per thread. Lane (g = lane / 4, t = lane % 4) holds, per tile q,
// rows g and g + 8, columns 8 q + 2 t and 8 q + 2 t + 1: 16 scores of each of its two
// rows per column tile, pushed into a running base-2 (max, sum) with one rescale per 16
// scores. The four lanes of a quad share rows and merge their states at the end.
//
// Counts per pair (squared Euclidean, folded score): 3 (3xTF32) or 1 (TF32) mma.sync
// m16n8k8 per 8 coordinates per 16 x 8 pairs; on the SIMT side one FFMA (score), the
// LSE's max and add and 1 + 1/16 MUFU.EX2. Static SASS (scripts/sass-mma-report,
// bench/results/sass-sm90-cuda13.0-2026-11-29-mma.md): at dp = 64, 3xTF32, a warp
// issues ~48 instructions per 32 pairs (the SIMT kernel: 151 per pair and thread),
// ~7 per HMMA, so the estimate is issue-bound near 2.7 pairs per clock and SM (~12 ms
// per iteration at n = m = 65536 on an H200) against the tensor bound of 6 dp = 384
// FLOP per pair (~1.3e12 pairs/s at the published 494.7 TFLOP/s dense TF32, 6.7 ms);
// TF32 ~29 instructions per 32 pairs. Unmeasured: this machine has no GPU.
//
// 3xTF32: the operands are split x = big + small (otgpu/detail/tf32.h: the rounding is
// two integer instructions, the same code the CPU test proves) and the products
// small*big, big*small, big*big are issued in that order, so the fp32 accumulator sees
// the small terms first. Each Y chunk is split once for the block, in place, with the
// remainders in a third buffer (presplit_chunk); each warp splits its own X rows. The
// epilogue rounds as the SIMT kernels do; the cancellation of |x|^2 + |y|^2 - 2<x,y> is
// bounded by the centring of the staging (tests/test_mma_emulation.cpp measures it on
// the CPU model).
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
constexpr int kPad = 4;  // row padding (floats) of the shared tiles: conflict-free fragments
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

__device__ __forceinline__ std::uint32_t tf32_bits(float x) {
  return __float_as_uint(otgpu::detail::tf32_rna_finite(x));
}

/// Two fp32 values as one bf16x2 register: lo in bits 0-15 (the lower k index).
__device__ __forceinline__ std::uint32_t bf16_pair(float2 v) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(v.x, v.y);
  return *reinterpret_cast<const std::uint32_t*>(&h);
}

// ------------------------------------------------------------------ the tile ----

/// Accumulates one chunk of KC coordinates of the warp's 16 x 64 dot-product tile.
/// xs: the warp's first row (row stride ldx); ys: the tile's first column (stride ldy).
/// kPresplit (TF32 arithmetics): ys already holds the TF32 rounding of y and ysm (same
/// layout) the rounded remainder (3xTF32), done once per chunk for the block by
/// presplit_chunk; otherwise both are derived here from raw fp32 ys.
template <MmaArith A, int KC, bool kPresplit = false>
__device__ __forceinline__ void mma_chunk(const float* xs, int ldx, const float* ys,
                                          const float* ysm, int ldy, float (&acc)[8][4]) {
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  if constexpr (A == MmaArith::bf16) {
#pragma unroll
    for (int k = 0; k < KC; k += 16) {
      std::uint32_t a[4];
      a[0] = bf16_pair(*reinterpret_cast<const float2*>(xs + g * ldx + k + 2 * t));
      a[1] = bf16_pair(*reinterpret_cast<const float2*>(xs + (g + 8) * ldx + k + 2 * t));
      a[2] = bf16_pair(*reinterpret_cast<const float2*>(xs + g * ldx + k + 2 * t + 8));
      a[3] = bf16_pair(*reinterpret_cast<const float2*>(xs + (g + 8) * ldx + k + 2 * t + 8));
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const float* y = ys + (q * 8 + g) * ldy + k + 2 * t;
        mma_bf16(acc[q], a, bf16_pair(*reinterpret_cast<const float2*>(y)),
                 bf16_pair(*reinterpret_cast<const float2*>(y + 8)));
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < KC; k += 8) {
      const float av[4] = {xs[g * ldx + k + t], xs[(g + 8) * ldx + k + t], xs[g * ldx + k + t + 4],
                           xs[(g + 8) * ldx + k + t + 4]};
      std::uint32_t big[4], small[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float bf = otgpu::detail::tf32_rna_finite(av[r]);
        big[r] = __float_as_uint(bf);
        if constexpr (A == MmaArith::x3tf32) small[r] = tf32_bits(av[r] - bf);
      }
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const int at = (q * 8 + g) * ldy + k + t;
        const float y0 = ys[at], y1 = ys[at + 4];
        float b0 = y0, b1 = y1;
        if constexpr (!kPresplit) {
          b0 = otgpu::detail::tf32_rna_finite(y0);
          b1 = otgpu::detail::tf32_rna_finite(y1);
        }
        if constexpr (A == MmaArith::x3tf32) {
          mma_tf32(acc[q], small, __float_as_uint(b0), __float_as_uint(b1));
          if constexpr (kPresplit) {
            mma_tf32(acc[q], big, __float_as_uint(ysm[at]), __float_as_uint(ysm[at + 4]));
          } else {
            mma_tf32(acc[q], big, tf32_bits(y0 - b0), tf32_bits(y1 - b1));
          }
        }
        mma_tf32(acc[q], big, __float_as_uint(b0), __float_as_uint(b1));
      }
    }
  }
}

/// Once per chunk for the whole block (every thread calls it; no barrier): thread t
/// takes half a column (column t / 2, coordinates KC/2 (t % 2) + [0, KC/2)), adds
/// their squares to ny (the column norm, from the raw values) and, for the TF32
/// arithmetics, replaces them in place by their TF32 rounding and writes the rounded
/// remainder to ysm (3xTF32): the 4 warps then read ready operands instead of each
/// converting the same B fragments.
template <MmaArith A, int KC>
__device__ __forceinline__ void presplit_chunk(float* ys, float* ysm, int ldy, float& ny) {
  static_assert(2 * kBN == kThreads, "two threads per column");
  const int at = (threadIdx.x >> 1) * ldy + (threadIdx.x & 1) * (KC / 2);
#pragma unroll
  for (int k = 0; k < KC / 2; k += 4) {
    float4 v = *reinterpret_cast<const float4*>(ys + at + k);
    ny = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, ny))));
    if constexpr (A != MmaArith::bf16) {
      const float4 big =
          make_float4(otgpu::detail::tf32_rna_finite(v.x), otgpu::detail::tf32_rna_finite(v.y),
                      otgpu::detail::tf32_rna_finite(v.z), otgpu::detail::tf32_rna_finite(v.w));
      *reinterpret_cast<float4*>(ys + at + k) = big;
      if constexpr (A == MmaArith::x3tf32) {
        *reinterpret_cast<float4*>(ysm + at + k) =
            make_float4(otgpu::detail::tf32_rna_finite(v.x - big.x),
                        otgpu::detail::tf32_rna_finite(v.y - big.y),
                        otgpu::detail::tf32_rna_finite(v.z - big.z),
                        otgpu::detail::tf32_rna_finite(v.w - big.w));
      }
    }
  }
}

/// Issues the cp.async copies of rows [r0, r0 + 64) x coordinates [k0, k0 + KC) of a
/// [n, dp] point array into dst (row stride ld), zero-filling rows past n and
/// coordinates past dp. Thread t always copies the same quad (t % (KC/4)) of rows
/// t / (KC/4) + u * (128 / (KC/4)): one 64-bit address per call, no division.
template <int KC>
__device__ __forceinline__ void load_chunk(float* dst, int ld, const float* src, std::int64_t r0,
                                           std::int64_t n, int dp, int k0) {
  constexpr int kQuads = KC / 4;
  constexpr int kRowsPerPass = kThreads / kQuads;
  constexpr int kPasses = kBM / kRowsPerPass;
  static_assert(kPasses * kRowsPerPass == kBM, "whole rows per pass");
  const int r = threadIdx.x / kQuads, q = threadIdx.x % kQuads;
  const int k = k0 + 4 * q;
  const std::int64_t row = r0 + r;
  const bool k_ok = k < dp;
  const float* s = src + (k_ok && row < n ? row * dp + k : 0);
  const std::int64_t step = static_cast<std::int64_t>(kRowsPerPass) * dp;
#pragma unroll
  for (int u = 0; u < kPasses; ++u) {
    const bool valid = k_ok && row + u * kRowsPerPass < n;
    cp_async16(dst + (r + u * kRowsPerPass) * ld + 4 * q, valid ? s + u * step : src, valid);
  }
}

/// Issues the cp.async copies of rows [r0, r0 + 64) x coordinates [k0, k0 + width) of
/// a [n, dp] point array into dst (row stride ld); rows past n and coordinates past dp
/// are zero-filled. dp and k0 are multiples of 4 (16-byte copies).
template <int kWidth>
__device__ __forceinline__ void load_block(float* dst, int ld, const float* src, std::int64_t r0,
                                           std::int64_t n, int dp, int k0, int width) {
  const int quads = (kWidth > 0 ? kWidth : width) / 4;
  for (int idx = threadIdx.x; idx < 64 * quads; idx += kThreads) {
    const int r = idx / quads, q = idx - r * quads;
    const int k = k0 + 4 * q;
    const bool valid = r0 + r < n && k < dp;
    const float* s = valid ? src + (r0 + r) * dp + k : src;
    cp_async16(dst + r * ld + 4 * q, s, valid);
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

/// Shared memory of the main kernel, in floats: X (resident: all chunks; else two
/// chunk buffers), two Y chunk buffers, the 3xTF32 remainders of one Y chunk, then
/// per column / row terms. At most 47,104 bytes: no opt-in above 48 KB.
struct Smem {
  int ldx, ldy, x_floats, y_floats;
  __host__ __device__ int floats() const { return x_floats + 3 * y_floats + 3 * kBN + kBM; }
};

template <int KC, bool kResident>
__host__ __device__ __forceinline__ Smem smem_layout(int dp) {
  Smem s;
  s.ldy = KC + kPad;
  s.y_floats = kBN * s.ldy;
  s.ldx = kResident ? (dp + KC - 1) / KC * KC + kPad : KC + kPad;
  s.x_floats = kResident ? kBM * s.ldx : 2 * kBM * s.ldx;
  return s;
}

// ---------------------------------------------------------------- main kernel ----

/// Half-step (any precision), row statistics or Gumbel-max sampling of 64 rows
/// against a range of columns (a split in the half-step, all columns otherwise).
template <MmaArith A, int KC, bool kResident, Mode M, bool kEuclid>
__global__ void __launch_bounds__(kThreads) online_mma_kernel(Args args) {
  extern __shared__ __align__(16) float smem[];
  const OnlinePass& p = args.p;
  constexpr bool kFold = M == Mode::half && !kEuclid;  // row constant after the LSE
  const std::int64_t b = blockIdx.y;
  if (M == Mode::half && p.active != nullptr && p.active[b] == 0) return;  // block-uniform
  const int dp = p.dp;
  const Smem L = smem_layout<KC, kResident>(dp);
  float* xs = smem;
  float* ys = smem + L.x_floats;
  float* ysm = ys + 2 * L.y_floats;  // [kBN][ldy] 3xTF32 remainders of the current chunk
  float* hs = ysm + L.y_floats;      // [kBN] column term (folded: minus scale |y_j|^2)
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
  // copy is (nj0, nkc), the one being multiplied (j0, kc): counters, no division.
  std::int64_t nj0 = j_begin;
  int nkc = 0;
  auto issue = [&](int buf) {
    load_chunk<KC>(ys + buf * L.y_floats, L.ldy, cols_b, nj0, j_end, dp, nkc * KC);
    if (!kResident)
      load_chunk<KC>(xs + buf * kBM * L.ldx, L.ldx, rows_b, r0, p.n_rows, dp, nkc * KC);
    if (++nkc == nk) {
      nkc = 0;
      nj0 += kBN;
    }
  };
  if (kResident) load_block<0>(xs, L.ldx, rows_b, r0, p.n_rows, dp, 0, L.ldx - kPad);
  if (stages > 0) issue(0);
  cp_async_commit();
  row_norms(rows_b, r0, p.n_rows, dp, nxs);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  float acc[8][4];
#pragma unroll
  for (int q = 0; q < 8; ++q) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.f;
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
    presplit_chunk<A, KC>(ysb, ysm, L.ldy, ny_col);
    if constexpr (A != MmaArith::bf16) __syncthreads();  // the operands are ready
    const float* xsw =
        kResident ? xs + warp * 16 * L.ldx + kc * KC : xs + buf * kBM * L.ldx + warp * 16 * L.ldx;
    mma_chunk<A, KC, true>(xsw, L.ldx, ysb, ysm, L.ldy, acc);
    if (kc != nk - 1) {
      ++kc;
      continue;
    }
    kc = 0;  // the tile's last chunk: its epilogue, then the next tile

    // ---- epilogue of the column tile ----
    {
      const float ny = ny_col + __shfl_xor_sync(0xffffffffu, ny_col, 1);  // both halves
      if ((threadIdx.x & 1) == 0) {
        hs[threadIdx.x >> 1] = kFold ? h_col - scale * ny : h_col;  // -inf stays -inf
        nys[threadIdx.x >> 1] = ny;
      }
    }
    __syncthreads();
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
            const float c2 = fmaxf(fmaf(-2.f, dot, nxs[r] + nys[c]), 0.f);
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
                                   static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(j)));
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
  constexpr int ld = KC + kPad;
  constexpr int ldu = kBN + kPad;
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
      load_chunk<KC>(xs, ld, rows_b, r0, p.n_rows, dp, kc);
      load_chunk<KC>(ys, ld, cols_b, j0, p.n_cols, dp, kc);
      cp_async_commit();
      cp_async_wait_all();
      __syncthreads();
      if (threadIdx.x < kBN) {
#pragma unroll
        for (int k = 0; k < KC; ++k)
          ny = fmaf(ys[threadIdx.x * ld + k], ys[threadIdx.x * ld + k], ny);
      }
      mma_chunk<MmaArith::x3tf32, KC>(xs + warp * 16 * ld, ld, ys, nullptr, ld, acc);
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
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = warp * 16 + g + 8 * h;
      float sc[16], inv_c[16];
      float cmax = -INFINITY;
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        const int c = (q >> 1) * 8 + 2 * t + (q & 1);
        const float c2 = fmaxf(fmaf(-2.f, acc[q >> 1][2 * h + (q & 1)], nxs[r] + nys[c]), 0.f);
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

template <MmaArith A, int KC, bool kResident, Mode M, bool kEuclid>
void launch_main(const Args& args, dim3 grid, cudaStream_t s) {
  const std::size_t smem =
      static_cast<std::size_t>(smem_layout<KC, kResident>(args.p.dp).floats()) * sizeof(float);
  online_mma_kernel<A, KC, kResident, M, kEuclid><<<grid, kThreads, smem, s>>>(args);
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
  const auto floats = [dp]() {
    if (dp <= 16) return smem_layout<16, true>(dp).floats();
    if (dp <= mma_geometry::kResidentMaxDim) return smem_layout<32, true>(dp).floats();
    return smem_layout<mma_geometry::kChunk, false>(dp).floats();
  }();
  const void* fn =
      dp <= 16 ? reinterpret_cast<const void*>(
                     &online_mma_kernel<MmaArith::x3tf32, 16, true, Mode::half, false>)
      : dp <= mma_geometry::kResidentMaxDim
          ? reinterpret_cast<const void*>(
                &online_mma_kernel<MmaArith::x3tf32, 32, true, Mode::half, false>)
          : reinterpret_cast<const void*>(&online_mma_kernel<MmaArith::x3tf32, mma_geometry::kChunk,
                                                             false, Mode::half, false>);
  return {fn, static_cast<std::size_t>(floats) * sizeof(float)};
}

}  // namespace otgpu::kernels
