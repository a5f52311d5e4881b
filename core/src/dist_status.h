// The failure status word of a sharded solve, shared by the CPU sharded solve
// (cpu_sinkhorn.cpp) and the sharded CUDA driver (host/src/cuda/sinkhorn_sharded.cpp).
// Internal (not installed).
//
// The rule: a rank that fails in the middle of the loop (an exception from a kernel or
// a CUDA call, from the progress callback, ...) does not leave: it records the error,
// stops its own work, and still issues the collectives of the loop (with whatever its
// buffers hold) up to the next status-carrying collective, the check's. That collective
// carries one extra double, the status word (see word()); when the merged word says
// that some rank failed, every rank settles the same way: the lowest failing rank is
// agreed by one more allreduce, it broadcasts its message, and every rank throws the
// same dist::CommError "<what>: rank R failed at iteration T: <message>". No rank is
// left waiting in a collective, and no rank goes on alone.
#pragma once

#include <fmt/format.h>

#include <exception>
#include <string>

#include "otgpu/dist.h"

namespace otgpu::dist::detail {

class RankFailure {
 public:
  explicit RankFailure(Communicator& comm) : comm_(comm) {}

  bool failed() const noexcept { return failed_; }

  /// Records the exception being handled (call inside a catch); the first one wins.
  void record_current() noexcept {
    if (failed_) return;
    failed_ = true;
    try {
      throw;
    } catch (const std::exception& e) {
      message_ = e.what();
    } catch (...) {
      message_ = "unknown error";
    }
  }

  /// Runs body unless this rank has failed already; an exception is recorded, not
  /// propagated. True when body ran and returned.
  template <class F>
  bool run(F&& body) noexcept {
    if (failed_) return false;
    try {
      body();
      return true;
    } catch (...) {
      record_current();
      return false;
    }
  }

  /// The status word: 1 when this rank has failed, else 0. Merged by sum or max (both
  /// are > 0 exactly when some rank failed), so it rides on either kind of allreduce.
  double word() const noexcept { return failed_ ? 1.0 : 0.0; }

  /// After the status-carrying collective: when `merged_word` > 0 every rank (all of
  /// them see the same merged word) agrees on the lowest failing rank and its message
  /// and throws the same CommError. Returns when no rank failed.
  void settle(double merged_word, const char* what, int iteration) {
    if (!(merged_word > 0.0)) return;
    const int size = comm_.size();
    // The lowest failing rank as a max over size - rank (0 for the ranks that did not fail).
    const double top =
        comm_.allreduce(failed_ ? static_cast<double>(size - comm_.rank()) : 0.0, ReduceOp::max);
    const int failing = size - static_cast<int>(top);
    double len = static_cast<double>(message_.size());
    comm_.broadcast(&len, sizeof len, failing);
    std::string text(static_cast<std::size_t>(len), '\0');
    if (comm_.rank() == failing) text = message_;
    if (!text.empty())
      comm_.broadcast(text.data(), static_cast<std::int64_t>(text.size()), failing);
    throw CommError(
        fmt::format("{}: rank {} failed at iteration {}: {}", what, failing, iteration, text));
  }

 private:
  Communicator& comm_;
  bool failed_ = false;
  std::string message_;
};

}  // namespace otgpu::dist::detail
