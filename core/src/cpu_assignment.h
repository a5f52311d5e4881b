// The CPU reference of exact assignment: a dense fp64 shortest-augmenting-path solver
// (Jonker-Volgenant initialization, then Dijkstra-like augmentations), batched over
// the problems with OpenMP. The oracle of the CUDA path. Internal (not installed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "assignment_validate.h"
#include "cpu_cost.h"
#include "otgpu/assignment.h"

namespace otgpu::cpu {

/// One solved dense problem with rows <= cols.
struct LapSolution {
  std::vector<std::int64_t> col4row;  ///< [rows]
  std::vector<std::int64_t> row4col;  ///< [cols]; -1 for a free column
  std::vector<double> u;              ///< [rows]
  std::vector<double> v;              ///< [cols]; <= 0, and 0 on free columns when rows < cols
  std::int64_t augmentations = 0;
};

/// Solves min sum_i c[i, s(i)] over injective s for a dense row-major rows x cols fp64
/// matrix c (rows <= cols, +inf = forbidden). Returns false when no matching of all
/// rows exists among the allowed pairs (then `why` says what was found).
bool solve_dense_lap(const double* c, std::int64_t rows, std::int64_t cols, LapSolution& out,
                     std::string& why);

/// What dense_cost leaves for the certificate of a point problem: the staged points
/// and, when the cost came from the Gram form, delta, the bound on its distance from
/// the direct form (cpu_cost.h). A cost matrix leaves gram = false.
struct CostCheck {
  StagedPoints points;
  bool gram = false;
  double delta = 0;
};

/// cost, dual, gap and max_violation of a matching of the dense n x m matrix c
/// (row-major, any orientation: min(n, m) pairs matched, -1 = unmatched) with
/// potentials u [n], v [m]. The potentials of the larger side must be <= 0 (the dual
/// of "matched at most once"); a positive one counts as a violation.
AssignmentReport certify_assignment(const double* c, std::int64_t n, std::int64_t m,
                                    const std::int64_t* row_to_col, const double* u,
                                    const double* v);

/// Dense fp64 cost of problem b ([n, m] row-major) from the (validated, host) problem:
/// a cost matrix as given, point costs by the form choose_cost_form picks. `check`
/// (optional) receives what solve_problem needs to certify a Gram-form cost.
void dense_cost(const AssignmentProblem& problem, const detail::AssignmentShape& shape,
                std::int64_t b, double* out, CostCheck* check = nullptr);

/// Solves one dense problem c [n, m] (row-major fp64, any n, m; transposed internally
/// when n > m) into the caller's arrays (row_to_col [n], col_to_row [m], u [n], v [m])
/// and certifies it. Returns false with `why` when it is infeasible. With a Gram-form
/// `check`, the smaller side's potentials are reset from the direct cost of each
/// matched pair and the report is that of the direct form (certify_assignment).
bool solve_problem(const double* c, std::int64_t n, std::int64_t m, std::int64_t* row_to_col,
                   std::int64_t* col_to_row, double* u, double* v, AssignmentReport& report,
                   std::string& why, const CostCheck* check = nullptr);

/// Throws Infeasible "cost: problem <index> is infeasible: <why>".
[[noreturn]] void throw_infeasible(std::int64_t problem, const std::string& why);

/// Solves every problem of the batch; throws Infeasible naming the first infeasible
/// problem.
AssignmentResult assignment(const AssignmentProblem& problem, const AssignmentOptions& options,
                            const detail::AssignmentShape& shape);

}  // namespace otgpu::cpu
