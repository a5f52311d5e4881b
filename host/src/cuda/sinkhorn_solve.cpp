// The synchronous CUDA Sinkhorn backend (otgpu_host/cuda_backend.h): solves and
// derived outputs that return host vectors.
#include "sinkhorn_internal.h"

namespace otgpu::cuda_backend {

/// The host result from the downloaded arrays; scale[b]: eps of problem b / options.eps.
SinkhornResult make_result(const SinkhornOptions& o, const detail::SinkhornShape& sh,
                           const std::vector<float>& f, const std::vector<float>& g,
                           const std::vector<double>& out4, const std::vector<int>& iters,
                           const std::vector<double>& scale) {
  SinkhornResult r;
  r.backend = Backend::cuda;
  r.device = o.device;
  r.batch = sh.batch;
  r.n = sh.n;
  r.m = sh.m;
  r.d = sh.d;
  r.f.assign(f.begin(), f.end());
  r.g.assign(g.begin(), g.end());
  const auto B = static_cast<std::size_t>(sh.batch);
  r.problems.resize(B);
  for (std::size_t b = 0; b < B; ++b) {
    auto& rep = r.problems[b];
    rep.eps = o.eps * scale[b];
    rep.ot_eps = out4[4 * b + 0];
    rep.transport_cost = out4[4 * b + 1];
    rep.marginal_error = out4[4 * b + 2];
    rep.residual = out4[4 * b + 3];
    rep.iterations = iters[b];
    // Non-finite values (eps too small for fp32, say) are reported, never hidden.
    rep.converged = std::isfinite(rep.ot_eps) && rep.residual <= o.tol;
  }
  return r;
}

/// Enqueues one derived output from staged data (points centered, target eps in row
/// 0 of the eps table, d.F / d.G set). out: float [B, n, d] (map, gradient) or
/// int64 [B, n] (sample). ratio: b's balancing factor per problem (nullptr: 1).
void enqueue_derived(DerivedKind what, const DevicePlan& pl, const Carved& c, const double* ratio,
                     std::uint64_t seed, void* out, cudaStream_t s) {
  const DeviceSolve& d = c.d;
  const auto& sh = pl.shape;
  const float* eps = d.eps_tab;
  switch (what) {
    case DerivedKind::map:
      kernels::online_weighted_mean(d.online(true, eps, nullptr), 0, c.T, s);
      kernels::finish_map(c.T, c.center, static_cast<float*>(out), sh.batch, sh.n, sh.d, pl.dp, s);
      return;
    case DerivedKind::gradient: {
      const bool euclid = pl.cost == CostKind::euclidean;
      kernels::online_half_step(d.online(true, eps, nullptr), nullptr, d.Ft, s);
      kernels::online_weighted_mean(d.online(true, eps, nullptr), euclid ? 1 : 0, c.T, s);
      kernels::finish_gradient(d.X, c.T, d.a, d.F, d.Ft, eps, ratio, euclid,
                               static_cast<float*>(out), sh.batch, sh.n, sh.d, pl.dp, s);
      return;
    }
    case DerivedKind::sample:
      if (pl.cost == CostKind::matrix) {
        kernels::dense_sample(d.C, d.logB, d.G, eps, seed, static_cast<std::int64_t*>(out),
                              sh.batch, sh.n, sh.m, s);
      } else {
        kernels::online_sample(d.online(true, eps, nullptr), seed, static_cast<std::int64_t*>(out),
                               s);
      }
      return;
  }
}

namespace {

/// otgpu::sinkhorn on device views: staged, validated and solved on the device; the
/// host reads the check results, the convergence count (lagged) and the outputs.
SinkhornResult solve_device_views(const SinkhornProblem& problem, const SinkhornOptions& o,
                                  const detail::SinkhornShape& shape) {
  const DevicePlan pl = plan_device(problem, o, shape, o.device, true);
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  Stream stream;
  const cudaStream_t s = stream.get();
  DeviceArray<unsigned char> ws(carved_bytes(pl, true, false), s);
  Carver cv(ws.get());
  Carved c = carve(cv, pl, true, false);
  stage_inputs(problem, pl, c.d, s);
  enqueue_checks(pl, c, s);
  stage_center(pl, c, o.eps_relative, s);
  const std::vector<double> mean = check_device_inputs(problem, pl, c, balanced, o.eps_relative, s);
  stage_schedule(o, pl, c, s);
  init_potentials(o, c.d, s);

  Poller poller;
  enqueue_iterations(c.d, o, o.device, s, &poller);
  enqueue_finalize(c.d, o, s);

  const auto B = static_cast<std::size_t>(shape.batch);
  std::vector<float> f(B * static_cast<std::size_t>(shape.n)),
      g(B * static_cast<std::size_t>(shape.m));
  std::vector<double> out4(4 * B);
  std::vector<int> iters(B);
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(f.data(), c.d.F, f.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(g.data(), c.d.G, g.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(out4.data(), c.d.out4, out4.size() * sizeof(double),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(iters.data(), c.d.iters, iters.size() * sizeof(int),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return make_result(o, shape, f, g, out4, iters,
                     o.eps_relative ? mean : std::vector<double>(B, 1.0));
}

/// The host-level derived outputs on device views: the problem is staged and checked
/// on the device, the result's potentials and eps uploaded.
template <class Out>
std::vector<Out> derived_device_views(DerivedKind what, const SinkhornProblem& problem,
                                      const SinkhornResult& result,
                                      const detail::SinkhornShape& shape, std::uint64_t seed,
                                      int device) {
  const DevicePlan pl = plan_device(problem, SinkhornOptions{}, shape, device, false);
  Stream stream;
  const cudaStream_t s = stream.get();
  DeviceArray<unsigned char> ws(carved_bytes(pl, true, true), s);
  Carver cv(ws.get());
  Carved c = carve(cv, pl, true, true);
  stage_inputs(problem, pl, c.d, s);
  enqueue_checks(pl, c, s);
  stage_center(pl, c, false, s);
  (void)check_device_inputs(problem, pl, c, false, false, s);

  const auto B = static_cast<std::size_t>(shape.batch);
  const std::vector<float> f(result.f.begin(), result.f.end()), g(result.g.begin(), result.g.end());
  std::vector<float> eps(B);
  for (std::size_t b = 0; b < B; ++b) eps[b] = static_cast<float>(result.problems[b].eps);
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(c.d.F, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice, s));
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(c.d.G, g.data(), g.size() * sizeof(float), cudaMemcpyHostToDevice, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(const_cast<float*>(c.d.eps_tab), eps.data(), B * sizeof(float),
                                   cudaMemcpyHostToDevice, s));
  // Without the solve's options, b is taken as rescaled when the masses agree (the
  // host-view path applies the same rule).
  if (what == DerivedKind::gradient) {
    kernels::mass_ratio(c.d.a, c.d.b, shape.batch, shape.n, shape.m, detail::kMassTolerance,
                        c.ratio, s);
  }
  const std::size_t count = what == DerivedKind::sample
                                ? B * static_cast<std::size_t>(shape.n)
                                : B * static_cast<std::size_t>(shape.n * shape.d);
  DeviceArray<Out> dOut(count, s);
  enqueue_derived(what, pl, c, c.ratio, seed, dOut.get(), s);
  std::vector<Out> out(count);
  dOut.download(out.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // also keeps f, g, eps alive until read
  return out;
}

}  // namespace

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& o,
                        const detail::SinkhornShape& shape) {
  require_device(o.device);
  set_device(o.device);
  if (shape.space == MemorySpace::device) return solve_device_views(problem, o, shape);
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  const Canonical c = canonicalize(problem, shape, balanced);
  const auto B = static_cast<std::size_t>(c.B);
  Stream stream;
  const cudaStream_t s = stream.get();
  const int K = scaling_steps(o);
  const int sms = device_sm_count(o.device);
  const SolveSizes z = solve_sizes(c.cost, c.B, c.n, c.m, c.dp, K, true, sms);

  DeviceArray<float> dX(z.X, s), dY(z.Y, s), dC(z.C, s);
  dX.upload(c.X.data());
  dY.upload(c.Y.data());
  dC.upload(c.C.data());

  // eps per problem, and the schedule eps_t = max(eps, eps_init decay^t) as tables
  // of K + 1 rows (row K: the target; every later iteration uses it).
  std::vector<double> scale(B, 1.0);
  if (o.eps_relative) scale = mean_costs(c, dX.get(), dY.get(), s);
  std::vector<float> eps_tab(z.tab), lam_a_tab(z.tab), lam_b_tab(z.tab), e_target(B), e_init(B);
  for (std::size_t t = 0; t <= static_cast<std::size_t>(K); ++t) {
    for (std::size_t b = 0; b < B; ++b) {
      const double target = o.eps * scale[b];
      const double e =
          detail::scheduled_eps(target, o.eps_init * scale[b], o.eps_decay, static_cast<int>(t));
      eps_tab[t * B + b] = static_cast<float>(e);
      lam_a_tab[t * B + b] = static_cast<float>(detail::unbalanced_lambda(o.rho_a, e));
      lam_b_tab[t * B + b] = static_cast<float>(detail::unbalanced_lambda(o.rho_b, e));
      e_target[b] = static_cast<float>(target);
      e_init[b] = static_cast<float>(o.eps_init > 0 ? o.eps_init * scale[b] : 0.0);
    }
  }
  DeviceArray<float> dEps(z.tab, s), dLamA(z.tab, s), dLamB(z.tab, s), dE(B, s), dE0(B, s);
  dEps.upload(eps_tab.data());
  dLamA.upload(lam_a_tab.data());
  dLamB.upload(lam_b_tab.data());
  dE.upload(e_target.data());
  dE0.upload(e_init.data());

  DeviceArray<float> dLogA(z.nB, s), dLogB(z.mB, s);
  DeviceArray<double> dA(z.nB, s), dB(z.mB, s);
  dLogA.upload(c.logA.data());
  dLogB.upload(c.logB.data());
  dA.upload(c.a.data());
  dB.upload(c.b.data());

  DeviceArray<float> dF(z.nB, s), dG(z.mB, s), dFt(z.nB, s);
  {
    std::vector<float> f0(z.nB, 0.f), g0(z.mB, 0.f);
    for (std::size_t k = 0; k < o.f_init.size(); ++k) f0[k] = static_cast<float>(o.f_init[k]);
    for (std::size_t k = 0; k < o.g_init.size(); ++k) g0[k] = static_cast<float>(o.g_init[k]);
    dF.upload(f0.data());
    dG.upload(g0.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // f0, g0 are pageable and go out of scope
  }
  DeviceArray<int> dActive(B, s), dIters(B, s), dCount(1, s), dConv(B, s);
  DeviceArray<double> dRes(B, s), dOut(4 * B, s);
  DeviceArray<float> dResF(B, s), dCmean(z.nB, s), dLse(z.nB, s), dRowMass(z.nB, s),
      dRowCost(z.nB, s);
  DeviceArray<unsigned char> dWs(z.col_ws, s);
  DeviceArray<float> dPart(z.partials, s);
  {
    std::vector<int> ones(B, 1), iters(B, o.max_iter);
    dActive.upload(ones.data());
    dIters.upload(iters.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }

  DeviceSolve d;
  d.cost = c.cost;
  d.B = c.B;
  d.n = c.n;
  d.m = c.m;
  d.dp = c.dp;
  d.X = dX.get();
  d.Y = dY.get();
  d.C = dC.get();
  d.logA = dLogA.get();
  d.logB = dLogB.get();
  d.a = dA.get();
  d.b = dB.get();
  d.F = dF.get();
  d.G = dG.get();
  d.Ft = dFt.get();
  d.K = K;
  d.eps_tab = dEps.get();
  d.lam_a_tab = dLamA.get();
  d.lam_b_tab = dLamB.get();
  d.small_eps = dE.get();
  d.small_eps_init = dE0.get();
  d.active = dActive.get();
  d.iters = dIters.get();
  d.count = dCount.get();
  d.res = dRes.get();
  d.small_res = dResF.get();
  d.small_conv = dConv.get();
  d.col_ws = dWs.get();
  d.col_ws_bytes = z.col_ws;
  d.cmean = dCmean.get();
  d.lse = dLse.get();
  d.row_mass = dRowMass.get();
  d.row_cost = dRowCost.get();
  d.out4 = dOut.get();
  d.sm_count = sms;
  d.partials = dPart.get();
  d.partials_floats = z.partials;

  Poller poller;
  enqueue_iterations(d, o, o.device, s, &poller);
  enqueue_finalize(d, o, s);

  std::vector<float> f(z.nB), g(z.mB);
  std::vector<double> out4(4 * B);
  std::vector<int> iters(B);
  dF.download(f.data());
  dG.download(g.data());
  dOut.download(out4.data());
  dIters.download(iters.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));

  return make_result(o, shape, f, g, out4, iters, scale);
}

namespace {

/// Device copies of the canonical problem and of the result's potentials, for the
/// derived outputs.
struct DerivedSetup {
  Canonical c;
  std::vector<float> eps;
  DeviceArray<float> dX, dY, dC, dLogA, dLogB, dF, dG, dEps;
  DerivedSetup(const SinkhornProblem& problem, const SinkhornResult& result,
               const detail::SinkhornShape& shape, cudaStream_t s, Canonical&& canon)
      : c(std::move(canon)),
        eps(static_cast<std::size_t>(c.B)),
        dX(c.X.size(), s),
        dY(c.Y.size(), s),
        dC(c.C.size(), s),
        dLogA(c.logA.size(), s),
        dLogB(c.logB.size(), s),
        dF(result.f.size(), s),
        dG(result.g.size(), s),
        dEps(static_cast<std::size_t>(c.B), s) {
    (void)problem;
    (void)shape;
    for (std::size_t b = 0; b < eps.size(); ++b)
      eps[b] = static_cast<float>(result.problems[b].eps);
    std::vector<float> f(result.f.begin(), result.f.end()), g(result.g.begin(), result.g.end());
    dX.upload(c.X.data());
    dY.upload(c.Y.data());
    dC.upload(c.C.data());
    dLogA.upload(c.logA.data());
    dLogB.upload(c.logB.data());
    dF.upload(f.data());
    dG.upload(g.data());
    dEps.upload(eps.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // the host vectors f, g go out of scope
  }
  kernels::OnlinePass f_pass() const {
    return pass(c, true, dX.get(), dY.get(), dLogA.get(), dLogB.get(), dF.get(), dG.get(),
                dEps.get(), nullptr);
  }
};

Canonical canonical_for(const SinkhornProblem& problem, const detail::SinkhornShape& shape) {
  // Balanced or not, b's scale does not change the row-normalized weights the
  // derived outputs use; rescale only where the masses agree (balanced solves).
  return canonicalize(problem, shape, false);
}

/// Row masses r_i = a_i exp((f_i - ftilde_i)/eps) of the plan at the result.
std::vector<double> row_masses(DerivedSetup& st, const SinkhornResult& result, cudaStream_t s) {
  const auto B = static_cast<std::size_t>(st.c.B), n = static_cast<std::size_t>(st.c.n);
  DeviceArray<float> dFt(B * n, s);
  kernels::online_half_step(st.f_pass(), nullptr, dFt.get(), s);
  std::vector<float> ft(B * n);
  dFt.download(ft.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  // b's total mass enters r_i linearly: scale to the mass the solve used.
  std::vector<double> r(B * n);
  for (std::size_t b = 0; b < B; ++b) {
    double ma = 0, mb = 0;
    for (std::size_t i = 0; i < n; ++i) ma += st.c.a[b * n + i];
    const auto m = static_cast<std::size_t>(st.c.m);
    for (std::size_t j = 0; j < m; ++j) mb += st.c.b[b * m + j];
    const double scale = detail::masses_match(ma, mb) ? ma / mb : 1.0;
    const double e = result.problems[b].eps;
    for (std::size_t i = 0; i < n; ++i) {
      const double ai = st.c.a[b * n + i];
      r[b * n + i] =
          ai > 0 ? ai * scale * std::exp((result.f[b * n + i] - ft[b * n + i]) / e) : 0.0;
    }
  }
  return r;
}

std::vector<float> weighted_mean(DerivedSetup& st, int mode, cudaStream_t s) {
  const auto size = static_cast<std::size_t>(st.c.B * st.c.n) * static_cast<std::size_t>(st.c.dp);
  DeviceArray<float> dOut(size, s);
  kernels::online_weighted_mean(st.f_pass(), mode, dOut.get(), s);
  std::vector<float> out(size);
  dOut.download(out.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

}  // namespace

std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape, int device) {
  require_device(device);
  set_device(device);
  if (shape.space == MemorySpace::device) {
    const auto m = derived_device_views<float>(DerivedKind::map, problem, result, shape, 0, device);
    return {m.begin(), m.end()};
  }
  Stream stream;
  DerivedSetup st(problem, result, shape, stream.get(), canonical_for(problem, shape));
  const auto T = weighted_mean(st, 0, stream.get());
  const auto B = st.c.B, n = st.c.n, d = st.c.d;
  const auto dp = static_cast<std::size_t>(st.c.dp);
  std::vector<double> out(static_cast<std::size_t>(B * n * d));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < d; ++k)
        out[static_cast<std::size_t>((b * n + i) * d + k)] =
            T[static_cast<std::size_t>(b * n + i) * dp + static_cast<std::size_t>(k)] +
            st.c.center[static_cast<std::size_t>(b) * dp + static_cast<std::size_t>(k)];
  return out;
}

std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape, int device) {
  require_device(device);
  set_device(device);
  if (shape.space == MemorySpace::device) {
    const auto g =
        derived_device_views<float>(DerivedKind::gradient, problem, result, shape, 0, device);
    return {g.begin(), g.end()};
  }
  Stream stream;
  DerivedSetup st(problem, result, shape, stream.get(), canonical_for(problem, shape));
  const auto r = row_masses(st, result, stream.get());
  const bool euclid = st.c.cost == CostKind::euclidean;
  const auto V = weighted_mean(st, euclid ? 1 : 0, stream.get());
  const auto B = st.c.B, n = st.c.n, d = st.c.d;
  const auto dp = static_cast<std::size_t>(st.c.dp);
  std::vector<double> out(static_cast<std::size_t>(B * n * d));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n; ++i) {
      const double ri = r[static_cast<std::size_t>(b * n + i)];
      for (std::int64_t k = 0; k < d; ++k) {
        const std::size_t pk =
            static_cast<std::size_t>(b * n + i) * dp + static_cast<std::size_t>(k);
        const auto o = static_cast<std::size_t>((b * n + i) * d + k);
        // Both x and the weighted mean of y are centered: their difference is not.
        out[o] = euclid ? ri * V[pk] : 2.0 * ri * (static_cast<double>(st.c.X[pk]) - V[pk]);
      }
    }
  return out;
}

std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed,
                                          int device) {
  require_device(device);
  set_device(device);
  if (shape.space == MemorySpace::device) {
    return derived_device_views<std::int64_t>(DerivedKind::sample, problem, result, shape, seed,
                                              device);
  }
  Stream stream;
  const cudaStream_t s = stream.get();
  DerivedSetup st(problem, result, shape, s, canonical_for(problem, shape));
  const auto size = static_cast<std::size_t>(st.c.B * st.c.n);
  DeviceArray<std::int64_t> dOut(size, s);
  if (st.c.cost == CostKind::matrix) {
    kernels::dense_sample(st.dC.get(), st.dLogB.get(), st.dG.get(), st.dEps.get(), seed, dOut.get(),
                          st.c.B, st.c.n, st.c.m, s);
  } else {
    kernels::online_sample(st.f_pass(), seed, dOut.get(), s);
  }
  std::vector<std::int64_t> out(size);
  dOut.download(out.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

}  // namespace otgpu::cuda_backend
