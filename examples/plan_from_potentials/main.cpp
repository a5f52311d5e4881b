// Recipe: the entropic plan from the potentials.
//
// otgpu::sinkhorn never forms the n x m plan; it returns the potentials f [B, n] and
// g [B, m] and the eps it used. The plan is, in the library's one convention,
//   P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)
// with a, b the weights the solver used (absent weights: 1/n and 1/m; for a balanced
// problem b is first rescaled to the mass of a) and eps = result.problems[k].eps (the
// absolute eps, also when options.eps_relative). Formed in the log domain, as here,
// it neither overflows nor underflows before the final exp.
//
// What it must satisfy, and what this program checks against the library's report:
//   - after the last g-update the column marginal is exact: P^T 1 = b;
//   - the row marginal error ||P 1 - a||_1 is report.marginal_error;
//   - <P, C> is report.transport_cost;
//   - <P, C> + eps KL(P | a (x) b) is report.ot_eps up to sum_i f_i ((P 1)_i - a_i),
//     i.e. to the accuracy the solve was asked for (KL generalized: sum P log(P/ab)
//     - sum P + sum ab);
//   - sum_j P_ij y_j / sum_j P_ij is otgpu::barycentric_map.
#include <otgpu/otgpu.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

namespace {

bool check(const char* what, double got, double want, double tol) {
  const bool ok = std::abs(got - want) <= tol;
  std::printf("%-44s %.3e vs %.3e  %s\n", what, got, want, ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  try {
    // A small weighted problem, n != m, in the plane.
    const std::int64_t n = 5, m = 7, d = 2;
    const std::vector<double> x = {0.0, 0.0, 1.0, 0.2, 0.3, 0.9, 0.8, 0.7, 0.5, 0.1};
    const std::vector<double> y = {0.1, 0.4, 0.9, 0.9, 0.2, 0.8, 0.6,
                                   0.1, 0.4, 0.5, 1.1, 0.3, 0.7, 0.6};
    const std::vector<double> a = {0.1, 0.3, 0.2, 0.25, 0.15};
    const std::vector<double> b = {0.2, 0.1, 0.1, 0.15, 0.05, 0.3, 0.1};

    otgpu::SinkhornProblem p;
    p.x = otgpu::TensorView::host(x.data(), {n, d});
    p.y = otgpu::TensorView::host(y.data(), {m, d});
    p.a = otgpu::TensorView::host(a.data(), {n});
    p.b = otgpu::TensorView::host(b.data(), {m});
    otgpu::SinkhornOptions o;
    o.eps = 0.05;
    o.tol = 1e-10;
    o.max_iter = 100000;
    // The recipe is the same on the CUDA backend; its fp32 potentials reproduce the
    // marginals only to the accuracy documented at SinkhornOptions::tol.
    o.backend = otgpu::Backend::cpu;
    const otgpu::SinkhornResult res = otgpu::sinkhorn(p, o);
    const otgpu::SinkhornReport& rep = res.problems[0];
    const double eps = rep.eps;

    // log P_ij, then P. C_ij = |x_i - y_j|^2 (CostKind::sqeuclidean, the default).
    std::vector<double> P(static_cast<std::size_t>(n * m)), C(P.size());
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < m; ++j) {
        double c = 0;
        for (std::int64_t k = 0; k < d; ++k) {
          const double diff =
              x[static_cast<std::size_t>(i * d + k)] - y[static_cast<std::size_t>(j * d + k)];
          c += diff * diff;
        }
        const auto ij = static_cast<std::size_t>(i * m + j);
        C[ij] = c;
        P[ij] = std::exp(
            std::log(a[static_cast<std::size_t>(i)]) + std::log(b[static_cast<std::size_t>(j)]) +
            (res.f[static_cast<std::size_t>(i)] + res.g[static_cast<std::size_t>(j)] - c) / eps);
      }
    }

    std::printf("plan P (%lld x %lld), eps = %g, %d iterations:\n", static_cast<long long>(n),
                static_cast<long long>(m), eps, rep.iterations);
    double row_err = 0, col_err = 0, cost = 0, kl = 0, mass = 0, f_inf = 0;
    std::vector<double> col(static_cast<std::size_t>(m), 0.0);
    for (std::int64_t i = 0; i < n; ++i) {
      double row = 0;
      for (std::int64_t j = 0; j < m; ++j) {
        const auto ij = static_cast<std::size_t>(i * m + j);
        const double ab = a[static_cast<std::size_t>(i)] * b[static_cast<std::size_t>(j)];
        std::printf(" %.4f", P[ij]);
        row += P[ij];
        col[static_cast<std::size_t>(j)] += P[ij];
        cost += P[ij] * C[ij];
        kl += P[ij] > 0 ? P[ij] * std::log(P[ij] / ab) - P[ij] + ab : ab;
        mass += P[ij];
      }
      std::printf("   row sum %.6f (a_i = %.6f)\n", row, a[static_cast<std::size_t>(i)]);
      row_err += std::abs(row - a[static_cast<std::size_t>(i)]);
      f_inf = std::max(f_inf, std::abs(res.f[static_cast<std::size_t>(i)]));
    }
    for (std::int64_t j = 0; j < m; ++j) {
      col_err += std::abs(col[static_cast<std::size_t>(j)] - b[static_cast<std::size_t>(j)]);
    }
    const double primal = cost + eps * kl;

    const std::vector<double> T = otgpu::barycentric_map(p, res);
    double map_err = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      double row = 0;
      for (std::int64_t j = 0; j < m; ++j) row += P[static_cast<std::size_t>(i * m + j)];
      for (std::int64_t k = 0; k < d; ++k) {
        double t = 0;
        for (std::int64_t j = 0; j < m; ++j) {
          t += P[static_cast<std::size_t>(i * m + j)] * y[static_cast<std::size_t>(j * d + k)];
        }
        map_err = std::max(map_err, std::abs(t / row - T[static_cast<std::size_t>(i * d + k)]));
      }
    }

    bool ok = rep.converged;
    std::printf("converged: %s, total mass of P %.12f\n", ok ? "yes" : "no", mass);
    ok &= check("||P^T 1 - b||_1 (exact after a g-update)", col_err, 0.0, 1e-12);
    ok &= check("||P 1 - a||_1 vs report.marginal_error", row_err, rep.marginal_error, 1e-12);
    ok &= check("<P, C> vs report.transport_cost", cost, rep.transport_cost,
                1e-12 + 1e-9 * rep.transport_cost);
    ok &= check("<P,C> + eps KL vs report.ot_eps", primal, rep.ot_eps,
                1e-12 + f_inf * row_err + 1e-9 * std::abs(rep.ot_eps));
    ok &= check("max |T_i from P - barycentric_map|", map_err, 0.0, 1e-12);
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plan_from_potentials: %s\n", e.what());
    return 1;
  }
}
