// Launchers of the exact assignment kernels (kernels/src/assignment.cu): staging the
// costs into padded square matrices and the batched eps-scaling auction with its
// certificate. Device pointers, sizes and a stream; no allocation, no synchronization.
// Plain C++ header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "otgpu/sinkhorn.h"
#include "otgpu_kernels/gather.h"

namespace otgpu::kernels {

/// dst [K, N, N] (N >= n, m): dst(b, i, j) = src(b, i, j) for i < n, j < m, else 0 (the
/// zero-cost dummy rows / columns that make a rectangular problem square). src is
/// [K, n, m] in any strides, f32 or f64.
void assignment_stage_matrix(const Strided3& src, std::int64_t N, float* dst, cudaStream_t stream);
void assignment_stage_matrix(const Strided3& src, std::int64_t N, double* dst, cudaStream_t stream);

/// out[r] = sum_k X[r, k]^2 for `rows` contiguous rows of length d (fp32).
void assignment_row_norms(const float* X, std::int64_t rows, std::int64_t d, float* out,
                          cudaStream_t stream);

/// The cost from G = <x_i, y_j> ([K, n, m] contiguous, from the GEMM) and the squared
/// norms xn [K, n], yn [K, m]: sqeuclidean max(xn + yn - 2 G, 0), euclidean its root,
/// neg_dot -G; written padded into C [K, N, N] (zeros outside [n, m]).
void assignment_points_epilogue(const float* G, const float* xn, const float* yn, std::int64_t K,
                                std::int64_t n, std::int64_t m, std::int64_t N, CostKind kind,
                                float* C, cudaStream_t stream);

/// Per-problem scratch of the auction, each [K * N] but grid_ctrl (see
/// assignment_auction_scratch_bytes). The last five serve the grid path only: the
/// second buffer of the column bids and two lists of the unassigned rows (the grid
/// alternates them by round parity), and [K, kAuctionGridCtrlBytes] bytes of control
/// words (barrier, counters, reductions; zeroed by the launcher).
struct AuctionScratch {
  double* price = nullptr;
  double* row_u = nullptr;
  int* row_col = nullptr;
  int* col_row = nullptr;
  int* bid_row = nullptr;
  int* my_col = nullptr;
  unsigned long long* bid_val = nullptr;
  unsigned long long* my_bid = nullptr;
  int* bid_row2 = nullptr;
  int* unassigned = nullptr;
  int* unassigned2 = nullptr;
  unsigned long long* bid_val2 = nullptr;
  unsigned char* grid_ctrl = nullptr;
};

/// Bytes of control words per problem on the grid path.
inline constexpr std::int64_t kAuctionGridCtrlBytes = 256;

/// How the auction spreads over the device.
///   block: one thread block per problem (the whole solve inside the block);
///   grid:  several blocks per problem (a cooperative launch, all blocks resident, the
///          blocks of one problem meeting at a barrier in global memory), at least two
///          per problem even for small N (tests use it to cover the path);
///   automatic: grid when K < #SMs and N > 256 (a block per problem would leave SMs
///          idle and run a large problem on one SM), else block.
/// The grid falls back to block where cooperative launch is unsupported or fewer than
/// two blocks per problem fit on the device at once.
enum class AuctionPath { automatic, block, grid };

/// Blocks per problem the auction would run with for K problems of padded size N on the
/// current device (fp64 costs or fp32), 0 for the block path: at most #SMs and at
/// most one per 16 rows (but 2), and K times it resident at once (by the occupancy of
/// the compiled grid kernel).
int assignment_auction_grid_blocks(std::int64_t K, std::int64_t N, bool f64, AuctionPath path);

/// Results; every pointer but row_to_col may be null (that output is skipped).
struct AuctionOutputs {
  std::int64_t* row_to_col = nullptr;  ///< [K, n], -1 = unmatched
  std::int64_t* col_to_row = nullptr;  ///< [K, m]
  double* u = nullptr;                 ///< [K, n]
  double* v = nullptr;                 ///< [K, m]
  double* cost = nullptr;              ///< [K]
  double* dual = nullptr;              ///< [K]
  double* gap = nullptr;               ///< [K]; +inf when the auction did not finish
  double* max_violation = nullptr;     ///< [K]
  long long* rounds = nullptr;         ///< [K] bidding rounds, all phases
  int* status = nullptr;  ///< [K] 0 solved, 1 infeasible (a row or column with no allowed
                          ///< pair), 2 stopped by the round cap (infeasible, or too slow)
};

/// Bytes of AuctionScratch for K problems of padded size N (carved by the caller in the
/// order of the struct, 256-byte aligned).
std::size_t assignment_auction_scratch_bytes(std::int64_t K, std::int64_t N);

/// Solves the K padded problems C [K, N, N] (the original is the [n, m] corner; +inf =
/// forbidden) by forward auction with eps-scaling (the whole solve, every phase and
/// round, runs in one launch: no host round trip), one thread block per problem or
/// several (`path`, above; same bid rule, phases, certificate and outputs), then
/// certifies each: u_i = min_j (C_ij + p_j), v_j = -p_j, shifted so that the padding's
/// potentials fold into the larger side (<= 0), and writes the outputs.
void assignment_auction(const float* C, std::int64_t K, std::int64_t n, std::int64_t m,
                        std::int64_t N, const AuctionScratch& scratch, const AuctionOutputs& out,
                        std::size_t smem_optin_bytes, AuctionPath path, cudaStream_t stream);
void assignment_auction(const double* C, std::int64_t K, std::int64_t n, std::int64_t m,
                        std::int64_t N, const AuctionScratch& scratch, const AuctionOutputs& out,
                        std::size_t smem_optin_bytes, AuctionPath path, cudaStream_t stream);

}  // namespace otgpu::kernels
