// Kernels of the CUDA sliced Wasserstein path and their launchers: device pointers,
// sizes and a stream in; no allocation, no synchronization, no policy (the chunk of
// directions, the workspace carve-up and the GEMMs are the host driver's,
// host/src/cuda/sliced_cuda.cpp). Plain C++ header.
//
// Layouts: theta_t [L, d] fp32 (row l = unit direction l); a chunk of Lc directions
// projects B problems into Lc * B contiguous segments s = lc * B + b of length n
// (x side) or m (y side); costs are [B, L] double.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace otgpu::kernels {

/// theta_t[l * d + k] = theta_l[k] / |theta_l| for l < L, in double before the
/// rounding to fp32. theta_l is column l of `given` (double [d, L] row-major, device)
/// or, when given is null, the Gaussians of `seed` (otgpu/detail/directions.h: the
/// CPU's draw).
void sliced_directions(const double* given, std::uint64_t seed, std::int64_t d, std::int64_t L,
                       float* theta_t, cudaStream_t stream);

/// The sort's segment bookkeeping: vals[e] = e % len for e < segments * len (the
/// index of each element inside its segment) and offsets[s] = s * len for s <=
/// segments. segments * len must fit in an int (CUB's item count).
void sliced_segments(int* vals, int* offsets, std::int64_t len, int segments, cudaStream_t stream);

/// Scratch bytes sliced_sort needs for `items` keys in `segments` segments.
std::size_t sliced_sort_temp_bytes(std::int64_t items, int segments);

/// Sorts each segment [offsets[s], offsets[s + 1]) of (keys_in, vals_in) by key
/// (ascending fp32, all 32 bits; stable) into (keys_out, vals_out); temp holds
/// temp_bytes >= sliced_sort_temp_bytes(items, segments). The segments must be the
/// uniform ones of sliced_segments (offsets[s] = s * items / segments): the sort is one
/// device-wide radix sort of 64-bit keys (segment id << 32 | order-preserving bits of
/// the key, 32 + ceil(log2 segments) bits), whose two key arrays live in temp.
void sliced_sort(void* temp, std::size_t temp_bytes, const float* keys_in, float* keys_out,
                 const int* vals_in, int* vals_out, std::int64_t items, int segments,
                 const int* offsets, cudaStream_t stream);

/// One chunk of quantile merges: segment s = lc * B + b (direction l0 + lc, problem
/// b) merges the sorted projections of x and y (detail/quantile_merge.h) and writes
/// cost[b * L + l0 + lc] = W_p^p. With dx / dy non-null, the derivatives of W_p^p
/// with respect to each projected point are added to dx[s * n + i] / dy[s * m + j]
/// (the caller's point order; the arrays must be zeroed by the caller).
struct SlicedMerge {
  const float* ux = nullptr;    ///< [segments, n] sorted projections of x
  const int* perm_x = nullptr;  ///< [segments, n] their point indices
  const float* vy = nullptr;    ///< [segments, m]
  const int* perm_y = nullptr;  ///< [segments, m]
  std::int64_t n = 0, m = 0, B = 0, L = 0, l0 = 0;
  int segments = 0;  ///< lc * B
  double p = 2.0;
  const double* wa = nullptr;  ///< [n] or [B, n] (a_batched) weights; null = uniform
  bool a_batched = false;
  const double* wb = nullptr;  ///< [m] or [B, m]; null = uniform
  bool b_batched = false;
  double* prefix_x = nullptr;  ///< [segments, n] scratch, needed when wa is set
  double* prefix_y = nullptr;  ///< [segments, m] scratch, needed when wb is set
  double* cost = nullptr;      ///< [B, L]
  float* dx = nullptr;         ///< [segments, n] or null (no derivatives)
  float* dy = nullptr;         ///< [segments, m] or null
};
void sliced_merge(const SlicedMerge& args, cudaStream_t stream);

/// d[e] *= term_w[b * L + l0 + lc] for e < total, where element e belongs to segment
/// s = e / len = lc * B + b: the weight of each term in the gradient.
void sliced_scale_terms(float* d, std::int64_t len, std::int64_t B, std::int64_t L, std::int64_t l0,
                        const float* term_w, std::int64_t total, cudaStream_t stream);

}  // namespace otgpu::kernels
