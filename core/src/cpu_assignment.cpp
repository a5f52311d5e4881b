// Dense shortest-augmenting-path assignment in fp64.
//
// Reduced costs are c_ij - v_j; a row's potential u_i is implicit (its smallest reduced
// cost), so dual feasibility u_i + v_j <= c_ij holds by construction and complementary
// slackness means "every matched row sits on a column of least reduced cost".
// Square problems without forbidden pairs start from the Jonker-Volgenant
// initialization, which matches most rows in O(n^2) on random costs:
//   column reduction   v_j = min_i c_ij, each row matched to one column where it is
//                      the minimum;
//   reduction transfer a row matched once moves its slack to its column (v_j drops by
//                      the row's second-smallest reduced cost), so other rows see
//                      that column as dearer;
//   augmenting row reduction (two passes) a free row takes its cheapest column and
//                      lowers that column's v by the gap to its second cheapest,
//                      evicting the owner, who retries at once.
// Every other row is matched by one Dijkstra search over the columns (dense, O(n) per
// scanned row) from the row to the nearest free column, after which the scanned
// columns' v drop by (dist_min - dist_j) <= 0 and the path is flipped. v never rises,
// so when rows < cols the free columns keep v = 0 and every v is <= 0, which is what
// the rectangular dual (columns matched at most once) needs.
#include "cpu_assignment.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <utility>

#include "cpu_cost.h"
#include "cpu_numeric.h"
#include "otgpu/error.h"

namespace otgpu::cpu {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Solver {
  const double* c;
  std::int64_t rows, cols;
  std::vector<std::int64_t>& col4row;
  std::vector<std::int64_t>& row4col;
  std::vector<double>& v;
  std::vector<double> dist;
  std::vector<std::int64_t> pred;
  std::vector<std::int64_t> order;  // column permutation: [0, lo) scanned, [lo, hi) at dmin

  const double* row(std::int64_t i) const { return c + i * cols; }

  /// Column reduction and reduction transfer (square, all finite). Returns the rows
  /// left free.
  std::vector<std::int64_t> init_reductions() {
    const std::int64_t n = rows;
    std::vector<double> colmin(static_cast<std::size_t>(n), kInf);
    std::vector<std::int64_t> argmin(static_cast<std::size_t>(n), 0);
    for (std::int64_t i = 0; i < n; ++i) {  // row sweeps: contiguous reads
      const double* ci = row(i);
      for (std::int64_t j = 0; j < n; ++j) {
        if (ci[j] < colmin[static_cast<std::size_t>(j)]) {
          colmin[static_cast<std::size_t>(j)] = ci[j];
          argmin[static_cast<std::size_t>(j)] = i;
        }
      }
    }
    std::vector<int> matches(static_cast<std::size_t>(n), 0);
    for (std::int64_t j = n - 1; j >= 0; --j) {
      const auto ju = static_cast<std::size_t>(j);
      v[ju] = colmin[ju];
      const std::int64_t i = argmin[ju];
      if (matches[static_cast<std::size_t>(i)]++ == 0) {
        col4row[static_cast<std::size_t>(i)] = j;
        row4col[ju] = i;
      }
    }
    std::vector<std::int64_t> free_rows;
    for (std::int64_t i = 0; i < n; ++i) {
      const auto iu = static_cast<std::size_t>(i);
      if (matches[iu] == 0) {
        free_rows.push_back(i);
      } else if (matches[iu] == 1) {
        const std::int64_t j1 = col4row[iu];
        const double* ci = row(i);
        double mu = kInf;
        for (std::int64_t j = 0; j < n; ++j) {
          if (j != j1) mu = std::min(mu, ci[j] - v[static_cast<std::size_t>(j)]);
        }
        if (std::isfinite(mu)) {
          v[static_cast<std::size_t>(j1)] -= mu - (ci[j1] - v[static_cast<std::size_t>(j1)]);
        }
      }
    }
    return free_rows;
  }

  /// One pass of augmenting row reduction over `free_rows`; returns the rows still
  /// free. A row evicted when its taker lowered a price retries at once (that
  /// strictly lowers a v); after 8 n retries evictions are queued instead.
  std::vector<std::int64_t> augmenting_row_reduction(const std::vector<std::int64_t>& free_rows) {
    std::vector<std::int64_t> next;
    std::int64_t retries = 0;
    const std::int64_t max_retries = 8 * rows;
    for (std::int64_t i : free_rows) {
      while (i >= 0) {
        const double* ci = row(i);
        double u1 = kInf, u2 = kInf;
        std::int64_t j1 = 0, j2 = 0;
        for (std::int64_t j = 0; j < cols; ++j) {
          const double h = ci[j] - v[static_cast<std::size_t>(j)];
          if (h < u2) {
            if (h < u1) {
              u2 = u1;
              j2 = j1;
              u1 = h;
              j1 = j;
            } else {
              u2 = h;
              j2 = j;
            }
          }
        }
        std::int64_t i0 = row4col[static_cast<std::size_t>(j1)];
        const bool strict = u1 < u2;
        if (strict) {
          v[static_cast<std::size_t>(j1)] -= u2 - u1;
        } else if (i0 >= 0) {
          j1 = j2;
          i0 = row4col[static_cast<std::size_t>(j2)];
        }
        if (i0 >= 0) col4row[static_cast<std::size_t>(i0)] = -1;
        col4row[static_cast<std::size_t>(i)] = j1;
        row4col[static_cast<std::size_t>(j1)] = i;
        i = -1;
        if (i0 >= 0) {
          if (strict && retries++ < max_retries) {
            i = i0;
          } else {
            next.push_back(i0);
          }
        }
      }
    }
    return next;
  }

  /// Dijkstra from free row r to the nearest free column; false when none is reachable.
  bool augment(std::int64_t r) {
    const double* cr = row(r);
    for (std::int64_t j = 0; j < cols; ++j) {
      const auto ju = static_cast<std::size_t>(j);
      dist[ju] = cr[j] - v[ju];
      pred[ju] = r;
      order[ju] = j;
    }
    std::int64_t lo = 0, hi = 0, sink = -1;
    double dmin = 0;
    while (sink < 0) {
      if (lo == hi) {
        // Collect the unscanned columns at the smallest distance into [lo, hi).
        dmin = kInf;
        for (std::int64_t k = lo; k < cols; ++k) {
          const std::int64_t j = order[static_cast<std::size_t>(k)];
          const double dj = dist[static_cast<std::size_t>(j)];
          if (dj <= dmin) {
            if (dj < dmin) {
              hi = lo;
              dmin = dj;
            }
            order[static_cast<std::size_t>(k)] = order[static_cast<std::size_t>(hi)];
            order[static_cast<std::size_t>(hi++)] = j;
          }
        }
        if (dmin == kInf) return false;
        for (std::int64_t k = lo; k < hi; ++k) {
          const std::int64_t j = order[static_cast<std::size_t>(k)];
          if (row4col[static_cast<std::size_t>(j)] < 0) {
            sink = j;
            break;
          }
        }
        if (sink >= 0) break;
      }
      // Scan the row matched to the next column at distance dmin.
      const std::int64_t j1 = order[static_cast<std::size_t>(lo++)];
      const std::int64_t i = row4col[static_cast<std::size_t>(j1)];
      const double* ci = row(i);
      const double h = ci[j1] - v[static_cast<std::size_t>(j1)] - dmin;
      for (std::int64_t k = hi; k < cols; ++k) {
        const std::int64_t j = order[static_cast<std::size_t>(k)];
        const auto ju = static_cast<std::size_t>(j);
        const double dd = ci[j] - v[ju] - h;
        if (dd < dist[ju]) {
          dist[ju] = dd;
          pred[ju] = i;
          if (dd == dmin) {
            if (row4col[ju] < 0) {
              sink = j;
              break;
            }
            order[static_cast<std::size_t>(k)] = order[static_cast<std::size_t>(hi)];
            order[static_cast<std::size_t>(hi++)] = j;
          }
        }
      }
    }
    for (std::int64_t k = 0; k < lo; ++k) {
      const auto ju = static_cast<std::size_t>(order[static_cast<std::size_t>(k)]);
      v[ju] += dist[ju] - dmin;
    }
    for (std::int64_t j = sink;;) {
      const std::int64_t i = pred[static_cast<std::size_t>(j)];
      row4col[static_cast<std::size_t>(j)] = i;
      const std::int64_t prev = col4row[static_cast<std::size_t>(i)];
      col4row[static_cast<std::size_t>(i)] = j;
      if (i == r) break;
      j = prev;
    }
    return true;
  }
};

}  // namespace

bool solve_dense_lap(const double* c, std::int64_t rows, std::int64_t cols, LapSolution& out,
                     std::string& why, bool transposed) {
  const auto R = static_cast<std::size_t>(rows);
  const auto Cn = static_cast<std::size_t>(cols);
  out.col4row.assign(R, -1);
  out.row4col.assign(Cn, -1);
  out.v.assign(Cn, 0.0);
  out.u.assign(R, 0.0);
  out.augmentations = 0;
  // A row with no allowed column (and, when square, such a column) is the common
  // infeasible case: name it.
  bool all_finite = true;
  for (std::int64_t i = 0; i < rows; ++i) {
    bool any = false;
    const double* ci = c + i * cols;
    for (std::int64_t j = 0; j < cols; ++j) {
      const bool ok = ci[j] < kInf;
      any = any || ok;
      all_finite = all_finite && ok;
    }
    if (!any) {
      why = fmt::format(
          "{} {} of the {} problem has no allowed pair", transposed ? "column" : "row", i,
          transposed ? fmt::format("{} x {}", cols, rows) : fmt::format("{} x {}", rows, cols));
      return false;
    }
  }
  Solver s{c,
           rows,
           cols,
           out.col4row,
           out.row4col,
           out.v,
           std::vector<double>(Cn),
           std::vector<std::int64_t>(Cn),
           std::vector<std::int64_t>(Cn)};
  std::vector<std::int64_t> free_rows;
  if (rows == cols && all_finite) {
    free_rows = s.init_reductions();
    for (int pass = 0; pass < 2 && !free_rows.empty(); ++pass) {
      free_rows = s.augmenting_row_reduction(free_rows);
    }
  } else {
    free_rows.resize(R);
    for (std::int64_t i = 0; i < rows; ++i) free_rows[static_cast<std::size_t>(i)] = i;
  }
  for (std::int64_t r : free_rows) {
    if (!s.augment(r)) {
      const char* what = transposed ? "column" : "row";
      why = fmt::format(
          "the allowed pairs admit no matching of all {} {}s of the {} problem ({} {} cannot be "
          "added; Hall's condition fails)",
          rows, what,
          transposed ? fmt::format("{} x {}", cols, rows) : fmt::format("{} x {}", rows, cols),
          what, r);
      return false;
    }
    ++out.augmentations;
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    const auto j = static_cast<std::size_t>(out.col4row[static_cast<std::size_t>(i)]);
    out.u[static_cast<std::size_t>(i)] = c[i * cols + static_cast<std::int64_t>(j)] - out.v[j];
  }
  return true;
}

AssignmentReport certify_assignment(const double* c, std::int64_t n, std::int64_t m,
                                    const std::int64_t* row_to_col, const double* u,
                                    const double* v, const CostCheck* check) {
  AssignmentReport rep;
  CompensatedSum cost, dual;
  double viol = 0;
  // With a Gram-form c, a pair whose slack there exceeds delta has a positive slack
  // in the direct form too; the others (the matched pairs, near-ties) are re-evaluated.
  const bool recheck = check != nullptr && check->gram;
  const double delta = recheck ? check->delta : 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double* ci = c + i * m;
    const double ui = u[i];
    for (std::int64_t j = 0; j < m; ++j) {
      if (!(ci[j] < kInf)) continue;
      double e = ui + v[j] - ci[j];
      if (recheck && e >= -delta) e = ui + v[j] - pair_cost(check->points, i, j);
      viol = std::max(viol, e);
    }
    if (row_to_col[i] >= 0) {
      cost.add(recheck ? pair_cost(check->points, i, row_to_col[i]) : ci[row_to_col[i]]);
    }
    dual.add(ui);
  }
  for (std::int64_t j = 0; j < m; ++j) dual.add(v[j]);
  // The larger side is matched at most once: its potentials must be <= 0.
  if (n < m) {
    for (std::int64_t j = 0; j < m; ++j) viol = std::max(viol, v[j]);
  } else if (n > m) {
    for (std::int64_t i = 0; i < n; ++i) viol = std::max(viol, u[i]);
  }
  rep.cost = cost.value();
  rep.dual = dual.value();
  rep.gap = rep.cost - rep.dual;
  rep.max_violation = viol;
  return rep;
}

void dense_cost(const AssignmentProblem& p, const detail::AssignmentShape& s, std::int64_t b,
                double* out, CostCheck* check) {
  const std::int64_t n = s.n, m = s.m, d = s.d;
  if (check != nullptr) {
    check->gram = false;
    check->delta = 0;
  }
  if (p.cost_kind == CostKind::matrix) {
    stage_rows(p.cost, s.batched, b, n, m, out);
    return;
  }
  // Points: staged contiguous in fp64, then the direct form (small d) or the Gram form
  // (large d, cpu_cost.h), whose pairs near the optimum the solve re-evaluates by
  // direct differences (solve_problem with the CostCheck).
  CostCheck local;
  CostCheck& ck = check != nullptr ? *check : local;
  StagedPoints& pts = ck.points;
  pts.n = n;
  pts.m = m;
  pts.d = d;
  pts.kind = p.cost_kind;
  pts.x.resize(static_cast<std::size_t>(n * d));
  pts.y.resize(static_cast<std::size_t>(m * d));
  stage_rows(p.x, s.batched, b, n, d, pts.x.data());
  stage_rows(p.y, s.batched, b, m, d, pts.y.data());
  const int threads = omp_in_parallel() ? 1 : threads_for_work(resolve_threads(0), n * m * d);
  if (choose_cost_form(p.cost_kind, d) == CostForm::gram) {
    ck.gram = true;
    ck.delta = cost_gram(pts, out, threads);
  } else {
    cost_direct(pts, out, threads);
  }
}

bool solve_problem(const double* c, std::int64_t n, std::int64_t m, std::int64_t* row_to_col,
                   std::int64_t* col_to_row, double* u, double* v, AssignmentReport& report,
                   std::string& why, const CostCheck* check) {
  const bool transpose = n > m;
  std::vector<double> ct;
  const double* solve_on = c;
  if (transpose) {
    ct.resize(static_cast<std::size_t>(n * m));
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < m; ++j) {
        ct[static_cast<std::size_t>(j * n + i)] = c[i * m + j];
      }
    }
    solve_on = ct.data();
  }
  LapSolution sol;
  if (!solve_dense_lap(solve_on, transpose ? m : n, transpose ? n : m, sol, why, transpose))
    return false;
  if (transpose) {
    std::copy(sol.col4row.begin(), sol.col4row.end(), col_to_row);
    std::copy(sol.row4col.begin(), sol.row4col.end(), row_to_col);
    std::copy(sol.u.begin(), sol.u.end(), v);
    std::copy(sol.v.begin(), sol.v.end(), u);
  } else {
    std::copy(sol.col4row.begin(), sol.col4row.end(), row_to_col);
    std::copy(sol.row4col.begin(), sol.row4col.end(), col_to_row);
    std::copy(sol.u.begin(), sol.u.end(), u);
    std::copy(sol.v.begin(), sol.v.end(), v);
  }
  if (check != nullptr && check->gram) {
    // The smaller side's potentials from the direct cost of its matched pair, so that
    // complementary slackness holds for the direct form the cost is reported in.
    if (n <= m) {
      for (std::int64_t i = 0; i < n; ++i) {
        u[i] = pair_cost(check->points, i, row_to_col[i]) - v[row_to_col[i]];
      }
    } else {
      for (std::int64_t j = 0; j < m; ++j) {
        v[j] = pair_cost(check->points, col_to_row[j], j) - u[col_to_row[j]];
      }
    }
  }
  report = certify_assignment(c, n, m, row_to_col, u, v, check);
  report.iterations = sol.augmentations;
  return true;
}

AssignmentResult assignment(const AssignmentProblem& problem, const AssignmentOptions& options,
                            const detail::AssignmentShape& shape) {
  const std::int64_t K = shape.batch, n = shape.n, m = shape.m;
  AssignmentResult r;
  r.backend = Backend::cpu;
  r.batch = K;
  r.n = n;
  r.m = m;
  r.row_to_col.assign(static_cast<std::size_t>(K * n), -1);
  r.col_to_row.assign(static_cast<std::size_t>(K * m), -1);
  r.u.assign(static_cast<std::size_t>(K * n), 0.0);
  r.v.assign(static_cast<std::size_t>(K * m), 0.0);
  r.problems.resize(static_cast<std::size_t>(K));

  const int threads =
      K == 1 ? 1 : std::min<int>(resolve_threads(options.cpu_threads), static_cast<int>(K));
  std::vector<std::string> failure(static_cast<std::size_t>(K));
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> c(static_cast<std::size_t>(n * m));
    CostCheck check;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t b = 0; b < K; ++b) {
      try {
        dense_cost(problem, shape, b, c.data(), &check);
        solve_problem(c.data(), n, m, r.row_to_col.data() + b * n, r.col_to_row.data() + b * m,
                      r.u.data() + b * n, r.v.data() + b * m,
                      r.problems[static_cast<std::size_t>(b)], failure[static_cast<std::size_t>(b)],
                      &check);
      } catch (...) {
#pragma omp critical(otgpu_assignment_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  for (std::int64_t b = 0; b < K; ++b) {
    const auto& why = failure[static_cast<std::size_t>(b)];
    if (!why.empty()) throw_infeasible(b, why);
  }
  return r;
}

void throw_infeasible(std::int64_t problem, const std::string& why) {
  throw Infeasible(fmt::format("cost: problem {} is infeasible: {}", problem, why));
}

}  // namespace otgpu::cpu
