// Launchers of the CUDA driver's automatic eps continuation (SinkhornOptions::eps_init
// = kAuto) and of the per-problem state of the over-relaxed loop. The decisions are
// those of the CPU reference, made per problem on the device by the shared host+device
// rules (otgpu/detail/eps_continuation.h, otgpu/detail/accel.h): one thread per
// problem, no host round trip. Device pointers + sizes + stream; no allocation, no
// synchronization. Plain C++ header.
//
// Layout: the canonical one of the backend (sinkhorn_dense.h, sinkhorn_online.h):
// points [B, n, dp] / [B, m, dp] fp32, costs [B, n, m] fp32, per-problem arrays [B].
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "otgpu/sinkhorn.h"

namespace otgpu::kernels {

/// range[2 b] = min_ij C_ij, range[2 b + 1] = max_ij C_ij of problem b, as fp32 values
/// in an order-preserving unsigned encoding (decode with cost_range_value). Points:
/// C recomputed from X [B, n, dp], Y [B, m, dp] (cost sqeuclidean or euclidean), C
/// unused; matrix: C [B, n, m], X and Y unused. One pass over the n x m pairs.
void cost_range(CostKind cost, const float* X, const float* Y, const float* C, std::int64_t B,
                std::int64_t n, std::int64_t m, int dp, unsigned* range, cudaStream_t stream);

/// The fp32 value of one encoded range entry (host side, after copying range back).
float cost_range_value(unsigned encoded);

/// Per problem: eps_cur[b] = eps_continuation_start(eps_target[b], max C - min C) when
/// it is > 0 (and then ++*scaling_count), else eps_target[b]; lam_a_cur / lam_b_cur =
/// unbalanced_lambda(rho, eps_cur); level_iters[b] = 0. *scaling_count is zeroed first.
void continuation_init(const float* eps_target, const unsigned* range, double rho_a, double rho_b,
                       float* eps_cur, float* lam_a_cur, float* lam_b_cur, int* level_iters,
                       int* scaling_count, std::int64_t B, cudaStream_t stream);

/// After iteration `iteration` (1-based count) and a check at eps_cur that retired
/// nothing (tol < 0), for every active problem b:
///   eps_cur[b] > eps_target[b]: eps_level_step on residual[b] (the L1 residual at
///     eps_cur); a new level sets eps_cur, lam_a_cur, lam_b_cur;
///   else, at a check iteration (check_every > 0, iteration % check_every == 0):
///     residual[b] <= tol retires it (active[b] = 0, iterations[b] = iteration,
///     --*active_count), as a check of the plain loop does.
/// levels_left (nullable): zeroed, then counts the active problems still above eps
/// after the step.
void continuation_step(const double* residual, const float* eps_target, double tol, int check_every,
                       int iteration, double decay, double rho_a, double rho_b, int* active,
                       int* iterations, int* active_count, float* eps_cur, float* lam_a_cur,
                       float* lam_b_cur, int* level_iters, int* levels_left, std::int64_t B,
                       cudaStream_t stream);

/// The start of the over-relaxation state (detail::OverrelaxState) of every problem:
/// omega 1, prev_residual -1, prev_rate -1, failures 0, restore 0.
void overrelax_state_init(double* omega, double* prev_residual, double* prev_rate, int* failures,
                          int* restore, std::int64_t B, cudaStream_t stream);

}  // namespace otgpu::kernels
