// The sharded CUDA Sinkhorn (dist_cuda.h): one rank = one shard = its own
// runtime::Context on its device (several shards may share a device: logical shards,
// one thread each). Layout as in otgpu/dist.h: this shard holds rows
// [row_offset, row_offset + n_r) of x (or of the cost matrix) and of a; y, b and g are
// replicated.
//
// Per iteration:
//   f-half (local): the single-GPU f-update of the shard's rows (online or dense);
//   g-half (merged): the shard's balanced local column update Gl (lambda = 1) gives
//     its partial log-sum-exp L_rj = -Gl_rj / eps per column, merged by
//     allreduce_device max, rescale, allreduce_device sum and
//     g_j = -lambda_b eps (M_j + log S_j) (otgpu_kernels/sinkhorn_shard.h);
//   check (every check_every): the shard's residual sum_{i in I_r} a_i |...| by the
//     single-GPU check kernel (retiring nothing), summed over the shards by a host
//     allreduce; every decision (retirement, eps continuation level, over-relaxation
//     verdict, cancellation, stop) is taken ON THE HOST from the allreduced values with
//     the rule code of the CPU (otgpu/detail/eps_continuation.h, accel.h), so every
//     shard takes the same branch and issues the same collectives.
// A shard that fails mid-loop (a CUDA error, a throwing progress callback) follows the
// rule of dist_status.h, shared with the CPU sharded solve: it stops its device work,
// keeps issuing the loop's collectives from host memory up to the next check, whose
// residual allreduce (and the cancellation allreduce after the callback) carries the
// status word, and there every shard throws the same CommError naming it. A
// collective call that itself throws leaves the group in an unknown state: the shard
// then aborts the group (MPI_Abort; the local group wakes its ranks).
// The loop follows the single-GPU synchronous driver's (sinkhorn_loop.cpp): phase A,
// the eps continuation (eps_init kAuto) with a check at every iteration; phase B,
// over-relaxed (or plain) iterations with checks every check_every. Plain launches,
// one host synchronization per check (the allreduced residual is needed there).
//
// Staging is the single-GPU road (stage_inputs, checks, centring on the mean of y,
// which is replicated, so every shard centres identically), then the cross-shard
// quantities: the mass of a (balancing b), the mean cost (relative eps) and the cost
// range (fp32 eps check, continuation start) are allreduced before the eps tables.
#include "../dist/dist_cuda.h"
#include "../dist/multi_device.h"

#include <algorithm>
#include <exception>
#include <string>
#include <utility>

#include "dist_status.h"

#include "otgpu/detail/accel.h"
#include "otgpu/detail/eps_continuation.h"
#include "otgpu_kernels/sinkhorn_aux.h"
#include "otgpu_kernels/sinkhorn_online.h"
#include "otgpu_kernels/sinkhorn_shard.h"
#include "sinkhorn_internal.h"

namespace otgpu::cuda_backend {

namespace {

template <class T>
void upload(T* dst, const std::vector<T>& src, cudaStream_t s) {
  if (src.empty()) return;
  // Pageable source: the call returns once the bytes are staged, so src may change.
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice, s));
}

template <class T>
std::vector<T> download(const T* src, std::size_t count, cudaStream_t s) {
  std::vector<T> out(count);
  if (count == 0) return out;
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(out.data(), src, count * sizeof(T), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

void copy_floats(float* dst, const float* src, std::int64_t count, cudaStream_t s) {
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(count) * sizeof(float),
                                   cudaMemcpyDeviceToDevice, s));
}

/// The extra device arrays of a shard, carved after the single-GPU layout.
struct ShardArrays {
  float* Gl = nullptr;      ///< [B, m] the shard's balanced local column update
  double* L = nullptr;      ///< [B, m] its partial LSE per column
  double* Mx = nullptr;     ///< [B, m] the allreduced max
  double* S = nullptr;      ///< [B, m] rescaled partial sums, then their allreduced sum
  double* ratio = nullptr;  ///< [B] balancing factor of b (global mass of a / mass of b)
};

ShardArrays carve_shard(Carver& cv, std::int64_t B, std::int64_t m) {
  const auto mB = static_cast<std::size_t>(B * m);
  ShardArrays a;
  a.Gl = cv.take<float>(mB);
  a.L = cv.take<double>(mB);
  a.Mx = cv.take<double>(mB);
  a.S = cv.take<double>(mB);
  a.ratio = cv.take<double>(static_cast<std::size_t>(B));
  return a;
}

/// The fp32 eps range check of check_eps_fp32 on the cost range of the WHOLE problem
/// (min and max allreduced over the shards), so every shard throws the same error.
void check_eps_range(const SinkhornOptions& o, const std::vector<double>& cmin,
                     const std::vector<double>& cmax, const std::vector<double>& mean,
                     std::int64_t first_problem) {
  constexpr double kUnitRoundoff = 0x1p-24;
  constexpr double kExponentError = 5e-2;
  for (std::size_t b = 0; b < cmin.size(); ++b) {
    if (!(cmin[b] <= cmax[b])) continue;
    const double eps = o.eps * (mean.empty() ? 1.0 : mean[b]);
    const double max_abs = std::max(std::fabs(cmin[b]), std::fabs(cmax[b]));
    const double spread = cmax[b] - cmin[b];
    const double lo = detail::min_resolvable_eps(max_abs, kUnitRoundoff, kExponentError);
    const double hi = detail::max_resolvable_eps(spread, kUnitRoundoff);
    const bool low = eps < lo;
    const bool high = spread > 0 && eps > hi;
    if (!low && !high) continue;
    const double per = eps / o.eps;
    throw InvalidArgument(fmt::format(
        "eps: {} ({}absolute {:.3g}) is {} what the CUDA backend's float32 resolves in problem {} "
        "of the sharded solve, whose costs span [{:.3g}, {:.3g}]. The working range is {:.3g} <= "
        "eps <= {:.3g} (3.6e-6 x max|C_ij| to 1.0e6 x (max C - min C)){}",
        o.eps, o.eps_relative ? "relative; " : "", eps, low ? "below" : "above",
        first_problem + static_cast<std::int64_t>(b), cmin[b], cmax[b], lo, hi,
        o.eps_relative
            ? fmt::format(", i.e. a relative eps in [{:.3g}, {:.3g}]", lo / per, hi / per)
            : ""));
  }
}

/// One shard's solve of one batch chunk: the loop state on the host, the arrays on the
/// device (ctx's workspace).
class ShardSolve {
 public:
  ShardSolve(runtime::Context& ctx, dist::Communicator& comm, const SinkhornOptions& o,
             const DeviceSolve& d, const ShardArrays& sa, std::vector<float> eps_target)
      : comm_(comm),
        o_(o),
        d_(d),
        sa_(sa),
        s_(ctx.stream()),
        B_(static_cast<std::size_t>(d.B)),
        eps_tgt_(std::move(eps_target)),
        active_(B_, 1),
        iters_(B_, o.max_iter),
        omega_(B_, 1.0),
        failures_(B_, 0),
        start_(std::chrono::steady_clock::now()) {}

  /// Runs the iterations. spread: max C - min C of each problem of the whole problem
  /// (the continuation's start); progress_eps: SinkhornProgress::eps.
  void run(const std::vector<double>& spread, double progress_eps) {
    progress_eps_ = progress_eps;
    const bool relax_opt = o_.acceleration == SinkhornAcceleration::overrelax && o_.check_every > 0;
    const bool accel = d_.acc.valid() && (o_.eps_init == kAuto || relax_opt);
    if (!accel) {
      plain(0, o_.max_iter);
    } else {
      const int t = continuation(spread);
      if (!stopped_) {
        if (relax_opt) {
          relaxed(t);
        } else {
          plain(t, o_.max_iter);
        }
      }
    }
    if (cancelled_) {
      for (std::size_t b = 0; b < B_; ++b)
        if (active_[b] != 0) iters_[b] = stopped_at_;
    }
    // A failure after the last check (or in a solve without checks) surfaces here;
    // the synchronization also surfaces an asynchronous kernel error of the last
    // iterations, and makes the last device merges complete before the host
    // collective (NCCL runs it on another stream of the same communicator).
    local([&] { OTGPU_CUDA_CHECK(cudaStreamSynchronize(s_)); });
    drain();
    double word = failure_.word();
    try {
      comm_.allreduce(&word, 1, dist::ReduceOp::max);
    } catch (...) {
      abandon();
    }
    failure_.settle(word, kWhat, at_);
  }

  const std::vector<int>& active() const { return active_; }
  const std::vector<int>& iterations() const { return iters_; }
  bool cancelled() const { return cancelled_; }
  bool relaxed_ran() const { return relaxed_ran_; }
  const std::vector<double>& omega() const { return omega_; }
  const std::vector<int>& failures() const { return failures_; }

 private:
  const float* row(const float* tab, int t) const {
    return tab + static_cast<std::size_t>(std::min(t, d_.K)) * B_;
  }

  static constexpr const char* kWhat = "dist::sinkhorn";

  /// This shard's device work (nothing once it has failed; a failure is recorded).
  template <class F>
  void local(F&& body) {
    (void)failure_.run(std::forward<F>(body));
  }

  /// Ends the whole group after a collective call threw (see the file comment).
  [[noreturn]] void abandon() {
    std::string why;
    try {
      throw;
    } catch (const std::exception& e) {
      why = e.what();
    } catch (...) {
      why = "unknown error";
    }
    comm_.abort(1, fmt::format("{}: rank {} failed in a collective at iteration {}: {}", kWhat,
                               comm_.rank(), at_, why));
    throw dist::CommError(fmt::format("{}: rank {} failed in a collective at iteration {}: {}",
                                      kWhat, comm_.rank(), at_, why));
  }

  /// A failed shard's device merges issued before its failure may still be queued on
  /// its stream: they must run before the host collectives it issues from now on,
  /// which NCCL runs on the communicator's own stream (the same order on every rank).
  /// The stream's error, if any, is already this shard's failure.
  void drain() {
    if (failure_.failed()) (void)cudaStreamSynchronize(s_);
  }

  /// allreduce_device of the g-merge; a failed shard takes part from host memory (the
  /// same collective: count doubles, the same op), its values never read.
  void merge(double* data, std::int64_t count, dist::ReduceOp op) {
    if (!failure_.failed()) {
      try {
        comm_.allreduce_device(data, count, DType::f64, op, s_);
        return;
      } catch (...) {
        abandon();
      }
    }
    drain();
    idle_.assign(static_cast<std::size_t>(count), 0.0);
    try {
      comm_.allreduce(idle_.data(), count, op);
    } catch (...) {
      abandon();
    }
  }

  /// The f-half of iteration t at eps row `eps` (reuse: F = lambda_a Ft after a check).
  void f_half(const float* eps, const float* lam_a, bool reuse) {
    local([&] {
      if (reuse) {
        kernels::loop_reuse_f(d_.Ft, lam_a, d_.active, d_.F, d_.B, d_.n, s_);
      } else if (d_.points()) {
        kernels::online_half_step(d_.online(true, eps, d_.active), lam_a, d_.F, s_);
      } else {
        kernels::dense_row_update(d_.C, d_.logB, d_.G, eps, lam_a, d_.active, d_.F, d_.B, d_.n,
                                  d_.m, s_);
      }
    });
  }

  /// The merged g-half: local partials, max, rescale, sum, finish.
  void g_half(const float* eps, const float* lam_b) {
    const std::int64_t count = d_.B * d_.m;
    local([&] {
      if (d_.points()) {
        kernels::online_half_step(d_.online(false, eps, d_.active), nullptr, sa_.Gl, s_);
      } else {
        kernels::dense_col_update(d_.C, d_.logA, d_.F, eps, nullptr, d_.active, sa_.Gl, d_.col_ws,
                                  d_.col_ws_bytes, d_.B, d_.n, d_.m, s_);
      }
      kernels::shard_col_lse(sa_.Gl, eps, sa_.L, d_.B, d_.m, s_);
      OTGPU_CUDA_CHECK(cudaMemcpyAsync(sa_.Mx, sa_.L,
                                       static_cast<std::size_t>(count) * sizeof(double),
                                       cudaMemcpyDeviceToDevice, s_));
    });
    merge(sa_.Mx, count, dist::ReduceOp::max);
    local([&] { kernels::shard_col_rescale(sa_.L, sa_.Mx, sa_.S, count, s_); });
    merge(sa_.S, count, dist::ReduceOp::sum);
    local([&] {
      kernels::shard_col_finish(sa_.Mx, sa_.S, eps, lam_b, d_.active, d_.G, d_.B, d_.m, s_);
    });
  }

  /// Ft = the balanced f-update at `eps`; returns the residual per problem summed over
  /// the shards (valid for active problems). Retires nothing on the device (tol -1).
  /// The residual allreduce carries the status word (entry B): a shard that failed
  /// since the last check makes every shard throw here (dist_status.h).
  std::vector<double> check(const float* eps, const float* lam_a, int iteration) {
    at_ = iteration;
    std::vector<double> res(B_ + 1, 0.0);
    local([&] {
      if (d_.points()) {
        kernels::online_half_step(d_.online(true, eps, d_.active), nullptr, d_.Ft, s_);
      } else {
        kernels::dense_row_update(d_.C, d_.logB, d_.G, eps, nullptr, d_.active, d_.Ft, d_.B, d_.n,
                                  d_.m, s_);
      }
      OTGPU_CUDA_CHECK(cudaMemsetAsync(d_.count, 0, sizeof(int), s_));
      kernels::loop_check_residual(d_.a, d_.F, d_.Ft, eps, lam_a, -1.0, nullptr, 0, d_.active,
                                   d_.iters, d_.res, d_.count, nullptr, d_.B, d_.n, s_);
      const std::vector<double> mine = download(d_.res, B_, s_);
      std::copy(mine.begin(), mine.end(), res.begin());
    });
    // Entries of retired problems are stale on the device: zero them, so the sum is
    // defined (they are never read).
    for (std::size_t b = 0; b < B_; ++b)
      if (active_[b] == 0 || failure_.failed()) res[b] = 0.0;
    res[B_] = failure_.word();
    drain();
    try {
      comm_.allreduce(res.data(), static_cast<std::int64_t>(B_ + 1), dist::ReduceOp::sum);
    } catch (...) {
      abandon();
    }
    failure_.settle(res[B_], kWhat, iteration);
    res.pop_back();
    return res;
  }

  /// Retires the active problems whose residual is <= tol at a check of iteration
  /// `iteration` (what loop_check_residual does on one device). The largest residual of
  /// the problems checked goes to the progress report.
  void retire(const std::vector<double>& res, int iteration) {
    check_max_ = 0.0;
    for (std::size_t b = 0; b < B_; ++b) {
      if (active_[b] == 0) continue;
      if (std::isnan(res[b]) || res[b] > check_max_) check_max_ = res[b];
      if (res[b] <= o_.tol) {
        active_[b] = 0;
        iters_[b] = iteration;
      }
    }
  }

  int active_count() const {
    int k = 0;
    for (int a : active_) k += a != 0 ? 1 : 0;
    return k;
  }

  /// After a check of iteration `iteration`: the progress callback of every rank that
  /// has one, on the allreduced values (the same on every rank; rank 0's are the
  /// reported ones), and the cancellation agreed by an allreduce (any rank cancels, as
  /// in the CPU sharded solve). True when the loop ends (cancelled or nothing active).
  bool after_check(int iteration) {
    double stop = 0.0;
    if (o_.progress && !failure_.failed()) {
      SinkhornProgress pr;
      pr.problem = -1;
      pr.iteration = iteration;
      pr.eps = progress_eps_;
      pr.residual = check_max_;
      pr.elapsed_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      pr.active = active_count();
      // A throwing callback is a failure of this shard: the allreduce below carries it
      // and every shard throws the same CommError.
      local([&] {
        if (!o_.progress(pr)) stop = 1.0;
      });
    }
    double status[2] = {stop, failure_.word()};
    try {
      comm_.allreduce(status, 2, dist::ReduceOp::max);
    } catch (...) {
      abandon();
    }
    failure_.settle(status[1], kWhat, iteration);
    if (status[0] > 0.0) {
      cancelled_ = true;
      stopped_at_ = iteration;
      return true;
    }
    return active_count() == 0;
  }

  /// Phase A: the eps continuation (eps_init kAuto), the single-GPU driver's
  /// continuation_phase with its per-problem device steps taken here on the host by
  /// detail::eps_continuation_check. Returns the next iteration.
  int continuation(const std::vector<double>& spread) {
    if (o_.eps_init != kAuto) return 0;
    const AccelArrays& a = d_.acc;
    std::vector<float> lvl(B_), la(B_), lb(B_);
    std::vector<int> lvl_iters(B_, 0);
    bool scales = false;
    for (std::size_t b = 0; b < B_; ++b) {
      const double start = detail::eps_continuation_start(eps_tgt_[b], spread[b]);
      const float e = start > 0.0 ? static_cast<float>(start) : eps_tgt_[b];
      scales = scales || e > eps_tgt_[b];
      lvl[b] = e;
      la[b] = static_cast<float>(detail::unbalanced_lambda(o_.rho_a, e));
      lb[b] = static_cast<float>(detail::unbalanced_lambda(o_.rho_b, e));
    }
    if (!scales) return 0;
    local([&] {
      upload(a.eps_cur, lvl, s_);
      upload(a.lam_a_cur, la, s_);
      upload(a.lam_b_cur, lb, s_);
    });
    const int ce = o_.check_every;
    const int phase = std::min(o_.max_iter, detail::eps_continuation_max_iters(o_.eps_decay));
    for (int t = 0; t < phase; ++t) {
      at_ = t + 1;
      f_half(a.eps_cur, a.lam_a_cur, false);
      g_half(a.eps_cur, a.lam_b_cur);
      const std::vector<double> res = check(a.eps_cur, a.lam_a_cur, t + 1);
      bool moved = false, retired = false;
      check_max_ = 0.0;
      for (std::size_t b = 0; b < B_; ++b) {
        if (active_[b] == 0) continue;
        if (std::isnan(res[b]) || res[b] > check_max_) check_max_ = res[b];
        detail::EpsLevel st{static_cast<double>(lvl[b]), lvl_iters[b]};
        const int action = detail::eps_continuation_check(st, eps_tgt_[b], o_.eps_decay, res[b],
                                                          o_.tol, ce, t + 1);
        lvl_iters[b] = st.iters;
        if (action == detail::kEpsNextLevel) {
          // eps_t in fp32 as the kernels use it, never below the target.
          const float e = static_cast<float>(st.eps_t);
          lvl[b] = e > eps_tgt_[b] ? e : eps_tgt_[b];
          la[b] = static_cast<float>(detail::unbalanced_lambda(o_.rho_a, lvl[b]));
          lb[b] = static_cast<float>(detail::unbalanced_lambda(o_.rho_b, lvl[b]));
          moved = true;
        } else if (action == detail::kEpsRetire) {
          active_[b] = 0;
          iters_[b] = t + 1;
          retired = true;
        }
      }
      local([&] {
        if (moved) {
          upload(a.eps_cur, lvl, s_);
          upload(a.lam_a_cur, la, s_);
          upload(a.lam_b_cur, lb, s_);
        }
        if (retired) upload(d_.active, active_, s_);
      });
      if (ce > 0 && (t + 1) % ce == 0 && after_check(t + 1)) {
        stopped_ = true;
        return t + 1;
      }
      if (active_count() == 0) {
        stopped_ = true;
        return t + 1;
      }
      if ((t + 1) % detail::kEpsLevelMaxIters == 0) {
        bool left = false;
        for (std::size_t b = 0; b < B_; ++b)
          left = left || (active_[b] != 0 && lvl[b] > eps_tgt_[b]);
        if (!left) return t + 1;
      }
    }
    return phase;
  }

  /// Plain iterations [t_begin, t_end) with the eps tables' rows and a check every
  /// check_every iterations at the target (the single-GPU plain_iterations).
  void plain(int t_begin, int t_end) {
    bool reuse = false;
    for (int t = t_begin; t < t_end; ++t) {
      at_ = t + 1;
      f_half(row(d_.eps_tab, t), row(d_.lam_a_tab, t), reuse);
      g_half(row(d_.eps_tab, t), row(d_.lam_b_tab, t));
      reuse = o_.check_every > 0 && (t + 1) % o_.check_every == 0 && t >= d_.K;
      if (!reuse) continue;
      const std::vector<double> res = check(d_.eps_target(), d_.lam_a_target(), t + 1);
      retire(res, t + 1);
      local([&] { upload(d_.active, active_, s_); });
      if (after_check(t + 1)) return;
    }
  }

  /// Phase B, over-relaxed (the single-GPU relaxed_phase): the relaxation on the
  /// device with omega per problem, the verdict of detail::overrelax_check on the host
  /// from the allreduced residual, the commit (save or restore) on the device.
  void relaxed(int t_begin) {
    const AccelArrays& a = d_.acc;
    const int ce = o_.check_every;
    std::vector<detail::OverrelaxState> st(B_);
    std::vector<int> restore(B_, 0);
    local([&] { upload(a.omega, omega_, s_); });
    relaxed_ran_ = true;
    bool reuse = false;
    int last_check = std::max(t_begin, d_.K);
    for (int t = t_begin; t < o_.max_iter; ++t) {
      const bool at_target = t >= d_.K;
      const bool check_now = ce > 0 && (t + 1) % ce == 0 && at_target;
      const bool last = t + 1 == o_.max_iter;
      const bool relax_g = at_target && !check_now && !last;
      at_ = t + 1;
      local([&] {
        if (at_target) copy_floats(a.F_prev, d_.F, d_.B * d_.n, s_);
      });
      f_half(row(d_.eps_tab, t), row(d_.lam_a_tab, t), reuse);
      local([&] {
        if (at_target)
          kernels::sinkhorn_overrelax(d_.F, a.F_prev, a.omega, d_.active, d_.B, d_.n, s_);
        if (relax_g) copy_floats(a.G_prev, d_.G, d_.B * d_.m, s_);
      });
      g_half(row(d_.eps_tab, t), row(d_.lam_b_tab, t));
      local([&] {
        if (relax_g)
          kernels::sinkhorn_overrelax(d_.G, a.G_prev, a.omega, d_.active, d_.B, d_.m, s_);
      });
      reuse = check_now;
      if (!check_now) continue;
      const std::vector<double> res = check(d_.eps_target(), d_.lam_a_target(), t + 1);
      retire(res, t + 1);
      for (std::size_t b = 0; b < B_; ++b) {
        restore[b] = 0;
        if (active_[b] == 0) continue;
        restore[b] =
            detail::overrelax_check(st[b], res[b], t + 1 - last_check) == detail::kOverrelaxRestore
                ? 1
                : 0;
        omega_[b] = st[b].omega;
        failures_[b] = st[b].failures;
      }
      local([&] {
        upload(d_.active, active_, s_);
        upload(a.omega, omega_, s_);
        upload(a.restore, restore, s_);
        kernels::sinkhorn_overrelax_commit(d_.F, d_.G, a.F_saved, a.G_saved, a.restore, d_.active,
                                           d_.B, d_.n, d_.m, s_);
        kernels::sinkhorn_overrelax_commit(d_.Ft, nullptr, a.Ft_saved, nullptr, a.restore,
                                           d_.active, d_.B, d_.n, 0, s_);
      });
      last_check = t + 1;
      if (after_check(t + 1)) return;
    }
  }

  dist::Communicator& comm_;
  dist::detail::RankFailure failure_{comm_};
  std::vector<double> idle_;  // a failed shard's stand-in for the merged device buffers
  int at_ = 0;                // the iteration under way (for the failure's message)
  const SinkhornOptions& o_;
  DeviceSolve d_;
  ShardArrays sa_;
  cudaStream_t s_;
  std::size_t B_;
  std::vector<float> eps_tgt_;
  std::vector<int> active_, iters_;
  std::vector<double> omega_;
  std::vector<int> failures_;
  double progress_eps_ = 0, check_max_ = 0;
  bool cancelled_ = false, stopped_ = false, relaxed_ran_ = false;
  int stopped_at_ = 0;
  std::chrono::steady_clock::time_point start_;
};

/// F_b(g) = <b, g> (rho_b infinite) or rho_b <b, 1 - exp(-g / rho_b)> per problem, in
/// double from the downloaded (balanced) b and fp32 g: the term of the finalize kernel's
/// dual value that every shard counts once.
std::vector<double> dual_term_b(const std::vector<double>& bw, const std::vector<float>& g,
                                double rho_b, std::size_t B, std::size_t m) {
  std::vector<double> out(B, 0.0);
  for (std::size_t b = 0; b < B; ++b) {
    double sum = 0.0;
    for (std::size_t j = 0; j < m; ++j) {
      const double w = bw[b * m + j];
      if (!(w > 0)) continue;
      const double gj = g[b * m + j];
      sum += std::isinf(rho_b) ? w * gj : rho_b * w * (1.0 - std::exp(-gj / rho_b));
    }
    out[b] = sum;
  }
  return out;
}

/// One batch chunk of this shard's solve (B <= max_batch_per_launch()).
void solve_chunk(runtime::Context& ctx, dist::Communicator& comm, const SinkhornProblem& problem,
                 const SinkhornOptions& o, const detail::SinkhornShape& shape, std::int64_t begin,
                 std::int64_t total_rows, SinkhornResult& r, SolveState& state) {
  const cudaStream_t s = ctx.stream();
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  const auto B = static_cast<std::size_t>(shape.batch);
  const auto nB = B * static_cast<std::size_t>(shape.n), mB = B * static_cast<std::size_t>(shape.m);

  DevicePlan pl;
  Carved c;
  ShardArrays sa;
  RawUpload up;
  std::vector<double> mean, mass, centre;
  std::vector<unsigned> range;
  // Everything that can reject this shard's data, agreed over the shards: a shard with
  // bad input makes every shard throw, none is left waiting in a collective.
  dist::agree(comm, [&] {
    pl = plan_device(problem, o, shape, ctx.device(), true);
    const HostViews hv = add_host_views(problem, up);
    const auto f0 = static_cast<std::size_t>(begin) * static_cast<std::size_t>(shape.n);
    const auto g0 = static_cast<std::size_t>(begin) * static_cast<std::size_t>(shape.m);
    const std::size_t f_slot =
        o.f_init.empty() ? 0 : up.add(o.f_init.data() + f0, nB * sizeof(double));
    const std::size_t g_slot =
        o.g_init.empty() ? 0 : up.add(o.g_init.data() + g0, mB * sizeof(double));
    Carver counter(nullptr);
    (void)carve(counter, pl, true, false);
    (void)carve_shard(counter, shape.batch, shape.m);
    (void)counter.take<unsigned char>(up.bytes());
    Carver cv(ctx.workspace(counter.used()));
    c = carve(cv, pl, true, false);
    sa = carve_shard(cv, shape.batch, shape.m);
    up.run(ctx, cv.take<unsigned char>(up.bytes()));
    const SinkhornProblem dev = device_problem(problem, hv, up);
    stage_inputs(dev, pl, c, s);
    enqueue_checks(pl, c, s);
    stage_center(pl, c, o.eps_relative, s);
    // The equal-mass check needs the whole a: made below on the merged masses.
    mean = check_device_inputs(problem, pl, c, false, o.eps_relative, s);
    mass = download(c.mass, 2 * B, s);
    if (c.d.acc.valid()) {
      kernels::cost_range(c.d.cost, c.d.X, c.d.Y, c.d.C, c.d.B, c.d.n, c.d.m, c.d.dp, c.d.acc.range,
                          s);
      range = download(c.d.acc.range, 2 * B, s);
    }
    init_potentials(o.f_init.empty() ? nullptr : up.device(f_slot),
                    o.g_init.empty() ? nullptr : up.device(g_slot), c.d, s);
    OTGPU_CUDA_CHECK(cudaMemsetAsync(sa.Gl, 0, mB * sizeof(float), s));
    // Inside the agreement: a CUDA error here on one shard must not leave the others
    // waiting in the centre allreduce below.
    if (c.d.points()) centre = download(c.center, B * static_cast<std::size_t>(pl.dp), s);
  });

  // Every shard centred its points on the mean of y, which is replicated: the centres
  // must agree (to the rounding of the device reduction), else the ranks were given
  // different y. One allreduce of the centres and their negatives.
  if (c.d.points()) {
    const auto cdim = B * static_cast<std::size_t>(pl.dp);
    std::vector<double> ends(2 * cdim);
    for (std::size_t k = 0; k < cdim; ++k) {
      ends[k] = centre[k];
      ends[cdim + k] = -centre[k];
    }
    comm.allreduce(ends.data(), static_cast<std::int64_t>(ends.size()), dist::ReduceOp::max);
    // The scale from the allreduced ends, not from this shard's centre: every shard
    // must reach the same verdict, or the ones that do not throw wait forever.
    double size = 1.0;
    for (const double e : ends) size = std::max(size, std::fabs(e));
    for (std::size_t k = 0; k < cdim; ++k) {
      const double spread = ends[k] + ends[cdim + k];  // max - min over the shards
      if (!(spread <= 1e-9 * size)) {
        throw InvalidArgument(fmt::format(
            "y: the shards centred on different means of y (coordinate {} of problem {} spans "
            "{:.17g} to {:.17g} over the ranks); every rank must pass the same y",
            k % static_cast<std::size_t>(pl.dp), begin + static_cast<std::int64_t>(k / pl.dp),
            -ends[cdim + k], ends[k]));
      }
    }
  }

  // The whole problem's mass of a, mean cost and cost range (the same on every shard).
  std::vector<double> merged(B + (o.eps_relative ? B : 0));
  for (std::size_t b = 0; b < B; ++b) merged[b] = mass[b];
  for (std::size_t b = 0; b < mean.size(); ++b)
    merged[B + b] = mean[b] * static_cast<double>(shape.n) / static_cast<double>(total_rows);
  comm.allreduce(merged.data(), static_cast<std::int64_t>(merged.size()), dist::ReduceOp::sum);
  for (std::size_t b = 0; b < mean.size(); ++b) mean[b] = merged[B + b];
  // b is replicated, but each shard decides the mass check from its own copy: ranks
  // given different b would decide differently and the ones that go on wait forever.
  // Its mass is agreed first (max and -min in one allreduce; 1e-12 absorbs the order
  // of the device reduction), and the check reads the agreed value.
  std::vector<double> bends(2 * B);
  for (std::size_t b = 0; b < B; ++b) {
    bends[b] = mass[B + b];
    bends[B + b] = -mass[B + b];
  }
  comm.allreduce(bends.data(), static_cast<std::int64_t>(bends.size()), dist::ReduceOp::max);
  for (std::size_t b = 0; b < B; ++b) {
    const double hi = bends[b], lo = -bends[B + b];
    if (!(hi - lo <= 1e-12 * std::fabs(hi))) {
      throw InvalidArgument(fmt::format(
          "b: the ranks passed different b (problem {} has mass(b) from {:.17g} to {:.17g} over "
          "the ranks); every rank must pass the same b",
          begin + static_cast<std::int64_t>(b), lo, hi));
    }
  }
  std::vector<double> ratio(B, 1.0);
  for (std::size_t b = 0; b < B; ++b) {
    const double ma = merged[b], mb = mass[B + b];
    if (balanced && !detail::masses_match(ma, bends[b])) {
      throw InvalidArgument(
          fmt::format("a, b: problem {} has mass(a) = {} (over all shards) and mass(b) = {}; a "
                      "balanced problem (rho_a = rho_b = inf) needs equal masses (relative 1e-5); "
                      "set rho_a / rho_b for unbalanced transport",
                      begin + static_cast<std::int64_t>(b), ma, mb));
    }
    ratio[b] = mb > 0 ? ma / mb : 1.0;
  }
  std::vector<double> spread(B, 0.0);
  if (!range.empty()) {
    // min as the max of negatives: one allreduce for both ends.
    std::vector<double> ends(2 * B);
    for (std::size_t b = 0; b < B; ++b) {
      ends[b] = -static_cast<double>(kernels::cost_range_value(range[2 * b]));
      ends[B + b] = static_cast<double>(kernels::cost_range_value(range[2 * b + 1]));
    }
    comm.allreduce(ends.data(), static_cast<std::int64_t>(ends.size()), dist::ReduceOp::max);
    std::vector<double> cmin(B), cmax(B);
    for (std::size_t b = 0; b < B; ++b) {
      cmin[b] = -ends[b];
      cmax[b] = ends[B + b];
      spread[b] = cmax[b] - cmin[b];
    }
    check_eps_range(o, cmin, cmax, o.eps_relative ? mean : std::vector<double>{}, begin);
  }

  // The schedule (stage_schedule with the merged mass and mean).
  // Agreed too: a shard throwing here alone (a CUDA error, an allocation) would leave
  // the others waiting in the loop's first merge.
  const DeviceSolve& d = c.d;
  std::vector<float> eps_target;
  dist::agree(comm, [&] {
    if (balanced) {
      upload(sa.ratio, ratio, s);
      kernels::shard_scale_weights(const_cast<double*>(d.b), const_cast<float*>(d.logB), sa.ratio,
                                   shape.batch, shape.m, s);
    }
    if (o.eps_relative) upload(c.mean, mean, s);
    kernels::make_eps_tables(o.eps_relative ? c.mean : nullptr, o.eps, o.eps_init, o.eps_decay,
                             o.rho_a, o.rho_b, pl.K, const_cast<float*>(d.eps_tab),
                             const_cast<float*>(d.lam_a_tab), const_cast<float*>(d.lam_b_tab),
                             const_cast<float*>(d.small_eps), const_cast<float*>(d.small_eps_init),
                             shape.batch, s);
    kernels::fill_ints(d.active, 1, shape.batch, s);
    kernels::fill_ints(d.iters, o.max_iter, shape.batch, s);
    eps_target = download(d.eps_target(), B, s);
  });

  ShardSolve loop(ctx, comm, o, d, sa, std::move(eps_target));
  const double progress_eps =
      o.eps * (o.eps_relative ? *std::max_element(mean.begin(), mean.end()) : 1.0);
  loop.run(spread, progress_eps);

  std::vector<float> f(nB), g(mB);
  std::vector<double> out4(4 * B), bw(mB);
  // The report and the kept state (an allocation that may fail on one shard only),
  // agreed before the report's allreduce.
  dist::agree(comm, [&] {
    enqueue_finalize(d, o, s);
    state.chunks.push_back(keep_state(pl, c, begin, s));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(f.data(), d.F, nB * sizeof(float), cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(g.data(), d.G, mB * sizeof(float), cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(out4.data(), d.out4, out4.size() * sizeof(double),
                                     cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(bw.data(), d.b, mB * sizeof(double), cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  });
  // out4 per shard: (F_a(f_r) + F_b(g) - eps (mass_r - m_a,r m_b), cost_r, error_r,
  // residual_r): all sums over the shard's rows except F_b(g), which every shard
  // counts: the sum over the shards minus (R - 1) F_b(g) is the whole problem's.
  comm.allreduce(out4.data(), static_cast<std::int64_t>(out4.size()), dist::ReduceOp::sum);
  const std::vector<double> fb = dual_term_b(bw, g, o.rho_b, B, static_cast<std::size_t>(shape.m));
  for (std::size_t b = 0; b < B; ++b) out4[4 * b] -= static_cast<double>(comm.size() - 1) * fb[b];

  SinkhornResult part = make_result(o, shape, f, g, out4, loop.iterations(),
                                    o.eps_relative ? mean : std::vector<double>(B, 1.0));
  r.precision = pl.plan.precision;
  r.tensor_cores = pl.plan.tensor_cores;
  if (loop.cancelled()) {
    for (std::size_t b = 0; b < B; ++b)
      if (loop.active()[b] != 0) part.problems[b].converged = false;
  }
  if (loop.relaxed_ran()) {
    for (std::size_t b = 0; b < B; ++b) {
      auto& rep = part.problems[b];
      rep.omega = loop.omega()[b];
      rep.acceleration = loop.omega()[b] > 1.0 || loop.failures()[b] > 0
                             ? SinkhornAcceleration::overrelax
                             : SinkhornAcceleration::none;
    }
  }
  r.cancelled = r.cancelled || loop.cancelled();
  r.f.insert(r.f.end(), part.f.begin(), part.f.end());
  r.g.insert(r.g.end(), part.g.begin(), part.g.end());
  r.problems.insert(r.problems.end(), part.problems.begin(), part.problems.end());
}

/// A result of a solve over SinkhornOptions::devices holds a dist::DevicesState, not a
/// SolveState: told apart by its owner's type, before any cast of the opaque pointer.
void reject_devices_state(const SinkhornResult& result, const char* what) {
  if (dist::devices_state(result) != nullptr) {
    throw InvalidArgument(fmt::format(
        "{}: local_result comes from otgpu::sinkhorn with SinkhornOptions::devices, not from "
        "dist::sinkhorn on this rank; call otgpu::{}(problem, result) for it",
        what, std::string(what).substr(6)));
  }
}

/// The kept state of a sharded result when it belongs to this rank's problem.
const SolveState& kept_state(const SinkhornProblem& local, const SinkhornResult& result,
                             const char* what) {
  reject_devices_state(result, what);
  const auto* st = result.state ? static_cast<const SolveState*>(result.state.get()) : nullptr;
  if (st == nullptr || result.backend != Backend::cuda || st->device != result.device ||
      !same_problem(st->key, local)) {
    throw InvalidArgument(fmt::format(
        "{}: local_result must be what dist::sinkhorn returned on this rank for this very "
        "local_problem with backend cuda (its device state is what the derived outputs read)",
        what));
  }
  return *st;
}

}  // namespace

SinkhornResult sinkhorn_sharded(dist::Communicator& comm, const SinkhornProblem& local,
                                const SinkhornOptions& o, const detail::SinkhornShape& shape,
                                std::int64_t row_offset, std::int64_t total_rows) {
  (void)row_offset;  // the iteration needs no global index; sampling does (its own call)
  // The thread's context is made on first use (a stream, CUDA calls that may fail on
  // this shard alone): agreed, or the other shards would wait in the first collective.
  runtime::Context* ctxp = nullptr;
  dist::agree(comm, [&] {
    ctxp = &runtime::context_or_thread(nullptr, o.device);
    ctxp->activate();
  });
  runtime::Context& ctx = *ctxp;
  SinkhornResult r;
  r.backend = Backend::cuda;
  r.device = ctx.device();
  r.batch = shape.batch;
  r.n = shape.n;
  r.m = shape.m;
  r.d = shape.d;
  auto state = std::make_shared<SolveState>();
  state->key = local;
  state->device = ctx.device();
  // An absent a means 1/n of the WHOLE problem (the CPU sharded solve's reading), not
  // 1/n_r of this shard's rows as the single-GPU staging would take it.
  std::vector<double> a_uniform;
  SinkhornProblem staged = local;
  if (!local.a.present()) {
    a_uniform.assign(static_cast<std::size_t>(shape.n), 1.0 / static_cast<double>(total_rows));
    staged.a = TensorView::host(a_uniform.data(), {shape.n});
  }
  for (const BatchChunk& bc : batch_chunks(shape.batch, max_batch_per_launch())) {
    detail::SinkhornShape sh = shape;
    sh.batch = bc.count;
    solve_chunk(ctx, comm, slice_batch(staged, shape, bc.begin, bc.count), o, sh, bc.begin,
                total_rows, r, *state);
  }
  r.state = std::move(state);
  return r;
}

std::vector<double> barycentric_map_sharded(const SinkhornProblem& local,
                                            const SinkhornResult& result,
                                            const detail::SinkhornShape& shape) {
  // Per row: the softmax over the replicated columns needs no other shard; the kept
  // state (or, without it, a restaging of the shard's rows) serves it.
  reject_devices_state(result, "dist::barycentric_map");
  return barycentric_map(local, result, shape, result.device);
}

std::vector<double> gradient_x_sharded(const SinkhornProblem& local, const SinkhornResult& result,
                                       const detail::SinkhornShape& shape) {
  // The kept b carries the balancing factor of the WHOLE a: a restaging would balance
  // against this shard's mass of a only.
  (void)kept_state(local, result, "dist::gradient_x");
  return gradient_x(local, result, shape, result.device);
}

std::vector<std::int64_t> sample_partners_sharded(const SinkhornProblem& local,
                                                  const SinkhornResult& result,
                                                  const detail::SinkhornShape& shape,
                                                  std::uint64_t seed, std::int64_t row_offset) {
  const SolveState& st = kept_state(local, result, "dist::sample_partners");
  runtime::Context& ctx = runtime::context_or_thread(nullptr, st.device);
  ctx.activate();
  const cudaStream_t s = ctx.stream();
  const int dp = local.cost_kind == CostKind::matrix ? 0 : padded_dim(shape.d);
  std::vector<std::int64_t> out(static_cast<std::size_t>(shape.batch * shape.n));
  std::int64_t most = 0;
  for (const auto& ch : st.chunks) most = std::max(most, ch.count);
  auto* dev = static_cast<std::int64_t*>(
      ctx.workspace(static_cast<std::size_t>(most * shape.n) * sizeof(std::int64_t)));
  for (const auto& ch : st.chunks) {
    // The single-GPU samplers (enqueue_derived), keyed by the shard's GLOBAL rows
    // row_offset + i: a shard draws, bit for bit, what the whole problem draws from
    // the same potentials.
    if (local.cost_kind == CostKind::matrix) {
      kernels::dense_sample(ch.C, ch.logB, ch.G, ch.eps, seed, dev, ch.count, shape.n, shape.m, s,
                            ch.begin, row_offset);
    } else {
      kernels::OnlinePass p;
      p.cost = local.cost_kind;
      p.rows = ch.X;
      p.cols = ch.Y;
      p.col_logw = ch.logB;
      p.col_pot = ch.G;
      p.eps = ch.eps;
      p.B = ch.count;
      p.n_rows = shape.n;
      p.n_cols = shape.m;
      p.dp = dp;
      p.batch_offset = ch.begin;
      p.row_offset = row_offset;
      kernels::online_sample(p, seed, dev, s);
    }
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(out.data() + static_cast<std::size_t>(ch.begin * shape.n), dev,
                        static_cast<std::size_t>(ch.count * shape.n) * sizeof(std::int64_t),
                        cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  return out;
}

}  // namespace otgpu::cuda_backend
