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

#include "otgpu/config.h"
#include "otgpu/detail/accel.h"

namespace otgpu::detail {

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
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int eps_continuation_max_iters(double decay) {
  if (!(decay > 0.0) || !(decay < 1.0)) return 0;
  int levels = 0;
  for (double r = kEpsContinuationFactor; r > 1.0; r *= decay) ++levels;
  return (levels + 1) * kEpsLevelMaxIters;
}

}  // namespace otgpu::detail
