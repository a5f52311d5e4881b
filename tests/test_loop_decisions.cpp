// The CUDA driver's accelerated loop (host/src/cuda/sinkhorn_loop.cpp,
// accel_iterations) replayed on the host in fp64, step for step, with the very
// per-problem decision functions its kernels call (otgpu/detail/eps_continuation.h:
// eps_level_start_f32, eps_level_step_f32, overrelax_rule_step on the fp32 level state)
// and compared with the CPU reference (cpu_sinkhorn.cpp) on the same problem: the same
// checks at the same iterations with the same residuals, the same level schedule, the
// same omega, restores, final iteration count and potentials. Only the arithmetic of
// the half-steps differs from the device (fp64 here, fp32 there); every decision and
// its order is the driver's. A driver that relaxes problems at eps late (the earlier
// phase split: plain until no problem of the batch was above eps, state reset after),
// checks a period of the wrong length, runs the rule on a level residual or on a
// converged problem, or keeps stale lambdas at a level shows here as a different check
// history.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "otgpu/detail/eps_continuation.h"
#include "otgpu/detail/math.h"
#include "otgpu/otgpu.h"

namespace {

using otgpu::detail::EpsLevelF32;
using otgpu::detail::OverrelaxState;

/// A dense problem: C [n, m] (values exact in fp32, as the device stages them), a, b.
struct Dense {
  std::int64_t n = 0, m = 0;
  std::vector<double> C, a, b;
};

/// 1-D points on a grid of 1/16 (squared distances are multiples of 1/256: exact in
/// fp32), cubed random weights (the plateau-prone case of small-eps Sinkhorn).
Dense grid_problem(std::int64_t n, std::int64_t m, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> pos(0, 16);
  std::uniform_real_distribution<double> w(0.1, 1.0);
  Dense p;
  p.n = n;
  p.m = m;
  std::vector<double> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(m));
  for (double& v : x) v = pos(gen) / 16.0;
  for (double& v : y) v = pos(gen) / 16.0;
  x[0] = 0.0;
  y[0] = 1.0;  // spread 1 whatever the draw
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < m; ++j) {
      const double d = x[static_cast<std::size_t>(i)] - y[static_cast<std::size_t>(j)];
      p.C.push_back(d * d);
    }
  auto weights = [&](std::int64_t k) {
    std::vector<double> v(static_cast<std::size_t>(k));
    double s = 0;
    for (double& e : v) {
      e = w(gen);
      e = e * e * e;
      s += e;
    }
    for (double& e : v) e /= s;
    return v;
  };
  p.a = weights(n);
  p.b = weights(m);
  return p;
}

/// What a solve decided: the residual of each check at the target eps (iteration,
/// value), and the end.
struct History {
  std::vector<int> check_iter;
  std::vector<double> check_res;
  int iterations = 0;
  bool converged = false;
  double omega = 1.0;
  bool relaxed = false;
  std::vector<double> f, g;
};

History cpu_solve(const Dense& p, const otgpu::SinkhornOptions& base) {
  using otgpu::DType;
  using otgpu::MemorySpace;
  using otgpu::TensorView;
  otgpu::SinkhornProblem prob;
  prob.cost_kind = otgpu::CostKind::matrix;
  prob.cost = TensorView::contiguous(p.C.data(), DType::f64, MemorySpace::host, {p.n, p.m});
  prob.a = TensorView::contiguous(p.a.data(), DType::f64, MemorySpace::host, {p.n});
  prob.b = TensorView::contiguous(p.b.data(), DType::f64, MemorySpace::host, {p.m});
  History h;
  otgpu::SinkhornOptions o = base;
  o.backend = otgpu::Backend::cpu;
  o.cpu_threads = 1;
  o.progress = [&h](const otgpu::SinkhornProgress& pr) {
    h.check_iter.push_back(pr.iteration);
    h.check_res.push_back(pr.residual);
    return true;
  };
  const otgpu::SinkhornResult r = otgpu::sinkhorn(prob, o);
  h.iterations = r.problems[0].iterations;
  h.converged = r.problems[0].converged;
  h.omega = r.problems[0].omega;
  h.relaxed = r.problems[0].acceleration == otgpu::SinkhornAcceleration::overrelax;
  h.f = r.f;
  h.g = r.g;
  return h;
}

/// The log-domain half-steps of the kernels, in fp64 (sinkhorn_dense.h):
/// out_i = lam (-eps LSE_j(log w_j + (pot_j - C_ij) / eps)), rows of C (f) or columns (g).
void half_step(const Dense& p, bool f_side, const std::vector<double>& pot, double eps, double lam,
               std::vector<double>& out) {
  const std::int64_t rows = f_side ? p.n : p.m, cols = f_side ? p.m : p.n;
  const std::vector<double>& w = f_side ? p.b : p.a;
  out.assign(static_cast<std::size_t>(rows), 0.0);
  for (std::int64_t r = 0; r < rows; ++r) {
    double mx = -std::numeric_limits<double>::infinity();
    std::vector<double> s(static_cast<std::size_t>(cols));
    for (std::int64_t c = 0; c < cols; ++c) {
      const double cost = f_side ? p.C[static_cast<std::size_t>(r * p.m + c)]
                                 : p.C[static_cast<std::size_t>(c * p.m + r)];
      const auto k = static_cast<std::size_t>(c);
      s[k] = std::log(w[k]) + (pot[k] - cost) / eps;
      mx = std::max(mx, s[k]);
    }
    // The CPU reference's summation order (core/src/cpu_exp.h, exp_sums): term c into
    // accumulator c mod 8, the eight combined pairwise. Seed 3 below stops on a residual
    // that sits at the tolerance, so its check history follows the last bits of the sums.
    double acc[8] = {};
    for (std::size_t c = 0; c < s.size(); ++c) acc[c % 8] += std::exp(s[c] - mx);
    const double sum =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    out[static_cast<std::size_t>(r)] = lam * (-eps * (mx + std::log(sum)));
  }
}

/// kernels::loop_check_residual: sum_i a_i |exp((F_i - lam Ft_i) / eps) - 1|.
double residual(const Dense& p, const std::vector<double>& F, const std::vector<double>& Ft,
                double eps, double lam) {
  double r = 0;
  for (std::size_t i = 0; i < F.size(); ++i)
    if (p.a[i] > 0) r += p.a[i] * std::fabs(std::exp((F[i] - lam * Ft[i]) / eps) - 1.0);
  return r;
}

/// kernels::sinkhorn_overrelax: out <- (1 - w) prev + w out.
void relax(const std::vector<double>& prev, double w, std::vector<double>& out) {
  if (w == 1.0) return;
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = (1.0 - w) * prev[i] + w * out[i];
}

/// accel_iterations for one problem (B = 1), eps_init kAuto, a dense cost.
/// legacy_split: the driver before this replay existed (the control): no relaxation
/// and no rule while any level part ran, the relaxation state started afresh after it.
/// partner_until: another problem of the batch keeps the level part running until that
/// iteration (its levels; the driver reads "none above eps" for the whole batch), so
/// that this problem's decisions can be compared with and without a batch partner.
History device_replay(const Dense& p, const otgpu::SinkhornOptions& o, bool legacy_split = false,
                      int partner_until = 0) {
  namespace det = otgpu::detail;
  const int ce = o.check_every;
  const bool relax_on = o.acceleration == otgpu::SinkhornAcceleration::overrelax && ce > 0;
  const auto eps_target = static_cast<float>(o.eps);  // the eps table (row K = 0)
  const double lam_a_target = static_cast<float>(det::unbalanced_lambda(o.rho_a, eps_target));
  const double lam_b_target = static_cast<float>(det::unbalanced_lambda(o.rho_b, eps_target));
  // kernels::cost_range: fp32 min and max of C.
  const auto [cmin, cmax] = std::minmax_element(p.C.begin(), p.C.end());
  EpsLevelF32 lev;
  const bool scales = det::eps_level_start_f32(lev, eps_target, static_cast<float>(*cmin),
                                               static_cast<float>(*cmax), o.rho_a, o.rho_b);
  int levels_end = scales || partner_until > 0
                       ? std::min(o.max_iter, det::eps_continuation_max_iters(o.eps_decay))
                       : 0;
  OverrelaxState ov;
  std::vector<double> F(static_cast<std::size_t>(p.n), 0.0), G(static_cast<std::size_t>(p.m), 0.0);
  std::vector<double> Ft(F.size()), F_prev, G_prev, F_s, G_s, Ft_s, tmp;
  History h;
  h.iterations = o.max_iter;
  bool active = true, after_check = false;
  auto commit = [&](bool restore) {
    if (restore) {
      F = F_s;
      G = G_s;
      Ft = Ft_s;
    } else {
      F_s = F;
      G_s = G;
      Ft_s = Ft;
    }
  };
  for (int t = 0; t < o.max_iter && active; ++t) {
    const bool levels = t < levels_end;
    const double eps_t = levels ? lev.eps_cur : eps_target;
    const double la = levels ? lev.lam_a : lam_a_target;
    const double lb = levels ? lev.lam_b : lam_b_target;
    const bool check_now = ce > 0 && (t + 1) % ce == 0;
    const bool relax_now = relax_on && !(legacy_split && levels);
    const bool relax_g = relax_now && !check_now && t + 1 != o.max_iter;
    F_prev = F;
    if (after_check) {
      for (std::size_t i = 0; i < F.size(); ++i) F[i] = la * Ft[i];
    } else {
      half_step(p, true, G, eps_t, la, F);
    }
    if (relax_now) relax(F_prev, ov.omega, F);
    G_prev = G;
    half_step(p, false, F, eps_t, lb, G);
    if (relax_g) relax(G_prev, ov.omega, G);
    if (levels) {
      after_check = false;
      half_step(p, true, G, eps_t, 1.0, Ft);
      const double res = residual(p, F, Ft, eps_t, la);
      const bool at_target = !(lev.eps_cur > eps_target);
      if (check_now && at_target) {
        h.check_iter.push_back(t + 1);
        h.check_res.push_back(res);
      }
      if (relax_now && check_now) commit(det::overrelax_rule_step(ov, res, ce, at_target, o.tol));
      if (det::eps_level_step_f32(lev, eps_target, o.eps_decay, res, o.tol, ce, t + 1, o.rho_a,
                                  o.rho_b) == det::kEpsRetire) {
        active = false;
        h.iterations = t + 1;
        h.converged = true;
      }
      const bool partner_at_eps = t + 1 >= partner_until;
      if ((t + 1) % det::kEpsLevelMaxIters == 0 && partner_at_eps &&
          (!active || !(lev.eps_cur > eps_target))) {
        levels_end = t + 1;
        if (legacy_split) ov = OverrelaxState{};
      }
      continue;
    }
    after_check = check_now;
    if (!check_now) continue;
    half_step(p, true, G, eps_target, 1.0, Ft);
    const double res = residual(p, F, Ft, eps_target, lam_a_target);
    h.check_iter.push_back(t + 1);
    h.check_res.push_back(res);
    if (res <= o.tol) {
      active = false;
      h.iterations = t + 1;
      h.converged = true;
      break;
    }
    if (relax_on) commit(det::overrelax_rule_step(ov, res, ce, true, o.tol));
  }
  h.omega = ov.omega;
  h.relaxed = ov.omega > 1.0 || ov.failures > 0;  // as sinkhorn_solve.cpp reports it
  h.f = F;
  h.g = G;
  return h;
}

void expect_same_decisions(const History& cpu, const History& dev, double res_rtol,
                           double omega_tol = 1e-9) {
  ASSERT_EQ(cpu.check_iter, dev.check_iter);
  for (std::size_t k = 0; k < cpu.check_res.size(); ++k) {
    SCOPED_TRACE(cpu.check_iter[k]);
    EXPECT_NEAR(dev.check_res[k], cpu.check_res[k], res_rtol * cpu.check_res[k]);
  }
  EXPECT_EQ(dev.iterations, cpu.iterations);
  EXPECT_EQ(dev.converged, cpu.converged);
  EXPECT_NEAR(dev.omega, cpu.omega, omega_tol);
  EXPECT_EQ(dev.relaxed, cpu.relaxed);
}

otgpu::SinkhornOptions small_eps_options() {
  otgpu::SinkhornOptions o;
  o.eps = 1.0 / 1024.0;  // exact in fp32; < 3e-3 x spread 1: the continuation runs
  o.tol = 1e-6;
  o.max_iter = 20000;
  o.check_every = 10;
  o.eps_init = otgpu::kAuto;
  o.acceleration = otgpu::SinkhornAcceleration::overrelax;
  return o;
}

TEST(LoopDecisions, BalancedContinuationAndOverrelaxMatchTheCpu) {
  const otgpu::SinkhornOptions o = small_eps_options();
  for (unsigned seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    const Dense p = grid_problem(12, 9, seed);
    const History cpu = cpu_solve(p, o);
    const History dev = device_replay(p, o);
    ASSERT_TRUE(cpu.converged);
    ASSERT_TRUE(cpu.relaxed);  // the case under test: relaxation at the target eps
    expect_same_decisions(cpu, dev, 1e-6);
    for (std::size_t i = 0; i < cpu.f.size(); ++i) EXPECT_NEAR(dev.f[i], cpu.f[i], 1e-9);
    for (std::size_t j = 0; j < cpu.g.size(); ++j) EXPECT_NEAR(dev.g[j], cpu.g[j], 1e-9);
  }
}

TEST(LoopDecisions, ControlTheEarlierPhaseSplitDiffers) {
  // The driver as it was: problems at eps ran plain until no problem was above eps
  // (read every 50 iterations) and the relaxation state was reset then. The replay
  // must tell it from the CPU, or the comparison above could not fail.
  const otgpu::SinkhornOptions o = small_eps_options();
  int differing = 0;
  for (unsigned seed : {1u, 2u, 3u}) {
    const Dense p = grid_problem(12, 9, seed);
    const History cpu = cpu_solve(p, o);
    const History old = device_replay(p, o, true);
    if (old.check_iter != cpu.check_iter || old.omega != cpu.omega) ++differing;
  }
  EXPECT_GT(differing, 0);
}

TEST(LoopDecisions, ABatchPartnerStillScalingChangesNothing) {
  // In a batch, the level part lasts while any problem is above eps. A problem that
  // does not scale (moderate eps) or reaches eps early must take the decisions it takes
  // alone, i.e. the CPU's, while its partner keeps the level part running to 600.
  for (const double eps : {1.0 / 64.0, 1.0 / 1024.0}) {
    SCOPED_TRACE(eps);
    otgpu::SinkhornOptions o = small_eps_options();
    o.eps = eps;
    const Dense p = grid_problem(12, 12, 9);
    const History cpu = cpu_solve(p, o);
    ASSERT_TRUE(cpu.converged);
    ASSERT_TRUE(cpu.relaxed);
    expect_same_decisions(cpu, device_replay(p, o, false, 600), 1e-6);
    // The control: the earlier driver kept such a problem plain until the partner's
    // levels ended, then started its rate measurement afresh.
    const History old = device_replay(p, o, true, 600);
    EXPECT_TRUE(old.check_iter != cpu.check_iter || old.omega != cpu.omega);
  }
}

TEST(LoopDecisions, PlainContinuationMatchesTheCpu) {
  otgpu::SinkhornOptions o = small_eps_options();
  o.acceleration = otgpu::SinkhornAcceleration::none;
  const Dense p = grid_problem(10, 10, 7);
  const History cpu = cpu_solve(p, o);
  const History dev = device_replay(p, o);
  EXPECT_FALSE(cpu.relaxed);
  expect_same_decisions(cpu, dev, 1e-6);
}

TEST(LoopDecisions, UnbalancedLevelsUseTheirOwnLambdas) {
  // Finite rho: every level has its own lambda = rho / (rho + eps_t) (fp32 on the
  // device, fp64 on the CPU: the residuals agree to that rounding, the decisions
  // exactly).
  otgpu::SinkhornOptions o = small_eps_options();
  o.rho_a = o.rho_b = 0.05;
  o.tol = 1e-5;
  for (unsigned seed : {4u, 5u}) {
    SCOPED_TRACE(seed);
    const Dense p = grid_problem(11, 8, seed);
    const History cpu = cpu_solve(p, o);
    const History dev = device_replay(p, o);
    ASSERT_FALSE(cpu.check_iter.empty());
    expect_same_decisions(cpu, dev, 1e-3, 1e-5);
  }
}

TEST(LoopDecisions, NoScalingAtModerateEps) {
  // eps above 3e-3 x spread: no level; the relaxed loop alone.
  otgpu::SinkhornOptions o = small_eps_options();
  o.eps = 1.0 / 64.0;
  const Dense p = grid_problem(12, 12, 9);
  const History cpu = cpu_solve(p, o);
  const History dev = device_replay(p, o);
  ASSERT_TRUE(cpu.converged);
  expect_same_decisions(cpu, dev, 1e-6);
}

TEST(LoopDecisions, RuleSkipsLevelsAndConvergedProblems) {
  namespace det = otgpu::detail;
  OverrelaxState s;
  // A problem at a level, or one whose residual met tol, leaves the state untouched.
  EXPECT_FALSE(det::overrelax_rule_step(s, 0.5, 10, false, 1e-4));
  EXPECT_FALSE(det::overrelax_rule_step(s, 1e-5, 10, true, 1e-4));
  EXPECT_EQ(s.prev_residual, -1.0);
  // At the target: overrelax_check itself (the first check records its residual).
  EXPECT_FALSE(det::overrelax_rule_step(s, 0.5, 10, true, 1e-4));
  EXPECT_EQ(s.prev_residual, 0.5);
}

TEST(LoopDecisions, Fp32LevelStateFollowsTheDoubleRule) {
  namespace det = otgpu::detail;
  // Start: 1024 eps capped at 2 x spread, rounded to fp32; lambdas at that eps.
  EpsLevelF32 s;
  ASSERT_TRUE(det::eps_level_start_f32(s, 1e-3f, 0.0f, 4.0f, 1.0, 2.0));
  EXPECT_EQ(s.eps_cur, static_cast<float>(1024.0 * static_cast<double>(1e-3f)));
  EXPECT_EQ(s.lam_a, static_cast<float>(1.0 / (1.0 + static_cast<double>(s.eps_cur))));
  EXPECT_EQ(s.lam_b, static_cast<float>(2.0 / (2.0 + static_cast<double>(s.eps_cur))));
  // No scaling at moderate eps: the problem starts at eps with eps's lambdas.
  EpsLevelF32 t;
  EXPECT_FALSE(det::eps_level_start_f32(t, 0.5f, 0.0f, 4.0f, 1.0, 1.0));
  EXPECT_EQ(t.eps_cur, 0.5f);
  EXPECT_EQ(t.lam_a, static_cast<float>(1.0 / 1.5));
  // Each level change recomputes the lambdas; the last level lands on eps exactly,
  // with a decay (0.3) that never hits it by whole steps.
  int levels = 0;
  while (s.eps_cur > 1e-3f) {
    const float before = s.eps_cur;
    ASSERT_EQ(det::eps_level_step_f32(s, 1e-3f, 0.3, 0.0, 1e-4, 10, 1, 1.0, 2.0),
              det::kEpsNextLevel);
    ASSERT_LT(s.eps_cur, before);
    EXPECT_EQ(s.lam_a, static_cast<float>(1.0 / (1.0 + static_cast<double>(s.eps_cur))));
    ++levels;
  }
  EXPECT_EQ(s.eps_cur, 1e-3f);
  EXPECT_EQ(levels, 6);
  EXPECT_EQ(det::eps_level_step_f32(s, 1e-3f, 0.3, 1e-5, 1e-4, 10, 20, 1.0, 2.0), det::kEpsRetire);
}

}  // namespace
