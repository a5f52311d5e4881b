// The adaptive over-relaxation rule of Sinkhorn, shared verbatim by the CPU
// reference (core/src/cpu_sinkhorn.cpp) and the CUDA launchers
// (kernels/include/otgpu_kernels/sinkhorn_accel.h), so that both backends take the
// same decisions from the same residuals. Header-only, host+device, no state outside
// the per-problem OverrelaxState.
//
// The iteration (log domain, per problem):
//   f <- (1 - w) f + w T_f(g),   g <- (1 - w) g + w T_g(f),   w in [1, 2)
// with T_f, T_g the plain Sinkhorn half-steps. Every w in (0, 2) has the same fixed
// point as plain Sinkhorn (w = 1). Near the solution, plain Sinkhorn contracts the
// error by a factor r per iteration (r = sigma_2^2, the squared second singular value
// of the scaled plan); the relaxed iteration with w* = 2 / (1 + sqrt(1 - r))
// contracts it by w* - 1 (the successive over-relaxation optimum: Thibault, Chizat,
// Dossal and Papadakis 2021; Lehmann, von Renesse, Sambale and Uschmajew 2022). For
// r = 0.999 that is 0.94 instead of 0.999 per iteration: ~60x fewer iterations.
#pragma once

#include <cmath>

#include "otgpu/config.h"

namespace otgpu::detail {

using std::fabs;
using std::pow;
using std::sqrt;

/// Largest relaxation used: w -> 2 makes the iteration marginally stable.
inline constexpr double kOverrelaxMaxOmega = 1.98;
/// Checks whose residual did not improve before a problem runs plain Sinkhorn for good.
inline constexpr int kOverrelaxMaxFailures = 3;

/// w* = 2 / (1 + sqrt(1 - r)) for an observed plain rate r per iteration, in
/// [1, kOverrelaxMaxOmega]; 1 when r is not a contraction rate in (0, 1).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double overrelax_omega(double rate) {
  if (!(rate > 0.0) || !(rate < 1.0)) return 1.0;
  const double w = 2.0 / (1.0 + sqrt(1.0 - rate));
  return w < kOverrelaxMaxOmega ? w : kOverrelaxMaxOmega;
}

/// Per-problem state, carried from check to check (plain values: it can live in a
/// small device array per field, one entry per problem).
struct OverrelaxState {
  double omega = 1.0;         ///< w of the iterations until the next check
  double prev_residual = -1;  ///< residual at the last accepted check (< 0: none yet)
  double prev_rate = -1;      ///< plain rate measured over the last period (< 0: none)
  int failures = 0;           ///< rejected checks so far
};

/// What the caller does after overrelax_check.
enum OverrelaxVerdict : int {
  kOverrelaxAccept = 0,   ///< keep the iterate; save it (potentials) as the restore point
  kOverrelaxRestore = 1,  ///< discard the period: restore the potentials saved at the last
                          ///< accepted check and go on with the new (smaller) omega
};

/// The rule, applied at a convergence check (not converged) after `period`
/// iterations since the previous check, with the residual compared with tol:
///  - while w > 1: a residual that is not strictly below the last accepted one
///    (or is not finite) rejects the period and halves w - 1; after
///    kOverrelaxMaxFailures rejections w = 1 for good. Restoring means the residual
///    at accepted checks never increases: the safeguard never does worse than plain
///    Sinkhorn by more than the rejected periods. An accepted period measures the
///    relaxed rate l and, from it, the plain rate r = (l + w - 1)^2 / (l w^2) (the
///    SOR eigenvalue relation); w grows to overrelax_omega(r) when that is larger.
///  - while w = 1: the plain rate r = (res / prev_res)^(1 / period) is measured; once
///    two consecutive periods agree (|r_k - r_{k-1}| <= 0.1 (1 - r_k): the
///    asymptotic linear regime), w = overrelax_omega(r).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int overrelax_check(OverrelaxState& s, double residual,
                                                        int period) {
  if (s.omega > 1.0) {
    if (!(residual < s.prev_residual)) {
      ++s.failures;
      s.omega = s.failures >= kOverrelaxMaxFailures ? 1.0 : 1.0 + 0.5 * (s.omega - 1.0);
      s.prev_rate = -1.0;
      return kOverrelaxRestore;
    }
    if (s.failures == 0 && residual > 0.0 && period > 0) {
      // The relaxed rate l of w below w* satisfies (l + w - 1)^2 = l w^2 r, which gives
      // back the plain rate r; a first estimate taken before the asymptotic regime is
      // too small, so w only grows (to w*(r) once two periods agree).
      const double l = pow(residual / s.prev_residual, 1.0 / static_cast<double>(period));
      const double w = s.omega;
      const double rate = (l + w - 1.0) * (l + w - 1.0) / (l * w * w);
      if (s.prev_rate > 0.0 && fabs(rate - s.prev_rate) <= 0.1 * (1.0 - rate)) {
        const double next = overrelax_omega(rate);
        if (next > s.omega) s.omega = next;
      }
      s.prev_rate = rate;
    }
    s.prev_residual = residual;
    return kOverrelaxAccept;
  }
  if (s.failures == 0 && s.prev_residual > 0.0 && residual > 0.0 && residual < s.prev_residual &&
      period > 0) {
    const double rate = pow(residual / s.prev_residual, 1.0 / static_cast<double>(period));
    if (s.prev_rate > 0.0 && fabs(rate - s.prev_rate) <= 0.1 * (1.0 - rate)) {
      s.omega = overrelax_omega(rate);
    }
    s.prev_rate = rate;
  } else {
    s.prev_rate = -1.0;
  }
  s.prev_residual = residual;
  return kOverrelaxAccept;
}

// ---- eps scaling: one level at a time ----
//
// Sinkhorn at small eps has metastable plateaus: the marginal error can sit still
// for thousands of iterations while a potential travels across a cost gap, and how
// many plateaus a run meets depends erratically on where it starts. The classic
// schedule eps_t = max(eps, eps_init decay^t) runs ONE iteration per level, so the
// start it hands to the target eps is a transient of the larger eps values, not the
// solution of any of them: on small weighted problems that start sat on a plateau
// 3x-8x longer than the cold start (3,000 iterations unconverged vs 360 plain). The
// schedule below is a continuation instead: each level iterates until its own L1
// residual is below kEpsLevelTol (or kEpsLevelMaxIters iterations ran), then eps_t
// <- max(eps, decay eps_t). The target eps then starts from the solution at eps/decay.

// Whether to scale at all: scaling pays when eps is small against the spread of the
// costs (its point is to cross the ballistic phase, O(spread / eps) iterations, at a
// large eps). At moderate eps it only moves the start: on self-transport problems
// (x against x, as in the divergence) the scaled start converged sublinearly where a
// cold start converged in a few hundred iterations. Measured over 288 small problems
// (n, m in 3..20, d in 1, 3, weighted or not, eps in 1e-1..1e-3 x mean cost):
// scaling only below 3e-3 x spread cut the total iterations to 52% of the cold
// starts' with one problem slower by more than 1.5x; scaling always gave 50% but 4.

/// Scaling runs only when eps < kEpsScalingBelow x (max C - min C).
inline constexpr double kEpsScalingBelow = 3e-3;

/// First eps of the schedule of one problem (0: no scaling): eps_init, capped at
/// 2 x (max C - min C) (above it the plan is a (x) b whatever eps_t), and only when
/// eps is below kEpsScalingBelow x the spread.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double eps_schedule_start(double eps, double eps_init,
                                                              double cost_spread) {
  if (!(eps_init > eps) || !(eps < kEpsScalingBelow * cost_spread)) return 0.0;
  const double cap = 2.0 * cost_spread;
  const double start = eps_init < cap ? eps_init : cap;
  return start > eps ? start : 0.0;
}

/// Residual (at the level's own eps_t) that ends a level of the schedule.
inline constexpr double kEpsLevelTol = 1e-2;
/// Iterations after which a level ends anyway (a level must not become the solve).
inline constexpr int kEpsLevelMaxIters = 50;

/// True when the current level of the eps schedule is done, given the residual at
/// its eps_t after `iterations_at_level` iterations there.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool eps_level_done(double level_residual,
                                                        int iterations_at_level) {
  return level_residual <= kEpsLevelTol || iterations_at_level >= kEpsLevelMaxIters ||
         !(level_residual == level_residual);
}

/// Smallest eps whose Gibbs exponents (f_i + g_j - C_ij) / eps a precision with unit
/// round-off u resolves to within `exponent_error`: the three terms carry ~u max|C| of
/// round-off each, so the exponent is off by ~3 u max|C| / eps, and plan entries by
/// that fraction. The fp64 CPU asks for 1e-3: eps >= 3e3 u max|C| = 3.3e-13 max|C|
/// (u = 2^-53). The fp32 GPU asks for 5e-2 (5% of a plan entry, the scale of the fp32
/// potentials' own error near that limit): eps >= 60 u max|C| = 3.6e-6 max|C|
/// (u = 2^-24); the replay of its kernels on the CPU (tests/test_online_lse_cpu.cpp)
/// keeps potentials within 7.2e-3 eps at eps = 1e-4 x the mean cost, inside it.
/// Below it a "converged" plan would be rounding noise.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double min_resolvable_eps(double max_abs_cost,
                                                              double unit_roundoff,
                                                              double exponent_error = 1e-3) {
  return 3.0 * unit_roundoff * max_abs_cost / exponent_error;
}

/// Largest eps at which the costs still reach the updates: the scores
/// log b_j + (g_j - C_ij) / eps carry ~u |log b_j| of round-off, and the cost part
/// varies by (max C - min C) / eps, so eps <= (max C - min C) / (16 u): 5.6e14 x the
/// spread for fp64. Beyond it every update returns the same potentials whatever C is
/// (OT_eps would still tend to <a (x) b, C>, but not from these updates).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double max_resolvable_eps(double cost_spread,
                                                              double unit_roundoff) {
  return cost_spread / (16.0 * unit_roundoff);
}

}  // namespace otgpu::detail
