// Point clouds into fp32 device arrays, centred before rounding: the one staging road
// of every GPU path that builds costs from coordinates (Sinkhorn, couplings,
// assignment, sliced). The centre of a problem is the mean of its y rows, summed in
// double from the caller's values (f32 or f64, any strides); each coordinate is then
// written as otgpu::detail::staged_coordinate(v, c) = float(v - c), the subtraction
// in double, so rounding happens once, after it (otgpu/detail/staging.h says why).
// Plain C++ header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "otgpu_kernels/gather.h"

namespace otgpu::kernels {

/// center[b * ld + k] = (1/rows) sum_j y(b', j, k) in double for b < B and k < y.dim[2]
/// (rows = y.dim[1]), and 0 for y.dim[2] <= k < ld; b' = b, or 0 when y.dim[0] == 1
/// (one cloud shared by every problem). y.dim[0] must be 1 or B. A problem with a
/// non-finite y has a non-finite centre (staged_coordinate then stages its other
/// coordinates as 0 and the bad element as itself). Deterministic: a fixed summation
/// order, no atomics.
void row_means(const Strided3& y, std::int64_t B, int ld, double* center, cudaStream_t stream);

/// dst[(b * rows + i) * ld + k] = staged_coordinate(src(b', i, k), center[b * ld + k])
/// for k < src.dim[2], 0 for src.dim[2] <= k < ld (padding); rows = src.dim[1], b' as
/// in row_means. center == nullptr: no translation (float(v) with the same checks), for
/// the costs that are not translation invariant (neg_dot).
void gather_centered(const Strided3& src, std::int64_t B, int ld, const double* center, float* dst,
                     cudaStream_t stream);

/// Both clouds of B problems: center [B, ld] <- the mean of y, then X [B, n, ld] and
/// Y [B, m, ld] centred on it (n = x.dim[1], m = y.dim[1]).
inline void stage_centered_pair(const Strided3& x, const Strided3& y, std::int64_t B, int ld,
                                double* center, float* X, float* Y, cudaStream_t stream) {
  row_means(y, B, ld, center, stream);
  gather_centered(x, B, ld, center, X, stream);
  gather_centered(y, B, ld, center, Y, stream);
}

}  // namespace otgpu::kernels
