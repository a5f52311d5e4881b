#include "cpu_problem.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "cpu_exp.h"
#include "cpu_numeric.h"
#include "otgpu/detail/math.h"

namespace otgpu::cpu {

int idle_hardware_threads() noexcept {
  const int hw = std::max(1, omp_get_max_threads());
  if (hw == 1) return 1;
  std::FILE* file = std::fopen("/proc/loadavg", "r");
  if (file == nullptr) return hw;
  double l1 = 0, l5 = 0, l15 = 0;
  long running = 0, total = 0;
  const int got = std::fscanf(file, "%lf %lf %lf %ld/%ld", &l1, &l5, &l15, &running, &total);
  std::fclose(file);
  if (got != 5 || running < 1) return hw;
  // `running` counts the calling thread itself.
  const long others = running - 1;
  return static_cast<int>(std::clamp<long>(hw - others, 1, hw));
}

int resolve_threads(int requested) noexcept {
  return requested > 0 ? requested : idle_hardware_threads();
}

namespace {

double point_cost(CostKind kind, const double* x, const double* y, std::int64_t d) noexcept {
  const double sq = detail::sqdist<double>(x, y, d);
  return kind == CostKind::euclidean ? std::sqrt(sq) : sq;
}

void load_weights(const TensorView& v, bool batched, std::int64_t index, std::int64_t len,
                  std::vector<double>& w, double& mass) {
  w.resize(static_cast<std::size_t>(len));
  CompensatedSum sum;
  for (std::int64_t i = 0; i < len; ++i) {
    const double x =
        v.present() ? load_problem_element(v, batched, index, i) : 1.0 / static_cast<double>(len);
    w[static_cast<std::size_t>(i)] = x;
    sum.add(x);
  }
  mass = sum.value();
}

std::vector<double> log_of(const std::vector<double>& w) {
  std::vector<double> out(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) {
    out[i] = w[i] > 0 ? std::log(w[i]) : -std::numeric_limits<double>::infinity();
  }
  return out;
}

}  // namespace

double ProblemData::cost_at(std::int64_t i, std::int64_t j) const noexcept {
  if (dense()) return cost[static_cast<std::size_t>(i * m + j)];
  if (kind == CostKind::matrix) return load_problem_element(*cost_view, cost_batched, index, i, j);
  return point_cost(kind, x.data() + i * d, y.data() + j * d, d);
}

const double* ProblemData::cost_row(std::int64_t i, double* scratch) const noexcept {
  if (dense()) return cost.data() + i * m;
  for (std::int64_t j = 0; j < m; ++j) scratch[j] = cost_at(i, j);
  return scratch;
}

const double* ProblemData::cost_col(std::int64_t j, double* scratch) const noexcept {
  if (dense()) return cost_t.data() + j * n;
  for (std::int64_t i = 0; i < n; ++i) scratch[i] = cost_at(i, j);
  return scratch;
}

double ProblemData::mean_cost() const {
  if (kind == CostKind::sqeuclidean) {
    // mean_ij |x_i - y_j|^2 = var(x) + var(y) + |mean x - mean y|^2, exactly; the
    // centred form avoids the cancellation of mean|x|^2 + mean|y|^2 - 2<mean x, mean y>.
    double total = 0.0;
    for (std::int64_t k = 0; k < d; ++k) {
      CompensatedSum sx, sy;
      for (std::int64_t i = 0; i < n; ++i) sx.add(x[static_cast<std::size_t>(i * d + k)]);
      for (std::int64_t j = 0; j < m; ++j) sy.add(y[static_cast<std::size_t>(j * d + k)]);
      const double mx = sx.value() / static_cast<double>(n);
      const double my = sy.value() / static_cast<double>(m);
      CompensatedSum vx, vy;
      for (std::int64_t i = 0; i < n; ++i) {
        const double t = x[static_cast<std::size_t>(i * d + k)] - mx;
        vx.add(t * t);
      }
      for (std::int64_t j = 0; j < m; ++j) {
        const double t = y[static_cast<std::size_t>(j * d + k)] - my;
        vy.add(t * t);
      }
      total += vx.value() / static_cast<double>(n) + vy.value() / static_cast<double>(m) +
               (mx - my) * (mx - my);
    }
    return std::max(total, 0.0);
  }
  std::vector<double> scratch(dense() ? 0 : static_cast<std::size_t>(m));
  CompensatedSum total;
  for (std::int64_t i = 0; i < n; ++i) {
    const double* row = cost_row(i, scratch.data());
    CompensatedSum rs;
    for (std::int64_t j = 0; j < m; ++j) rs.add(row[j]);
    total.add(rs.value());
  }
  return total.value() / (static_cast<double>(n) * static_cast<double>(m));
}

CostRange ProblemData::cost_range() const {
  std::vector<double> scratch(dense() ? 0 : static_cast<std::size_t>(m));
  CostRange r{std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity()};
  for (std::int64_t i = 0; i < n; ++i) {
    const double* row = cost_row(i, scratch.data());
    for (std::int64_t j = 0; j < m; ++j) {
      r.min = std::min(r.min, row[j]);
      r.max = std::max(r.max, row[j]);
    }
  }
  return r;
}

void rescale_b_to_mass_of_a(ProblemData& p) {
  if (p.mass_b == p.mass_a) return;
  const double scale = p.mass_a / p.mass_b;
  for (double& w : p.b) w *= scale;
  p.log_b = log_of(p.b);
  p.mass_b = p.mass_a;
}

ProblemData load_problem(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                         std::int64_t index, bool balanced, std::int64_t dense_limit_bytes,
                         int threads) {
  ProblemData p;
  p.index = index;
  p.n = shape.n;
  p.m = shape.m;
  p.d = shape.d;
  p.kind = problem.cost_kind;
  if (p.kind == CostKind::matrix) {
    p.cost_view = &problem.cost;
    p.cost_batched = problem.cost.rank == 3;
  } else {
    const bool batched = problem.x.rank == 3;
    auto gather = [&](const TensorView& v, std::int64_t rows, std::vector<double>& out) {
      out.resize(static_cast<std::size_t>(rows * p.d));
      for (std::int64_t i = 0; i < rows; ++i) {
        for (std::int64_t k = 0; k < p.d; ++k) {
          out[static_cast<std::size_t>(i * p.d + k)] =
              load_problem_element(v, batched, index, i, k);
        }
      }
    };
    gather(problem.x, p.n, p.x);
    gather(problem.y, p.m, p.y);
  }
  load_weights(problem.a, shape.a_batched, index, p.n, p.a, p.mass_a);
  load_weights(problem.b, shape.b_batched, index, p.m, p.b, p.mass_b);
  p.log_a = log_of(p.a);
  p.log_b = log_of(p.b);
  if (balanced) rescale_b_to_mass_of_a(p);

  const double bytes = 16.0 * static_cast<double>(p.n) * static_cast<double>(p.m);
  if (bytes <= static_cast<double>(dense_limit_bytes)) {
    const std::int64_t n = p.n, m = p.m;
    threads = threads_for_work(threads, n * m);
    std::vector<double> c(static_cast<std::size_t>(n * m));
    std::vector<double> ct(static_cast<std::size_t>(n * m));
    // cost_at reads the user's matrix or the points while `cost` is still empty.
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < m; ++j) c[static_cast<std::size_t>(i * m + j)] = p.cost_at(i, j);
    }
    // Blocked transpose: both matrices are walked in cache-sized tiles.
    constexpr std::int64_t kTile = 64;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (std::int64_t j0 = 0; j0 < m; j0 += kTile) {
      for (std::int64_t i0 = 0; i0 < n; i0 += kTile) {
        const std::int64_t j1 = std::min(m, j0 + kTile), i1 = std::min(n, i0 + kTile);
        for (std::int64_t j = j0; j < j1; ++j) {
          for (std::int64_t i = i0; i < i1; ++i) {
            ct[static_cast<std::size_t>(j * n + i)] = c[static_cast<std::size_t>(i * m + j)];
          }
        }
      }
    }
    p.cost = std::move(c);
    p.cost_t = std::move(ct);
  }
  return p;
}

RowLse row_lse(const double* c, const double* log_w, const double* pot, std::int64_t len,
               double inv_eps, double* s, bool with_cost) noexcept {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  bool nan = false;
  const double mx = lse_scores(c, log_w, pot, len, inv_eps, s, nan);
  RowLse r{mx, 0.0, 0.0};
  if (nan || mx == kNegInf || !std::isfinite(mx)) {
    // No finite term (or a NaN): let the caller see a non-finite LSE and stop.
    r.sum = nan || mx != kNegInf ? std::numeric_limits<double>::quiet_NaN() : 0.0;
    return r;
  }
  // Terms below exp(-60) ~ 1e-26 of the largest (which contributes 1 to the sum)
  // cannot move the double sum unless there are ~1e10 of them: they are dropped. The
  // sums use the library's vectorized exp (cpu_exp.h) in a fixed order of 8 partial
  // sums, so they are the same bits on every x86-64 build and thread count.
  constexpr double kNegligible = -60.0;
  const ExpSums e = exp_sums(s, with_cost ? c : nullptr, len, mx, kNegligible);
  const double sum = e.sum, wc = e.weighted;
  r.sum = sum;
  r.weighted_cost = wc;
  return r;
}

}  // namespace otgpu::cpu
