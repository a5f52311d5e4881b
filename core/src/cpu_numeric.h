// Small numeric helpers of the CPU reference: compensated summation, thread counts
// and element access into (possibly batched, strided) views. Internal.
#pragma once

#include <cmath>
#include <cstdint>

#include "otgpu/types.h"

namespace otgpu::cpu {

/// Neumaier's compensated sum. The reference sums per-row values serially through
/// this so the totals do not depend on the thread count and lose no digits when
/// many small terms follow a large one.
class CompensatedSum {
 public:
  void add(double x) noexcept {
    const double t = sum_ + x;
    if (std::fabs(sum_) >= std::fabs(x)) {
      comp_ += (sum_ - t) + x;
    } else {
      comp_ += (x - t) + sum_;
    }
    sum_ = t;
  }
  /// An overflowed sum stays inf (the compensation of inf - inf would turn it NaN).
  double value() const noexcept { return std::isfinite(sum_) ? sum_ + comp_ : sum_; }

 private:
  double sum_ = 0.0;
  double comp_ = 0.0;
};

/// Element (i, k) of problem `b` in a view that is [B, n, k] when `batched` and
/// [n, k] (shared by every problem) otherwise. Rank-1 views use i only.
inline double load_problem_element(const TensorView& v, bool batched, std::int64_t b,
                                   std::int64_t i, std::int64_t k = 0) noexcept {
  if (batched) return load_as_double(v, b, i, k);
  return load_as_double(v, i, k);
}

/// The number of OpenMP threads to use: `requested`, or, when 0, the hardware
/// threads not already busy with other processes (at least 1). A team larger than
/// the free cores is the worst case of OpenMP's spin-waiting barriers: a thread whose
/// partner was descheduled spins away its own time slice at every half-iteration
/// (3-9x slower than one thread on a loaded 2-core machine). The wait policy itself
/// cannot be changed here: libgomp reads OMP_WAIT_POLICY once, before any constructor
/// of this library runs, so a user who wants passive waiting sets it in the
/// environment. Results never depend on the count.
int resolve_threads(int requested) noexcept;

/// Threads worth waking for a sweep of `work` cost entries: a parallel region costs
/// a barrier (microseconds, far more when cores are oversubscribed), which a sweep
/// below ~64k entries does not repay. Results do not depend on it.
inline int threads_for_work(int threads, std::int64_t work) noexcept {
  constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 16;
  return work >= kMinParallelWork ? threads : 1;
}

/// Hardware threads not running other work now: omp_get_max_threads() minus the
/// runnable tasks of the system other than the caller (Linux /proc/loadavg, field
/// 4, an instantaneous count), clamped to [1, max]. Elsewhere omp_get_max_threads().
int idle_hardware_threads() noexcept;

}  // namespace otgpu::cpu
