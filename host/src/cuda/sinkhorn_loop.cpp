// The iteration loop of the CUDA Sinkhorn backend: enqueues the half-steps, the
// periodic convergence checks and the final report.
#include "sinkhorn_internal.h"

namespace otgpu::cuda_backend {

/// Enqueues the iterations. With a poller, the host reads the number of active
/// problems one check period late and stops enqueueing once it is zero; without,
/// all max_iter iterations are enqueued (retired problems cost no work).
void enqueue_iterations(const DeviceSolve& d, const SinkhornOptions& o, int device, cudaStream_t s,
                        Poller* poller) {
  if (small_path(d, device)) {
    kernels::SmallSinkhornArgs args;
    args.cost = d.cost;
    args.X = d.X;
    args.Y = d.Y;
    args.logA = d.logA;
    args.logB = d.logB;
    args.F = d.F;
    args.G = d.G;
    args.eps = d.small_eps;
    args.eps_init = o.eps_init > 0 ? d.small_eps_init : nullptr;
    args.eps_decay = o.eps_decay;
    args.rho_a = o.rho_a;
    args.rho_b = o.rho_b;
    args.tol = o.tol;
    args.max_iter = o.max_iter;
    args.check_every = o.check_every;
    args.t_begin = 0;
    args.t_end = o.max_iter;
    args.active = d.active;
    args.iterations = d.iters;
    args.residual = d.small_res;
    args.converged = d.small_conv;
    args.B = d.B;
    args.n = d.n;
    args.m = d.m;
    args.d = d.dp;
    kernels::small_sinkhorn(args, s);
    return;
  }
  const auto B = static_cast<std::size_t>(d.B);
  const float* eps_target = d.eps_target();
  const float* lam_a_target = d.lam_a_tab + static_cast<std::size_t>(d.K) * B;
  for (int t = 0; t < o.max_iter; ++t) {
    const std::size_t row = static_cast<std::size_t>(std::min(t, d.K)) * B;
    const float* e = d.eps_tab + row;
    const float* la = d.lam_a_tab + row;
    const float* lb = d.lam_b_tab + row;
    if (d.points()) {
      kernels::online_half_step(d.online(true, e, d.active), la, d.F, s);
      kernels::online_half_step(d.online(false, e, d.active), lb, d.G, s);
    } else {
      kernels::dense_row_update(d.C, d.logB, d.G, e, la, d.active, d.F, d.B, d.n, d.m, s);
      kernels::dense_col_update(d.C, d.logA, d.F, e, lb, d.active, d.G, d.col_ws, d.col_ws_bytes,
                                d.B, d.n, d.m, s);
    }
    const bool check = o.check_every > 0 && (t + 1) % o.check_every == 0 && t >= d.K;
    if (!check) continue;
    if (d.points()) {
      kernels::online_half_step(d.online(true, eps_target, d.active), nullptr, d.Ft, s);
    } else {
      kernels::dense_row_update(d.C, d.logB, d.G, eps_target, nullptr, d.active, d.Ft, d.B, d.n,
                                d.m, s);
    }
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.count, 0, sizeof(int), s));
    kernels::sinkhorn_check_residual(d.a, d.F, d.Ft, eps_target, lam_a_target, o.tol, t + 1,
                                     d.active, d.iters, d.res, d.count, d.B, d.n, s);
    if (poller == nullptr) continue;
    const int slot = poller->checks % 2;
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(poller->pinned.get() + slot, d.count, sizeof(int),
                                     cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaEventRecord(poller->ev[slot].get(), s));
    // Read the previous check's count: one period late, so the GPU never idles.
    if (poller->checks > 0) {
      const int prev = 1 - slot;
      OTGPU_CUDA_CHECK(cudaEventSynchronize(poller->ev[prev].get()));
      if (poller->pinned.get()[prev] == 0) break;
    }
    ++poller->checks;
  }
}

/// Enqueues the final report at the target eps for every problem (active flags
/// ignored) into d.out4 [B, 4].
void enqueue_finalize(const DeviceSolve& d, const SinkhornOptions& o, cudaStream_t s) {
  const float* eps_target = d.eps_target();
  if (d.points()) {
    const auto fp = d.online(true, eps_target, nullptr);
    kernels::online_half_step(fp, nullptr, d.Ft, s);
    kernels::online_row_stats(fp, d.lse, d.cmean, s);
  } else {
    kernels::dense_row_update(d.C, d.logB, d.G, eps_target, nullptr, nullptr, d.Ft, d.B, d.n, d.m,
                              s);
    kernels::dense_row_stats(d.C, d.logA, d.logB, d.F, d.G, eps_target, d.row_mass, d.row_cost, d.B,
                             d.n, d.m, s);
  }
  kernels::sinkhorn_finalize(d.a, d.b, d.F, d.G, d.Ft, d.points() ? d.cmean : nullptr, d.row_mass,
                             d.row_cost, eps_target, o.rho_a, o.rho_b, d.out4, d.B, d.n, d.m, s);
}

}  // namespace otgpu::cuda_backend
