// Launchers of the sharded CUDA Sinkhorn (host/src/cuda/sinkhorn_sharded.cpp): the
// cross-shard merge of the g-update. (A shard's rows are sampled by the single-GPU
// samplers, online_sample and dense_sample, with their row_offset.) Plain C++ header:
// includable from .cpp files.
//
// The merge. Shard r holds rows I_r of x. Its balanced local g-half-step (the online
// or dense column update with lambda = 1 over its own rows only) gives per column j
//   Gl_rj = -eps LSE_{i in I_r}(log a_i + (f_i - C_ij) / eps),
// so L_rj = -Gl_rj / eps is the shard's partial log-sum-exp, i.e. the pair
// (M_rj, S_rj) = (L_rj, 1) of the column-split merge. Across shards
//   M_j = max_r L_rj,  S_j = sum_r exp(L_rj - M_j),  g_j = -lambda_b eps (M_j + log S_j),
// exact up to rounding: sum_{i in I} exp(s_ij) = exp(M_j) sum_r exp(L_rj - M_j). The max
// and the sum are the communicator's allreduces (rank order, the same bits everywhere),
// between shard_col_lse -> shard_col_rescale -> shard_col_finish.
//
// Layout: the canonical one (sinkhorn_dense.h): [B, m] fp32 potentials, [B] eps and
// lambdas, active [B] (nullptr: all), L / M / S [B, m] double.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "otgpu/sinkhorn.h"

namespace otgpu::kernels {

/// L[b, j] = -Gl[b, j] / eps[b] in double (Gl = +inf, a column with no weighted row on
/// this shard, gives -inf). Inactive problems are written too (the allreduce carries
/// every problem; their result is never stored).
void shard_col_lse(const float* Gl, const float* eps, double* L, std::int64_t B, std::int64_t m,
                   cudaStream_t stream);

/// S[k] = exp(L[k] - M[k]) with M the allreduced max: 0 when L[k] = -inf (the shard
/// has no term), 1 when M[k] is not finite (all shards -inf, or +inf / NaN, which the
/// finish step propagates); count = B * m.
void shard_col_rescale(const double* L, const double* M, double* S, std::int64_t count,
                       cudaStream_t stream);

/// G[b, j] = -lambda[b] eps[b] (M[b, j] + log S[b, j]) for active problems (lambda
/// nullptr: 1). M = -inf (no weighted row anywhere) gives +inf, as the half-steps do.
void shard_col_finish(const double* M, const double* S, const float* eps, const float* lambda,
                      const int* active, float* G, std::int64_t B, std::int64_t m,
                      cudaStream_t stream);

/// b[k] *= ratio[k / m], logB[k] = log b[k] (-inf for 0), k < B * m: the balancing of b to
/// the mass of the whole a (ratio [B] on the device, summed over the shards).
void shard_scale_weights(double* b, float* logB, const double* ratio, std::int64_t B,
                         std::int64_t m, cudaStream_t stream);

}  // namespace otgpu::kernels
