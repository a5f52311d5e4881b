// The iteration loop of the CUDA Sinkhorn backend: the half-steps, the periodic
// convergence checks (whose f-update is reused as the next F), the check periods
// captured once as a CUDA graph (replayed by the synchronous API, looped on the device
// by a conditional WHILE node for the stream-ordered API) and the final report.
//
// Iteration schedule (identical to the CPU reference's, iteration for iteration):
//   t = 0 .. max_iter-1: F = f-update(G, eps_t, lambda_a), G = g-update(F, eps_t, lambda_b);
//   a check after iteration t when check_every > 0, (t+1) % check_every == 0 and t >= K.
// The loop is cut into
//   prefix  [0, t0): plain launches, ending with the first check (t0 - 1 = t_first);
//   periods [t0 + p ce, t0 + (p+1) ce), p < P: each starts with F = lambda_a Ft (the
//           previous check's f-update at the target eps) and ends with a check;
//   tail    [t0 + P ce, max_iter): fewer than ce iterations, no check.
// The synchronous API reads each check's active count and largest residual one period
// late (poll) and hands them to SinkhornOptions::progress; a callback returning false
// stops the enqueueing there.
#include <chrono>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "otgpu/detail/eps_continuation.h"
#include "sinkhorn_internal.h"

namespace otgpu::cuda_backend {

namespace {

/// OTGPU_LOOP=plain forces plain launches (tests and the bench's "before" row).
bool forced_plain() {
  const char* e = std::getenv("OTGPU_LOOP");
  return e != nullptr && std::string_view(e) == "plain";
}

/// The f-half of iteration t at row min(t, K) of the eps tables. reuse: the previous
/// iteration ended with a check at the target eps: F = lambda_a Ft.
void enqueue_f_half(const DeviceSolve& d, int t, bool reuse, cudaStream_t s) {
  const auto B = static_cast<std::size_t>(d.B);
  const std::size_t row = static_cast<std::size_t>(std::min(t, d.K)) * B;
  const float* e = d.eps_tab + row;
  const float* la = d.lam_a_tab + row;
  if (reuse) {
    kernels::loop_reuse_f(d.Ft, la, d.active, d.F, d.B, d.n, s);
  } else if (d.points()) {
    kernels::online_half_step(d.online(true, e, d.active), la, d.F, s);
  } else {
    kernels::dense_row_update(d.C, d.logB, d.G, e, la, d.active, d.F, d.B, d.n, d.m, s);
  }
}

/// The g-half of iteration t at row min(t, K) of the eps tables.
void enqueue_g_half(const DeviceSolve& d, int t, cudaStream_t s) {
  const auto B = static_cast<std::size_t>(d.B);
  const std::size_t row = static_cast<std::size_t>(std::min(t, d.K)) * B;
  const float* e = d.eps_tab + row;
  const float* lb = d.lam_b_tab + row;
  if (d.points()) {
    kernels::online_half_step(d.online(false, e, d.active), lb, d.G, s);
  } else {
    kernels::dense_col_update(d.C, d.logA, d.F, e, lb, d.active, d.G, d.col_ws, d.col_ws_bytes, d.B,
                              d.n, d.m, s);
  }
}

/// One iteration t (f- then g-update) at row min(t, K) of the eps tables. reuse: the
/// previous iteration ended with a check at the target eps: F = lambda_a Ft.
void enqueue_iteration(const DeviceSolve& d, int t, bool reuse, cudaStream_t s) {
  enqueue_f_half(d, t, reuse, s);
  enqueue_g_half(d, t, s);
}

/// The check after an iteration: Ft = the balanced f-update at the target eps, the
/// residual, retirement and the active count (of iteration state[0] + offset).
void enqueue_check(const DeviceSolve& d, const SinkhornOptions& o, const int* state, int offset,
                   cudaStream_t s) {
  const float* eps_target = d.eps_target();
  if (d.points()) {
    kernels::online_half_step(d.online(true, eps_target, d.active), nullptr, d.Ft, s);
  } else {
    kernels::dense_row_update(d.C, d.logB, d.G, eps_target, nullptr, d.active, d.Ft, d.B, d.n, d.m,
                              s);
  }
  OTGPU_CUDA_CHECK(cudaMemsetAsync(d.count, 0, sizeof(int), s));
  if (d.check_max() != nullptr)
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.check_max(), 0, sizeof(double), s));
  kernels::loop_check_residual(d.a, d.F, d.Ft, eps_target, d.lam_a_target(), o.tol, state, offset,
                               d.active, d.iters, d.res, d.count, d.check_max(), d.B, d.n, s);
}

/// One check period of ce iterations at the target eps, after a check.
void enqueue_period(const DeviceSolve& d, const SinkhornOptions& o, cudaStream_t s) {
  for (int k = 0; k < o.check_every; ++k) enqueue_iteration(d, d.K, k == 0, s);
  enqueue_check(d, o, d.loop, o.check_every, s);
}

/// Plain launches of iterations [t_begin, t_end). reuse_first: iteration t_begin
/// follows a check. Returns true when the poller saw every problem retired.
bool plain_iterations(const DeviceSolve& d, const SinkhornOptions& o, int t_begin, int t_end,
                      bool reuse_first, cudaStream_t s, Poller* poller) {
  bool after_check = reuse_first;
  for (int t = t_begin; t < t_end; ++t) {
    enqueue_iteration(d, t, after_check, s);
    after_check = o.check_every > 0 && (t + 1) % o.check_every == 0 && t >= d.K;
    if (!after_check) continue;
    enqueue_check(d, o, nullptr, t + 1, s);
    if (poll(d, o, t + 1, poller, s)) return true;
  }
  return false;
}

/// After a cancelled solve: the problems still active ran `stopped_at` iterations
/// (their count was preset to max_iter).
void stop_unfinished(const DeviceSolve& d, const Poller* poller, cudaStream_t s) {
  if (poller != nullptr && poller->cancelled)
    kernels::loop_stop_unfinished(d.active, d.iters, poller->stopped_at, d.B, s);
}

// ------------------------------------------------------ accelerated loop ----
//
// The synchronous loop when the options ask for the eps continuation (eps_init kAuto)
// or over-relaxation: plain launches (no period graph), every decision per problem
// on the device by the CPU reference's rules, so that no decision waits for the
// host's lagged reads (those only stop the enqueueing and feed progress).

/// Whether the accelerated loop runs this synchronous solve.
bool wants_accel(const DeviceSolve& d, const SinkhornOptions& o, const Poller* poller) {
  if (poller == nullptr || !d.acc.valid()) return false;
  return o.eps_init == kAuto ||
         (o.acceleration == SinkhornAcceleration::overrelax && o.check_every > 0);
}

/// Sets up the eps continuation's per-problem state (kernels::continuation_init) and
/// reads back whether any problem of the solve scales (one host sync). a.range: the
/// cost range measured by check_eps_fp32, which every solve that reaches the
/// accelerated loop ran first (solve_chunk).
bool continuation_scales(const DeviceSolve& d, const SinkhornOptions& o, cudaStream_t s) {
  const AccelArrays& a = d.acc;
  if (o.eps_init != kAuto || !a.valid()) return false;
  kernels::continuation_init(d.eps_target(), a.range, o.rho_a, o.rho_b, a.eps_cur, a.lam_a_cur,
                             a.lam_b_cur, a.level_iters, a.scaling, d.B, s);
  int scaling = 0;
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(&scaling, a.scaling, sizeof(int), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return scaling != 0;
}

void copy_floats(float* dst, const float* src, std::int64_t count, cudaStream_t s) {
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(count) * sizeof(float),
                                   cudaMemcpyDeviceToDevice, s));
}

/// The relaxation rule at a check (kernels::sinkhorn_overrelax_rule: only problems at
/// their target eps that did not converge; eps_cur nullptr: every problem is at its
/// target) and the commit: accepted -> (F, G, Ft) saved as the restore point;
/// rejected -> restored from it.
void relax_check(const DeviceSolve& d, const SinkhornOptions& o, const float* eps_cur,
                 cudaStream_t s) {
  const AccelArrays& a = d.acc;
  kernels::sinkhorn_overrelax_rule(d.res, o.check_every, o.tol, eps_cur, d.eps_target(), d.active,
                                   a.omega, a.prev_res, a.prev_rate, a.failures, a.restore, d.B, s);
  kernels::sinkhorn_overrelax_commit(d.F, d.G, a.F_saved, a.G_saved, a.restore, d.active, d.B, d.n,
                                     d.m, s);
  kernels::sinkhorn_overrelax_commit(d.Ft, nullptr, a.Ft_saved, nullptr, a.restore, d.active, d.B,
                                     d.n, 0, s);
}

/// The accelerated synchronous loop, in the CPU reference's order iteration for
/// iteration (cpu_sinkhorn.cpp, ProblemSolver::solve), every decision per problem on
/// the device by the shared rules (otgpu/detail/eps_continuation.h, accel.h):
///   - levels (eps_init kAuto, while some problem may be above eps): each problem
///     iterates at its own eps_t (the eps_cur / lambda tables of
///     kernels::continuation_init), every iteration checks at eps_t (retiring nothing:
///     tol -1), then at check iterations the relaxation rule of the problems at eps
///     (before the level step: a problem whose level ends at t was not at eps during
///     t, as on the CPU) and kernels::continuation_step (next level, or at eps and at
///     a check iteration, retirement). The host reads how many problems are above
///     eps every kEpsLevelMaxIters iterations (no level lasts longer) and leaves this
///     part once none is; it lasts at most detail::eps_continuation_max_iters;
///   - then the target tables (plain during an explicit geometric schedule, t < K),
///     the check at check iterations retiring converged problems, then the rule.
/// Over-relaxation (acceleration overrelax, checks on): F_prev = F; F = f-update (or
/// lambda_a Ft after a check at the target); F = (1-w) F_prev + w F; G likewise,
/// except a plain G at a check iteration and at the last iteration. A problem at a
/// level has w = 1 (the rule never ran for it). The rule's period is check_every: the
/// first check at eps only records its residual (OverrelaxState::prev_residual < 0), and
/// every later one comes check_every iterations after the previous.
void accel_iterations(const DeviceSolve& d, const SinkhornOptions& o, cudaStream_t s,
                      Poller* poller) {
  const AccelArrays& a = d.acc;
  const int ce = o.check_every;
  const bool relax = o.acceleration == SinkhornAcceleration::overrelax && ce > 0;
  int levels_end = 0;
  if (o.eps_init == kAuto && continuation_scales(d, o, s))
    levels_end = std::min(o.max_iter, detail::eps_continuation_max_iters(o.eps_decay));
  // The same loop pieces, with the per-problem level eps as the only table row.
  DeviceSolve lv = d;
  lv.K = 0;
  lv.eps_tab = a.eps_cur;
  lv.lam_a_tab = a.lam_a_cur;
  lv.lam_b_tab = a.lam_b_cur;
  SinkhornOptions no_retire = o;
  no_retire.tol = -1.0;
  if (relax) {
    kernels::overrelax_state_init(a.omega, a.prev_res, a.prev_rate, a.failures, a.restore, d.B, s);
    poller->relaxed = true;
  }
  bool after_check = false;
  for (int t = 0; t < o.max_iter; ++t) {
    const bool levels = t < levels_end;
    const DeviceSolve& cur = levels ? lv : d;
    const bool check_now = ce > 0 && (t + 1) % ce == 0 && t >= d.K;
    const bool relax_f = relax && t >= d.K;
    const bool relax_g = relax_f && !check_now && t + 1 != o.max_iter;
    if (relax_f) copy_floats(a.F_prev, d.F, d.B * d.n, s);
    enqueue_f_half(cur, t, after_check, s);
    if (relax_f) kernels::sinkhorn_overrelax(d.F, a.F_prev, a.omega, d.active, d.B, d.n, s);
    if (relax_g) copy_floats(a.G_prev, d.G, d.B * d.m, s);
    enqueue_g_half(cur, t, s);
    if (relax_g) kernels::sinkhorn_overrelax(d.G, a.G_prev, a.omega, d.active, d.B, d.m, s);
    if (levels) {
      after_check = false;  // the check ran at each problem's eps_t: no reuse
      const bool count_levels = (t + 1) % detail::kEpsLevelMaxIters == 0;
      enqueue_check(lv, no_retire, nullptr, t + 1, s);
      if (relax && check_now) relax_check(d, o, a.eps_cur, s);
      kernels::continuation_step(d.res, d.eps_target(), o.tol, ce, t + 1, o.eps_decay, o.rho_a,
                                 o.rho_b, d.active, d.iters, d.count, a.eps_cur, a.lam_a_cur,
                                 a.lam_b_cur, a.level_iters, count_levels ? a.scaling : nullptr,
                                 d.B, s);
      if (check_now && poll(d, o, t + 1, poller, s)) return;
      if (count_levels) {
        // Synchronous, a handful of times per solve.
        int left = 0;
        OTGPU_CUDA_CHECK(cudaMemcpyAsync(&left, a.scaling, sizeof(int), cudaMemcpyDeviceToHost, s));
        OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
        if (left == 0) levels_end = t + 1;
      }
      continue;
    }
    after_check = check_now;
    if (!check_now) continue;
    enqueue_check(d, o, nullptr, t + 1, s);
    if (relax) relax_check(d, o, nullptr, s);
    if (poll(d, o, t + 1, poller, s)) return;
  }
}

// ------------------------------------------------------------------ graphs ----

/// One cached executable graph and what it bakes in.
struct GraphEntry {
  std::vector<std::uint64_t> key;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t done = nullptr;  ///< recorded after the last launch of exec
  bool launched = false;

  GraphEntry() = default;
  GraphEntry(const GraphEntry&) = delete;
  GraphEntry& operator=(const GraphEntry&) = delete;
  ~GraphEntry() {
    if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    if (done != nullptr) (void)cudaEventDestroy(done);
  }
};

/// The loop's graphs, kept in the runtime context (Context::loop_cache).
struct LoopCache final : runtime::Context::Cache {
  cudaStream_t capture = nullptr;  ///< capture-only stream (the legacy stream cannot capture)
  GraphEntry period;               ///< one check period (synchronous API)
  GraphEntry looped;               ///< gate + WHILE(period) (stream-ordered API)
  ~LoopCache() override {
    if (capture != nullptr) (void)cudaStreamDestroy(capture);
  }
};

LoopCache& loop_cache(runtime::Context& ctx) {
  auto& slot = ctx.loop_cache();
  if (!slot) slot = std::make_unique<LoopCache>();
  auto& cache = static_cast<LoopCache&>(*slot);
  if (cache.capture == nullptr)
    OTGPU_CUDA_CHECK(cudaStreamCreateWithFlags(&cache.capture, cudaStreamNonBlocking));
  return cache;
}

template <class T>
std::uint64_t bits(T v) {
  std::uint64_t out = 0;
  static_assert(sizeof(T) <= sizeof(out));
  std::memcpy(&out, &v, sizeof(T));
  return out;
}

/// Everything a period graph bakes in: sizes, options, splits, pointers and which
/// half-step kernels the captured launches chose (tensor cores and their precision).
std::vector<std::uint64_t> graph_key(const DeviceSolve& d, const SinkhornOptions& o, int mode,
                                     int t_limit) {
  return {bits(mode),
          bits(d.B),
          bits(d.n),
          bits(d.m),
          bits(d.dp),
          bits(static_cast<int>(d.cost)),
          bits(d.K),
          bits(o.check_every),
          bits(o.tol),
          bits(t_limit),
          bits(d.f_splits),
          bits(d.g_splits),
          bits(d.X),
          bits(d.Y),
          bits(d.C),
          bits(d.logA),
          bits(d.logB),
          bits(d.a),
          bits(d.F),
          bits(d.G),
          bits(d.Ft),
          bits(d.eps_tab),
          bits(d.lam_a_tab),
          bits(d.lam_b_tab),
          bits(d.active),
          bits(d.iters),
          bits(d.res),
          bits(d.count),
          bits(d.col_ws),
          bits(d.col_ws_bytes),
          bits(d.partials),
          bits(d.partials_floats),
          bits(d.loop),
          bits(d.tensor_cores),
          bits(static_cast<int>(d.precision))};
}

/// Records fn's launches on the capture stream into `graph` (nullptr: a new graph,
/// returned). Ends the capture whatever happens, so the stream is never left capturing.
template <class Fn>
cudaGraph_t capture(cudaStream_t cs, cudaGraph_t graph, Fn&& fn) {
  if (graph != nullptr) {
    OTGPU_CUDA_CHECK(cudaStreamBeginCaptureToGraph(cs, graph, nullptr, nullptr, 0,
                                                   cudaStreamCaptureModeThreadLocal));
  } else {
    OTGPU_CUDA_CHECK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal));
  }
  try {
    fn(cs);
  } catch (...) {
    cudaGraph_t broken = nullptr;
    (void)cudaStreamEndCapture(cs, &broken);
    if (graph == nullptr && broken != nullptr) (void)cudaGraphDestroy(broken);
    (void)cudaGetLastError();
    throw;
  }
  cudaGraph_t out = nullptr;
  OTGPU_CUDA_CHECK(cudaStreamEndCapture(cs, &out));
  return out;
}

/// Makes e.exec run `graph` (whose key is `key`): cudaGraphExecUpdate when allowed
/// and the topology permits, else a new instantiation once the old one's launches are
/// done (destroying an executable graph in flight is undefined). Conditional nodes
/// cannot be updated (their handle belongs to the graph that created it), so the
/// looped graph passes update = false and a changed key costs one wait for the
/// previous call's loop.
void install(GraphEntry& e, cudaGraph_t graph, std::vector<std::uint64_t> key, bool update) {
  if (e.exec != nullptr && update) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(e.exec, graph, &info) == cudaSuccess) {
      if (e.graph != nullptr) (void)cudaGraphDestroy(e.graph);
      e.graph = graph;
      e.key = std::move(key);
      return;
    }
    (void)cudaGetLastError();
  }
  if (e.exec != nullptr) {
    // The old executable may still run on some stream.
    if (e.launched) OTGPU_CUDA_CHECK(cudaEventSynchronize(e.done));
    (void)cudaGraphExecDestroy(e.exec);
    e.exec = nullptr;
  }
  if (e.graph != nullptr) (void)cudaGraphDestroy(e.graph);
  e.graph = graph;
  e.key.clear();
  OTGPU_CUDA_CHECK(cudaGraphInstantiate(&e.exec, graph, 0));
  if (e.done == nullptr)
    OTGPU_CUDA_CHECK(cudaEventCreateWithFlags(&e.done, cudaEventDisableTiming));
  e.launched = false;
  e.key = std::move(key);
}

/// The period graph of the synchronous API: one check period, then state += ce.
GraphEntry& period_graph(LoopCache& cache, const DeviceSolve& d, const SinkhornOptions& o,
                         int t_limit) {
  auto key = graph_key(d, o, 0, t_limit);
  GraphEntry& e = cache.period;
  if (e.exec != nullptr && e.key == key) return e;
  cudaGraph_t g = capture(cache.capture, nullptr, [&](cudaStream_t cs) {
    enqueue_period(d, o, cs);
    kernels::loop_advance(d.loop, o.check_every, cs);
  });
  try {
    install(e, g, std::move(key), true);
  } catch (...) {
    if (e.graph != g) (void)cudaGraphDestroy(g);
    throw;
  }
  return e;
}

#if defined(CUDART_VERSION) && CUDART_VERSION >= 12040
/// The looped graph of the stream-ordered API: gate -> WHILE { period; gate }.
GraphEntry& looped_graph(LoopCache& cache, const DeviceSolve& d, const SinkhornOptions& o,
                         int t_limit) {
  auto key = graph_key(d, o, 1, t_limit);
  GraphEntry& e = cache.looped;
  if (e.exec != nullptr && e.key == key) return e;
  const int ce = o.check_every;
  cudaGraph_t parent = nullptr;
  OTGPU_CUDA_CHECK(cudaGraphCreate(&parent, 0));
  try {
    cudaGraphConditionalHandle handle = 0;
    OTGPU_CUDA_CHECK(cudaGraphConditionalHandleCreate(&handle, parent, 0, 0));
    // The first gate reads the prefix's check: no period runs when nothing is active.
    (void)capture(cache.capture, parent, [&](cudaStream_t cs) {
      kernels::loop_gate(handle, d.loop, 0, ce, d.count, t_limit, cs);
    });
    std::size_t count = 0;
    OTGPU_CUDA_CHECK(cudaGraphGetNodes(parent, nullptr, &count));
    std::vector<cudaGraphNode_t> roots(count);
    OTGPU_CUDA_CHECK(cudaGraphGetNodes(parent, roots.data(), &count));
    cudaGraphNodeParams cp{};
    cp.type = cudaGraphNodeTypeConditional;
    cp.conditional.handle = handle;
    cp.conditional.type = cudaGraphCondTypeWhile;
    cp.conditional.size = 1;
    cudaGraphNode_t node = nullptr;
#if CUDART_VERSION >= 13000
    OTGPU_CUDA_CHECK(cudaGraphAddNode(&node, parent, roots.data(), nullptr, count, &cp));
#else  // 12.4 - 12.x: no edge data in cudaGraphAddNode
    OTGPU_CUDA_CHECK(cudaGraphAddNode(&node, parent, roots.data(), count, &cp));
#endif
    cudaGraph_t body = cp.conditional.phGraph_out[0];
    (void)capture(cache.capture, body, [&](cudaStream_t cs) {
      enqueue_period(d, o, cs);
      kernels::loop_gate(handle, d.loop, ce, ce, d.count, t_limit, cs);
    });
    install(e, parent, std::move(key), false);
  } catch (...) {
    if (e.graph != parent) (void)cudaGraphDestroy(parent);
    throw;
  }
  return e;
}
#endif

/// Launches e.exec and records e.done behind it at once, so that install() waits for
/// this launch even when the caller leaves (an exception of poll) before the loop ends.
void launch(GraphEntry& e, cudaStream_t s) {
  OTGPU_CUDA_CHECK(cudaGraphLaunch(e.exec, s));
  e.launched = true;
  OTGPU_CUDA_CHECK(cudaEventRecord(e.done, s));
}

}  // namespace

void check_eps_fp32(const DeviceSolve& d, const SinkhornOptions& o, const std::vector<double>& mean,
                    std::int64_t first_problem, cudaStream_t s) {
  if (!d.acc.valid()) return;
  const auto B = static_cast<std::size_t>(d.B);
  kernels::cost_range(d.cost, d.X, d.Y, d.C, d.B, d.n, d.m, d.dp, d.acc.range, s);
  std::vector<unsigned> range(2 * B);
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(range.data(), d.acc.range, range.size() * sizeof(unsigned),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  constexpr double kUnitRoundoff = 0x1p-24;  // fp32: the kernels' scores and potentials
  constexpr double kExponentError = 5e-2;    // see detail::min_resolvable_eps
  for (std::size_t b = 0; b < B; ++b) {
    const double cmin = kernels::cost_range_value(range[2 * b]);
    const double cmax = kernels::cost_range_value(range[2 * b + 1]);
    if (!(cmin <= cmax)) continue;  // n or m = 0: nothing to resolve
    const double eps = o.eps * (mean.empty() ? 1.0 : mean[b]);
    const double max_abs = std::max(std::fabs(cmin), std::fabs(cmax));
    const double spread = cmax - cmin;
    const double lo = detail::min_resolvable_eps(max_abs, kUnitRoundoff, kExponentError);
    const double hi = detail::max_resolvable_eps(spread, kUnitRoundoff);
    const bool low = eps<lo, high = spread> 0 && eps > hi;
    if (!low && !high) continue;
    const double per = eps / o.eps;
    throw InvalidArgument(fmt::format(
        "eps: {} ({}absolute {:.3g}) is {} what the CUDA backend's float32 resolves in problem {}, "
        "whose costs span [{:.3g}, {:.3g}]: {}. The working range is {:.3g} <= eps <= {:.3g} "
        "(3.6e-6 x max|C_ij| to 1.0e6 x (max C - min C)){}; the CPU backend (float64) resolves "
        "down to 3.3e-13 x max|C_ij|",
        o.eps, o.eps_relative ? "relative; " : "", eps, low ? "below" : "above",
        first_problem + static_cast<std::int64_t>(b), cmin, cmax,
        low ? "(f_i + g_j - C_ij) / eps would be rounding noise"
            : "(g_j - C_ij) / eps would vanish below the rounding of log b_j, and with it the "
              "costs",
        lo, hi,
        o.eps_relative
            ? fmt::format(", i.e. a relative eps in [{:.3g}, {:.3g}]", lo / per, hi / per)
            : ""));
  }
}

Poller context_poller(runtime::Context& ctx) {
  Poller poller;
  poller.pinned.p = ctx.poll_slots();
  poller.ev[0].e = ctx.poll_event(0);
  poller.ev[1].e = ctx.poll_event(1);
  return poller;
}

bool poll(const DeviceSolve& d, const SinkhornOptions& o, int iteration, Poller* poller,
          cudaStream_t s) {
  if (poller == nullptr) return false;
  const int slot = poller->checks % 2;
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(poller->pinned.get() + slot, d.count, sizeof(int),
                                   cudaMemcpyDeviceToHost, s));
  if (d.check_max() != nullptr) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(poller->pinned_max() + slot, d.check_max(), sizeof(double),
                                     cudaMemcpyDeviceToHost, s));
  }
  OTGPU_CUDA_CHECK(cudaEventRecord(poller->ev[slot].get(), s));
  poller->iteration[slot] = iteration;
  bool done = false;
  if (poller->checks > 0) {
    const int prev = 1 - slot;
    OTGPU_CUDA_CHECK(cudaEventSynchronize(poller->ev[prev].get()));
    const int active = poller->pinned.get()[prev];
    if (o.progress) {
      SinkhornProgress pr;
      pr.problem = -1;
      pr.iteration = poller->iteration[prev];
      pr.eps = poller->eps;
      pr.residual = d.check_max() != nullptr ? poller->pinned_max()[prev]
                                             : std::numeric_limits<double>::quiet_NaN();
      pr.elapsed_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - poller->start).count();
      pr.active = active;
      if (!o.progress(pr)) {
        // Iterations up to `iteration` are queued already; nothing after them.
        poller->cancelled = true;
        poller->stopped_at = iteration;
        done = true;
      }
    }
    done = done || active == 0;
  }
  ++poller->checks;
  return done;
}

void enqueue_iterations(const DeviceSolve& d, const SinkhornOptions& o, int device, cudaStream_t s,
                        Poller* poller, runtime::Context* ctx) {
  // The small kernel runs its whole loop in one launch (plain updates only): it keeps
  // problems that fit it unless the eps continuation scales one of them, where the
  // iteration count, not the launch overhead, decides the time (tens of thousands of
  // plain iterations at eps = 1e-3 x the mean cost). Over-relaxation alone does not
  // take a small problem off it.
  if (wants_accel(d, o, poller) && (!small_path(d, device) || continuation_scales(d, o, s))) {
    accel_iterations(d, o, s, poller);
    stop_unfinished(d, poller, s);
    planner::set_last_loop_strategy(o.eps_init == kAuto ? "accelerated: eps continuation"
                                                        : "accelerated: over-relaxation");
    return;
  }
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
    planner::set_last_loop_strategy("in-kernel");
    return;
  }
  const int ce = o.check_every;
  const char* why = nullptr;
  const planner::LoopSchedule sched = planner::loop_schedule(d.K, ce, o.max_iter);
  const int t0 = sched.t0, periods = sched.periods;
  if (ce == 0) {
    why = "no checks";
  } else if (periods == 0) {
    why = "no whole check period";
  } else if (d.loop == nullptr) {
    why = "no device loop state";
  } else if (forced_plain()) {
    why = "OTGPU_LOOP=plain";
  } else if (poller == nullptr && !kernels::loop_conditional_supported()) {
    why = "no conditional graph nodes in this driver";
  }
  if (why != nullptr) {
    (void)plain_iterations(d, o, 0, o.max_iter, false, s, poller);
    stop_unfinished(d, poller, s);
    planner::set_last_loop_strategy(std::string("plain: ") + why);
    return;
  }
  runtime::Context& context = ctx != nullptr ? *ctx : runtime::thread_context(device);
  LoopCache& cache = loop_cache(context);
  const int t_limit = sched.t_limit;

  // Build the graph first: a capture that fails leaves the plain loop intact.
  GraphEntry* entry = nullptr;
  std::string strategy;
  try {
    if (poller != nullptr) {
      entry = &period_graph(cache, d, o, t_limit);
      strategy = "graph";
    } else {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12040
      entry = &looped_graph(cache, d, o, t_limit);
      strategy = "conditional-while";
#endif
    }
  } catch (const CudaError& err) {
    (void)cudaGetLastError();
    entry = nullptr;
    strategy = std::string("plain: graph capture failed: ") + err.what();
  }
  if (entry == nullptr) {
    (void)plain_iterations(d, o, 0, o.max_iter, false, s, poller);
    stop_unfinished(d, poller, s);
    planner::set_last_loop_strategy(strategy.empty() ? "plain" : strategy);
    return;
  }

  if (plain_iterations(d, o, 0, t0, false, s, poller)) {
    stop_unfinished(d, poller, s);
    planner::set_last_loop_strategy(strategy);
    return;
  }
  kernels::loop_set_iteration(d.loop, t0, s);
  bool stopped = false;
  if (poller != nullptr) {
    for (int p = 0; p < periods && !stopped; ++p) {
      launch(*entry, s);
      stopped = poll(d, o, t0 + (p + 1) * ce, poller, s);
    }
  } else {
    launch(*entry, s);  // the device runs the periods while problems are active
  }
  if (!stopped) (void)plain_iterations(d, o, t_limit, o.max_iter, true, s, poller);
  stop_unfinished(d, poller, s);
  planner::set_last_loop_strategy(strategy);
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
