// Kernels of the CUDA sliced Wasserstein path (otgpu_kernels/sliced.h).
//
// Per chunk of directions the host projects with a GEMM that writes [Lc, B*n]
// directly, so each (direction, problem) pair is a contiguous segment; one device-wide
// CUB radix sort on 64-bit keys (segment id above the fp32 key's order-preserving bits)
// orders every segment in one pass, so the sort fills the GPU whether there are 64
// segments of 2^20 points or 10^5 segments of 128 (a segmented sort gives each segment
// one block: 64 blocks at n = 2^20); one thread block per segment runs the
// shared quantile merge (detail/quantile_merge.h), its threads splitting the merge
// by merge path, and writes W_p^p and the per-point derivatives.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "grid.cuh"
#include "otgpu/detail/directions.h"
#include "otgpu/detail/quantile_merge.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/sliced.h"

namespace otgpu::kernels {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(std::int64_t total) {
  return detail::grid_stride_blocks(total, kThreads, 65535 * 8);
}

/// Unit directions, transposed: theta_t[l * d + k] = theta_l[k]. One block per
/// direction; `given` (double [d, L] row-major) or, when null, the seed's Gaussians.
__global__ void __launch_bounds__(kThreads)
    directions_kernel(const double* __restrict__ given, std::uint64_t seed, std::int64_t d,
                      std::int64_t L, float* __restrict__ theta_t) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double inv_norm;
  const std::int64_t l = blockIdx.x;
  auto coord = [&](std::int64_t k) {
    return given != nullptr
               ? given[k * L + l]
               : ::otgpu::detail::direction_gaussian(seed, static_cast<std::uint64_t>(l),
                                                     static_cast<std::uint64_t>(k));
  };
  double sq = 0;
  for (std::int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const double t = coord(k);
    sq += t * t;
  }
  const double total = Reduce(tmp).Sum(sq);
  if (threadIdx.x == 0) inv_norm = total > 0 ? 1.0 / sqrt(total) : 0.0;
  __syncthreads();
  for (std::int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    theta_t[l * d + k] = static_cast<float>(coord(k) * inv_norm);
  }
}

/// Value of each sort element: its index inside its segment of length len.
__global__ void __launch_bounds__(kThreads)
    segment_iota_kernel(int* __restrict__ out, std::int64_t len, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    out[e] = static_cast<int>(e % len);
  }
}

/// offsets[s] = s * len, s = 0..segments (begin of s, and end of s - 1). The caller
/// guarantees segments * len <= INT_MAX; s itself can reach INT_MAX, so index in 64 bits.
__global__ void __launch_bounds__(kThreads)
    segment_offsets_kernel(int* __restrict__ offsets, int len, int segments) {
  const std::int64_t s = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (s <= segments) offsets[s] = static_cast<int>(s * len);
}

/// Prefix sums (in sorted order) of the weights of one segment, written to prefix[];
/// the whole block takes part. Tiles of kThreads items; the running carry makes the
/// scan continue across tiles.
__device__ void block_sorted_prefix(const double* __restrict__ w, const int* __restrict__ perm,
                                    std::int64_t len, double* __restrict__ prefix) {
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  double carry = 0;
  for (std::int64_t base = 0; base < len; base += kThreads) {
    const std::int64_t r = base + threadIdx.x;
    const double item = r < len ? w[perm[r]] : 0.0;
    double incl = 0, aggregate = 0;
    Scan(tmp).InclusiveSum(item, incl, aggregate);
    if (r < len) prefix[r] = carry + incl;
    carry += aggregate;
    __syncthreads();  // tmp is reused by the next tile
  }
}

/// One block per segment s = lc * B + b (direction l0 + lc, problem b): the quantile
/// merge of the sorted projections of x and y. Thread t walks merge steps
/// [t K, (t + 1) K) of the n + m - 1 steps, starting from the merge-path split.
/// Derivatives of W_p^p w.r.t. each projected point are added (in the caller's
/// point order) to dx / dy when they are non-null.
template <bool kWeightedA, bool kWeightedB>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const float* __restrict__ ux, const int* __restrict__ perm_x,
                 const float* __restrict__ vy, const int* __restrict__ perm_y, std::int64_t n,
                 std::int64_t m, std::int64_t B, std::int64_t L, std::int64_t l0, double p,
                 const double* __restrict__ wa, bool a_batched, const double* __restrict__ wb,
                 bool b_batched, double* __restrict__ prefix_x, double* __restrict__ prefix_y,
                 double* __restrict__ cost_out, float* __restrict__ dx, float* __restrict__ dy) {
  const std::int64_t s = blockIdx.x;
  const std::int64_t lc = s / B;
  const std::int64_t b = s % B;
  const float* u = ux + s * n;
  const int* pu = perm_x + s * n;
  const float* v = vy + s * m;
  const int* pv = perm_y + s * m;

  double total_a = 1.0, total_b = 1.0;
  if constexpr (kWeightedA) {
    block_sorted_prefix(wa + (a_batched ? b * n : 0), pu, n, prefix_x + s * n);
  }
  if constexpr (kWeightedB) {
    block_sorted_prefix(wb + (b_batched ? b * m : 0), pv, m, prefix_y + s * m);
  }
  if constexpr (kWeightedA || kWeightedB) {
    __syncthreads();  // the prefix sums written above are read by every thread
  }
  if constexpr (kWeightedA) total_a = prefix_x[s * n + n - 1];
  if constexpr (kWeightedB) total_b = prefix_y[s * m + m - 1];

  const auto ca = [&] {
    if constexpr (kWeightedA) {
      return ::otgpu::detail::PrefixCumulative{prefix_x + s * n, total_a};
    } else {
      return ::otgpu::detail::UniformCumulative{n};
    }
  }();
  const auto cb = [&] {
    if constexpr (kWeightedB) {
      return ::otgpu::detail::PrefixCumulative{prefix_y + s * m, total_b};
    } else {
      return ::otgpu::detail::UniformCumulative{m};
    }
  }();

  const std::int64_t steps = n + m - 1;
  const std::int64_t per_thread = (steps + kThreads - 1) / kThreads;
  const std::int64_t k0 = static_cast<std::int64_t>(threadIdx.x) * per_thread;
  double cost = 0;
  if (k0 < steps) {
    const std::int64_t i0 = ::otgpu::detail::merge_path_split(ca, n, cb, m, k0);
    const bool grads = dx != nullptr;
    // Consecutive pieces often share i (or j): add their derivatives locally and
    // flush once per point, not once per piece.
    std::int64_t cur_i = -1, cur_j = -1;
    double acc_i = 0, acc_j = 0;
    float* gx = grads ? dx + s * n : nullptr;
    float* gy = grads ? dy + s * m : nullptr;
    ::otgpu::detail::quantile_merge_walk(
        ca, n, cb, m, i0, k0 - i0, per_thread < steps - k0 ? per_thread : steps - k0,
        [&](std::int64_t i, std::int64_t j, double mass) {
          const double diff = static_cast<double>(u[i]) - static_cast<double>(v[j]);
          // A zero-mass piece adds nothing, also when |diff|^p overflows (0 * inf).
          if (mass > 0) cost += mass * ::otgpu::detail::ground_cost_1d(diff, p);
          if (grads) {
            const double g =
                mass > 0 ? mass * ::otgpu::detail::ground_cost_1d_derivative(diff, p) : 0.0;
            if (i != cur_i) {
              if (cur_i >= 0 && acc_i != 0) atomicAdd(gx + pu[cur_i], static_cast<float>(acc_i));
              cur_i = i;
              acc_i = 0;
            }
            if (j != cur_j) {
              if (cur_j >= 0 && acc_j != 0) atomicAdd(gy + pv[cur_j], static_cast<float>(acc_j));
              cur_j = j;
              acc_j = 0;
            }
            acc_i += g;
            acc_j -= g;
          }
        });
    if (grads) {
      if (cur_i >= 0 && acc_i != 0) atomicAdd(gx + pu[cur_i], static_cast<float>(acc_i));
      if (cur_j >= 0 && acc_j != 0) atomicAdd(gy + pv[cur_j], static_cast<float>(acc_j));
    }
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage red;
  const double total = Reduce(red).Sum(cost);
  if (threadIdx.x == 0) cost_out[b * L + l0 + lc] = total;
}

/// d[e] *= weight of the term (problem b, direction l0 + lc) that element e belongs to.
__global__ void __launch_bounds__(kThreads)
    scale_terms_kernel(float* __restrict__ d, std::int64_t len, std::int64_t B, std::int64_t L,
                       std::int64_t l0, const float* __restrict__ term_w, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t s = e / len;
    d[e] *= term_w[(s % B) * L + l0 + s / B];
  }
}

/// Order-preserving map of an fp32 key to 32 unsigned bits: flip all bits of a
/// negative number (larger magnitude sorts first), only the sign bit of a positive one.
/// -0 is mapped as +0 first: the two compare equal, so the CPU reference orders them
/// by index (a tie), while their bit patterns would put every -0 before every +0 and
/// hand a tied point's quantile pieces (and gradient) to the other point.
__device__ __forceinline__ std::uint32_t float_order_bits(float f) {
  const std::uint32_t bits = __float_as_uint(f);
  const std::uint32_t u = bits == 0x80000000u ? 0u : bits;  // on the bits: no fast-math fold
  return u ^ ((u >> 31) != 0u ? 0xffffffffu : 0x80000000u);
}

__device__ __forceinline__ float float_from_order_bits(std::uint32_t u) {
  return __uint_as_float(u ^ ((u >> 31) != 0u ? 0x80000000u : 0xffffffffu));
}

/// key[e] = segment(e) << 32 | order bits of keys[e]: one device-wide radix sort on these
/// keys orders every segment at once (the segment id in the high bits keeps the segments
/// apart and in place), instead of one sort per segment.
__global__ void __launch_bounds__(kThreads)
    segment_keys_kernel(const float* __restrict__ keys, std::int64_t len, std::int64_t total,
                        std::uint64_t* __restrict__ out) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    out[e] = (static_cast<std::uint64_t>(e / len) << 32) | float_order_bits(keys[e]);
  }
}

/// The sorted fp32 keys back from the low 32 bits.
__global__ void __launch_bounds__(kThreads)
    float_keys_kernel(const std::uint64_t* __restrict__ keys, std::int64_t total,
                      float* __restrict__ out) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    out[e] = float_from_order_bits(static_cast<std::uint32_t>(keys[e]));
  }
}

}  // namespace

void sliced_directions(const double* given, std::uint64_t seed, std::int64_t d, std::int64_t L,
                       float* theta_t, cudaStream_t stream) {
  if (L <= 0) return;
  directions_kernel<<<static_cast<unsigned>(L), kThreads, 0, stream>>>(given, seed, d, L, theta_t);
  OTGPU_LAUNCH_CHECK();
}

void sliced_segments(int* vals, int* offsets, std::int64_t len, int segments, cudaStream_t stream) {
  const std::int64_t items = static_cast<std::int64_t>(segments) * len;
  if (items > 0) {
    segment_iota_kernel<<<grid_for(items), kThreads, 0, stream>>>(vals, len, items);
    OTGPU_LAUNCH_CHECK();
  }
  segment_offsets_kernel<<<static_cast<unsigned>((static_cast<std::int64_t>(segments) + kThreads) /
                                                 kThreads),
                           kThreads, 0, stream>>>(offsets, static_cast<int>(len), segments);
  OTGPU_LAUNCH_CHECK();
}

namespace {

constexpr std::size_t kTempAlign = 256;

std::size_t align_up(std::size_t v) { return (v + kTempAlign - 1) / kTempAlign * kTempAlign; }

/// Bits the segment id needs (segments - 1 fits in them).
int segment_bits(int segments) {
  int bits = 0;
  while (bits < 31 && (std::int64_t{1} << bits) < segments) ++bits;
  return bits;
}

/// Bytes of CUB's scratch for one device-wide sort of `items` 64-bit keys.
std::size_t cub_temp_bytes(std::int64_t items, int end_bit) {
  std::size_t bytes = 0;
  // A size query: CUB reads no pointer and launches nothing.
  OTGPU_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const std::uint64_t*>(nullptr),
      static_cast<std::uint64_t*>(nullptr), static_cast<const int*>(nullptr),
      static_cast<int*>(nullptr), static_cast<int>(items), 0, end_bit));
  return bytes;
}

}  // namespace

std::size_t sliced_sort_temp_bytes(std::int64_t items, int segments) {
  const int end_bit = 32 + segment_bits(std::max(segments, 1));
  return 2 * align_up(static_cast<std::size_t>(items) * sizeof(std::uint64_t)) +
         cub_temp_bytes(items, end_bit);
}

void sliced_sort(void* temp, std::size_t temp_bytes, const float* keys_in, float* keys_out,
                 const int* vals_in, int* vals_out, std::int64_t items, int segments,
                 const int* offsets, cudaStream_t stream) {
  (void)offsets;  // uniform segments: offsets[s] = s * len (sliced_segments)
  if (items <= 0 || segments <= 0) return;
  const std::int64_t len = items / segments;
  const int end_bit = 32 + segment_bits(segments);
  const std::size_t key_bytes = align_up(static_cast<std::size_t>(items) * sizeof(std::uint64_t));
  auto* k_in = static_cast<std::uint64_t*>(temp);
  auto* k_out = reinterpret_cast<std::uint64_t*>(static_cast<char*>(temp) + key_bytes);
  void* cub_temp = static_cast<char*>(temp) + 2 * key_bytes;
  std::size_t bytes = temp_bytes - 2 * key_bytes;
  segment_keys_kernel<<<grid_for(items), kThreads, 0, stream>>>(keys_in, len, items, k_in);
  OTGPU_LAUNCH_CHECK();
  OTGPU_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_temp, bytes, k_in, k_out, vals_in, vals_out,
                                                   static_cast<int>(items), 0, end_bit, stream));
  float_keys_kernel<<<grid_for(items), kThreads, 0, stream>>>(k_out, items, keys_out);
  OTGPU_LAUNCH_CHECK();
}

void sliced_merge(const SlicedMerge& a, cudaStream_t stream) {
  if (a.segments <= 0) return;
  auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(a.segments), kThreads, 0, stream>>>(
        a.ux, a.perm_x, a.vy, a.perm_y, a.n, a.m, a.B, a.L, a.l0, a.p, a.wa, a.a_batched, a.wb,
        a.b_batched, a.prefix_x, a.prefix_y, a.cost, a.dx, a.dy);
    OTGPU_LAUNCH_CHECK();
  };
  const bool weighted_a = a.wa != nullptr, weighted_b = a.wb != nullptr;
  if (weighted_a && weighted_b) {
    launch(merge_kernel<true, true>);
  } else if (weighted_a) {
    launch(merge_kernel<true, false>);
  } else if (weighted_b) {
    launch(merge_kernel<false, true>);
  } else {
    launch(merge_kernel<false, false>);
  }
}

void sliced_scale_terms(float* d, std::int64_t len, std::int64_t B, std::int64_t L, std::int64_t l0,
                        const float* term_w, std::int64_t total, cudaStream_t stream) {
  if (total <= 0) return;
  scale_terms_kernel<<<grid_for(total), kThreads, 0, stream>>>(d, len, B, L, l0, term_w, total);
  OTGPU_LAUNCH_CHECK();
}

}  // namespace otgpu::kernels
