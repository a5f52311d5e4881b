// Many small Sinkhorn problems: one thread block per problem runs a chunk of
// iterations inside the kernel, everything per-problem in shared memory.
//
// Work per iteration and problem: 2 n m scores (f- and g-update), each one FMA for
// the score, one max, one ex2 (+1/8 for the chunk rescale) plus the cost of c_ij:
//  - cost cached in shared memory (dense matrices; point clouds with d >= 8 when the
//    n x m matrix fits): one conflict-free LDS.32 per score (the row stride is odd).
//  - cost recomputed from the points in shared memory (d <= 4 always, larger d when
//    the matrix does not fit): the target point is held in registers, the source
//    point is a broadcast LDS (every thread of a warp reads the same source), and
//    c_ij costs 2d FP32 ops (direct differences: d <= 4, and the Euclidean cost at
//    any d) or d FMAs (squared Euclidean, d >= 8: norm expansion |x|^2 + |y|^2 -
//    2<x,y>; the driver centers the data to limit the cancellation).
// Bounds of the W2 cases (H100 SXM: 132 SMs, 16 ex2/clk/SM on MUFU, 128 FP32/clk/SM):
//  - B=1024, n=m=128, d=2 (recomputed): 33.6 M scores per batch-iteration. MUFU
//    alone needs ~9.5 us; the FP32 pipe (~7 ops per score: 2 sub, mul, fma, fma,
//    max, add) ~5 us. Bound: exp (MUFU), ~10-15 us expected with all 1024 blocks
//    resident (8 blocks of 128 threads per SM).
//  - B=64, n=m=512, d=32 (recomputed: 1 MiB of cost per problem does not fit):
//    33.6 M scores but 32 FMAs each, 1.07 G FMA per batch-iteration on only 64 SMs
//    (one block per problem): bound FMA, ~70 us. Reaching the 16 us target needs
//    several SMs per problem (a cluster sharing the potentials through distributed
//    shared memory) and tensor-core dot products; not done here.
//  - n=m=128 with d >= 8: the 64 KB cost matrix is cached once per launch, so an
//    iteration is bound by MUFU and the LDS of the cost (one per score).
#include "otgpu_kernels/sinkhorn_small.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "otgpu/error.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "sinkhorn_kernel_util.cuh"

namespace otgpu::kernels {
namespace {

using detail::kLog2e;
using detail::Lse2;
using detail::lse2_empty;
using detail::lse2_merge;
using detail::lse2_push;
using detail::lse2_value;
using detail::potential_from_lse2;
using detail::scaled_term;

using geometry::kSmallMaxThreads;
using geometry::SmallLayout;
using geometry::SmallVariant;
constexpr int kChunk = 8;  // scores per rescale of the running sum

struct SmallParams {
  const float* X;
  const float* Y;
  const float* C;
  const float* logA;
  const float* logB;
  float* F;
  float* G;
  const float* eps;
  const float* eps_init;
  double eps_decay, rho_a, rho_b, tol;
  int max_iter, check_every, t_begin, t_end;
  int* active;
  int* iterations;
  float* residual;
  int* converged;
  int n, m, d;
  bool euclidean;
  SmallLayout layout;
};

// ---- cost policies: Target = per-target state kept in registers during a pass ----

/// Cached cost, targets are rows i, sources columns j: contiguous in j.
struct CachedRowCost {
  const float* cost;
  int ld;
  using Target = const float*;
  __device__ Target target(int i) const { return cost + i * ld; }
  __device__ float operator()(Target row, int j) const { return row[j]; }
};

/// Cached cost, targets are columns j, sources rows i (stride ld).
struct CachedColCost {
  const float* cost;
  int ld;
  using Target = const float*;
  __device__ Target target(int j) const { return cost + j; }
  __device__ float operator()(Target col, int i) const { return col[i * ld]; }
};

/// Cost recomputed from points of padded dimension D (zero padding keeps distances).
/// Squared Euclidean with D >= 8: the norm expansion (d FMAs; its rounding is ~u of
/// |x|^2 + |y|^2, fp32-relative to the cost scale on centred data). Euclidean: always
/// direct differences, since the root of a cancelled |x|^2 + |y|^2 - 2<x,y> would turn
/// that rounding into ~sqrt(u) |x| ~ 3e-4 |x| for coincident or near points (x_i = y_j
/// would cost ~3e-4 |x| instead of 0); the online kernels keep differences for the same
/// reason.
template <int D, bool kEuclid>
struct PointCost {
  static constexpr bool kNormForm = D >= 8 && !kEuclid;
  const float* tgt;       ///< target points [count, D]
  const float* src;       ///< source points [count, D]
  const float* tgt_norm;  ///< |x|^2 of targets (D >= 8 only)
  const float* src_norm;
  struct Target {
    float x[D];
    float norm;
  };
  __device__ Target target(int t) const {
    Target r;
    const float* p = tgt + t * D;
    if constexpr (D % 4 == 0) {
#pragma unroll
      for (int k = 0; k < D; k += 4) {
        const float4 v = *reinterpret_cast<const float4*>(p + k);
        r.x[k] = v.x;
        r.x[k + 1] = v.y;
        r.x[k + 2] = v.z;
        r.x[k + 3] = v.w;
      }
    } else {
#pragma unroll
      for (int k = 0; k < D; ++k) r.x[k] = p[k];
    }
    if constexpr (kNormForm)
      r.norm = tgt_norm[t];
    else
      r.norm = 0.f;  // unused: direct differences
    return r;
  }
  __device__ float operator()(const Target& t, int j) const {
    const float* q = src + j * D;
    float c;
    if constexpr (kNormForm) {
      float dot = 0.f;
#pragma unroll
      for (int k = 0; k < D; k += 4) {
        const float4 v = *reinterpret_cast<const float4*>(q + k);
        dot = fmaf(t.x[k], v.x, dot);
        dot = fmaf(t.x[k + 1], v.y, dot);
        dot = fmaf(t.x[k + 2], v.z, dot);
        dot = fmaf(t.x[k + 3], v.w, dot);
      }
      c = fmaxf(fmaf(-2.f, dot, t.norm + src_norm[j]), 0.f);
    } else {
      float y[D];
      if constexpr (D % 4 == 0) {
#pragma unroll
        for (int k = 0; k < D; k += 4) {
          const float4 v = *reinterpret_cast<const float4*>(q + k);
          y[k] = v.x;
          y[k + 1] = v.y;
          y[k + 2] = v.z;
          y[k + 3] = v.w;
        }
      } else if constexpr (D == 2) {
        const float2 v = *reinterpret_cast<const float2*>(q);
        y[0] = v.x;
        y[1] = v.y;
      } else {
#pragma unroll
        for (int k = 0; k < D; ++k) y[k] = q[k];
      }
      c = 0.f;
#pragma unroll
      for (int k = 0; k < D; ++k) {
        const float diff = t.x[k] - y[k];
        c = fmaf(diff, diff, c);
      }
    }
    if constexpr (kEuclid) c = sqrtf(c);
    return c;
  }
};

/// One half-step inside the block: out[t] = -lam * e * LSE_s(w_s*ln2 - c(t, s)/e)
/// for every target t, with w the base-2 source terms (scaled_term). When the
/// targets do not fill the block, S slices of the block split the sources and
/// their partial (max, sum) pairs merge through `scratch`. A warp always lies in
/// one slice, so its threads read the same source at once (broadcast). Every
/// thread must call it (it may hold a barrier); the caller syncs before `out` is read.
template <class Cost>
__device__ void lse_pass(const Cost& cost, int n_t, int n_s, const float* __restrict__ w,
                         float scale, float lam, float e, float* __restrict__ out,
                         Lse2* __restrict__ scratch) {
  const int threads = static_cast<int>(blockDim.x);
  int slices = 1;
  while (slices * 2 * n_t <= threads && slices * 2 * 32 <= threads) slices *= 2;
  const int per = threads / slices;
  const int slice = static_cast<int>(threadIdx.x) / per;
  const int lane_t = static_cast<int>(threadIdx.x) % per;
  const int span = (n_s + slices - 1) / slices;
  const int j0 = min(n_s, slice * span);
  const int j1 = min(n_s, j0 + span);
  for (int t = lane_t; t < n_t; t += per) {
    const typename Cost::Target tc = cost.target(t);
    Lse2 acc = lse2_empty();
    int j = j0;
    for (; j + kChunk <= j1; j += kChunk) {
      float s[kChunk];
#pragma unroll
      for (int q = 0; q < kChunk; ++q) s[q] = fmaf(-scale, cost(tc, j + q), w[j + q]);
      lse2_push(acc, s);
    }
    if (j < j1) {
      float s[kChunk];
#pragma unroll
      for (int q = 0; q < kChunk; ++q) {
        const int jj = min(j + q, j1 - 1);  // stay in bounds; masked below
        s[q] = j + q < j1 ? fmaf(-scale, cost(tc, jj), w[jj]) : -INFINITY;
      }
      lse2_push(acc, s);
    }
    if (slices == 1)
      out[t] = potential_from_lse2(lse2_value(acc), lam, e);
    else
      scratch[slice * per + lane_t] = acc;  // per >= n_t: one target per thread
  }
  if (slices > 1) {
    __syncthreads();
    if (slice == 0 && lane_t < n_t) {
      Lse2 acc = scratch[lane_t];
      for (int s = 1; s < slices; ++s) acc = lse2_merge(acc, scratch[s * per + lane_t]);
      out[lane_t] = potential_from_lse2(lse2_value(acc), lam, e);
    }
  }
}

__device__ double block_sum(double v, double* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) red[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int k = 0; k < static_cast<int>(blockDim.x) / 32; ++k) s += red[k];
    red[32] = s;
  }
  __syncthreads();
  const double total = red[32];
  __syncthreads();  // red may be reused right after
  return total;
}

/// D = 0: cost cached in shared memory (filled from C or from the points);
/// D > 0: cost recomputed from the points, padded to dimension D.
template <int D, bool kEuclid>
__global__ void __launch_bounds__(kSmallMaxThreads) small_sinkhorn_kernel(SmallParams p) {
  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  const int b = static_cast<int>(blockIdx.x);
  if (p.active != nullptr && p.active[b] == 0) return;  // uniform over the block

  const int n = p.n, m = p.m, tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  const SmallLayout& L = p.layout;
  float* sF = smem + L.f;
  float* sG = smem + L.g;
  float* sLA = smem + L.log_a;
  float* sLB = smem + L.log_b;
  float* sW = smem + L.w;
  float* sFt = smem + L.ftilde;
  Lse2* scratch = reinterpret_cast<Lse2*>(smem + L.scratch);
  double* red = reinterpret_cast<double*>(smem + L.red);

  const std::int64_t bn = std::int64_t{b} * n, bm = std::int64_t{b} * m;
  for (int i = tid; i < n; i += threads) {
    sF[i] = p.F[bn + i];
    sLA[i] = p.logA[bn + i];
  }
  for (int j = tid; j < m; j += threads) {
    sG[j] = p.G[bm + j];
    sLB[j] = p.logB[bm + j];
  }

  // Cost source.
  [[maybe_unused]] float* sC = smem + L.cost;
  [[maybe_unused]] float* sX = smem + L.x;
  [[maybe_unused]] float* sY = smem + L.y;
  [[maybe_unused]] float* sNX = smem + L.norm_x;
  [[maybe_unused]] float* sNY = smem + L.norm_y;
  const int d = p.d;
  if constexpr (D == 0) {
    const int ld = L.ld;
    if (p.C != nullptr) {
      const float* Cb = p.C + std::int64_t{b} * n * m;
      for (int idx = tid; idx < n * m; idx += threads) sC[(idx / m) * ld + idx % m] = Cb[idx];
    } else {
      // One-time per launch: direct differences in fp32 (no cancellation).
      for (int idx = tid; idx < n * m; idx += threads) {
        const int i = idx / m, j = idx % m;
        const float* xi = p.X + (bn + i) * d;
        const float* yj = p.Y + (bm + j) * d;
        float c = 0.f;
        for (int k = 0; k < d; ++k) {
          const float diff = __ldg(xi + k) - __ldg(yj + k);
          c = fmaf(diff, diff, c);
        }
        sC[i * ld + j] = p.euclidean ? sqrtf(c) : c;
      }
    }
  } else {
    for (int idx = tid; idx < n * D; idx += threads) {
      const int i = idx / D, k = idx % D;
      sX[idx] = k < d ? p.X[(bn + i) * d + k] : 0.f;
    }
    for (int idx = tid; idx < m * D; idx += threads) {
      const int j = idx / D, k = idx % D;
      sY[idx] = k < d ? p.Y[(bm + j) * d + k] : 0.f;
    }
    if constexpr (D >= 8) {
      __syncthreads();
      for (int i = tid; i < n; i += threads) {
        float s = 0.f;
        for (int k = 0; k < D; ++k) s = fmaf(sX[i * D + k], sX[i * D + k], s);
        sNX[i] = s;
      }
      for (int j = tid; j < m; j += threads) {
        float s = 0.f;
        for (int k = 0; k < D; ++k) s = fmaf(sY[j * D + k], sY[j * D + k], s);
        sNY[j] = s;
      }
    }
  }
  __syncthreads();

  auto row_pass = [&](const float* w, float scale, float lam, float e, float* out) {
    if constexpr (D == 0)
      lse_pass(CachedRowCost{sC, L.ld}, n, m, w, scale, lam, e, out, scratch);
    else
      lse_pass(PointCost<D, kEuclid>{sX, sY, sNX, sNY}, n, m, w, scale, lam, e, out, scratch);
  };
  auto col_pass = [&](const float* w, float scale, float lam, float e, float* out) {
    if constexpr (D == 0)
      lse_pass(CachedColCost{sC, L.ld}, m, n, w, scale, lam, e, out, scratch);
    else
      lse_pass(PointCost<D, kEuclid>{sY, sX, sNY, sNX}, m, n, w, scale, lam, e, out, scratch);
  };

  const double eps = p.eps[b];
  const double eps0 = p.eps_init != nullptr ? p.eps_init[b] : 0.0;
  const float eps_f = static_cast<float>(eps);
  const float lam_a_target = static_cast<float>(::otgpu::detail::unbalanced_lambda(p.rho_a, eps));
  const int t_stop = min(p.t_end, p.max_iter);

  bool ftilde_valid = false;  // sFt holds the balanced f-update at (G, eps)
  bool converged = false;
  bool measured = false;
  double R = 0.0;
  int iterations = -1;
  for (int t = p.t_begin; t < t_stop; ++t) {
    // eps_init * eps_decay^t with pow() each iteration, as the CPU reference does: a
    // running product drifts by an ulp per step, which can move the iteration at
    // which eps_t reaches eps (at_target is an exact comparison) and with it the
    // convergence checks. One double pow per iteration is noise next to 2 n m ex2.
    const double et = ::otgpu::detail::scheduled_eps(eps, eps0, p.eps_decay, t);
    const bool at_target = et == eps;
    const float e = static_cast<float>(et);
    const float scale = kLog2e / e;
    const float lam_a = static_cast<float>(::otgpu::detail::unbalanced_lambda(p.rho_a, et));
    const float lam_b = static_cast<float>(::otgpu::detail::unbalanced_lambda(p.rho_b, et));

    // f-update. Right after a check, G and eps are those of the check, so the
    // update is lambda_a times the ftilde already computed.
    if (ftilde_valid && at_target) {
      for (int i = tid; i < n; i += threads) sF[i] = lam_a * sFt[i];
    } else {
      for (int j = tid; j < m; j += threads) sW[j] = scaled_term(sLB[j], sG[j], scale);
      __syncthreads();
      row_pass(sW, scale, lam_a, e, sF);
    }
    __syncthreads();
    // g-update.
    for (int i = tid; i < n; i += threads) sW[i] = scaled_term(sLA[i], sF[i], scale);
    __syncthreads();
    col_pass(sW, scale, lam_b, e, sG);
    __syncthreads();
    ftilde_valid = false;
    iterations = t + 1;

    // As the CPU reference: checks every check_every iterations at the target eps,
    // and a final measurement when the cap is reached (which decides convergence
    // without checks, or when the cap falls between checks).
    const bool check =
        (p.check_every > 0 && (t + 1) % p.check_every == 0 && at_target) || t + 1 == p.max_iter;
    if (check) {
      // ftilde at the target eps, then R = sum_i a_i |exp((F_i - lambda_a ftilde_i)/eps) - 1|.
      const float scale_t = kLog2e / eps_f;
      for (int j = tid; j < m; j += threads) sW[j] = scaled_term(sLB[j], sG[j], scale_t);
      __syncthreads();
      row_pass(sW, scale_t, 1.0f, eps_f, sFt);
      __syncthreads();
      double local = 0.0;
      for (int i = tid; i < n; i += threads) {
        const float la = sLA[i];
        if (la == -INFINITY) continue;
        const double z = (static_cast<double>(sF[i]) -
                          static_cast<double>(lam_a_target) * static_cast<double>(sFt[i])) /
                         eps;
        // The difference is formed in double; the exponentials need no more than
        // fp32 (the potentials themselves are fp32).
        local += static_cast<double>(expf(la) * fabsf(expm1f(static_cast<float>(z))));
      }
      R = block_sum(local, red);
      measured = true;
      ftilde_valid = true;
      if (R <= p.tol) {
        converged = true;
        break;
      }
    }
  }

  for (int i = tid; i < n; i += threads) p.F[bn + i] = sF[i];
  for (int j = tid; j < m; j += threads) p.G[bm + j] = sG[j];
  if (tid == 0) {
    if (p.iterations != nullptr && iterations >= 0) p.iterations[b] = iterations;
    if (p.converged != nullptr) p.converged[b] = converged ? 1 : 0;
    if (p.residual != nullptr && measured) p.residual[b] = static_cast<float>(R);
    if (p.active != nullptr && (converged || p.t_end >= p.max_iter)) p.active[b] = 0;
  }
}

// ---- host side --------------------------------------------------------------------

std::size_t smem_limit(int device) {
  int v = 0;
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<std::size_t>(v);
}

void check_shape(const char* who, CostKind cost, std::int64_t n, std::int64_t m, std::int64_t d) {
  // Shared-memory indices are int; any size that fits in shared memory is far below.
  constexpr std::int64_t kMaxSide = 1 << 20;
  if (n <= 0 || n > kMaxSide)
    throw InvalidArgument(fmt::format("{}: rows n must be in [1, {}], got {}", who, kMaxSide, n));
  if (m <= 0 || m > kMaxSide)
    throw InvalidArgument(
        fmt::format("{}: columns m must be in [1, {}], got {}", who, kMaxSide, m));
  if (cost != CostKind::matrix && (d <= 0 || d > kMaxSide))
    throw InvalidArgument(
        fmt::format("{}: point dimension d must be in [1, {}], got {}", who, kMaxSide, d));
}

template <int D, bool kEuclid>
void launch(const SmallParams& p, unsigned blocks, std::size_t limit, cudaStream_t stream) {
  const std::size_t bytes = p.layout.bytes();
  auto* kernel = &small_sinkhorn_kernel<D, kEuclid>;
  // The opt-in maximum is a per-function (per-device) attribute, not a per-launch
  // one: setting it to this launch's size would race with another host thread
  // launching a larger problem between our set and its launch. Always the device
  // limit (bytes <= limit was checked), so concurrent launchers agree. The
  // attribute caps the size only; occupancy follows the launch's own size.
  OTGPU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(limit)));
  kernel<<<blocks, static_cast<unsigned>(p.layout.threads), bytes, stream>>>(p);
  OTGPU_LAUNCH_CHECK();
}

template <bool kEuclid>
void launch_points(const SmallParams& p, int dim, unsigned blocks, std::size_t limit,
                   cudaStream_t stream) {
  switch (dim) {
    case 1:
      return launch<1, kEuclid>(p, blocks, limit, stream);
    case 2:
      return launch<2, kEuclid>(p, blocks, limit, stream);
    case 4:
      return launch<4, kEuclid>(p, blocks, limit, stream);
    case 8:
      return launch<8, kEuclid>(p, blocks, limit, stream);
    case 16:
      return launch<16, kEuclid>(p, blocks, limit, stream);
    case 32:
      return launch<32, kEuclid>(p, blocks, limit, stream);
    default:
      throw InvalidArgument(fmt::format("small_sinkhorn: no kernel for padded dimension {}", dim));
  }
}

}  // namespace

std::size_t small_kernel_smem_bytes(CostKind cost, std::int64_t n, std::int64_t m, std::int64_t d,
                                    int device) {
  check_shape("small_kernel_smem_bytes", cost, n, m, d);
  return geometry::small_variant(cost != CostKind::matrix, n, m, d, smem_limit(device))
      .layout.bytes();
}

bool small_kernel_fits(CostKind cost, std::int64_t n, std::int64_t m, std::int64_t d, int device) {
  check_shape("small_kernel_fits", cost, n, m, d);
  return geometry::small_variant(cost != CostKind::matrix, n, m, d, smem_limit(device)).fits;
}

void small_sinkhorn(const SmallSinkhornArgs& a, cudaStream_t stream) {
  constexpr const char* who = "small_sinkhorn";
  check_shape(who, a.cost, a.n, a.m, a.d);
  if (a.B <= 0 || a.B > 0x7fffffff)
    throw InvalidArgument(fmt::format("{}: batch size B must be in [1, 2^31-1], got {}", who, a.B));
  auto need = [who](const char* name, const void* ptr) {
    if (ptr == nullptr)
      throw InvalidArgument(fmt::format("{}: device pointer {} must not be null", who, name));
  };
  if (a.cost == CostKind::matrix) {
    need("C", a.C);
  } else {
    need("X", a.X);
    need("Y", a.Y);
  }
  need("logA", a.logA);
  need("logB", a.logB);
  need("F", a.F);
  need("G", a.G);
  need("eps", a.eps);
  if (a.max_iter < 0)
    throw InvalidArgument(fmt::format("{}: max_iter must be >= 0, got {}", who, a.max_iter));
  if (a.check_every < 0)
    throw InvalidArgument(fmt::format("{}: check_every must be >= 0, got {}", who, a.check_every));
  if (a.t_begin < 0 || a.t_end < a.t_begin)
    throw InvalidArgument(fmt::format("{}: iteration range [t_begin, t_end) = [{}, {}) is invalid",
                                      who, a.t_begin, a.t_end));
  if (!(a.eps_decay > 0.0) || !std::isfinite(a.eps_decay))
    throw InvalidArgument(
        fmt::format("{}: eps_decay must be finite and > 0, got {}", who, a.eps_decay));
  if (!(a.rho_a > 0.0))
    throw InvalidArgument(fmt::format("{}: rho_a must be > 0 (or +inf), got {}", who, a.rho_a));
  if (!(a.rho_b > 0.0))
    throw InvalidArgument(fmt::format("{}: rho_b must be > 0 (or +inf), got {}", who, a.rho_b));

  int device = 0;
  OTGPU_CUDA_CHECK(cudaGetDevice(&device));
  const std::size_t limit = smem_limit(device);
  const SmallVariant v = geometry::small_variant(a.cost != CostKind::matrix, a.n, a.m, a.d, limit);
  if (!v.fits)
    throw InvalidArgument(fmt::format(
        "{}: problem n={} m={} d={} needs {} bytes of shared memory per block, device {} allows {}"
        " (check small_kernel_fits first)",
        who, a.n, a.m, a.d, v.layout.bytes(), device, limit));

  SmallParams p{};
  p.X = a.X;
  p.Y = a.Y;
  p.C = a.cost == CostKind::matrix ? a.C : nullptr;
  p.logA = a.logA;
  p.logB = a.logB;
  p.F = a.F;
  p.G = a.G;
  p.eps = a.eps;
  p.eps_init = a.eps_init;
  p.eps_decay = a.eps_decay;
  p.rho_a = a.rho_a;
  p.rho_b = a.rho_b;
  p.tol = a.tol;
  p.max_iter = a.max_iter;
  p.check_every = a.check_every;
  p.t_begin = a.t_begin;
  p.t_end = a.t_end;
  p.active = a.active;
  p.iterations = a.iterations;
  p.residual = a.residual;
  p.converged = a.converged;
  p.n = static_cast<int>(a.n);
  p.m = static_cast<int>(a.m);
  p.d = a.cost == CostKind::matrix ? 0 : static_cast<int>(a.d);
  p.euclidean = a.cost == CostKind::euclidean;
  p.layout = v.layout;

  const auto blocks = static_cast<unsigned>(a.B);
  if (v.cached)
    launch<0, false>(p, blocks, limit, stream);
  else if (p.euclidean)
    launch_points<true>(p, v.dim, blocks, limit, stream);
  else
    launch_points<false>(p, v.dim, blocks, limit, stream);
}

}  // namespace otgpu::kernels
