// The tensor-core (mma.sync) path of the online point-cloud Sinkhorn kernels
// (kernels/src/sinkhorn_online_mma.cu): the same half-step contract as
// sinkhorn_online.h (OnlinePass in, potentials or split partials out), with the cost
// recomputed as
//
//   C_ij = |x_i|^2 + |y_j|^2 - 2 <x_i, y_j>
//
// where <x_i, y_j> for a tile of 64 rows x 64 columns is a product of two fp32
// matrices on the tensor cores (m16n8k8 TF32 with fp32 accumulate, 3xTF32 by default;
// m16n8k16 bf16 as an opt-in), tiled over d in chunks of 32 (or 16) coordinates, so any
// padded d runs with the same shared memory. The score of a pair in base 2,
//
//   s_ij = 2 scale <x_i, y_j> + [log2(e) log w_j + scale pot_j - scale |y_j|^2]
//          - scale |x_i|^2,                                   scale = log2(e) / eps,
//
// folds the bracket into one term per column and adds the row constant -scale |x_i|^2
// after the log-sum-exp. The points are centred per problem by the staging (costs are
// translation invariant), which keeps |x|^2 + |y|^2 close to the size of C and the
// cancellation of the sum small (docs/design.md, "Precision").
//
// Plain C++ header (the CUDA runtime API only): includable from .cpp files.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "otgpu/sinkhorn.h"
#include "otgpu_kernels/sinkhorn_mma_geometry.h"
#include "otgpu_kernels/sinkhorn_online.h"

namespace otgpu::kernels {

/// The precision the tensor-core kernels compute with for a pass (the Euclidean cost
/// always runs 3xTF32).
Precision mma_precision(const OnlinePass& p);

/// Tensor-core half-step: out[b,i] = -lambda[b] eps[b] LSE_j(col_logw_j + (col_pot_j -
/// C_ij)/eps[b]), or the split's (max, sum) partials merged afterwards, exactly as
/// online_half_step. p.precision selects 3xTF32 (fp32), TF32 or bf16; p.dp must be a
/// multiple of 4 (>= 4). `out` must not alias the inputs.
void online_half_step_mma(const OnlinePass& p, const float* lambda, float* out,
                          cudaStream_t stream);

/// online_row_stats (sinkhorn_online.h) on tensor cores (3xTF32): any multiple-of-4 dp.
void online_row_stats_mma(const OnlinePass& p, float* lse, float* cost_mean, cudaStream_t stream);

/// online_sample (sinkhorn_online.h) on tensor cores (3xTF32): any multiple-of-4 dp.
void online_sample_mma(const OnlinePass& p, std::uint64_t seed, std::int64_t* out,
                       cudaStream_t stream);

/// online_weighted_mean (sinkhorn_online.h) for any multiple-of-4 dp: the row LSE by
/// the tensor-core kernel, then out[b,i,:] = sum_j u_ij v_j / sum_j w_ij in coordinate
/// chunks of 64, the scores recomputed (3xTF32) per chunk. out[b,i,0] holds the row's
/// LSE between the two launches (every block reads its rows' values before writing).
void online_weighted_mean_tiled(const OnlinePass& p, int mode, float* out, cudaStream_t stream);

/// True when the derived-output kernels of sinkhorn_online.cu cannot launch dp (their
/// tile of geometry::kOnlineTileCols columns exceeds the device's shared memory per
/// block) and the tiled tensor-core kernels above must run instead.
bool derived_needs_mma(const OnlinePass& p);

/// The compiled tensor-core half-step (3xTF32, squared Euclidean) for padded dimension
/// dp, with its dynamic shared memory: for the planner's occupancy query.
OnlineKernelHandle online_half_step_mma_handle(int dp);

}  // namespace otgpu::kernels
