// Exact one-dimensional optimal transport and sliced Wasserstein distances,
// batched, on the CPU or the GPU.
//
// Conventions (one everywhere, see docs/design.md):
//   mu = sum_i a_i delta_{x_i}, nu = sum_j b_j delta_{y_j}, ground cost |u - v|^p.
//   Balanced 1-D OT needs equal masses: both measures are normalized to probability
//   measures (a / sum a, b / sum b), as POT's wasserstein_1d does. Weights may be
//   unequal in total; they must be finite, non-negative, with positive mass.
//   In 1-D the monotone (quantile) coupling is optimal for every p >= 1: W_p^p is
//   the integral over t in [0, 1] of |F^-1(t) - G^-1(t)|^p, computed exactly by
//   merging the two sorted lists of cumulative weights.
//   Sliced: SW_p^p = (1/L) sum_l W_p^p(theta_l # mu, theta_l # nu) over L unit
//   directions theta_l; SW_p = (SW_p^p)^(1/p). Max-sliced takes the largest term
//   instead of the mean.
#pragma once

#include <cstdint>
#include <vector>

#include "otgpu/types.h"

namespace otgpu {

class GpuContext;  // otgpu/device.h

/// One transported piece of a 1-D coupling: mass moved from x_i to y_j (i, j are
/// the caller's indices, not sorted ranks).
struct CouplingEntry {
  std::int64_t i = 0;
  std::int64_t j = 0;
  double mass = 0;
};

/// The optimal (monotone) coupling of one 1-D problem, for the normalized measures:
/// masses sum to 1, at most n + m - 1 entries, entries with zero mass are left out.
struct Coupling1D {
  std::vector<CouplingEntry> entries;
  double cost = 0;  ///< sum of mass * |x_i - y_j|^p = W_p^p
};

/// Exact W_p^p per problem (POT's ot.wasserstein_1d value; take the p-th root for
/// W_p). x is [n] or [B, n], y is [m] or [B, m] (same rank); a is absent (uniform),
/// [n] (shared by the batch) or [B, n]; b likewise. n != m is fine. Views may be in
/// device memory with the CUDA backend; the result is on the host. Throws
/// InvalidArgument (p < 1, ...), ShapeError, NonFiniteInput, DeviceUnavailable.
std::vector<double> wasserstein_1d(const TensorView& x, const TensorView& y,
                                   const TensorView& a = {}, const TensorView& b = {},
                                   double p = 1.0, Backend backend = Backend::automatic,
                                   int device = 0);

/// The monotone optimal coupling per problem (same inputs as wasserstein_1d, host
/// memory only; computed on the CPU).
std::vector<Coupling1D> monotone_coupling_1d(const TensorView& x, const TensorView& y,
                                             const TensorView& a = {}, const TensorView& b = {},
                                             double p = 1.0);

/// A batch of B sliced problems: x [B, n, d] (or [n, d] for B = 1), y [B, m, d] (or
/// [m, d]); a [n] or [B, n], b [m] or [B, m], absent = uniform. All views in one
/// memory space; device memory needs the CUDA backend. Host inputs are checked for
/// NaN/infinity and negative weights; device inputs are not scanned (that would cost
/// a pass and a synchronization), and such values there give NaN results.
/// The CUDA path projects in fp32 (the 1-D costs accumulate in fp64); the CPU path
/// is fp64 throughout.
struct SlicedProblem {
  TensorView x;
  TensorView y;
  TensorView a;
  TensorView b;
};

struct SlicedOptions {
  /// Number L of random directions (ignored when `directions` is given).
  int projections = 64;
  /// Ground cost exponent, >= 1. W_p^p sums |u - v|^p in fp64: a p for which some
  /// direction's W_p^p is infinite, or below 2.2e-308 while its W_1 is positive (e.g.
  /// p = 1e6 on data with gaps != 1), throws InvalidArgument naming the range
  /// [2.2e-308, 1.8e308] instead of returning 0 or inf (checked after the solve; the
  /// W_1 run happens only then).
  double p = 2.0;
  /// Directions are Gaussian vectors normalized to the unit sphere, drawn with
  /// Philox keyed by (seed, direction, coordinate): the CPU and the GPU draw the
  /// same directions for a seed (to the last bit of their math libraries).
  std::uint64_t seed = 0;
  /// Optional explicit directions [d, L] (column l is theta_l), in the problem's
  /// memory space; each column is normalized to unit length (zero columns are
  /// rejected when the view is in host memory). Shared by the whole batch.
  TensorView directions;
  /// Max-sliced: the largest W_p^p over the L directions instead of their mean (no
  /// optimization of the direction over the sphere).
  bool max_sliced = false;
  Backend backend = Backend::automatic;
  int device = 0;  ///< CUDA device ordinal
  /// Also return the gradients of SW_p^p (not SW_p) with respect to x and y.
  bool gradients = false;
  int cpu_threads = 0;  ///< CPU worker threads; 0 = hardware concurrency
};

/// Where the time went (milliseconds); GPU phases are measured with CUDA events.
struct SlicedTimings {
  double directions_ms = 0;
  double project_ms = 0;   ///< X theta and Y theta
  double sort_ms = 0;      ///< sorting the projected values
  double merge_ms = 0;     ///< 1-D quantile merges (costs and derivatives)
  double gradient_ms = 0;  ///< back-projection of the derivatives
};

struct SlicedResult {
  Backend backend = Backend::cpu;  ///< the backend that actually ran
  int device = -1;                 ///< CUDA device ordinal when backend == cuda
  std::int64_t batch = 0, n = 0, m = 0, d = 0, projections = 0;
  /// SW_p per problem (or max-sliced MSW_p), [B].
  std::vector<double> value;
  /// SW_p^p per problem (the mean, or the max, of per_direction), [B].
  std::vector<double> value_pp;
  /// W_p^p of the projected problems, [B, L] row-major.
  std::vector<double> per_direction;
  /// Gradients of SW_p^p (the mean, or for max-sliced the selected term) with
  /// respect to x [B, n, d] and y [B, m, d], row-major, when options.gradients.
  /// The weights are held fixed. At ties of projected values the gradient is one
  /// element of the subdifferential.
  std::vector<double> grad_x;
  std::vector<double> grad_y;
  SlicedTimings timings;
  double time_ms = 0;
};

/// Computes the sliced (or max-sliced) Wasserstein distance of each problem of the
/// batch. Throws InvalidArgument / ShapeError / DTypeError / NonFiniteInput on bad
/// input and DeviceUnavailable when `backend = cuda` cannot run. Backend::automatic
/// uses CUDA when a device is present, else the CPU. The CUDA path runs on the
/// calling thread's cached context of options.device, on the legacy default stream
/// (so it is ordered after work queued on the device's blocking streams), and returns
/// synchronized: results are host vectors.
SlicedResult sliced_wasserstein(const SlicedProblem& problem, const SlicedOptions& options = {});

/// The same on the GPU of `ctx` (otgpu/device.h), ordered on its stream after the
/// work queued there before the call (device inputs may be written by the caller's
/// kernels right before it), with the context's workspace, pinned staging memory and
/// cuBLAS handle: after the first call of a size, a call allocates nothing.
/// options.device is ignored (the context fixes the device); options.backend must
/// be automatic or cuda. Synchronous: returns when the results are on the host.
SlicedResult sliced_wasserstein(GpuContext& ctx, const SlicedProblem& problem,
                                const SlicedOptions& options = {});

/// The L random unit directions sliced_wasserstein draws for (d, seed), [d, L]
/// row-major (column l is theta_l), computed on the host.
std::vector<double> sliced_directions(std::int64_t d, int projections, std::uint64_t seed);

}  // namespace otgpu
