// Device-side staging for the stream-ordered Sinkhorn API: turns caller tensors that
// already live on the GPU into the canonical layout (sinkhorn_dense.h) without a
// host round trip, and builds the per-iteration eps / lambda tables on the device.
// Plain C++ header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace otgpu::kernels {

/// A strided device tensor of rank 1..3, f32 (is_f64 = false) or f64, element strides.
struct StridedSource {
  const void* data = nullptr;
  bool is_f64 = false;
  int rank = 0;
  std::int64_t stride[3] = {0, 0, 0};
};

/// dst[b, i, k] = src(b, i, k) for k < d (a rank-2 source is shared by all b), zero
/// for d <= k < dp. dst is [B, rows, dp] fp32. Cost matrices and fp64 scalars only:
/// point clouds are staged centred, before rounding (otgpu_kernels/centered_gather.h).
void stage_points(const StridedSource& src, std::int64_t B, std::int64_t rows, std::int64_t d,
                  int dp, float* dst, cudaStream_t stream);

/// w [B, len] double and logw [B, len] fp32 (-inf for zeros) from a rank-1 (shared)
/// or rank-2 (batched) source, or uniform 1/len when src.data == nullptr.
void stage_weights(const StridedSource& src, std::int64_t B, std::int64_t len, double* w,
                   float* logw, cudaStream_t stream);

/// Balanced problems: rescales b (and logB) of each problem to the mass of a.
void balance_weights(const double* a, double* b, float* logB, std::int64_t B, std::int64_t n,
                     std::int64_t m, cudaStream_t stream);

/// mean_ij |x_i - y_j|^2 per problem from centered points, closed form, double.
void mean_sqeuclidean_cost(const float* X, const float* Y, double* out, std::int64_t B,
                           std::int64_t n, std::int64_t m, int dp, cudaStream_t stream);

/// Tables of rows 0..K (row t: iteration t; row K: the target), [K+1, B] each:
///   eps_t = max(e, e0 decay^t) with e = eps * scale_b, e0 = eps_init * scale_b,
///   scale_b = mean_cost[b] (eps_relative) or 1 (mean_cost == nullptr);
///   lambda = rho / (rho + eps_t) (1 for rho = +inf). eps_init <= 0: no scaling.
/// target_eps [B] (float) receives row K's eps for the small-problem kernel, and
/// init_eps [B] the scaled eps_init (0 when off).
void make_eps_tables(const double* mean_cost, double eps, double eps_init, double decay,
                     double rho_a, double rho_b, int K, float* eps_tab, float* lam_a_tab,
                     float* lam_b_tab, float* target_eps, float* init_eps, std::int64_t B,
                     cudaStream_t stream);

/// p[0..count) = value.
void fill_ints(int* p, int value, std::int64_t count, cudaStream_t stream);

/// Column k of a [B, 4] double array into out[B] (strided gather), skipped when out
/// is nullptr.
void copy_column(const double* src4, int k, double* out, std::int64_t B, cudaStream_t stream);

}  // namespace otgpu::kernels
