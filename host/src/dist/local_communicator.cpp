// LocalGroup: G logical ranks in one process, one thread each. A collective is two
// rendezvous: every rank publishes its buffer and waits for all; each then reads the
// others' buffers in rank order into a private result, waits again (so no buffer is
// overwritten while another rank reads it), and stores its result. Reductions run in
// rank order on every rank, so every rank receives the same bits.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "host_staged.h"
#include "otgpu/dist.h"

namespace otgpu::dist {

namespace {
class LocalCommunicator;
}

struct LocalGroup::State {
  explicit State(int n) : size(n), slots(static_cast<std::size_t>(n), nullptr) {}

  /// Waits until every rank has arrived; throws CommError when the group was aborted
  /// (a rank failed and will never arrive).
  void rendezvous() {
    std::unique_lock<std::mutex> lock(mutex);
    if (aborted) throw CommError(reason);
    const std::uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(lock, [&] { return generation != gen || aborted; });
    if (generation == gen) throw CommError(reason);
  }

  void abort(const std::string& why) {
    const std::lock_guard<std::mutex> lock(mutex);
    if (!aborted) reason = why;
    aborted = true;
    cv.notify_all();
  }

  int size;
  std::vector<const void*> slots;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::mutex mutex;
  std::condition_variable cv;
  int arrived = 0;
  std::uint64_t generation = 0;
  bool aborted = false;
  std::string reason;
};

namespace {

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(LocalGroup::State& s, int rank) : s_(s), rank_(rank) {}
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return s_.size; }
  std::string_view name() const noexcept override { return "local"; }

  void allreduce(double* data, std::int64_t count, ReduceOp op) override {
    if (count < 0) throw InvalidArgument(fmt::format("allreduce: count is {}", count));
    publish(data);
    std::vector<double> acc(static_cast<const double*>(s_.slots[0]),
                            static_cast<const double*>(s_.slots[0]) + count);
    for (int r = 1; r < s_.size; ++r) {
      const auto* other = static_cast<const double*>(s_.slots[static_cast<std::size_t>(r)]);
      for (std::int64_t k = 0; k < count; ++k) {
        auto& a = acc[static_cast<std::size_t>(k)];
        // max keeps a NaN from either side, so a NaN partial is never dropped.
        a = op == ReduceOp::sum ? a + other[k]
                                : (std::isnan(other[k]) || other[k] > a ? other[k] : a);
      }
    }
    s_.rendezvous();
    std::copy(acc.begin(), acc.end(), data);
  }

  void allgather(const double* send, std::int64_t count, double* recv) override {
    publish(send);
    for (int r = 0; r < s_.size; ++r) {
      const auto* other = static_cast<const double*>(s_.slots[static_cast<std::size_t>(r)]);
      std::copy(other, other + count, recv + static_cast<std::int64_t>(r) * count);
    }
    s_.rendezvous();
  }

  void broadcast(void* data, std::int64_t bytes, int root) override {
    if (root < 0 || root >= s_.size) {
      throw InvalidArgument(
          fmt::format("broadcast: root is {} (must be in [0, {}))", root, s_.size));
    }
    publish(data);
    if (rank_ != root && bytes > 0) {
      std::memcpy(data, s_.slots[static_cast<std::size_t>(root)], static_cast<std::size_t>(bytes));
    }
    s_.rendezvous();
  }

  void barrier() override { s_.rendezvous(); }

  /// Host-staged through pinned memory (host_staged.h); the reduction is the host
  /// allreduce's, in rank order.
  void allreduce_device(void* data, std::int64_t count, DType dtype, ReduceOp op,
                        void* stream) override {
    staged_allreduce_device(*this, stage_, data, count, dtype, op, stream);
  }

  void abort(int code, const std::string& message) override {
    const std::string why =
        fmt::format("rank {} of the local group aborted (code {}): {}", rank_, code, message);
    s_.abort(why);
    throw CommError(why);
  }

 private:
  void publish(const void* p) {
    s_.slots[static_cast<std::size_t>(rank_)] = p;
    s_.rendezvous();
  }

  LocalGroup::State& s_;
  int rank_;
  PinnedStage stage_;
};

}  // namespace

LocalGroup::LocalGroup(int size) {
  if (size < 1) throw InvalidArgument(fmt::format("LocalGroup: size is {} (must be >= 1)", size));
  state_ = std::make_unique<State>(size);
  for (int r = 0; r < size; ++r)
    state_->comms.push_back(std::make_unique<LocalCommunicator>(*state_, r));
}

LocalGroup::~LocalGroup() = default;

int LocalGroup::size() const noexcept { return state_->size; }

void LocalGroup::abort(const std::string& why) { state_->abort(why); }

Communicator& LocalGroup::communicator(int rank) {
  if (rank < 0 || rank >= state_->size) {
    throw InvalidArgument(fmt::format("LocalGroup::communicator: rank is {} (must be in [0, {}))",
                                      rank, state_->size));
  }
  return *state_->comms[static_cast<std::size_t>(rank)];
}

void run_local(int size, const std::function<void(Communicator&)>& body) {
  LocalGroup group(size);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(size));
  std::vector<bool> primary(static_cast<std::size_t>(size), false);
  auto run = [&](int r) {
    try {
      body(group.communicator(r));
    } catch (const CommError&) {
      // A rank woken by another's failure (or one that aborted): not the cause.
      errors[static_cast<std::size_t>(r)] = std::current_exception();
    } catch (const std::exception& e) {
      errors[static_cast<std::size_t>(r)] = std::current_exception();
      primary[static_cast<std::size_t>(r)] = true;
      group.abort(fmt::format("rank {} failed: {}", r, e.what()));
    } catch (...) {
      errors[static_cast<std::size_t>(r)] = std::current_exception();
      primary[static_cast<std::size_t>(r)] = true;
      group.abort(fmt::format("rank {} failed", r));
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < size; ++r) threads.emplace_back(run, r);
  run(0);
  for (auto& t : threads) t.join();
  for (int r = 0; r < size; ++r) {
    if (primary[static_cast<std::size_t>(r)])
      std::rethrow_exception(errors[static_cast<std::size_t>(r)]);
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace otgpu::dist
