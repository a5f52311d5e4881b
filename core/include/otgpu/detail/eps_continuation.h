// The automatic eps continuation (SinkhornOptions::eps_init = kAuto) as per-problem
// steps that a driver applies after each iteration at a level: the CPU reference's
// schedule (core/src/cpu_sinkhorn.cpp) in a form the CUDA driver runs on the device,
// one thread per problem, from the same rule (otgpu/detail/accel.h:
// eps_schedule_start, eps_level_done). Host and device; testable without a device by
// feeding residual histories.
//
// Per problem: eps_0 = eps_continuation_start(eps, max C - min C) (0: no scaling, the
// problem starts at eps); while eps_t > eps, every iteration at eps_t measures the
// L1 residual at eps_t and eps_level_step moves to max(eps, decay eps_t) once
// eps_level_done. Convergence against tol is only tested at eps_t == eps.
#pragma once

#include <cmath>

#include "otgpu/config.h"
#include "otgpu/detail/accel.h"
#include "otgpu/detail/math.h"

namespace otgpu::detail {

using std::log;

/// kAuto starts the continuation at this multiple of eps (then capped by
/// eps_schedule_start at 2 x the cost spread, and skipped where scaling does not pay).
inline constexpr double kEpsContinuationFactor = 1024.0;

/// First eps of the automatic continuation of one problem, or 0 for none.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double eps_continuation_start(double eps, double cost_spread) {
  const double start = kEpsContinuationFactor * eps;
  if (!(start - start == 0.0)) return 0.0;  // not finite
  return eps_schedule_start(eps, start, cost_spread);
}

/// The level a problem is at: eps_t and the iterations run there so far.
struct EpsLevel {
  double eps_t = 0;
  int iters = 0;
};

/// After one iteration at s.eps_t (> eps) whose residual at eps_t is level_residual:
/// counts it, and once eps_level_done moves to eps_{t+1} = max(eps, decay eps_t) with
/// a fresh count. True when the level moved.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool eps_level_step(EpsLevel& s, double eps, double decay,
                                                        double level_residual) {
  ++s.iters;
  if (!eps_level_done(level_residual, s.iters)) return false;
  const double next = s.eps_t * decay;
  s.eps_t = next > eps ? next : eps;
  s.iters = 0;
  return true;
}

/// What a driver does with a problem after eps_continuation_check.
enum EpsContinuationAction : int {
  kEpsContinue = 0,   ///< iterate on (same level, or at eps and not converged)
  kEpsNextLevel = 1,  ///< s.eps_t moved to the next level: recompute its lambdas
  kEpsRetire = 2,     ///< at eps, a check iteration, residual <= tol: converged
};

/// The whole per-problem decision after iteration `iteration` (1-based count), given
/// the residual at the problem's own s.eps_t: above eps, eps_level_step; at eps, the
/// convergence test, only at check iterations (check_every > 0, iteration a multiple
/// of it), as the plain loop checks. Never retires a problem above eps.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int eps_continuation_check(EpsLevel& s, double eps,
                                                               double decay, double residual,
                                                               double tol, int check_every,
                                                               int iteration) {
  if (s.eps_t > eps) return eps_level_step(s, eps, decay, residual) ? kEpsNextLevel : kEpsContinue;
  if (check_every > 0 && iteration % check_every == 0 && residual <= tol) return kEpsRetire;
  return kEpsContinue;
}

/// Most iterations the continuation of any problem can spend above eps for a decay in
/// (0, 1): kEpsLevelMaxIters per level, one level per factor 1/decay between
/// kEpsContinuationFactor x eps and eps, plus one level of slack for the rounding of
/// eps_t when it is stored in fp32. A driver that runs every problem's levels in one
/// phase of this many iterations has every problem at eps by its end.
/// A decay so close to 1 that the count would pass INT_MAX (about log(1024) / (1 -
/// decay) levels: 7e9 at decay = 1 - 1e-9, which validation accepts) gives the
/// largest multiple of kEpsLevelMaxIters an int holds: max_iter caps the phase anyway,
/// and neither the count nor the loop that counts may run away.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int eps_continuation_max_iters(double decay) {
  if (!(decay > 0.0) || !(decay < 1.0)) return 0;
  constexpr int kMaxLevels = 2147483647 / kEpsLevelMaxIters - 1;
  // Levels up to rounding; the exact count below walks them one by one.
  const double estimate = log(kEpsContinuationFactor) / -log(decay);
  if (!(estimate < 1e6)) return (kMaxLevels + 1) * kEpsLevelMaxIters;
  int levels = 0;
  for (double r = kEpsContinuationFactor; r > 1.0; r *= decay) ++levels;
  return (levels + 1) * kEpsLevelMaxIters;
}

// ---- the CUDA driver's per-problem state and decisions, exactly as its kernels run them ----
//
// The kernels of kernels/src/sinkhorn_continuation.cu and sinkhorn_accel.cu are one
// thread per problem calling these; tests/test_loop_decisions.cpp calls the same
// functions on the host and replays the accelerated loop against the CPU reference.

/// One problem's continuation state on the device: the level's eps_t and the lambdas of
/// the half-steps at it, in fp32 (the kernels' tables), and the iterations run there.
struct EpsLevelF32 {
  float eps_cur = 0.0f;
  float lam_a = 1.0f;
  float lam_b = 1.0f;
  int level_iters = 0;
};

/// The lambdas of a level at eps_t, rounded to fp32 once (unbalanced_lambda in double).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE void eps_level_lambdas(EpsLevelF32& s, double rho_a,
                                                           double rho_b) {
  s.lam_a = static_cast<float>(unbalanced_lambda(rho_a, static_cast<double>(s.eps_cur)));
  s.lam_b = static_cast<float>(unbalanced_lambda(rho_b, static_cast<double>(s.eps_cur)));
}

/// The start of one problem (kernels::continuation_init): eps_cur =
/// eps_continuation_start(eps, cmax - cmin) rounded to fp32 when it is > 0, else eps;
/// the lambdas at eps_cur; no iteration at the level yet. True when the problem scales
/// (a start that rounds to eps in fp32 is no schedule). cmin, cmax: its fp32 cost range.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool eps_level_start_f32(EpsLevelF32& s, float eps_target,
                                                             float cmin, float cmax, double rho_a,
                                                             double rho_b) {
  const double spread = static_cast<double>(cmax) - static_cast<double>(cmin);
  const double start = eps_continuation_start(static_cast<double>(eps_target), spread);
  s.eps_cur = start > 0.0 ? static_cast<float>(start) : eps_target;
  if (!(s.eps_cur > eps_target)) s.eps_cur = eps_target;
  s.level_iters = 0;
  eps_level_lambdas(s, rho_a, rho_b);
  return s.eps_cur > eps_target;
}

/// One step of one active problem after iteration `iteration` (1-based)
/// (kernels::continuation_step): eps_continuation_check in double on the fp32 eps_t,
/// a new level stored in fp32 (never below eps_target) with its lambdas.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int eps_level_step_f32(EpsLevelF32& s, float eps_target,
                                                           double decay, double residual,
                                                           double tol, int check_every,
                                                           int iteration, double rho_a,
                                                           double rho_b) {
  EpsLevel level{static_cast<double>(s.eps_cur), s.level_iters};
  const int action = eps_continuation_check(level, static_cast<double>(eps_target), decay, residual,
                                            tol, check_every, iteration);
  s.level_iters = level.iters;
  if (action == kEpsNextLevel) {
    const float e = static_cast<float>(level.eps_t);
    s.eps_cur = e > eps_target ? e : eps_target;
    eps_level_lambdas(s, rho_a, rho_b);
  }
  return action;
}

/// The over-relaxation rule of one active problem at a check of the CUDA loop
/// (kernels::sinkhorn_overrelax_rule): overrelax_check on the check's residual, only
/// for a problem at its target eps whose residual did not converge (a converged
/// problem retires, a problem at a level is not relaxed: the CPU runs the rule at
/// neither). True when the period is rejected (restore the saved point).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool overrelax_rule_step(OverrelaxState& s, double residual,
                                                             int period, bool at_target,
                                                             double tol) {
  if (!at_target || residual <= tol) return false;
  return overrelax_check(s, residual, period) == kOverrelaxRestore;
}

}  // namespace otgpu::detail
