// The rounding of point coordinates into the fp32 arrays of the CUDA kernels, shared
// verbatim by the staging kernels (kernels/src/centered_gather.cu) and the CPU tests
// (tests/test_staging_offset_cpu.cpp), so that the order of the operations is pinned
// on a machine without a GPU.
//
// Every GPU path that builds costs from coordinates (Sinkhorn, couplings, assignment,
// sliced projections) first translates both clouds of a problem by one centre c (the
// mean of that problem's y rows, computed in double from the caller's values), then
// rounds: the staged value is float(v - c), with the subtraction in double. The costs
// those paths use are translation invariant (|x - y|^2, |x - y|, and the 1-D
// Wasserstein distance of projections, which a common shift <c, theta> leaves alone),
// so the translation changes nothing but the rounding. The order matters: for a cloud
// at offset 1e4 with a spread of 1, rounding first (float(v) - c) costs an absolute
// error of up to half an fp32 ulp at 1e4 (4.9e-4) per coordinate; subtracting first
// costs half an ulp of the centred value (about 3e-8), the fp32 accuracy the kernels
// are built for. An fp32 source is exact in double, so for it the rule only makes the
// translation exact.
#pragma once

#include <cmath>

#include "otgpu/config.h"

namespace otgpu::detail {

/// The largest finite fp32 value (FLT_MAX), as a double.
inline constexpr double kFloatMax = 3.4028234663852886e38;

/// True when v is neither NaN nor +-inf (comparisons only: the same answer in host and
/// device code, whatever the math library).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE bool finite_double(double v) {
  return v >= -1.7976931348623157e308 && v <= 1.7976931348623157e308;
}

/// The fp32 value staged for the source coordinate v of a problem centred at c:
///   - v not finite: v itself (NaN stays NaN, +-inf stays +-inf), so the data check
///     reports the element;
///   - v, c finite: float(v - c), the difference rounded once to the nearest fp32
///     value, or +-inf when |v - c| > FLT_MAX. The range rule applies to the centred
///     value because that is the only value the kernels ever hold: a cloud at 1e39
///     with a small spread is representable once centred, and a centred value beyond
///     FLT_MAX cannot be staged whatever the raw coordinates were;
///   - c not finite (some y of the problem is not finite, and that element carries
///     the error): 0 for |v| <= FLT_MAX, +-inf beyond (no centre to measure against).
/// Never relies on the out-of-range double-to-float conversion (undefined in C++).
OTGPU_HOST_DEVICE OTGPU_FORCEINLINE float staged_coordinate(double v, double c) {
  if (!finite_double(v)) return static_cast<float>(v);
  double t = v;
  if (finite_double(c)) {
    t = v - c;
  } else if (t <= kFloatMax && t >= -kFloatMax) {
    return 0.0f;
  }
  if (t > kFloatMax) return INFINITY;
  if (t < -kFloatMax) return -INFINITY;
  return static_cast<float>(t);
}

}  // namespace otgpu::detail
