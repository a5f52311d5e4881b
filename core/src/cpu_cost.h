// Dense point-cloud cost matrices of the CPU assignment reference, in fp64: the direct
// form (coordinate differences) and the Gram form (|x|^2 + |y|^2 - 2 <x, y> on centred
// points, the inner products by a packed, register-tiled kernel), with the bound on
// how far the Gram form may stray from the direct one. Internal (not installed).
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"

namespace otgpu::cpu {

/// The points of one problem, staged row-major in fp64: x [n, d], y [m, d].
struct StagedPoints {
  std::vector<double> x, y;
  std::int64_t n = 0, m = 0, d = 0;
  CostKind kind = CostKind::sqeuclidean;  ///< sqeuclidean, euclidean or neg_dot
};

/// Rows [rows, d] of problem b of a view (points, or a cost matrix with d = m) into
/// out (row-major fp64): [K, rows, d] when `batched`, else [rows, d] shared by every
/// problem; rows with unit stride in the last dimension are read as runs.
void stage_rows(const TensorView& v, bool batched, std::int64_t b, std::int64_t rows,
                std::int64_t d, double* out);

enum class CostForm { direct, gram };

/// The form the reference uses for `kind` at dimension d: the Gram form from
/// kGramMinDim on (where its inner-product kernel beats the direct sweep on this
/// kind of machine), the direct form below. OTGPU_CPU_COST=direct|gram overrides it
/// (for measurements).
CostForm choose_cost_form(CostKind kind, std::int64_t d);
inline constexpr std::int64_t kGramMinDim = 16;

/// out[i m + j] = cost(x_i, y_j) by coordinate differences (neg_dot: -<x_i, y_j>),
/// rows over `threads`.
void cost_direct(const StagedPoints& p, double* out, int threads);

/// out[i m + j] = the cost from the Gram form: with t the mean of all n + m points,
/// x' = x - t, y' = y - t (a common shift leaves the differences unchanged and keeps
/// |x'|^2 + |y'|^2 small next to the cost), sqeuclidean = max(0, |x'_i|^2 + |y'_j|^2 -
/// 2 <x'_i, y'_j>), euclidean its square root, neg_dot = -<x_i, y_j> (unshifted).
/// Returns delta, a bound on |out[i m + j] - pair_cost(p, i, j)| for every pair under
/// the standard model of fp64 rounding (gamma_k = k u / (1 - k u)): gamma_{d+8} (max|x'|
/// + max|y'|)^2 twice over (the Gram form's and the direct form's own rounding), its
/// square root for euclidean, 2 gamma_{d+2} max|x| max|y| for neg_dot.
double cost_gram(const StagedPoints& p, double* out, int threads);

/// The direct form of one pair (the value cost_direct writes).
double pair_cost(const StagedPoints& p, std::int64_t i, std::int64_t j);

/// out[i m + j] = <x_i, y_j> for x [n, d], y [m, d] row-major (out has row stride m):
/// both are packed into panels of MR rows x d and NR rows x d, and an MR x NR tile
/// of out is summed in registers over blocks of kKc coordinates (columns in chunks
/// of kNc so that a chunk's panels stay in the L2 cache), the row panels over
/// `threads`. Every entry is the k-ordered sum over blocks of k-ordered partial sums,
/// so the result does not depend on `threads`; the instruction set the dispatcher
/// picks (AVX-512F, AVX2 + FMA, or the build's baseline without FMA) can change the
/// last bits.
/// With `shift` [d], the products are those of x_i - shift and y_j - shift (each
/// difference rounded once, while packing). x_norms [n] / y_norms [m], when given,
/// receive the squared norms of the packed rows (|x_i - shift|^2, summed while packing).
void gram_nt(const double* x, const double* y, std::int64_t n, std::int64_t m, std::int64_t d,
             double* out, int threads, const double* shift = nullptr, double* x_norms = nullptr,
             double* y_norms = nullptr);

}  // namespace otgpu::cpu
