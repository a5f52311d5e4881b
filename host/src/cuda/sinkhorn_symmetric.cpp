// The self-transport problem OT_eps(a, a) on the GPU (the debiased divergence's self
// terms): the symmetric update of cpu::sinkhorn_symmetric, iteration for iteration.
//
//   t = 0 .. max_iter-1, at eps_t = row min(t, K) of the eps table (the CPU's
//   eps_at(t)):
//     Ft = T(F),  T(f)_i = -eps_t LSE_j(log a_j + (f_j - C(x_i, x_j)) / eps_t)
//          (one online half-step with rows = cols = X: the g-update of F, since the
//           staged problem has y = x and b = a); unbalanced (rho_a = rho_b finite):
//          T is lambda_t times that, lambda_t = rho / (rho + eps_t) from the lambda
//          table, written to G (free until the end), and G stands for Ft below
//     a check after iteration t when (t+1) % check_every == 0 and t >= K:
//          R = sum_i a_i |exp((F_i - Ft_i) / eps) - 1|  (= ||P(f, f) 1 - a||_1),
//          retire the problem when R <= tol (before the average, as on the CPU)
//     F = (F + Ft) / 2  for active problems
// The fixed point is the self potential f = T(f), and OT_eps(a, a) = 2 <a, f>; the
// report is the backend's usual one on (F, G = F). The host reads the active count one
// check late (as the synchronous loop does) and stops enqueueing once it is zero. The
// launches are plain (a few dozen iterations per solve: nothing for a graph to save).
#include <cmath>

#include "otgpu_kernels/sinkhorn_accel.h"
#include "otgpu_kernels/sinkhorn_loop.h"
#include "sinkhorn_internal.h"

namespace otgpu::cuda_backend {

SinkhornResult sinkhorn_symmetric(const SinkhornProblem& problem, const SinkhornOptions& o,
                                  const detail::SinkhornShape& shape) {
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  if (!balanced && !(o.rho_a == o.rho_b)) {
    throw InvalidArgument(fmt::format(
        "sinkhorn_symmetric: rho_a = {} and rho_b = {} differ (the self problem needs one "
        "penalty)",
        o.rho_a, o.rho_b));
  }
  if (shape.n != shape.m || shape.batch > max_batch_per_launch()) {
    throw InvalidArgument(
        fmt::format("sinkhorn_symmetric: needs y = x, b = a and B <= {} (got B={}, n={}, m={})",
                    max_batch_per_launch(), shape.batch, shape.n, shape.m));
  }
  runtime::Context& ctx = runtime::thread_context(o.device);
  ctx.activate();
  const cudaStream_t s = ctx.stream();
  const DevicePlan pl = plan_device(problem, o, shape, ctx.device(), true);
  const auto B = static_cast<std::size_t>(shape.batch);
  const auto nB = B * static_cast<std::size_t>(shape.n);

  RawUpload up;
  const HostViews hv = add_host_views(problem, up);
  StagedSolve st = stage_solve(ctx, problem, o, pl, up, hv);
  Carved& c = st.c;
  const std::vector<double>& mean = st.mean;
  init_potentials(nullptr, nullptr, c.d, s);

  const DeviceSolve& d = c.d;
  // The lagged early exit of the alternating loop; the self-term solve reports no
  // progress (documented in sinkhorn.h).
  Poller poller = context_poller(ctx);
  SinkhornOptions quiet = o;
  quiet.progress = nullptr;
  for (int t = 0; t < o.max_iter; ++t) {
    const std::size_t row = static_cast<std::size_t>(std::min(t, d.K)) * B;
    kernels::online_half_step(d.online(false, d.eps_tab + row, d.active), nullptr, d.Ft, s);
    const float* tf = d.Ft;
    if (!balanced) {
      kernels::loop_reuse_f(d.Ft, d.lam_a_tab + row, d.active, d.G, d.B, d.n, s);
      tf = d.G;
    }
    const bool check = o.check_every > 0 && (t + 1) % o.check_every == 0 && t >= d.K;
    if (check) {
      OTGPU_CUDA_CHECK(cudaMemsetAsync(d.count, 0, sizeof(int), s));
      kernels::loop_check_residual(d.a, d.F, tf, d.eps_target(), nullptr, o.tol, nullptr, t + 1,
                                   d.active, d.iters, d.res, d.count, nullptr, d.B, d.n, s);
    }
    kernels::sinkhorn_symmetric_average(d.F, tf, d.active, d.B, d.n, s);
    if (check && poll(d, quiet, t + 1, &poller, s)) break;
  }
  // Both potentials are f (f = g at the solution of the symmetric problem).
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(d.G, d.F, nB * sizeof(float), cudaMemcpyDeviceToDevice, s));
  enqueue_finalize(d, o, s);

  std::vector<float> f(nB);
  std::vector<double> out4(4 * B);
  std::vector<int> iters(B);
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(f.data(), d.F, nB * sizeof(float), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(out4.data(), d.out4, out4.size() * sizeof(double),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(iters.data(), d.iters, iters.size() * sizeof(int),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  SinkhornResult r =
      make_result(o, shape, f, f, out4, iters, o.eps_relative ? mean : std::vector<double>(B, 1.0));
  r.device = ctx.device();
  return r;
}

}  // namespace otgpu::cuda_backend
