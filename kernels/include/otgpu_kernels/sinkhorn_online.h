// Launchers of the online point-cloud Sinkhorn kernels: the cost C_ij = c(x_i, y_j)
// is recomputed from X and Y tiles in registers and shared memory and never written
// (the structure of flash attention's forward pass).
//
// Layout: the canonical one of the CUDA Sinkhorn backend (sinkhorn_dense.h), with
// point clouds padded to `dp` coordinates: rows [B, n_rows, dp], cols [B, n_cols, dp]
// (padding coordinates are zero, so distances are unchanged). The f-update passes
// (X, Y, logB, G); the g-update is the same launch with the roles swapped
// (Y, X, logA, F): c is symmetric.
// Plain C++ header: includable from .cpp files.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "otgpu/sinkhorn.h"

namespace otgpu::kernels {

struct OnlinePass {
  CostKind cost = CostKind::sqeuclidean;  ///< sqeuclidean or euclidean
  const float* rows = nullptr;            ///< [B, n_rows, dp]
  const float* cols = nullptr;            ///< [B, n_cols, dp]
  const float* col_logw = nullptr;        ///< [B, n_cols] natural-log weights (-inf = 0)
  const float* col_pot = nullptr;         ///< [B, n_cols] potentials of the other side
  const float* eps = nullptr;             ///< [B] current eps per problem
  const int* active = nullptr;            ///< [B] or nullptr; 0 = skip the problem
  std::int64_t B = 0, n_rows = 0, n_cols = 0;
  int dp = 0;  ///< padded dimension: 1, 2, 4, 8, 16, 32, 64, or any multiple of 4 above
  /// Half-step only: the column range is cut into `splits` parts, each reduced by its
  /// own blocks into a partial base-2 (max, sum) per row, then merged (flash-decoding)
  /// so that short row ranges still fill the GPU. splits > 1 needs `partials`.
  int splits = 1;
  float* partials = nullptr;      ///< [B, splits, n_rows] float2 pairs
                                  ///< (geometry::online_partials_floats)
  std::int64_t batch_offset = 0;  ///< sampling: problem b draws with key batch_offset + b
  /// Sampling: row i draws with key row_offset + i, its row in the whole problem (a
  /// shard of the sharded solve holds rows row_offset.. of x; 0 otherwise).
  std::int64_t row_offset = 0;
  /// Tensor cores (sinkhorn_mma.h): the half-step runs online_half_step_mma in
  /// `precision` (the planner's choice, planner::Plan::tensor_cores).
  bool tensor_cores = false;
  Precision precision = Precision::fp32;
};

/// The compiled half-step kernel a launch with padded dimension dp runs (the
/// sqeuclidean instance; the euclidean one differs by a sqrt per pair) and the dynamic
/// shared memory it launches with: what the host planner's occupancy query
/// (cudaOccupancyMaxActiveBlocksPerMultiprocessor, geometry::kOnlineThreads threads)
/// needs. Rows per block, tiles and split spans are in sinkhorn_geometry.h; the split
/// count is the host planner's (otgpu_host/planner.h). Opts the dynamic-dimension
/// kernel in to its shared memory; throws InvalidArgument when dp cannot be launched.
struct OnlineKernelHandle {
  const void* function = nullptr;
  std::size_t dynamic_smem = 0;
};
OnlineKernelHandle online_half_step_handle(int dp);

/// Half-step: out[b,i] = -lambda[b] eps[b] LSE_j(col_logw_j + (col_pot_j - C_ij)/eps[b]).
/// lambda == nullptr means 1 (the balanced update, used for the residual).
/// `out` must not alias the inputs.
void online_half_step(const OnlinePass& p, const float* lambda, float* out, cudaStream_t stream);

/// Row statistics for the report: lse[b,i] = LSE_j(col_logw_j + (col_pot_j - C_ij)/eps)
/// (natural log; -ftilde_i/eps), and cost_mean[b,i] = sum_j w_ij C_ij / sum_j w_ij with
/// w_ij the same softmax weights. Every problem is computed (active ignored).
void online_row_stats(const OnlinePass& p, float* lse, float* cost_mean, cudaStream_t stream);

/// Softmax-weighted average per row: out[b,i,:] = sum_j w_ij v_ij / sum_j w_ij over
/// the dp coordinates, with v_ij = y_j (mode 0: barycentric map) or
/// (x_i - y_j)/|x_i - y_j| (mode 1: the Euclidean cost's gradient direction; 0 when
/// x_i = y_j). out is [B, n_rows, dp]. potential_out (optional, [B, n_rows]) receives
/// the balanced half-step's potential of the same rows, -eps LSE_j(...) (lambda = 1),
/// computed in the same pass for dp <= 64 (one read of the columns for both).
void online_weighted_mean(const OnlinePass& p, int mode, float* out, cudaStream_t stream,
                          float* potential_out = nullptr);

/// Gumbel-max sampling: out[b,i] = argmax_j col_logw_j + (col_pot_j - C_ij)/eps +
/// gumbel(seed, batch_offset + b, row_offset + i, j) (otgpu/detail/math.h, the CPU's
/// key), int64. The one point sampler of the single-GPU and the sharded solves: a
/// shard's rows draw what the same rows of the whole problem draw.
void online_sample(const OnlinePass& p, std::uint64_t seed, std::int64_t* out, cudaStream_t stream);

}  // namespace otgpu::kernels
