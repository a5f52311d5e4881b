// Launchers of the dense-cost Sinkhorn half-steps: the cost matrix C [B, n, m] is
// held in device memory and read once, coalesced, per half-step (memory-bound).
//
// Canonical layout (shared by the driver and every Sinkhorn kernel): all arrays
// are fp32, contiguous, batch-major, on the device:
//   C    [B, n, m]  C[b,i,j] at b*n*m + i*m + j
//   logA [B, n], logB [B, m]  natural-log weights, -INFINITY for zero weights
//   F    [B, n], G [B, m]     potentials
//   eps  [B]  the current eps_t of each problem (> 0)
//   lambda_a / lambda_b [B]   unbalanced damping rho / (rho + eps_t); nullptr = 1
//   active [B] int            0 = skip this problem (its outputs are not touched);
//                             nullptr = every problem is active
// Half-step semantics (identical to the CPU reference):
//   F[b,i] = -lambda_a[b] eps[b] LSE_j( logB[b,j] + (G[b,j] - C[b,i,j]) / eps[b] )
//   G[b,j] = -lambda_b[b] eps[b] LSE_i( logA[b,i] + (F[b,i] - C[b,i,j]) / eps[b] )
// Terms with a -inf log weight are skipped; an all -inf LSE gives a potential of
// +inf, never NaN. A +inf potential paired with a -inf weight is also skipped.
//
// Launchers take device pointers and the caller's stream; they never allocate,
// never synchronize and check the launch (otgpu::CudaError). Sizes are checked
// (otgpu::InvalidArgument naming the argument). Plain C++: includable from .cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace otgpu::kernels {

/// Row half-step, one warp per group of rows, float4 loads when m % 4 == 0 and the
/// pointers C, G, logB are 16-byte aligned (scalar loads otherwise).
///   out[b,i] = -lambda_a[b] * eps[b] * LSE_j(logB[b,j] + (G[b,j] - C[b,i,j]) / eps[b])
/// C        [B,n,m] costs.
/// logB     [B,m]   column log weights.
/// G        [B,m]   column potentials.
/// eps      [B]     eps_t per problem.
/// lambda_a [B]     factor per problem; nullptr means 1 (use it to get the balanced
///                  update "ftilde" for the convergence residual).
/// active   [B]     nullptr, or 0 to leave out[b,:] untouched.
/// out      [B,n]   result; may be F itself or a separate array (it must not alias
///                  C, logB or G).
void dense_row_update(const float* C, const float* logB, const float* G, const float* eps,
                      const float* lambda_a, const int* active, float* out, std::int64_t B,
                      std::int64_t n, std::int64_t m, cudaStream_t stream);

/// Workspace (bytes) that dense_col_update needs for these sizes (0 when the
/// column reduction runs in a single pass). Depends only on (B, n, m).
std::size_t dense_col_workspace_bytes(std::int64_t B, std::int64_t n, std::int64_t m);

/// Column half-step, reading C row-major (coalesced, no transposed copy): a block
/// owns a tile of columns and a range of rows; partial (max, sum) pairs per (row
/// range, column) go to `workspace` and a second kernel merges them into G.
///   G[b,j] = -lambda_b[b] * eps[b] * LSE_i(logA[b,i] + (F[b,i] - C[b,i,j]) / eps[b])
/// C [B,n,m]; logA [B,n]; F [B,n]; eps [B]; lambda_b [B] or nullptr (= 1);
/// active [B] or nullptr; G [B,m] output (must not alias F, logA or C).
/// workspace: device memory of at least dense_col_workspace_bytes(B, n, m) bytes,
/// 8-byte aligned (nullptr allowed when that is 0); throws InvalidArgument when
/// workspace_bytes is smaller. Its content need not be initialized.
void dense_col_update(const float* C, const float* logA, const float* F, const float* eps,
                      const float* lambda_b, const int* active, float* G, void* workspace,
                      std::size_t workspace_bytes, std::int64_t B, std::int64_t n, std::int64_t m,
                      cudaStream_t stream);

/// Row statistics at the potentials (F, G) for the final report, fp32 per row:
///   row_mass[b,i] = sum_j P_ij,  row_cost[b,i] = sum_j P_ij C_ij,
///   P_ij = exp(logA[b,i] + logB[b,j] + (F[b,i] + G[b,j] - C[b,i,j]) / eps[b]).
/// Rows with a zero weight (logA = -inf) give 0 and 0. The driver sums the rows
/// per problem in double: mass error sum_i |row_mass - a_i|, <P, C> = sum row_cost.
/// row_cost may be nullptr when only the masses are wanted. Every problem is
/// computed (no active flags).
void dense_row_stats(const float* C, const float* logA, const float* logB, const float* F,
                     const float* G, const float* eps, float* row_mass, float* row_cost,
                     std::int64_t B, std::int64_t n, std::int64_t m, cudaStream_t stream);

}  // namespace otgpu::kernels
