// The synchronous CUDA Sinkhorn backend (otgpu_host/cuda_backend.h): solves and
// derived outputs that return host vectors. Every call runs on a runtime::Context (the
// caller's GpuContext or the thread's cached one on the legacy default stream), in
// chunks of at most max_batch_per_launch() problems, and takes one road for host and
// device views (sinkhorn_stage.cpp). A solve keeps its staged problem and potentials
// in a SolveState (SinkhornResult::state) that the derived outputs of the same
// problem reuse.
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
                     std::uint64_t seed, void* out, cudaStream_t s, std::int64_t batch_offset) {
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
      // One pass: the balanced potential Ft and the weighted mean together.
      kernels::online_weighted_mean(d.online(true, eps, nullptr), euclid ? 1 : 0, c.T, s, d.Ft);
      kernels::finish_gradient(d.X, c.T, d.a, d.F, d.Ft, eps, ratio, euclid,
                               static_cast<float*>(out), sh.batch, sh.n, sh.d, pl.dp, s);
      return;
    }
    case DerivedKind::sample:
      if (pl.cost == CostKind::matrix) {
        kernels::dense_sample(d.C, d.logB, d.G, eps, seed, static_cast<std::int64_t*>(out),
                              sh.batch, sh.n, sh.m, s, batch_offset);
      } else {
        kernels::OnlinePass p = d.online(true, eps, nullptr);
        p.batch_offset = batch_offset;
        kernels::online_sample(p, seed, static_cast<std::int64_t*>(out), s);
      }
      return;
  }
}

SolveState::~SolveState() {
  // Never throws; statuses are ignored on purpose (this may run at process exit). The
  // calling thread's current device is restored: the last copy of a result may die on
  // any thread.
  int current = 0;
  const bool restore = cudaGetDevice(&current) == cudaSuccess && current != device;
  if (cudaSetDevice(device) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  for (const Chunk& ch : chunks) {
    if (ch.mem != nullptr) (void)cudaFreeAsync(ch.mem, nullptr);
  }
  if (restore) (void)cudaSetDevice(current);
  cudaGetLastError();
}

namespace {

runtime::Context& context_of(GpuContext* ctx, int device) {
  runtime::Context& c = runtime::context_or_thread(ctx, device);
  c.activate();
  return c;
}

/// Bytes of one chunk's state and, with a base, the chunk's pointers into it.
std::size_t layout_state(const DevicePlan& pl, void* base, SolveState::Chunk* ch) {
  const auto& sh = pl.shape;
  const auto B = static_cast<std::size_t>(sh.batch);
  const auto nB = B * static_cast<std::size_t>(sh.n), mB = B * static_cast<std::size_t>(sh.m);
  const auto dp = static_cast<std::size_t>(pl.dp);
  const bool pts = pl.cost != CostKind::matrix;
  Carver cv(base);
  const float* X = cv.take<float>(pts ? nB * dp : 0);
  const float* Y = cv.take<float>(pts ? mB * dp : 0);
  const float* C = cv.take<float>(pts ? 0 : nB * static_cast<std::size_t>(sh.m));
  const float* logA = cv.take<float>(nB);
  const float* logB = cv.take<float>(mB);
  const double* a = cv.take<double>(nB);
  const double* b = cv.take<double>(mB);
  const double* center = cv.take<double>(pts ? B * dp : 0);
  const float* F = cv.take<float>(nB);
  const float* G = cv.take<float>(mB);
  const float* eps = cv.take<float>(B);
  if (ch != nullptr) {
    ch->X = X;
    ch->Y = Y;
    ch->C = C;
    ch->logA = logA;
    ch->logB = logB;
    ch->a = a;
    ch->b = b;
    ch->center = center;
    ch->F = F;
    ch->G = G;
    ch->eps = eps;
  }
  return cv.used();
}

void copy_d2d(const void* dst, const void* src, std::size_t bytes, cudaStream_t s) {
  if (bytes == 0 || src == nullptr) return;
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(const_cast<void*>(dst), src, bytes, cudaMemcpyDeviceToDevice, s));
}

}  // namespace

/// Copies what the derived outputs need out of the workspace into a chunk state of its
/// own (stream-ordered allocation from the device's pool).
SolveState::Chunk keep_state(const DevicePlan& pl, const Carved& c, std::int64_t begin,
                             cudaStream_t s) {
  SolveState::Chunk ch;
  ch.begin = begin;
  ch.count = pl.shape.batch;
  const std::size_t bytes = layout_state(pl, nullptr, nullptr);
  const cudaError_t st = cudaMallocAsync(&ch.mem, bytes, s);
  if (st == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw OutOfMemory(fmt::format(
        "cuda backend: cannot allocate {} bytes of device memory for the solve's state", bytes));
  }
  OTGPU_CUDA_CHECK(st);
  (void)layout_state(pl, ch.mem, &ch);
  const auto& sh = pl.shape;
  const auto B = static_cast<std::size_t>(sh.batch);
  const auto nB = B * static_cast<std::size_t>(sh.n), mB = B * static_cast<std::size_t>(sh.m);
  const auto dp = static_cast<std::size_t>(pl.dp);
  const DeviceSolve& d = c.d;
  if (d.points()) {
    copy_d2d(ch.X, d.X, nB * dp * sizeof(float), s);
    copy_d2d(ch.Y, d.Y, mB * dp * sizeof(float), s);
    copy_d2d(ch.center, c.center, B * dp * sizeof(double), s);
  } else {
    copy_d2d(ch.C, d.C, nB * static_cast<std::size_t>(sh.m) * sizeof(float), s);
  }
  copy_d2d(ch.logA, d.logA, nB * sizeof(float), s);
  copy_d2d(ch.logB, d.logB, mB * sizeof(float), s);
  copy_d2d(ch.a, d.a, nB * sizeof(double), s);
  copy_d2d(ch.b, d.b, mB * sizeof(double), s);
  copy_d2d(ch.F, d.F, nB * sizeof(float), s);
  copy_d2d(ch.G, d.G, mB * sizeof(float), s);
  copy_d2d(ch.eps, d.eps_target(), B * sizeof(float), s);
  return ch;
}

namespace {

/// One chunk of a synchronous solve (B <= max_batch_per_launch()), host or device
/// views: raw upload of the host bytes, staging and checks on the device, the loop with
/// the lagged convergence poll, the report; appends to r and keeps the chunk's state.
void solve_chunk(runtime::Context& ctx, const SinkhornProblem& problem, const SinkhornOptions& o,
                 const detail::SinkhornShape& shape, std::int64_t begin, SinkhornResult& r,
                 SolveState& state) {
  const DevicePlan pl = plan_device(problem, o, shape, ctx.device(), true);
  const auto B = static_cast<std::size_t>(shape.batch);
  const auto nB = B * static_cast<std::size_t>(shape.n), mB = B * static_cast<std::size_t>(shape.m);
  const auto f0 = static_cast<std::size_t>(begin) * static_cast<std::size_t>(shape.n);
  const auto g0 = static_cast<std::size_t>(begin) * static_cast<std::size_t>(shape.m);

  RawUpload up;
  const HostViews hv = add_host_views(problem, up);
  const std::size_t f_slot =
      o.f_init.empty() ? 0 : up.add(o.f_init.data() + f0, nB * sizeof(double));
  const std::size_t g_slot =
      o.g_init.empty() ? 0 : up.add(o.g_init.data() + g0, mB * sizeof(double));

  const cudaStream_t s = ctx.stream();
  StagedSolve st = stage_solve(ctx, problem, o, pl, up, hv);
  Carved& c = st.c;
  const std::vector<double>& mean = st.mean;
  init_potentials(o.f_init.empty() ? nullptr : up.device(f_slot),
                  o.g_init.empty() ? nullptr : up.device(g_slot), c.d, s);

  Poller poller = context_poller(ctx);
  poller.eps = o.eps * (o.eps_relative ? *std::max_element(mean.begin(), mean.end()) : 1.0);
  check_eps_fp32(c.d, o, o.eps_relative ? mean : std::vector<double>{}, begin, s);
  enqueue_iterations(c.d, o, ctx.device(), s, &poller, &ctx);
  enqueue_finalize(c.d, o, s);
  state.chunks.push_back(keep_state(pl, c, begin, s));

  std::vector<float> f(nB), g(mB);
  std::vector<double> out4(4 * B);
  std::vector<int> iters(B);
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(f.data(), c.d.F, nB * sizeof(float), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(g.data(), c.d.G, mB * sizeof(float), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(out4.data(), c.d.out4, out4.size() * sizeof(double),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(iters.data(), c.d.iters, iters.size() * sizeof(int),
                                   cudaMemcpyDeviceToHost, s));
  // The over-relaxed loop: what ran per problem (omega, rejected checks).
  std::vector<double> omega(poller.relaxed ? B : 0);
  std::vector<int> failures(poller.relaxed ? B : 0);
  if (poller.relaxed) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(omega.data(), c.d.acc.omega, B * sizeof(double),
                                     cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(failures.data(), c.d.acc.failures, B * sizeof(int),
                                     cudaMemcpyDeviceToHost, s));
  }
  std::vector<int> unfinished(poller.cancelled ? B : 0);  // cancelled: the active flags
  if (poller.cancelled)
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(unfinished.data(), c.d.active, B * sizeof(int), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  SinkhornResult part =
      make_result(o, shape, f, g, out4, iters, o.eps_relative ? mean : std::vector<double>(B, 1.0));
  r.precision = pl.plan.precision;  // what computed the costs (sinkhorn_mma.h)
  r.tensor_cores = pl.plan.tensor_cores;
  for (std::size_t b = 0; b < unfinished.size(); ++b)
    if (unfinished[b] != 0) part.problems[b].converged = false;
  for (std::size_t b = 0; b < omega.size(); ++b) {
    // As the CPU reports it: overrelax when some period ran with w > 1 (a rejected
    // check implies one), the last w.
    auto& rep = part.problems[b];
    rep.omega = omega[b];
    rep.acceleration = omega[b] > 1.0 || failures[b] > 0 ? SinkhornAcceleration::overrelax
                                                         : SinkhornAcceleration::none;
  }
  r.cancelled = r.cancelled || poller.cancelled;
  r.f.insert(r.f.end(), part.f.begin(), part.f.end());
  r.g.insert(r.g.end(), part.g.begin(), part.g.end());
  r.problems.insert(r.problems.end(), part.problems.begin(), part.problems.end());
}

detail::SinkhornShape chunk_shape(const detail::SinkhornShape& shape, const BatchChunk& ch) {
  detail::SinkhornShape s = shape;
  s.batch = ch.count;
  return s;
}

/// The state of `result` when it was kept for this very problem on this device.
const SolveState* usable_state(const SinkhornProblem& problem, const SinkhornResult& result,
                               int device) {
  if (!result.state || result.backend != Backend::cuda) return nullptr;
  const auto* st = static_cast<const SolveState*>(result.state.get());
  if (st->device != device || !same_problem(st->key, problem)) return nullptr;
  return st;
}

/// One derived output over every chunk: from the result's state when it belongs to
/// the problem, else the problem is staged again (same road as a solve) with the
/// result's potentials and eps uploaded.
template <class Out>
std::vector<Out> derived(DerivedKind what, const SinkhornProblem& problem,
                         const SinkhornResult& result, const detail::SinkhornShape& shape,
                         std::uint64_t seed, int device, GpuContext* gctx) {
  runtime::Context& ctx = context_of(gctx, device);
  const cudaStream_t s = ctx.stream();
  const SolveState* st = usable_state(problem, result, ctx.device());
  const std::int64_t per = what == DerivedKind::sample ? shape.n : shape.n * shape.d;
  std::vector<Out> out(static_cast<std::size_t>(shape.batch * per));
  const auto chunks = batch_chunks(shape.batch, max_batch_per_launch());
  for (std::size_t k = 0; k < chunks.size(); ++k) {
    const BatchChunk& bc = chunks[k];
    const SinkhornProblem sub = slice_batch(problem, shape, bc.begin, bc.count);
    const detail::SinkhornShape sh = chunk_shape(shape, bc);
    const DevicePlan pl = plan_device(sub, SinkhornOptions{}, sh, ctx.device(), false);
    const auto B = static_cast<std::size_t>(bc.count);
    const auto nB = B * static_cast<std::size_t>(sh.n), mB = B * static_cast<std::size_t>(sh.m);
    const std::size_t count = B * static_cast<std::size_t>(per);
    const SolveState::Chunk* kept = st != nullptr && k < st->chunks.size() &&
                                            st->chunks[k].begin == bc.begin &&
                                            st->chunks[k].count == bc.count
                                        ? &st->chunks[k]
                                        : nullptr;

    RawUpload up;
    HostViews hv;
    std::size_t f_slot = 0, g_slot = 0, e_slot = 0;
    std::vector<double> eps;
    if (kept == nullptr) {
      hv = add_host_views(sub, up);
      const auto f0 = static_cast<std::size_t>(bc.begin * sh.n);
      const auto g0 = static_cast<std::size_t>(bc.begin * sh.m);
      f_slot = up.add(result.f.data() + f0, nB * sizeof(double));
      g_slot = up.add(result.g.data() + g0, mB * sizeof(double));
      eps.resize(B);
      for (std::size_t b = 0; b < B; ++b)
        eps[b] = result.problems[static_cast<std::size_t>(bc.begin) + b].eps;
      e_slot = up.add(eps.data(), B * sizeof(double));
    }
    Carver counter(nullptr);
    (void)carve(counter, pl, kept == nullptr, true);
    (void)counter.take<unsigned char>(up.bytes());
    (void)counter.take<Out>(count);
    void* const ws = ctx.workspace(counter.used());
    Carver cv(ws);
    Carved c = carve(cv, pl, kept == nullptr, true);
    void* const raw = cv.take<unsigned char>(up.bytes());
    Out* const dOut = cv.take<Out>(count);
    const double* ratio = nullptr;
    if (kept != nullptr) {
      // The problem as solved: b already carries the balancing factor, so r_i needs none.
      c.d.X = kept->X;
      c.d.Y = kept->Y;
      c.d.C = kept->C;
      c.d.logA = kept->logA;
      c.d.logB = kept->logB;
      c.d.a = kept->a;
      c.d.b = kept->b;
      c.d.F = const_cast<float*>(kept->F);
      c.d.G = const_cast<float*>(kept->G);
      c.d.eps_tab = kept->eps;
      c.center = const_cast<double*>(kept->center);
    } else {
      up.run(ctx, raw);
      const SinkhornProblem dev = device_problem(sub, hv, up);
      stage_inputs(dev, pl, c, s);
      enqueue_checks(pl, c, s);
      stage_center(pl, c, false, s);
      (void)check_device_inputs(sub, pl, c, false, false, s);
      convert_doubles(up.device(f_slot), static_cast<std::int64_t>(nB), c.d.F, s);
      convert_doubles(up.device(g_slot), static_cast<std::int64_t>(mB), c.d.G, s);
      convert_doubles(up.device(e_slot), static_cast<std::int64_t>(B),
                      const_cast<float*>(c.d.eps_tab), s);
      // Without the solve's options, b is taken as rescaled when the masses agree.
      if (what == DerivedKind::gradient) {
        kernels::mass_ratio(c.d.a, c.d.b, sh.batch, sh.n, sh.m, detail::kMassTolerance, c.ratio, s);
        ratio = c.ratio;
      }
    }
    enqueue_derived(what, pl, c, ratio, seed, dOut, s, bc.begin);
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(out.data() + static_cast<std::size_t>(bc.begin * per), dOut,
                                     count * sizeof(Out), cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  return out;
}

}  // namespace

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& o,
                        const detail::SinkhornShape& shape, GpuContext* gctx) {
  runtime::Context& ctx = context_of(gctx, o.device);
  SinkhornResult r;
  r.backend = Backend::cuda;
  r.device = ctx.device();
  r.batch = shape.batch;
  r.n = shape.n;
  r.m = shape.m;
  r.d = shape.d;
  auto state = std::make_shared<SolveState>();
  state->key = problem;
  state->device = ctx.device();
  for (const BatchChunk& bc : batch_chunks(shape.batch, max_batch_per_launch())) {
    solve_chunk(ctx, slice_batch(problem, shape, bc.begin, bc.count), o, chunk_shape(shape, bc),
                bc.begin, r, *state);
  }
  r.state = std::move(state);
  return r;
}

std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape, int device,
                                    GpuContext* ctx) {
  const auto m = derived<float>(DerivedKind::map, problem, result, shape, 0, device, ctx);
  return {m.begin(), m.end()};
}

std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape, int device, GpuContext* ctx) {
  const auto g = derived<float>(DerivedKind::gradient, problem, result, shape, 0, device, ctx);
  return {g.begin(), g.end()};
}

std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed,
                                          int device, GpuContext* ctx) {
  return derived<std::int64_t>(DerivedKind::sample, problem, result, shape, seed, device, ctx);
}

}  // namespace otgpu::cuda_backend
