// The rules of a Sinkhorn solve that the CPU reference, the host drivers and the CUDA
// kernels must apply identically, each defined once: the epsilon-scaling schedule, the
// unbalanced damping factor (otgpu/detail/math.h: unbalanced_lambda), the relative
// tolerance under which two masses count as equal, and the padding of the point
// dimension in the GPU layout. Host and device (OTGPU_HOST_DEVICE).
#pragma once

#include <cmath>
#include <cstdint>

#include "otgpu/config.h"
#include "otgpu/detail/math.h"

namespace otgpu::detail {

/// Relative tolerance under which mass(a) and mass(b) count as equal: a balanced
/// problem needs it, and b is then rescaled to the mass of a.
constexpr double kMassTolerance = 1e-5;

OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool masses_match(double ma, double mb) {
  return fabs(ma - mb) <= kMassTolerance * (ma > mb ? ma : mb);
}

/// eps of iteration t (0-based) under epsilon scaling:
///   eps_t = max(eps, eps_init * decay^t), or eps when eps_init <= 0 (no scaling).
/// pow per iteration, never a running product, so that every backend reaches the
/// target eps at the same iteration.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE double scheduled_eps(double eps, double eps_init, double decay,
                                                         int t) {
  if (!(eps_init > 0)) return eps;
  const double e = eps_init * pow(decay, static_cast<double>(t));
  return e > eps ? e : eps;
}

/// Number of iterations K before scheduled_eps reaches eps (capped at max_iter): rows
/// 0..K of an eps table cover the whole schedule, row K being the target. The same
/// for every problem of a batch (a relative eps scales eps and eps_init alike).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int scaling_steps(double eps, double eps_init, double decay,
                                                      int max_iter) {
  if (!(eps_init > 0)) return 0;
  int k = 0;
  while (k < max_iter && eps_init * pow(decay, static_cast<double>(k)) > eps) ++k;
  return k;
}

/// Coordinates of a point in the GPU layout: d rounded up to a power of two up to 64
/// (the specialised online kernels), to a multiple of 4 above (float4 loads). The
/// padding coordinates are zero, so distances are unchanged.
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE int padded_dim(std::int64_t d) {
  if (d <= 64) {
    int p = 1;
    while (p < d) p *= 2;
    return p;
  }
  return static_cast<int>((d + 3) / 4 * 4);
}

}  // namespace otgpu::detail
