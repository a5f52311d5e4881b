#include "cpu_sliced.h"
#include "cpu_numeric.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <numeric>

#include "otgpu/detail/quantile_merge.h"

namespace otgpu::cpu {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

/// One projected measure sorted by value (ties by index, as a stable GPU radix sort
/// orders them), with its normalized cumulative weights.
struct Sorted1D {
  std::vector<double> val;
  std::vector<std::int64_t> idx;
  std::vector<double> prefix;  ///< prefix sums of the weights in sorted order
  bool uniform = true;

  void build(const double* u, std::int64_t n, const TensorView& w, std::int64_t b, bool batched) {
    idx.resize(static_cast<std::size_t>(n));
    std::iota(idx.begin(), idx.end(), std::int64_t{0});
    std::sort(idx.begin(), idx.end(), [u](std::int64_t p, std::int64_t q) {
      return u[p] < u[q] || (u[p] == u[q] && p < q);
    });
    val.resize(static_cast<std::size_t>(n));
    for (std::size_t r = 0; r < val.size(); ++r) val[r] = u[idx[r]];
    uniform = !w.present();
    if (!uniform) {
      prefix.resize(static_cast<std::size_t>(n));
      double acc = 0;
      for (std::size_t r = 0; r < prefix.size(); ++r) {
        acc += batched ? load_as_double(w, b, idx[r]) : load_as_double(w, idx[r]);
        prefix[r] = acc;
      }
    }
  }
};

/// Walks the whole merge of two sorted measures; visit(i, j, diff, mass) gets the
/// caller's indices.
template <class Visit>
void merge_sorted(const Sorted1D& A, const Sorted1D& B, Visit&& visit) {
  const auto n = static_cast<std::int64_t>(A.val.size());
  const auto m = static_cast<std::int64_t>(B.val.size());
  auto run = [&](const auto& ca, const auto& cb) {
    detail::quantile_merge_walk(ca, n, cb, m, 0, 0, n + m - 1,
                                [&](std::int64_t i, std::int64_t j, double mass) {
                                  const auto si = static_cast<std::size_t>(i);
                                  const auto sj = static_cast<std::size_t>(j);
                                  visit(A.idx[si], B.idx[sj], A.val[si] - B.val[sj], mass);
                                });
  };
  const detail::UniformCumulative ua{n}, ub{m};
  const detail::PrefixCumulative pa{A.prefix.data(), A.uniform ? 1.0 : A.prefix.back()};
  const detail::PrefixCumulative pb{B.prefix.data(), B.uniform ? 1.0 : B.prefix.back()};
  if (A.uniform && B.uniform) {
    run(ua, ub);
  } else if (A.uniform) {
    run(ua, pb);
  } else if (B.uniform) {
    run(pa, ub);
  } else {
    run(pa, pb);
  }
}

/// P[b][i][l] = <pts_b,i , theta_l>, fp64, [B, n, L].
std::vector<double> project(const TensorView& pts, std::int64_t B, std::int64_t n, std::int64_t d,
                            std::int64_t L, const std::vector<double>& theta, int threads) {
  std::vector<double> out(static_cast<std::size_t>(B * n * L), 0.0);
  const bool batched = pts.rank == 3;
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> row(static_cast<std::size_t>(d));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < B * n; ++r) {
      const std::int64_t b = r / n, i = r % n;
      for (std::int64_t k = 0; k < d; ++k) {
        row[static_cast<std::size_t>(k)] =
            batched ? load_as_double(pts, b, i, k) : load_as_double(pts, i, k);
      }
      double* o = out.data() + r * L;
      // k outer, l inner: both theta's row and the output row are contiguous.
      for (std::int64_t k = 0; k < d; ++k) {
        const double xk = row[static_cast<std::size_t>(k)];
        const double* t = theta.data() + k * L;
        for (std::int64_t l = 0; l < L; ++l) o[l] += xk * t[l];
      }
    }
  }
  return out;
}

}  // namespace

SlicedResult sliced_wasserstein(const SlicedProblem& problem, const SlicedOptions& options,
                                const detail::SlicedShape& shape) {
  const std::int64_t B = shape.batch, n = shape.n, m = shape.m, d = shape.d, L = shape.projections;
  const double p = options.p;
  // Automatic: the idle cores, and one thread for a call too small to repay waking a
  // team (a 64-point 1-D problem took 27 ms with a team on a loaded machine, 5 us without).
  const int threads =
      options.cpu_threads > 0
          ? options.cpu_threads
          : threads_for_work(resolve_threads(0), B * L * (n + m) * std::max<std::int64_t>(d, 8));

  SlicedResult r;
  r.backend = Backend::cpu;
  r.batch = B;
  r.n = n;
  r.m = m;
  r.d = d;
  r.projections = L;

  auto t0 = Clock::now();
  const std::vector<double> theta = detail::host_directions(options, shape);
  r.timings.directions_ms = ms_since(t0);

  t0 = Clock::now();
  const std::vector<double> px = project(problem.x, B, n, d, L, theta, threads);
  const std::vector<double> py = project(problem.y, B, m, d, L, theta, threads);
  r.timings.project_ms = ms_since(t0);

  t0 = Clock::now();
  r.per_direction.assign(static_cast<std::size_t>(B * L), 0.0);
  // Per-point derivatives of W_p^p(b, l) w.r.t. the projected values, [B, L, n].
  std::vector<double> dx, dy;
  if (options.gradients) {
    dx.assign(static_cast<std::size_t>(B * L * n), 0.0);
    dy.assign(static_cast<std::size_t>(B * L * m), 0.0);
  }
#pragma omp parallel num_threads(threads)
  {
    Sorted1D A, Bs;
    std::vector<double> u(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(m));
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t s = 0; s < B * L; ++s) {
      const std::int64_t b = s / L, l = s % L;
      for (std::int64_t i = 0; i < n; ++i)
        u[static_cast<std::size_t>(i)] = px[static_cast<std::size_t>((b * n + i) * L + l)];
      for (std::int64_t j = 0; j < m; ++j)
        v[static_cast<std::size_t>(j)] = py[static_cast<std::size_t>((b * m + j) * L + l)];
      A.build(u.data(), n, problem.a, b, shape.a_batched);
      Bs.build(v.data(), m, problem.b, b, shape.b_batched);
      double cost = 0;
      double* gx = options.gradients ? dx.data() + s * n : nullptr;
      double* gy = options.gradients ? dy.data() + s * m : nullptr;
      merge_sorted(A, Bs, [&](std::int64_t i, std::int64_t j, double diff, double mass) {
        // A zero-mass piece adds nothing, also when |diff|^p overflows (0 * inf).
        if (!(mass > 0)) return;
        cost += mass * detail::ground_cost_1d(diff, p);
        if (gx != nullptr) {
          const double g = mass * detail::ground_cost_1d_derivative(diff, p);
          gx[i] += g;
          gy[j] -= g;
        }
      });
      r.per_direction[static_cast<std::size_t>(s)] = cost;
    }
  }
  r.timings.sort_ms = 0;  // sorting and merging are interleaved per direction
  r.timings.merge_ms = ms_since(t0);

  if (options.gradients) {
    t0 = Clock::now();
    const std::vector<double> w =
        detail::sliced_term_weights(r.per_direction, B, L, options.max_sliced);
    auto back_project = [&](const std::vector<double>& D, std::int64_t len) {
      std::vector<double> g(static_cast<std::size_t>(B * len * d), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads)
      for (std::int64_t rI = 0; rI < B * len; ++rI) {
        const std::int64_t b = rI / len, i = rI % len;
        double* out = g.data() + rI * d;
        for (std::int64_t l = 0; l < L; ++l) {
          const double c = w[static_cast<std::size_t>(b * L + l)] *
                           D[static_cast<std::size_t>((b * L + l) * len + i)];
          if (c == 0.0) continue;
          for (std::int64_t k = 0; k < d; ++k)
            out[k] += c * theta[static_cast<std::size_t>(k * L + l)];
        }
      }
      return g;
    };
    r.grad_x = back_project(dx, n);
    r.grad_y = back_project(dy, m);
    r.timings.gradient_ms = ms_since(t0);
  }
  return r;
}

std::vector<Coupling1D> monotone_coupling_1d(const SlicedProblem& problem, double p,
                                             const detail::SlicedShape& shape) {
  const std::int64_t B = shape.batch, n = shape.n, m = shape.m;
  std::vector<Coupling1D> out(static_cast<std::size_t>(B));
  const bool batched = problem.x.rank == 3;
  std::vector<double> u(static_cast<std::size_t>(n)), v(static_cast<std::size_t>(m));
  Sorted1D A, Bs;
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < n; ++i) {
      u[static_cast<std::size_t>(i)] =
          batched ? load_as_double(problem.x, b, i, 0) : load_as_double(problem.x, i, 0);
    }
    for (std::int64_t j = 0; j < m; ++j) {
      v[static_cast<std::size_t>(j)] =
          batched ? load_as_double(problem.y, b, j, 0) : load_as_double(problem.y, j, 0);
    }
    A.build(u.data(), n, problem.a, b, shape.a_batched);
    Bs.build(v.data(), m, problem.b, b, shape.b_batched);
    Coupling1D& c = out[static_cast<std::size_t>(b)];
    c.entries.reserve(static_cast<std::size_t>(n + m - 1));
    merge_sorted(A, Bs, [&](std::int64_t i, std::int64_t j, double diff, double mass) {
      if (mass <= 0) return;
      c.entries.push_back({i, j, mass});
      c.cost += mass * detail::ground_cost_1d(diff, p);
    });
  }
  return out;
}

}  // namespace otgpu::cpu
