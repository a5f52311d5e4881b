// A downstream program: includes only the public headers, links otgpu::otgpu, solves
// one entropic OT problem and prints OT_eps.
//
// So that the example cannot rot silently, it also checks a closed-form identity.
// For the squared Euclidean cost, moving the target by t changes the cost by
//   |x_i - y_j - t|^2 - |x_i - y_j|^2 = -2<x_i, t> + 2<y_j, t> + |t|^2,
// a sum of a term in i, a term in j and a constant: the potentials absorb the first
// two, so for balanced unit masses
//   OT_eps(X, Y + t) = OT_eps(X, Y) + |t|^2 - 2<mean_a(X) - mean_b(Y), t>
// for every eps. With Y = X and a = b the last term vanishes.
//
//   consumer [auto|cpu|cuda]     (default auto: the GPU when one is usable)
#include <otgpu/otgpu.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  try {
    const std::int64_t n = 64, d = 2;
    std::mt19937_64 rng(7);
    std::vector<double> x(static_cast<std::size_t>(n * d));
    for (double& v : x) v = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // U[0, 1)
    const double t[2] = {0.3, -0.2};
    std::vector<double> y = x;
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t k = 0; k < d; ++k) y[static_cast<std::size_t>(i * d + k)] += t[k];
    }

    otgpu::SinkhornOptions o;
    o.eps = 0.05;  // absolute, in units of the cost (the identity needs the same eps twice)
    o.max_iter = 20000;
    o.backend = argc > 1 ? otgpu::parse_backend(argv[1], "argv[1]") : otgpu::Backend::automatic;
    // The fp64 CPU backend can be held to a tight tolerance; the fp32 GPU backend has
    // a residual floor near 1e-5 (see SinkhornOptions::tol).
    const bool gpu = o.backend == otgpu::Backend::cuda ||
                     (o.backend == otgpu::Backend::automatic && otgpu::cuda_available());
    o.tol = gpu ? 1e-4 : 1e-9;

    auto solve = [&](const std::vector<double>& target) {
      otgpu::SinkhornProblem p;  // weights absent: uniform 1/n on both sides
      p.x = otgpu::TensorView::host(x.data(), {n, d});
      p.y = otgpu::TensorView::host(target.data(), {n, d});
      return otgpu::sinkhorn(p, o);
    };
    const otgpu::SinkhornResult moved = solve(y);
    const otgpu::SinkhornResult same = solve(x);
    const otgpu::SinkhornReport& r = moved.problems[0];
    std::printf("backend %s, n = m = %lld, d = %lld, eps = %g\n",
                std::string(otgpu::to_string(moved.backend)).c_str(), static_cast<long long>(n),
                static_cast<long long>(d), r.eps);
    std::printf(
        "OT_eps(X, X + t) = %.12f  (transport cost %.12f, marginal error %.2e, %d "
        "iterations, converged %s)\n",
        r.ot_eps, r.transport_cost, r.marginal_error, r.iterations, r.converged ? "yes" : "no");

    const double expected = same.problems[0].ot_eps + t[0] * t[0] + t[1] * t[1];
    const double rel = std::abs(r.ot_eps - expected) / std::abs(expected);
    std::printf("OT_eps(X, X) + |t|^2 = %.12f  (relative difference %.2e)\n", expected, rel);
    const double bound = gpu ? 1e-3 : 1e-7;
    if (!r.converged || !same.problems[0].converged || !(rel <= bound)) {
      std::fprintf(stderr,
                   "consumer: check failed (converged %d/%d, relative difference %.3e > %g)\n",
                   r.converged, same.problems[0].converged, rel, bound);
      return 1;
    }
    return 0;
  } catch (const otgpu::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
  }
}
