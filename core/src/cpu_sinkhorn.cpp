// The CPU reference Sinkhorn solver and its derived outputs.
//
// Determinism: every per-row quantity is computed by one thread with a fixed loop
// order, and every sum over rows is taken serially afterwards, so the result is the
// same bit for bit for any thread count and whether the batch is split over
// problems or over rows.
#include "cpu_sinkhorn.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <utility>

#include "cpu_exp.h"
#include "cpu_numeric.h"
#include "cpu_problem.h"
#include "dist_status.h"
#include "otgpu/detail/accel.h"
#include "otgpu/detail/math.h"
#include "otgpu/detail/sinkhorn_rules.h"
#include "otgpu/dist.h"
#include "otgpu/error.h"

namespace otgpu::cpu {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

bool all_finite(const std::vector<double>& v) noexcept {
  for (double x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

/// Per-thread scratch rows for the cost (when computed on the fly) and the scores.
class Scratch {
 public:
  Scratch(int threads, std::int64_t len)
      : len_(len), data_(static_cast<std::size_t>(threads) * 2 * static_cast<std::size_t>(len)) {}
  double* cost() noexcept { return base(); }
  double* scores() noexcept { return base() + len_; }

 private:
  double* base() noexcept {
    return data_.data() +
           static_cast<std::size_t>(omp_get_thread_num()) * 2 * static_cast<std::size_t>(len_);
  }
  std::int64_t len_;
  std::vector<double> data_;
};

/// The final per-row pass: ftilde (balanced f-update at eps from g), the row
/// marginal r_i, the row's share of <P, C>, and the row's share of the mass defect
/// eps sum_j b_j expm1((f_i + g_j - C_ij) / eps) (so that the dual value does not
/// cancel at large eps, where every exponent is tiny).
struct RowReport {
  std::vector<double> ftilde, row_mass, row_cost, row_defect;
};

/// What the problems of one solve share: the progress callback (serialized), the
/// clock, the cancel flag and the count of problems still running.
class SolveMonitor {
 public:
  SolveMonitor(const SinkhornOptions& o, std::int64_t batch)
      : progress_(o.progress), active_(batch), t0_(std::chrono::steady_clock::now()) {}

  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_relaxed); }
  /// Cancels on behalf of another rank (a sharded solve agrees on cancellation).
  void cancel() noexcept { cancelled_.store(true, std::memory_order_relaxed); }
  void finished() noexcept { active_.fetch_sub(1, std::memory_order_relaxed); }

  /// Reports one check; false when the solve is (now) cancelled.
  bool report(std::int64_t problem, int iteration, double eps_t, double residual) {
    if (!progress_) return !cancelled();
    const std::lock_guard<std::mutex> lock(mutex_);
    if (cancelled()) return false;
    SinkhornProgress pr;
    pr.problem = problem;
    pr.iteration = iteration;
    pr.eps = eps_t;
    pr.residual = residual;
    pr.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    pr.active = active_.load(std::memory_order_relaxed);
    if (!progress_(pr)) cancelled_.store(true, std::memory_order_relaxed);
    return !cancelled();
  }

 private:
  const std::function<bool(const SinkhornProgress&)>& progress_;
  std::atomic<std::int64_t> active_;
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  std::chrono::steady_clock::time_point t0_;
};

class ProblemSolver {
 public:
  /// eps_init > eps starts a schedule: the continuation (levels solved loosely) when
  /// `continuation`, else the geometric eps_t = max(eps, eps_init decay^t) of one
  /// iteration per level, which the CUDA driver runs too.
  ProblemSolver(const ProblemData& p, const SinkhornOptions& o, double eps, double eps_init,
                bool continuation, int threads, SolveMonitor& monitor, const Shard& shard = {})
      : shard_(shard),
        p_(p),
        o_(o),
        eps_(eps),
        eps_init_(eps_init),
        continuation_(continuation),
        threads_(threads_for_work(threads, p.n * p.m)),
        scratch_(threads_, std::max(p.n, p.m)),
        monitor_(monitor) {}

  /// Runs the iterations from the potentials in f, g (overwritten with the final ones).
  SinkhornReport solve(std::vector<double>& f, std::vector<double>& g) {
    const std::int64_t n = p_.n, m = p_.m;
    std::vector<double> f_new(static_cast<std::size_t>(n)), g_new(static_cast<std::size_t>(m));
    std::vector<double> ftilde(static_cast<std::size_t>(n));
    // The restore point of the over-relaxation safeguard: potentials and f-update of
    // the last accepted check.
    std::vector<double> f_saved, g_saved, ftilde_saved;
    detail::OverrelaxState accel;
    const bool relax = o_.acceleration == SinkhornAcceleration::overrelax;
    bool relaxed_once = false;
    const double lam_a = detail::unbalanced_lambda(o_.rho_a, eps_);
    bool have_ftilde = false, aborted = false, converged = false;
    int iterations = 0, since_check = 0, level_iters = 0;
    double eps_t = eps_init_ > eps_ ? eps_init_ : eps_;
    for (int t = 0; t < o_.max_iter; ++t) {
      if (monitor_.cancelled()) break;  // another problem's callback cancelled the solve
      const bool at_target = eps_t == eps_;
      const bool check_now = o_.check_every > 0 && (t + 1) % o_.check_every == 0 && at_target;
      const bool last = t + 1 == o_.max_iter;
      // Relaxation only at the target eps (the schedule moves the fixed point), and a
      // plain g-update before every check and at the end: the column marginal of the
      // plan is then exact and the row error is the whole marginal error.
      const double w = at_target ? accel.omega : 1.0;
      const double w_g = check_now || last ? 1.0 : w;
      const double lam_a_t = detail::unbalanced_lambda(o_.rho_a, eps_t);
      const double lam_b_t = detail::unbalanced_lambda(o_.rho_b, eps_t);
      if (have_ftilde) {
        // The last check ran the f-update at eps (== eps_t from then on) already.
        for (std::int64_t i = 0; i < n; ++i) {
          f_new[static_cast<std::size_t>(i)] = lam_a_t * ftilde[static_cast<std::size_t>(i)];
        }
      } else {
        f_update(g, eps_t, lam_a_t, f_new);
      }
      relax_into(f, w, f_new);
      bool finite = !any_rank(!all_finite(f_new));
      if (finite) {
        std::swap(f, f_new);
        g_update(f, eps_t, lam_b_t, g_new);
        relax_into(g, w_g, g_new);
        finite = all_finite(g_new);
        if (finite) std::swap(g, g_new);
      }
      iterations = t + 1;
      ++since_check;
      have_ftilde = false;
      if (!finite) {
        if (w > 1.0 && !f_saved.empty()) {
          // The relaxed step left the range of double: a failed check.
          detail::overrelax_check(accel, std::numeric_limits<double>::quiet_NaN(), since_check);
          restore(f, g, ftilde, f_saved, g_saved, ftilde_saved);
          have_ftilde = true;
          since_check = 0;
          continue;
        }
        aborted = true;
        break;
      }
      if (!at_target && !continuation_) {
        eps_t = eps_at(t + 1);
        if (eps_t == eps_) since_check = 0;
        continue;
      }
      if (!at_target) {
        // One level of the eps schedule: stay until its own marginal error is loosely
        // met (detail::eps_level_done), so that the potentials handed to the next
        // level are those of this level's solution and not a transient.
        f_update(g, eps_t, 1.0, ftilde);
        const double res_t = residual_at(f, ftilde, lam_a_t, eps_t);
        ++level_iters;
        if (detail::eps_level_done(res_t, level_iters)) {
          eps_t = std::max(eps_, eps_t * o_.eps_decay);
          level_iters = 0;
          if (eps_t == eps_) since_check = 0;
        } else {
          have_ftilde = true;  // the same eps_t next: reuse the f-update just made
        }
        continue;
      }
      if (check_now) {
        f_update(g, eps_, 1.0, ftilde);
        have_ftilde = true;
        const double res = residual(f, ftilde, lam_a);
        if (!report(iterations, eps_t, res)) break;
        if (res <= o_.tol) {
          converged = true;
          break;
        }
        if (relax) {
          if (accel.omega > 1.0) relaxed_once = true;
          if (detail::overrelax_check(accel, res, since_check) == detail::kOverrelaxRestore) {
            restore(f, g, ftilde, f_saved, g_saved, ftilde_saved);
          } else {
            f_saved = f;
            g_saved = g;
            ftilde_saved = ftilde;
          }
        }
        since_check = 0;
      }
    }

    SinkhornReport rep = make_report(f, g, iterations);
    // Without checks, or when the cap was hit between checks, the final residual
    // decides; non-finite values never count as converged.
    if (!converged && !aborted && !monitor_.cancelled()) converged = rep.residual <= o_.tol;
    rep.converged = converged && std::isfinite(rep.ot_eps) && std::isfinite(rep.residual) &&
                    rep.residual <= o_.tol;
    rep.acceleration = relaxed_once || accel.omega > 1.0 ? SinkhornAcceleration::overrelax
                                                         : SinkhornAcceleration::none;
    rep.omega = accel.omega;
    return rep;
  }

  /// The self-transport problem OT_eps(a, a) (x = y, b = a) by the symmetric update
  /// f <- (f + T(f)) / 2, T(f)_i = -lambda eps LSE_j(log a_j + (f_j - C_ij) / eps),
  /// lambda = rho_a / (rho_a + eps) (1 when balanced; the caller passes rho_a = rho_b,
  /// the only case where the self problem is symmetric): the averaging damps the
  /// oscillation that alternating updates show on a symmetric problem. f is returned
  /// as both potentials (f = g at the solution).
  SinkhornReport solve_symmetric(std::vector<double>& f) {
    const std::int64_t n = p_.n;
    std::vector<double> tf(static_cast<std::size_t>(n));
    bool converged = false, aborted = false;
    int iterations = 0;
    for (int t = 0; t < o_.max_iter; ++t) {
      if (monitor_.cancelled()) break;
      const double eps_t = eps_at(t);
      // C is symmetric: the column update is T.
      g_update(f, eps_t, detail::unbalanced_lambda(o_.rho_a, eps_t), tf);
      if (!all_finite(tf)) {
        aborted = true;
        break;
      }
      iterations = t + 1;
      const bool check_now = eps_t == eps_ && o_.check_every > 0 && (t + 1) % o_.check_every == 0;
      if (check_now) {
        // sum_i a_i |exp((f_i - T(f)_i)/eps) - 1| (= ||P 1 - a||_1 of P(f, f) when
        // balanced, the fixed-point residual of the alternating solve otherwise), before
        // the step (the step would only move f halfway to T(f)).
        const double res = residual(f, tf, 1.0);
        if (!report(iterations, eps_t, res)) break;
        if (res <= o_.tol) {
          converged = true;
          break;
        }
      }
      for (std::int64_t i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        f[k] = 0.5 * (f[k] + tf[k]);
      }
    }
    SinkhornReport rep = make_report(f, f, iterations);
    if (!converged && !aborted && !monitor_.cancelled()) converged = rep.residual <= o_.tol;
    rep.converged = converged && std::isfinite(rep.ot_eps) && rep.residual <= o_.tol;
    return rep;
  }

 private:
  bool sharded() const noexcept { return shard_.comm != nullptr; }
  /// The sum over the ranks of a per-rank partial (the identity on one process).
  double sum_ranks(double v) const {
    return sharded() ? shard_.comm->allreduce(v, dist::ReduceOp::sum) : v;
  }
  /// True when `flag` holds on any rank.
  bool any_rank(bool flag) const {
    return sharded() ? shard_.comm->allreduce(flag ? 1.0 : 0.0, dist::ReduceOp::max) > 0 : flag;
  }
  /// Reports a check; false when the solve is cancelled (on any rank: the ranks agree,
  /// so that all of them leave the loop at the same iteration). Sharded, the agreement
  /// carries the status word of dist_status.h: a callback that throws on one rank makes
  /// every rank throw the same CommError naming that rank, here, at this collective.
  bool report(int iterations, double eps_t, double res) {
    if (!sharded()) return monitor_.report(p_.index, iterations, eps_t, res);
    dist::detail::RankFailure failure(*shard_.comm);
    bool go_on = true;
    failure.run([&] { go_on = monitor_.report(p_.index, iterations, eps_t, res); });
    double status[2] = {go_on ? 0.0 : 1.0, failure.word()};
    shard_.comm->allreduce(status, 2, dist::ReduceOp::max);
    failure.settle(status[1], "dist::sinkhorn", iterations);
    if (status[0] > 0) {
      monitor_.cancel();
      return false;
    }
    return true;
  }

  double eps_at(int t) const { return detail::scheduled_eps(eps_, eps_init_, o_.eps_decay, t); }

  /// out <- (1 - w) prev + w out (out holds the plain update).
  static void relax_into(const std::vector<double>& prev, double w, std::vector<double>& out) {
    if (w == 1.0) return;
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = (1.0 - w) * prev[i] + w * out[i];
  }

  static void restore(std::vector<double>& f, std::vector<double>& g, std::vector<double>& ft,
                      const std::vector<double>& fs, const std::vector<double>& gs,
                      const std::vector<double>& fts) {
    f = fs;
    g = gs;
    ft = fts;
  }

  SinkhornReport make_report(const std::vector<double>& f, const std::vector<double>& g,
                             int iterations) {
    const double lam_a = detail::unbalanced_lambda(o_.rho_a, eps_);
    const RowReport rows = report_rows(f, g);
    SinkhornReport rep;
    rep.eps = eps_;
    rep.iterations = iterations;
    rep.residual = residual(f, rows.ftilde, lam_a);
    rep.marginal_error = residual(f, rows.ftilde, 1.0);
    CompensatedSum cost_p, defect;
    for (std::int64_t i = 0; i < p_.n; ++i) {
      const auto k = static_cast<std::size_t>(i);
      cost_p.add(rows.row_cost[k]);
      defect.add(rows.row_defect[k]);
    }
    rep.transport_cost = sum_ranks(cost_p.value());
    // D(f, g) = F(f) + G(g) - eps (<a (x) b, exp((f + g - C)/eps)> - m_a m_b), the mass
    // defect summed as expm1 terms: at large eps they are ~ -C/eps each and the
    // difference of the two masses would cancel to nothing.
    rep.ot_eps = sum_ranks(dual_term(p_.a, f, o_.rho_a)) + dual_term(p_.b, g, o_.rho_b) -
                 sum_ranks(defect.value());
    return rep;
  }

  /// out_i = lam * (-eps_t LSE_j(log b_j + (g_j - C_ij) / eps_t)).
  void f_update(const std::vector<double>& g, double eps_t, double lam, std::vector<double>& out) {
    const double inv = 1.0 / eps_t;
    const std::int64_t n = p_.n, m = p_.m;
#pragma omp parallel for schedule(static) num_threads(threads_) if (threads_ > 1)
    for (std::int64_t i = 0; i < n; ++i) {
      const double* c = p_.cost_row(i, scratch_.cost());
      const RowLse r = row_lse(c, p_.log_b.data(), g.data(), m, inv, scratch_.scores(), false);
      out[static_cast<std::size_t>(i)] = lam * (-eps_t * (r.max + std::log(r.sum)));
    }
  }

  /// out_j = lam * (-eps_t LSE_i(log a_i + (f_i - C_ij) / eps_t)).
  void g_update(const std::vector<double>& f, double eps_t, double lam, std::vector<double>& out) {
    if (sharded()) {
      g_update_merged(f, eps_t, lam, out);
      return;
    }
    const double inv = 1.0 / eps_t;
    const std::int64_t n = p_.n, m = p_.m;
#pragma omp parallel for schedule(static) num_threads(threads_) if (threads_ > 1)
    for (std::int64_t j = 0; j < m; ++j) {
      const double* c = p_.cost_col(j, scratch_.cost());
      const RowLse r = row_lse(c, p_.log_a.data(), f.data(), n, inv, scratch_.scores(), false);
      out[static_cast<std::size_t>(j)] = lam * (-eps_t * (r.max + std::log(r.sum)));
    }
  }

  /// The g-update over rows split between ranks: this rank's column partials
  /// (M_j, S_j) = (max_i s_ij, sum_i exp(s_ij - M_j)) over its rows, the global max by
  /// one allreduce, each S_j rescaled to it by exp(M_j - max) and summed by a second:
  /// sum_i exp(s_ij) = exp(max) sum_r S_rj exp(M_rj - max) exactly, so g_j is the
  /// single-process LSE up to the rounding of the partial sums. A rank whose column
  /// has no finite term (M = -inf) contributes 0; a NaN partial stays NaN.
  void g_update_merged(const std::vector<double>& f, double eps_t, double lam,
                       std::vector<double>& out) {
    const double inv = 1.0 / eps_t;
    const std::int64_t n = p_.n, m = p_.m;
    colmax_.resize(static_cast<std::size_t>(m));
    colsum_.resize(static_cast<std::size_t>(m));
#pragma omp parallel for schedule(static) num_threads(threads_) if (threads_ > 1)
    for (std::int64_t j = 0; j < m; ++j) {
      const double* c = p_.cost_col(j, scratch_.cost());
      const RowLse r = row_lse(c, p_.log_a.data(), f.data(), n, inv, scratch_.scores(), false);
      colmax_[static_cast<std::size_t>(j)] = r.max;
      colsum_[static_cast<std::size_t>(j)] = r.sum;
    }
    std::vector<double>& gmax = out;  // the merged max, then g itself
    gmax = colmax_;
    shard_.comm->allreduce(gmax.data(), m, dist::ReduceOp::max);
    for (std::int64_t j = 0; j < m; ++j) {
      const auto k = static_cast<std::size_t>(j);
      const double s = colsum_[k];
      if (colmax_[k] == -kInf && !std::isnan(s)) {
        colsum_[k] = 0.0;
      } else if (std::isfinite(gmax[k])) {
        colsum_[k] = s * exp_det(colmax_[k] - gmax[k]);
      }
    }
    shard_.comm->allreduce(colsum_.data(), m, dist::ReduceOp::sum);
    for (std::int64_t j = 0; j < m; ++j) {
      const auto k = static_cast<std::size_t>(j);
      out[k] = lam * (-eps_t * (gmax[k] + std::log(colsum_[k])));
    }
  }

  /// sum_i a_i |exp((f_i - lam ftilde_i) / eps) - 1|; lam = 1 gives ||P 1 - a||_1.
  double residual(const std::vector<double>& f, const std::vector<double>& ftilde,
                  double lam) const {
    return residual_at(f, ftilde, lam, eps_);
  }

  /// The same at another eps (a level of the schedule).
  double residual_at(const std::vector<double>& f, const std::vector<double>& ftilde, double lam,
                     double eps) const {
    const double inv = 1.0 / eps;
    CompensatedSum sum;
    for (std::int64_t i = 0; i < p_.n; ++i) {
      const auto k = static_cast<std::size_t>(i);
      if (p_.a[k] > 0) sum.add(p_.a[k] * std::fabs(std::expm1((f[k] - lam * ftilde[k]) * inv)));
    }
    return sum_ranks(sum.value());
  }

  RowReport report_rows(const std::vector<double>& f, const std::vector<double>& g) {
    const std::int64_t n = p_.n, m = p_.m;
    const double inv = 1.0 / eps_;
    RowReport out;
    out.ftilde.resize(static_cast<std::size_t>(n));
    out.row_mass.resize(static_cast<std::size_t>(n));
    out.row_cost.resize(static_cast<std::size_t>(n));
    out.row_defect.resize(static_cast<std::size_t>(n));
#pragma omp parallel for schedule(static) num_threads(threads_) if (threads_ > 1)
    for (std::int64_t i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(i);
      const double* c = p_.cost_row(i, scratch_.cost());
      const RowLse r = row_lse(c, p_.log_b.data(), g.data(), m, inv, scratch_.scores(), true);
      out.ftilde[k] = -eps_ * (r.max + std::log(r.sum));
      // r_i = a_i exp((f_i - ftilde_i)/eps) = sum_j P_ij; P_ij = r_i w_ij / sum_j w_ij.
      const double mass = p_.a[k] > 0 ? p_.a[k] * std::exp((f[k] - out.ftilde[k]) * inv) : 0.0;
      out.row_mass[k] = mass;
      out.row_cost[k] = mass > 0 ? mass * (r.weighted_cost / r.sum) : 0.0;
      double defect = 0.0;
      if (p_.a[k] > 0) {
        // The scores are free once row_lse has returned: they take the exponents, then
        // their expm1 (std::expm1 only near 0, cpu_exp.h), summed in increasing j.
        double* e = scratch_.scores();
        for (std::int64_t j = 0; j < m; ++j)
          e[j] = (f[k] + g[static_cast<std::size_t>(j)] - c[j]) * inv;
        expm1_det(e, m, e);
        for (std::int64_t j = 0; j < m; ++j) {
          const double bj = p_.b[static_cast<std::size_t>(j)];
          if (bj > 0) defect += bj * (eps_ * e[j]);
        }
      }
      out.row_defect[k] = p_.a[k] * defect;
    }
    return out;
  }

  /// F(f) = <w, f> (hard constraint) or rho <w, 1 - exp(-f / rho)> (KL penalty).
  static double dual_term(const std::vector<double>& w, const std::vector<double>& pot,
                          double rho) {
    CompensatedSum sum;
    for (std::size_t i = 0; i < w.size(); ++i) {
      if (!(w[i] > 0)) continue;
      sum.add(std::isinf(rho) ? w[i] * pot[i] : -w[i] * std::expm1(-pot[i] / rho));
    }
    return std::isinf(rho) ? sum.value() : rho * sum.value();
  }

  Shard shard_;
  const ProblemData& p_;
  const SinkhornOptions& o_;
  std::vector<double> colmax_, colsum_;  // column partials of a sharded g-update
  double eps_, eps_init_;
  bool continuation_;
  int threads_;
  Scratch scratch_;
  SolveMonitor& monitor_;
};

/// eps actually used by problem p: options.eps, times the mean cost when relative.
double cost_scale(const ProblemData& p, const SinkhornOptions& o) {
  if (!o.eps_relative) return 1.0;
  const double mean = p.mean_cost();
  if (!(mean > 0)) {
    throw InvalidArgument(fmt::format(
        "eps_relative: mean cost is 0 in problem {} (eps would be 0; give an absolute eps)",
        p.index));
  }
  if (!std::isfinite(mean) || !std::isfinite(o.eps * mean) || !(o.eps * mean > 0)) {
    throw InvalidArgument(
        fmt::format("eps_relative: eps {} times the mean cost {} of problem {} is not a usable eps",
                    o.eps, mean, p.index));
  }
  return mean;
}

/// Rejects an eps that fp64 cannot resolve against the costs of problem p (see
/// detail::min_resolvable_eps and max_resolvable_eps), naming the range that works.
void check_eps_resolvable(const ProblemData& p, const CostRange& range, const SinkhornOptions& o,
                          double eps) {
  constexpr double kUnitRoundoff = 0x1p-53;
  const double max_abs = std::max(std::fabs(range.min), std::fabs(range.max));
  const double spread = range.max - range.min;
  const double lo = detail::min_resolvable_eps(max_abs, kUnitRoundoff);
  const double hi = detail::max_resolvable_eps(spread, kUnitRoundoff);
  const bool low = eps<lo, high = spread> 0 && eps > hi;
  if (!low && !high) return;
  const double per = eps / o.eps;  // absolute eps per unit of the given eps
  throw InvalidArgument(fmt::format(
      "eps: {} ({}absolute {:.3g}) is {} what float64 resolves in problem {}, whose costs span "
      "[{:.3g}, {:.3g}]: {}. The working range is {:.3g} <= eps <= {:.3g} (3.3e-13 x max|C_ij| "
      "to 5.6e14 x (max C - min C)){}",
      o.eps, o.eps_relative ? "relative; " : "", eps, low ? "below" : "above", p.index, range.min,
      range.max,
      low ? "(f_i + g_j - C_ij) / eps would be rounding noise"
          : "(g_j - C_ij) / eps would vanish below the rounding of log b_j, and with it the costs",
      lo, hi,
      o.eps_relative ? fmt::format(", i.e. a relative eps in [{:.3g}, {:.3g}]", lo / per, hi / per)
                     : ""));
}

/// The eps schedule of problem p: an explicit eps_init runs the geometric schedule
/// from eps_init (x the cost scale when relative), as asked and as the CUDA driver
/// runs it; kAuto runs the continuation from 1024 x eps where the shared rule
/// (detail::eps_schedule_start) says scaling pays. start 0: no scaling.
struct Schedule {
  double start = 0;
  bool continuation = false;
};
Schedule schedule_of(const CostRange& range, const SinkhornOptions& o, double eps, double scale) {
  if (o.eps_init == kAuto) {
    const double start = 1024.0 * eps;
    if (!std::isfinite(start)) return {};
    return {detail::eps_schedule_start(eps, start, range.max - range.min), true};
  }
  return {o.eps_init > 0 ? o.eps_init * scale : 0.0, false};
}

/// Problem b loaded, with its absolute eps (checked resolvable) and its schedule: the
/// preparation every solve of one problem starts with.
struct PreparedProblem {
  ProblemData p;
  double eps = 0;
  Schedule sched;
};
PreparedProblem prepare_problem(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                                std::int64_t b, bool balanced, std::int64_t dense_limit_bytes,
                                int inner, const SinkhornOptions& options) {
  PreparedProblem pp{load_problem(problem, shape, b, balanced, dense_limit_bytes, inner), 0, {}};
  const double scale = cost_scale(pp.p, options);
  pp.eps = options.eps * scale;
  const CostRange range = pp.p.cost_range();
  check_eps_resolvable(pp.p, range, options, pp.eps);
  pp.sched = schedule_of(range, options, pp.eps, scale);
  return pp;
}

/// The mean cost of a sharded problem: the centred form of ProblemData::mean_cost for
/// the squared Euclidean cost (column sums of x, then its centred squares, each
/// allreduced), else the allreduced sum of the local row sums. One rank: mean_cost().
double mean_cost_sharded(const ProblemData& p, const Shard& shard) {
  auto& comm = *shard.comm;
  const auto nd = static_cast<double>(shard.n_global), md = static_cast<double>(p.m);
  const std::int64_t d = p.d;
  if (p.kind == CostKind::sqeuclidean) {
    std::vector<double> sx(static_cast<std::size_t>(d)), vx(static_cast<std::size_t>(d));
    for (std::int64_t k = 0; k < d; ++k) {
      CompensatedSum s;
      for (std::int64_t i = 0; i < p.n; ++i) s.add(p.x[static_cast<std::size_t>(i * d + k)]);
      sx[static_cast<std::size_t>(k)] = s.value();
    }
    comm.allreduce(sx.data(), d, dist::ReduceOp::sum);
    for (std::int64_t k = 0; k < d; ++k) {
      const double mx = sx[static_cast<std::size_t>(k)] / nd;
      CompensatedSum v;
      for (std::int64_t i = 0; i < p.n; ++i) {
        const double t = p.x[static_cast<std::size_t>(i * d + k)] - mx;
        v.add(t * t);
      }
      vx[static_cast<std::size_t>(k)] = v.value();
    }
    comm.allreduce(vx.data(), d, dist::ReduceOp::sum);
    double total = 0.0;
    for (std::int64_t k = 0; k < d; ++k) {
      const double mx = sx[static_cast<std::size_t>(k)] / nd;
      CompensatedSum sy, vy;
      for (std::int64_t j = 0; j < p.m; ++j) sy.add(p.y[static_cast<std::size_t>(j * d + k)]);
      const double my = sy.value() / md;
      for (std::int64_t j = 0; j < p.m; ++j) {
        const double t = p.y[static_cast<std::size_t>(j * d + k)] - my;
        vy.add(t * t);
      }
      total += vx[static_cast<std::size_t>(k)] / nd + vy.value() / md + (mx - my) * (mx - my);
    }
    return std::max(total, 0.0);
  }
  std::vector<double> scratch(p.dense() ? 0 : static_cast<std::size_t>(p.m));
  CompensatedSum total;
  for (std::int64_t i = 0; i < p.n; ++i) {
    const double* row = p.cost_row(i, scratch.data());
    CompensatedSum rs;
    for (std::int64_t j = 0; j < p.m; ++j) rs.add(row[j]);
    total.add(rs.value());
  }
  return comm.allreduce(total.value(), dist::ReduceOp::sum) / (nd * md);
}

/// The global mass of a sharded a (the local one when not sharded). An absent a is
/// uniform over the whole problem, 1 / n_global per row (load_problem, which sees only
/// this rank's rows, made it 1 / n): set here first.
double global_mass_a(ProblemData& p, const SinkhornProblem& problem, const Shard& shard) {
  if (shard.comm == nullptr) return p.mass_a;
  if (!problem.a.present()) {
    const double w = 1.0 / static_cast<double>(shard.n_global);
    CompensatedSum mass;
    for (auto& v : p.a) {
      v = w;
      mass.add(w);
    }
    std::fill(p.log_a.begin(), p.log_a.end(), std::log(w));
    p.mass_a = mass.value();
  }
  return shard.comm->allreduce(p.mass_a, dist::ReduceOp::sum);
}

/// prepare_problem for this rank's rows: the masses, the mean and the range of the
/// costs are those of the whole problem (merged over the ranks), so eps, the balanced
/// rescaling of b and the schedule are the same on every rank and equal to the
/// single-process ones up to the rounding of the merged sums.
PreparedProblem prepare_sharded(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                                std::int64_t b, bool balanced, int inner,
                                const SinkhornOptions& options, const Shard& shard) {
  PreparedProblem pp{load_problem(problem, shape, b, false, kMaxDenseCostBytes, inner), 0, {}};
  ProblemData& p = pp.p;
  p.mass_a = global_mass_a(p, problem, shard);
  if (balanced) {
    if (!detail::masses_match(p.mass_a, p.mass_b)) {
      throw InvalidArgument(fmt::format(
          "a, b: problem {} has mass(a) = {} (over all ranks) and mass(b) = {}; a balanced "
          "problem (rho_a = rho_b = inf) needs equal masses (relative 1e-5); set rho_a / rho_b "
          "for an unbalanced problem",
          b, p.mass_a, p.mass_b));
    }
    rescale_b_to_mass_of_a(p);
  }
  double scale = 1.0;
  if (options.eps_relative) {
    const double mean = mean_cost_sharded(p, shard);
    if (!(mean > 0) || !std::isfinite(mean) || !std::isfinite(options.eps * mean) ||
        !(options.eps * mean > 0)) {
      throw InvalidArgument(fmt::format(
          "eps_relative: eps {} times the mean cost {} of problem {} is not a usable eps",
          options.eps, mean, b));
    }
    scale = mean;
  }
  pp.eps = options.eps * scale;
  CostRange range = p.cost_range();
  double ext[2] = {range.max, -range.min};
  shard.comm->allreduce(ext, 2, dist::ReduceOp::max);
  range.max = ext[0];
  range.min = -ext[1];
  check_eps_resolvable(p, range, options, pp.eps);
  pp.sched = schedule_of(range, options, pp.eps, scale);
  return pp;
}

/// Runs `body(b, inner_threads)` for every problem: split over problems when there
/// are enough of them and their cost matrices fit side by side, else over rows.
template <class Body>
void for_each_problem(std::int64_t batch, std::int64_t n, std::int64_t m, int threads,
                      Body&& body) {
  const double bytes = 16.0 * static_cast<double>(n) * static_cast<double>(m);
  const bool across =
      threads > 1 && batch >= threads && bytes * threads <= static_cast<double>(kMaxDenseCostBytes);
  // Each problem's solve is the same sequence of operations in both branches, so the
  // split changes the speed only, never the result.
  if (!across) {
    for (std::int64_t b = 0; b < batch; ++b) body(b, threads);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(batch));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t b = 0; b < batch; ++b) {
    try {
      body(b, 1);
    } catch (...) {
      errors[static_cast<std::size_t>(b)] = std::current_exception();
    }
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

/// Potentials and eps of problem b in a result, checked before the derived outputs
/// trust them.
void check_potentials(const SinkhornResult& result, std::int64_t b, const char* what) {
  const double eps = result.problems[static_cast<std::size_t>(b)].eps;
  if (!std::isfinite(eps) || !(eps > 0)) {
    throw InvalidArgument(
        fmt::format("{}: result.problems[{}].eps is {} (must be finite > 0)", what, b, eps));
  }
  auto check = [&](const std::vector<double>& v, std::int64_t len, const char* name) {
    for (std::int64_t i = b * len; i < (b + 1) * len; ++i) {
      const double x = v[static_cast<std::size_t>(i)];
      if (!std::isfinite(x)) {
        throw NonFiniteInput(fmt::format(
            "{}: result.{}[{}] is {} (potentials must be finite; the solve did not converge)", what,
            name, i, x));
      }
    }
  };
  check(result.f, result.n, "f");
  check(result.g, result.m, "g");
}

/// Problem b as the solver saw it. The result does not record rho, so b is rescaled
/// to the mass of a exactly when a balanced solve would have accepted the masses.
ProblemData derived_problem(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                            std::int64_t b, int threads, const Shard& shard) {
  ProblemData p = load_problem(problem, shape, b, false, 0, threads);
  p.mass_a = global_mass_a(p, problem, shard);
  if (detail::masses_match(p.mass_a, p.mass_b)) {
    rescale_b_to_mass_of_a(p);
  }
  return p;
}

/// Weights w_j = exp(s_j - max) of a derived output are evaluated this many at a time
/// (vectorized, cpu_exp.h) into a buffer on the stack.
constexpr std::int64_t kWeightChunk = 256;

/// Calls row(p, i, c, s, lse, inv_eps, g) for every row of every problem, in parallel
/// over rows, after computing the row's scores s_j = log b_j + (g_j - C_ij)/eps.
template <class Row>
void for_each_scored_row(const SinkhornProblem& problem, const SinkhornResult& result,
                         const detail::SinkhornShape& shape, const char* what, const Shard& shard,
                         Row&& row) {
  const int threads = threads_for_work(resolve_threads(0), shape.n * shape.m);
  for (std::int64_t b = 0; b < shape.batch; ++b) {
    check_potentials(result, b, what);
    const ProblemData p = derived_problem(problem, shape, b, threads, shard);
    const double inv = 1.0 / result.problems[static_cast<std::size_t>(b)].eps;
    const double* g = result.g.data() + b * shape.m;
    Scratch scratch(threads, shape.m);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (std::int64_t i = 0; i < shape.n; ++i) {
      const double* c = p.cost_row(i, scratch.cost());
      double* s = scratch.scores();
      const RowLse lse = row_lse(c, p.log_b.data(), g, shape.m, inv, s, false);
      row(p, i, c, s, lse, inv);
    }
  }
}

/// The result a solve starts from: the warm start (or zeros) and one report per problem.
SinkhornResult start_result(const SinkhornOptions& options, const detail::SinkhornShape& shape) {
  const std::int64_t B = shape.batch;
  SinkhornResult result;
  result.backend = Backend::cpu;
  result.device = -1;
  result.batch = B;
  result.n = shape.n;
  result.m = shape.m;
  result.d = shape.d;
  result.f = options.f_init.empty()
                 ? std::vector<double>(static_cast<std::size_t>(B * shape.n), 0.0)
                 : options.f_init;
  result.g = options.g_init.empty()
                 ? std::vector<double>(static_cast<std::size_t>(B * shape.m), 0.0)
                 : options.g_init;
  result.problems.resize(static_cast<std::size_t>(B));
  result.tol = options.tol;
  return result;
}

/// Solves problem b of `result` in place (its potentials in result.f / result.g).
void solve_into(SinkhornResult& result, std::int64_t b, std::int64_t n, std::int64_t m,
                const PreparedProblem& pp, const SinkhornOptions& options, int threads,
                SolveMonitor& monitor, const Shard& shard) {
  const auto f0 = result.f.begin() + b * n, g0 = result.g.begin() + b * m;
  std::vector<double> f(f0, f0 + n), g(g0, g0 + m);
  ProblemSolver solver(pp.p, options, pp.eps, pp.sched.start, pp.sched.continuation, threads,
                       monitor, shard);
  result.problems[static_cast<std::size_t>(b)] = solver.solve(f, g);
  monitor.finished();
  std::copy(f.begin(), f.end(), f0);
  std::copy(g.begin(), g.end(), g0);
}

}  // namespace

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& options,
                        const detail::SinkhornShape& shape) {
  return sinkhorn_with_dense_limit(problem, options, shape, kMaxDenseCostBytes);
}

SinkhornResult sinkhorn_with_dense_limit(const SinkhornProblem& problem,
                                         const SinkhornOptions& options,
                                         const detail::SinkhornShape& shape,
                                         std::int64_t dense_limit_bytes) {
  const int threads = resolve_threads(options.cpu_threads);
  const bool balanced = std::isinf(options.rho_a) && std::isinf(options.rho_b);
  const std::int64_t B = shape.batch, n = shape.n, m = shape.m;
  SinkhornResult result = start_result(options, shape);

  SolveMonitor monitor(options, B);
  for_each_problem(B, n, m, threads, [&](std::int64_t b, int inner) {
    const PreparedProblem pp =
        prepare_problem(problem, shape, b, balanced, dense_limit_bytes, inner, options);
    solve_into(result, b, n, m, pp, options, inner, monitor, {});
  });
  result.cancelled = monitor.cancelled();
  return result;
}

SinkhornResult sinkhorn_sharded(const Shard& shard, const SinkhornProblem& problem,
                                const SinkhornOptions& options,
                                const detail::SinkhornShape& shape) {
  const int threads = resolve_threads(options.cpu_threads);
  const bool balanced = std::isinf(options.rho_a) && std::isinf(options.rho_b);
  const std::int64_t B = shape.batch, n = shape.n, m = shape.m;
  SinkhornResult result = start_result(options, shape);
  SolveMonitor monitor(options, B);
  // One problem after the other on every rank: the collectives of a problem's solve
  // must not interleave with another's.
  for (std::int64_t b = 0; b < B; ++b) {
    const PreparedProblem pp =
        prepare_sharded(problem, shape, b, balanced, threads, options, shard);
    solve_into(result, b, n, m, pp, options, threads, monitor, shard);
  }
  result.cancelled = monitor.cancelled();
  return result;
}

SinkhornResult sinkhorn_symmetric(const SinkhornProblem& problem, const SinkhornOptions& options,
                                  const detail::SinkhornShape& shape) {
  const int threads = resolve_threads(options.cpu_threads);
  const std::int64_t B = shape.batch, n = shape.n;
  SinkhornResult result;
  result.backend = Backend::cpu;
  result.batch = B;
  result.n = result.m = n;
  result.d = shape.d;
  result.tol = options.tol;
  result.f = options.f_init.empty() ? std::vector<double>(static_cast<std::size_t>(B * n), 0.0)
                                    : options.f_init;
  result.problems.resize(static_cast<std::size_t>(B));
  SolveMonitor monitor(options, B);
  for_each_problem(B, n, n, threads, [&](std::int64_t b, int inner) {
    const PreparedProblem pp =
        prepare_problem(problem, shape, b, true, kMaxDenseCostBytes, inner, options);
    const auto f0 = result.f.begin() + b * n;
    std::vector<double> f(f0, f0 + n);
    ProblemSolver solver(pp.p, options, pp.eps, pp.sched.start, false, inner, monitor);
    result.problems[static_cast<std::size_t>(b)] = solver.solve_symmetric(f);
    monitor.finished();
    std::copy(f.begin(), f.end(), f0);
  });
  result.g = result.f;
  result.cancelled = monitor.cancelled();
  return result;
}

std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape, const Shard& shard) {
  const std::int64_t n = shape.n, m = shape.m, d = shape.d;
  std::vector<double> out(static_cast<std::size_t>(shape.batch * n * d));
  for_each_scored_row(problem, result, shape, "barycentric_map", shard,
                      [&](const ProblemData& p, std::int64_t i, const double*, const double* s,
                          const RowLse& lse, double) {
                        double* t = out.data() + (p.index * n + i) * d;
                        std::fill(t, t + d, 0.0);
                        double wb[kWeightChunk];
                        for (std::int64_t j0 = 0; j0 < m; j0 += kWeightChunk) {
                          const std::int64_t len = std::min(kWeightChunk, m - j0);
                          exp_shifted(s + j0, len, lse.max, wb);
                          for (std::int64_t j = j0; j < j0 + len; ++j) {
                            const double w = wb[j - j0];
                            if (w == 0) continue;
                            for (std::int64_t k = 0; k < d; ++k)
                              t[k] += w * p.y[static_cast<std::size_t>(j * d + k)];
                          }
                        }
                        for (std::int64_t k = 0; k < d; ++k) t[k] /= lse.sum;
                      });
  return out;
}

std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape, const Shard& shard) {
  const std::int64_t n = shape.n, m = shape.m, d = shape.d;
  std::vector<double> out(static_cast<std::size_t>(shape.batch * n * d));
  for_each_scored_row(problem, result, shape, "gradient_x", shard,
                      [&](const ProblemData& p, std::int64_t i, const double* c, const double* s,
                          const RowLse& lse, double inv) {
                        double* grad = out.data() + (p.index * n + i) * d;
                        std::fill(grad, grad + d, 0.0);
                        const auto ii = static_cast<std::size_t>(i);
                        if (!(p.a[ii] > 0)) return;  // a row without mass carries no plan
                        const double f_i = result.f[static_cast<std::size_t>(p.index * n + i)];
                        // Row mass r_i = a_i exp(f_i/eps + LSE_j s_j); then P_ij = r_i w_j / sum_j
                        // w_j.
                        const double r =
                            p.a[ii] * std::exp(f_i * inv + lse.max + std::log(lse.sum));
                        const double* xi = p.x.data() + i * d;
                        double wb[kWeightChunk];
                        for (std::int64_t j0 = 0; j0 < m; j0 += kWeightChunk) {
                          const std::int64_t len = std::min(kWeightChunk, m - j0);
                          exp_shifted(s + j0, len, lse.max, wb);
                          for (std::int64_t j = j0; j < j0 + len; ++j) {
                            const double w = wb[j - j0];
                            if (w == 0) continue;
                            const double* yj = p.y.data() + j * d;
                            if (p.kind == CostKind::sqeuclidean) {
                              for (std::int64_t k = 0; k < d; ++k) grad[k] += w * yj[k];
                            } else if (c[j] > 0) {
                              // grad_x |x - y| = (x - y) / |x - y|; at x = y the subgradient 0
                              // is used.
                              const double scale = w / c[j];
                              for (std::int64_t k = 0; k < d; ++k)
                                grad[k] += scale * (xi[k] - yj[k]);
                            }
                          }
                        }
                        if (p.kind == CostKind::sqeuclidean) {
                          for (std::int64_t k = 0; k < d; ++k)
                            grad[k] = 2.0 * r * (xi[k] - grad[k] / lse.sum);
                        } else {
                          for (std::int64_t k = 0; k < d; ++k) grad[k] *= r / lse.sum;
                        }
                      });
  return out;
}

std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed,
                                          const Shard& shard) {
  const std::int64_t n = shape.n, m = shape.m;
  std::vector<std::int64_t> out(static_cast<std::size_t>(shape.batch * n), -1);
  for_each_scored_row(
      problem, result, shape, "sample_partners", shard,
      [&](const ProblemData& p, std::int64_t i, const double*, const double* s, const RowLse&,
          double) {
        double best = -kInf;
        std::int64_t arg = -1;
        for (std::int64_t j = 0; j < m; ++j) {
          if (!(p.b[static_cast<std::size_t>(j)] > 0)) continue;
          const double v = s[j] + detail::gumbel(seed, static_cast<std::uint64_t>(p.index),
                                                 static_cast<std::uint64_t>(shard.row_offset + i),
                                                 static_cast<std::uint64_t>(j));
          if (v > best) {
            best = v;
            arg = j;
          }
        }
        out[static_cast<std::size_t>(p.index * n + i)] = arg;
      });
  return out;
}

}  // namespace otgpu::cpu
