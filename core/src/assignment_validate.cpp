// Validation of exact assignment problems: everything a solver relies on is checked
// here once, so the CPU and CUDA solvers can assume a sane batch.
#include "assignment_validate.h"

#include <fmt/format.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "cpu_numeric.h"
#include "otgpu/error.h"

namespace otgpu::detail {

namespace {

/// TensorView::describe, also for an empty view (shape known, no data).
std::string describe(const TensorView& v) {
  if (v.present()) return v.describe();
  std::string s = "[";
  for (int k = 0; k < v.rank; ++k) s += (k ? ", " : "") + std::to_string(v.dim(k));
  return s + "] (empty)";
}

void check_view(const TensorView& v, const char* name, const char* expect) {
  if (v.rank != 2 && v.rank != 3) {
    throw ShapeError(fmt::format("{}: expected {}, got {}", name, expect, describe(v)));
  }
  if (v.dtype != DType::f32 && v.dtype != DType::f64) {
    throw DTypeError(fmt::format("{}: unsupported dtype code {} (float32 or float64 expected)",
                                 name, static_cast<int>(v.dtype)));
  }
  if (v.space != MemorySpace::host && v.space != MemorySpace::device) {
    throw InvalidArgument(
        fmt::format("{}: unknown memory space code {}", name, static_cast<int>(v.space)));
  }
  if (v.rank == 3 && v.dim(0) == 0) {
    throw ShapeError(fmt::format("{}: the batch is empty (K = 0 in {}); give at least one problem",
                                 name, describe(v)));
  }
  for (int k = 0; k < v.rank; ++k) {
    if (v.dim(k) <= 0) {
      throw ShapeError(fmt::format("{}: size {} in dimension {} of {} (sizes must be > 0)", name,
                                   v.dim(k), k, describe(v)));
    }
    if (v.stride(k) < 0) {
      throw ShapeError(fmt::format("{}: stride {} in dimension {} of {} is negative", name,
                                   v.stride(k), k, describe(v)));
    }
  }
}

std::string where(bool batched, std::int64_t b, std::int64_t i, std::int64_t j) {
  return batched ? fmt::format("[{}, {}, {}]", b, i, j) : fmt::format("[{}, {}]", i, j);
}

/// Element offset of row (b, i) of a [K, rows, cols] (batched) or [rows, cols] view.
std::int64_t row_offset(const TensorView& v, bool batched, std::int64_t b, std::int64_t i) {
  return batched ? b * v.stride(0) + i * v.stride(1) : i * v.stride(0);
}

/// True when no element of the run p[0..len) is NaN or -inf: one branch-free pass the
/// compiler vectorizes (the costs of a large problem are read once here).
template <class T>
bool no_nan_or_neg_inf(const T* p, std::int64_t len) {
  // A flag as wide as T keeps the compare and the reduction in the same lanes (an int
  // flag on doubles is not vectorized).
  using Flag = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  Flag bad = 0;
#pragma omp simd reduction(| : bad)
  for (std::int64_t j = 0; j < len; ++j) bad |= static_cast<Flag>(!(p[j] > -INFINITY));
  return bad == 0;
}

/// Sum of squares of the run p[0..len) into sq; true when every element is finite:
/// x * 0 is 0 for finite x and NaN for NaN and +-inf, so the sum of those is 0 exactly
/// when all are finite. Vectorized, so sq's rounding order is the compiler's; it only
/// feeds the overflow bound below.
template <class T>
bool finite_sum_sq(const T* p, std::int64_t len, double& sq) {
  double s = 0, z = 0;
#pragma omp simd reduction(+ : s, z)
  for (std::int64_t k = 0; k < len; ++k) {
    const double e = static_cast<double>(p[k]);
    z += e * 0.0;
    s += e * e;
  }
  sq = s;
  return z == 0;
}

/// Runs `fn(pointer, len)` on row (b, i) when its last dimension is contiguous (f32 or
/// f64), returning its result; `fallback()` otherwise.
template <class Fn, class Fallback>
bool on_row(const TensorView& v, bool batched, std::int64_t b, std::int64_t i, std::int64_t len,
            Fn&& fn, Fallback&& fallback) {
  if (v.stride(v.rank - 1) != 1) return fallback();
  const std::int64_t off = row_offset(v, batched, b, i);
  if (v.dtype == DType::f64) return fn(static_cast<const double*>(v.data) + off, len);
  return fn(static_cast<const float*>(v.data) + off, len);
}

/// Cost entries: finite or +inf (a forbidden pair); NaN and -inf are errors. Each row
/// is scanned by one vectorized pass; the element-wise loop only runs to name the
/// offending element of a row that failed it.
void check_cost_values(const TensorView& c, const AssignmentShape& s) {
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t i = 0; i < s.n; ++i) {
      const bool clean = on_row(
          c, s.batched, b, i, s.m,
          [](const auto* p, std::int64_t len) { return no_nan_or_neg_inf(p, len); },
          [] { return false; });
      if (clean) continue;
      for (std::int64_t j = 0; j < s.m; ++j) {
        const double x = cpu::load_problem_element(c, s.batched, b, i, j);
        if (std::isnan(x) || x == -INFINITY) {
          throw NonFiniteInput(fmt::format(
              "cost: element {} is {} (costs must be finite, or +inf for a forbidden pair)",
              where(s.batched, b, i, j), x));
        }
      }
    }
  }
}

/// Points finite, and the largest |C_ij| they can produce finite in fp64: with
/// R = max |x_i| + max |y_j|, |x - y| <= R and |<x, y>| <= R^2 / 4 <= R^2.
void check_point_values(const AssignmentProblem& p, const AssignmentShape& s) {
  for (std::int64_t b = 0; b < s.batch; ++b) {
    double rx = 0, ry = 0;
    const std::pair<const TensorView*, const char*> views[] = {{&p.x, "x"}, {&p.y, "y"}};
    for (const auto& [v, name] : views) {
      const std::int64_t rows = v == &p.x ? s.n : s.m;
      double& r = v == &p.x ? rx : ry;
      for (std::int64_t i = 0; i < rows; ++i) {
        double sq = 0;
        const bool clean = on_row(
            *v, s.batched, b, i, s.d,
            [&sq](const auto* row, std::int64_t len) { return finite_sum_sq(row, len, sq); },
            [] { return false; });
        if (clean) {
          r = std::fmax(r, std::sqrt(sq));
          continue;
        }
        sq = 0;
        for (std::int64_t k = 0; k < s.d; ++k) {
          const double e = cpu::load_problem_element(*v, s.batched, b, i, k);
          if (!std::isfinite(e)) {
            throw NonFiniteInput(
                fmt::format("{}: element {} is {}", name, where(s.batched, b, i, k), e));
          }
          sq += e * e;
        }
        r = std::fmax(r, std::sqrt(sq));
      }
    }
    const double bound = (rx + ry) * (rx + ry);
    if (!std::isfinite(bound)) {
      throw NonFiniteInput(fmt::format(
          "x, y: the costs of problem {} may overflow float64 (max |x_i| = {}, max |y_j| = {}); "
          "rescale the points, e.g. divide them by a common length",
          b, rx, ry));
    }
  }
}

/// A view with a shape but no data is an empty array (a .npy of size 0): given, and
/// rejected by check_view with its shape, not reported as missing.
bool given(const TensorView& v) { return v.present() || v.rank > 0; }

}  // namespace

AssignmentShape validate_assignment(const AssignmentProblem& problem,
                                    const AssignmentOptions& options) {
  AssignmentShape s;
  const CostKind kind = problem.cost_kind;
  if (kind != CostKind::matrix && kind != CostKind::sqeuclidean && kind != CostKind::euclidean &&
      kind != CostKind::neg_dot) {
    throw InvalidArgument(
        fmt::format("cost_kind: unknown value {} (matrix, sqeuclidean, euclidean or neg_dot)",
                    static_cast<int>(kind)));
  }
  const TensorView* first = nullptr;
  if (kind == CostKind::matrix) {
    if (!given(problem.cost)) {
      throw InvalidArgument("cost: required when cost_kind is matrix (got no cost view)");
    }
    if (given(problem.x) || given(problem.y)) {
      throw InvalidArgument(fmt::format(
          "{}: must be absent when cost_kind is matrix (the cost matrix is given), got {}",
          given(problem.x) ? "x" : "y",
          given(problem.x) ? problem.x.describe() : problem.y.describe()));
    }
    const TensorView& c = problem.cost;
    check_view(c, "cost", "[n, m] or [K, n, m]");
    s.batched = c.rank == 3;
    s.batch = s.batched ? c.dim(0) : 1;
    s.n = c.dim(c.rank - 2);
    s.m = c.dim(c.rank - 1);
    first = &c;
  } else {
    const std::string_view kind_name = to_string(kind);
    if (given(problem.cost)) {
      throw InvalidArgument(
          fmt::format("cost: must be absent for cost_kind {} (it is computed from x and y), got {}",
                      kind_name, problem.cost.describe()));
    }
    if (!given(problem.x) || !given(problem.y)) {
      throw InvalidArgument(
          fmt::format("{}: required for cost_kind {}", given(problem.x) ? "y" : "x", kind_name));
    }
    const TensorView& x = problem.x;
    const TensorView& y = problem.y;
    check_view(x, "x", "[n, d] or [K, n, d]");
    check_view(y, "y", "[m, d] or [K, m, d]");
    if (y.rank != x.rank) {
      throw ShapeError(fmt::format("y: rank {} ({}) does not match x {} (same rank expected)",
                                   y.rank, y.describe(), x.describe()));
    }
    s.batched = x.rank == 3;
    if (s.batched && y.dim(0) != x.dim(0)) {
      throw ShapeError(fmt::format("y: batch size K = {} does not match x's K = {} ({} vs {})",
                                   y.dim(0), x.dim(0), y.describe(), x.describe()));
    }
    if (y.dim(y.rank - 1) != x.dim(x.rank - 1)) {
      throw ShapeError(fmt::format("y: dimension d = {} does not match x's d = {} ({} vs {})",
                                   y.dim(y.rank - 1), x.dim(x.rank - 1), y.describe(),
                                   x.describe()));
    }
    s.batch = s.batched ? x.dim(0) : 1;
    s.n = x.dim(x.rank - 2);
    s.m = y.dim(y.rank - 2);
    s.d = x.dim(x.rank - 1);
    first = &x;
    if (y.space != x.space) {
      throw InvalidArgument(fmt::format(
          "y: is in {} memory but x is in {} memory (all tensors must be in one memory space)",
          y.space == MemorySpace::host ? "host" : "device",
          x.space == MemorySpace::host ? "host" : "device"));
    }
  }
  s.space = first->space;
  if (options.cpu_threads < 0) {
    throw InvalidArgument(
        fmt::format("cpu_threads: must be >= 0 (0 = automatic), got {}", options.cpu_threads));
  }
  if (options.device < 0) {
    throw InvalidArgument(fmt::format("device: must be >= 0, got {}", options.device));
  }
  if (options.backend != Backend::automatic && options.backend != Backend::cpu &&
      options.backend != Backend::cuda) {
    throw InvalidArgument(
        fmt::format("backend: unknown value {}", static_cast<int>(options.backend)));
  }
  if (s.space == MemorySpace::host) {
    if (kind == CostKind::matrix) {
      check_cost_values(problem.cost, s);
    } else {
      check_point_values(problem, s);
    }
  }
  return s;
}

}  // namespace otgpu::detail
