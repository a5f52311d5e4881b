// Exact linear assignment (the optimal transport between two equal-weight point sets
// of the same size, and its rectangular generalization), batched over K independent
// problems. The minibatch OT coupling of flow matching is one such problem per step.
//
//   minimize  sum_i C_{i, s(i)}  over injective maps s from rows to columns (n <= m),
//   or from columns to rows when n > m: min(n, m) pairs are matched.
//
// Every result carries dual potentials (u, v) that certify optimality:
// u_i + v_j <= C_ij for every allowed pair, u_i + v_j = C_ij on matched pairs, and when
// n != m the potentials of the larger side are <= 0 (the dual of "matched at most
// once"), up to the reported violation. By weak duality every matching costs at least
// sum_i u_i + sum_j v_j (all rows and columns), so cost - that sum
// (AssignmentReport::gap) bounds how far the returned cost can be from the optimum.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/sinkhorn.h"
#include "otgpu/types.h"

namespace otgpu {

class GpuContext;

/// K problems: either a cost matrix [K, n, m] (rank 2 [n, m] means K = 1) with
/// cost_kind = matrix, where +infinity marks a forbidden pair, or point clouds
/// x [K, n, d] / y [K, m, d] with cost_kind sqeuclidean, euclidean or neg_dot
/// (C_ij = -<x_i, y_j>). Views may be host or device memory (device memory only with
/// the CUDA backend), f32 or f64, any strides.
struct AssignmentProblem {
  TensorView cost;
  TensorView x;
  TensorView y;
  CostKind cost_kind = CostKind::sqeuclidean;
};

struct AssignmentOptions {
  Backend backend = Backend::automatic;
  int device = 0;       ///< CUDA device ordinal
  int cpu_threads = 0;  ///< CPU worker threads over the batch; 0 = automatic
};

/// Per-problem outcome.
struct AssignmentReport {
  double cost = 0;              ///< sum of C over the matched pairs (fp64 sum of the costs used)
  double dual = 0;              ///< the dual objective sum u + sum v (see the file comment)
  double gap = 0;               ///< cost - dual >= 0 up to round-off: the certified optimality gap
  double max_violation = 0;     ///< max of (u_i + v_j - C_ij)+ over allowed pairs and of the
                                ///< larger side's potentials (when n != m)
  std::int64_t iterations = 0;  ///< augmentations (CPU) or auction rounds (CUDA)
};

struct AssignmentResult {
  Backend backend = Backend::cpu;  ///< the backend that actually ran
  int device = -1;
  std::int64_t batch = 0, n = 0, m = 0;
  std::vector<std::int64_t> row_to_col;  ///< [K, n]; -1 for a row left unmatched (n > m)
  std::vector<std::int64_t> col_to_row;  ///< [K, m]; -1 for a column left unmatched (m > n)
  std::vector<double> u;                 ///< [K, n] row potentials
  std::vector<double> v;                 ///< [K, m] column potentials
  std::vector<AssignmentReport> problems;
  double time_ms = 0;
};

/// Solves the K problems. Throws InvalidArgument/ShapeError/DTypeError/NonFiniteInput
/// on bad input (NaN or -inf costs, empty batch, mismatched shapes), Infeasible when
/// the allowed pairs of a problem admit no matching of min(n, m) pairs, and
/// DeviceUnavailable when backend = cuda cannot run.
AssignmentResult assignment(const AssignmentProblem& problem,
                            const AssignmentOptions& options = {});

/// The same solve on ctx's device and stream (synchronous).
AssignmentResult assignment(GpuContext& ctx, const AssignmentProblem& problem,
                            const AssignmentOptions& options = {});

/// Caller-owned device buffers assignment_async writes (nullptr skips an output).
struct DeviceAssignmentOutputs {
  std::int64_t* row_to_col = nullptr;  ///< [K * n], required
  std::int64_t* col_to_row = nullptr;  ///< [K * m]
  double* cost = nullptr;              ///< [K]
  double* gap = nullptr;               ///< [K]
};

/// Enqueues the solve on ctx's stream and returns at once: every view in device
/// memory, no host synchronization, no allocation once the context's workspace has
/// grown to the size. Shapes are validated on the host; data is not read back, so an
/// infeasible or NaN problem reports gap = +inf (or NaN) instead of throwing.
void assignment_async(GpuContext& ctx, const AssignmentProblem& problem,
                      const AssignmentOptions& options, const DeviceAssignmentOutputs& outputs);

}  // namespace otgpu
