// The minibatch OT estimator (otgpu/minibatch.h): keyed minibatch draws, one batched
// solve of the K minibatches (exact assignment or Sinkhorn, plus the symmetric self
// terms when debiased), then the mean, its standard error and the gradients scattered
// back to the points.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <vector>

#include "cpu_minibatch.h"
#include "cpu_sinkhorn.h"
#include "otgpu/assignment.h"
#include "otgpu/error.h"
#include "otgpu/minibatch.h"
#include "otgpu/sinkhorn.h"
#include "otgpu_host/backend.h"
#include "otgpu_host/cuda_backend.h"
#include "validate.h"

namespace otgpu {

namespace {

/// The symmetric self term OT_eps(mu, mu) of problem k of the batch pts [K, bs, d], at
/// the absolute eps the (x, y) solve used for it: its result (f = g) for the gradient.
SinkhornResult self_term(const std::vector<double>& pts, std::int64_t k, std::int64_t bs,
                         std::int64_t d, double eps, const SinkhornOptions& base, Backend backend,
                         CostKind kind) {
  SinkhornProblem p;
  p.x = TensorView::host(pts.data() + k * bs * d, {bs, d});
  p.y = p.x;
  p.cost_kind = kind;
  SinkhornOptions o = base;
  o.eps = eps;
  o.eps_relative = false;
  o.f_init.clear();
  o.g_init.clear();
  o.backend = backend;
  const auto shape = detail::validate_sinkhorn(p, o);
  if (backend == Backend::cuda) {
    return cuda_backend::sinkhorn_symmetric(p, detail::resolve_sinkhorn_options(o, backend), shape);
  }
  return cpu::sinkhorn_symmetric(p, detail::resolve_sinkhorn_options(o, backend), shape);
}

/// grad [K, bs, d] of each batch, accumulated as (1/K) grad into out [N, d] at `rows`.
void scatter(const std::vector<double>& grad, const std::vector<std::int64_t>& rows, std::int64_t d,
             double scale, std::vector<double>& out) {
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const double* g = grad.data() + r * static_cast<std::size_t>(d);
    double* o = out.data() + static_cast<std::size_t>(rows[r] * d);
    for (std::int64_t c = 0; c < d; ++c) o[c] += scale * g[c];
  }
}

}  // namespace

MinibatchResult minibatch_ot(const TensorView& x, const TensorView& y,
                             const MinibatchOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto s = cpu::validate_minibatch(x, y, options);
  const std::int64_t K = options.k, bs = options.bs, d = s.d;
  MinibatchResult r;
  r.rows_x = minibatch_rows(s.N, bs, K, options.seed, 0);
  r.rows_y = minibatch_rows(s.M, bs, K, options.seed, 1);
  const std::vector<double> X = cpu::gather_rows(x, r.rows_x, d);
  const std::vector<double> Y = cpu::gather_rows(y, r.rows_y, d);
  const TensorView xv = TensorView::host(X.data(), {K, bs, d});
  const TensorView yv = TensorView::host(Y.data(), {K, bs, d});
  r.values.assign(static_cast<std::size_t>(K), 0.0);
  if (options.gradient) {
    r.grad_x.assign(static_cast<std::size_t>(s.N * d), 0.0);
    r.grad_y.assign(static_cast<std::size_t>(s.M * d), 0.0);
  }
  const double inv_k = 1.0 / static_cast<double>(K);
  if (options.method == MinibatchMethod::exact) {
    AssignmentProblem ap;
    ap.x = xv;
    ap.y = yv;
    ap.cost_kind = options.cost_kind;
    AssignmentOptions ao;
    ao.backend = options.backend;
    ao.device = options.device;
    ao.cpu_threads = options.sinkhorn.cpu_threads;
    const AssignmentResult ar = assignment(ap, ao);
    r.backend = ar.backend;
    const double inv_bs = 1.0 / static_cast<double>(bs);
    for (std::int64_t k = 0; k < K; ++k) {
      const AssignmentReport& rep = ar.problems[static_cast<std::size_t>(k)];
      r.values[static_cast<std::size_t>(k)] = rep.cost * inv_bs;
      r.converged = r.converged && rep.gap <= 1e-6 * std::max(1.0, std::abs(rep.cost));
      if (!options.gradient) continue;
      for (std::int64_t i = 0; i < bs; ++i) {
        const std::int64_t j = ar.row_to_col[static_cast<std::size_t>(k * bs + i)];
        const double* xi = X.data() + (k * bs + i) * d;
        const double* yj = Y.data() + (k * bs + j) * d;
        const std::int64_t p = r.rows_x[static_cast<std::size_t>(k * bs + i)];
        const std::int64_t q = r.rows_y[static_cast<std::size_t>(k * bs + j)];
        // d/dx C(x, y) and d/dy C(x, y) = -d/dx C(x, y) for both cost kinds.
        cpu::add_cost_gradient(options.cost_kind, xi, yj, d, inv_k * inv_bs,
                               r.grad_x.data() + p * d);
        cpu::add_cost_gradient(options.cost_kind, yj, xi, d, inv_k * inv_bs,
                               r.grad_y.data() + q * d);
      }
    }
  } else {
    SinkhornProblem sp;
    sp.x = xv;
    sp.y = yv;
    sp.cost_kind = options.cost_kind;
    SinkhornOptions so = options.sinkhorn;
    so.eps = options.eps;
    so.eps_relative = options.eps_relative;
    so.backend = options.backend;
    so.device = options.device;
    const SinkhornResult res = sinkhorn(sp, so);
    r.backend = res.backend;
    for (std::int64_t k = 0; k < K; ++k) {
      r.values[static_cast<std::size_t>(k)] = res.problems[static_cast<std::size_t>(k)].ot_eps;
      r.converged = r.converged && res.problems[static_cast<std::size_t>(k)].converged;
    }
    if (options.gradient) {
      scatter(gradient_x(sp, res), r.rows_x, d, inv_k, r.grad_x);
      // grad_y from the transposed problem: swapping (x, a, f) with (y, b, g) gives P^T.
      SinkhornProblem spt;
      spt.x = yv;
      spt.y = xv;
      spt.cost_kind = options.cost_kind;
      SinkhornResult rt = res;
      rt.state.reset();
      std::swap(rt.f, rt.g);
      std::swap(rt.n, rt.m);
      scatter(gradient_x(spt, rt), r.rows_y, d, inv_k, r.grad_y);
    }
    if (options.debiased) {
      for (std::int64_t k = 0; k < K; ++k) {
        const double eps = res.problems[static_cast<std::size_t>(k)].eps;
        const SinkhornResult xx = self_term(X, k, bs, d, eps, so, res.backend, options.cost_kind);
        const SinkhornResult yy = self_term(Y, k, bs, d, eps, so, res.backend, options.cost_kind);
        r.values[static_cast<std::size_t>(k)] -=
            0.5 * (xx.problems[0].ot_eps + yy.problems[0].ot_eps);
        r.converged = r.converged && xx.problems[0].converged && yy.problems[0].converged;
        if (!options.gradient) continue;
        // d/dx of OT_eps(mu, mu) / 2 is the gradient_x of the symmetric plan (x on both
        // sides, P symmetric: the two halves are equal).
        auto self_grad = [&](const std::vector<double>& pts, const SinkhornResult& sr,
                             const std::vector<std::int64_t>& rows, std::vector<double>& out) {
          SinkhornProblem p;
          p.x = TensorView::host(pts.data() + k * bs * d, {bs, d});
          p.y = p.x;
          p.cost_kind = options.cost_kind;
          const std::vector<std::int64_t> sub(rows.begin() + k * bs, rows.begin() + (k + 1) * bs);
          scatter(gradient_x(p, sr), sub, d, -inv_k, out);
        };
        self_grad(X, xx, r.rows_x, r.grad_x);
        self_grad(Y, yy, r.rows_y, r.grad_y);
      }
    }
  }
  double mean = 0;
  for (double v : r.values) mean += v;
  mean *= inv_k;
  double var = 0;
  for (double v : r.values) var += (v - mean) * (v - mean);
  r.mean = mean;
  r.std_error = K > 1 ? std::sqrt(var / static_cast<double>(K - 1) / static_cast<double>(K)) : 0.0;
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace otgpu
