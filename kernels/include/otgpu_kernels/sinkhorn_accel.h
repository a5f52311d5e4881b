// Launchers of the accelerated Sinkhorn iteration for the CUDA driver: the
// over-relaxation step, the symmetric average of the self-transport terms, and the
// per-problem relaxation rule at a convergence check (the CPU reference's rule,
// otgpu/detail/accel.h, shared verbatim). Device pointers + sizes + stream: no
// allocation, no synchronization, no policy. Plain C++ header.
//
// How a driver runs over-relaxed Sinkhorn with them (per check period of K
// iterations; canonical layout [B, n] / [B, m], fp32 potentials, as elsewhere):
//   state, allocated once from the workspace, one entry per problem:
//     omega [B] double (init 1), prev_residual [B] double (init -1),
//     prev_rate [B] double (init -1), failures [B] int (init 0), restore [B] int;
//     F_saved [B, n], G_saved [B, m] float (the restore point).
//   each iteration at the target eps (not during eps scaling, where w = 1):
//     F_new = f-update(G);  sinkhorn_overrelax(F_new, F, omega, active);  swap(F, F_new)
//     G_new = g-update(F);  unless this is a check or the last iteration:
//                           sinkhorn_overrelax(G_new, G, omega, active);  swap(G, G_new)
//     (the plain g-update before a check keeps the column marginal exact, so the
//      residual of loop_check_residual (sinkhorn_loop.h) is the whole marginal error, as on the
//      CPU)
//   at a check, after loop_check_residual (sinkhorn_loop.h) wrote residual[b] and retired the
//   converged problems:
//     sinkhorn_overrelax_rule(residual, K, tol, eps_cur, eps_target, active, omega,
//                             prev_residual, prev_rate, failures, restore)
//     sinkhorn_overrelax_commit(F, G, F_saved, G_saved, restore, active)
//   then the next f-update must start from the (possibly restored) G: a check's
//   reused f-update (Ft) is stale for restored problems, so recompute it for them or
//   skip the reuse in that period.
// The residual at accepted checks never increases; after three rejections a problem
// runs plain updates (omega = 1). A driver reports SinkhornReport::acceleration =
// overrelax for problems whose omega exceeded 1 at some check (read omega back with
// the other per-problem results), and calls SinkhornOptions::progress at its lagged
// host reads of residual (problem = -1, residual = max over active problems).
//
// The self terms OT_eps(a, a) of the divergence (x = y, b = a) use instead, each
// iteration:   Ft = the g-update of F (C symmetric, so it is T(F));
//              check (at a check iteration) on F against Ft;
//              sinkhorn_symmetric_average(F, Ft, active)
// whose fixed point is the self potential (OT_eps(a, a) = 2 <a, f>); see
// cpu::sinkhorn_symmetric for the reference.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace otgpu::kernels {

/// F[b, i] <- (1 - omega[b]) F_old[b, i] + omega[b] F[b, i] for every problem b with
/// active[b] != 0 (active nullptr: all). F holds the plain update on entry.
void sinkhorn_overrelax(float* F, const float* F_old, const double* omega, const int* active,
                        std::int64_t B, std::int64_t n, cudaStream_t stream);

/// F[b, i] <- (F[b, i] + Ft[b, i]) / 2 for active problems (active nullptr: all).
void sinkhorn_symmetric_average(float* F, const float* Ft, const int* active, std::int64_t B,
                                std::int64_t n, cudaStream_t stream);

/// detail::overrelax_rule_step for every problem with active[b] != 0, on residual[b]
/// after `period` iterations: the rule runs for a problem at its target eps
/// (eps_cur == nullptr: every problem; else eps_cur[b] <= eps_target[b]) whose
/// residual is above tol; it updates omega, prev_residual, prev_rate, failures [B] and
/// writes restore[b] = 1 when the period is rejected (0 otherwise, and for inactive,
/// converged or still-scaling problems).
void sinkhorn_overrelax_rule(const double* residual, int period, double tol, const float* eps_cur,
                             const float* eps_target, const int* active, double* omega,
                             double* prev_residual, double* prev_rate, int* failures, int* restore,
                             std::int64_t B, cudaStream_t stream);

/// Per active problem: restore[b] ? (F, G) <- (F_saved, G_saved)
///                                : (F_saved, G_saved) <- (F, G).
void sinkhorn_overrelax_commit(float* F, float* G, float* F_saved, float* G_saved,
                               const int* restore, const int* active, std::int64_t B,
                               std::int64_t n, std::int64_t m, cudaStream_t stream);

}  // namespace otgpu::kernels
