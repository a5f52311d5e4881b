// A communicator that forwards every call to another one and records the collective
// it issued (kind, element count, op, root): the sequence each rank of a group issues.
// Every rank of a group must issue the same sequence (MPI's and NCCL's rule; a
// mismatch deadlocks NCCL), so tests compare the records of the ranks. Shared by the
// CPU suite (tests/dist) and the GPU review suite (tests/gpu).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "otgpu/dist.h"

namespace otgpu::dist_test {

class RecordingComm final : public dist::Communicator {
 public:
  explicit RecordingComm(dist::Communicator& inner) : inner_(inner) {}
  int rank() const noexcept override { return inner_.rank(); }
  int size() const noexcept override { return inner_.size(); }
  std::string_view name() const noexcept override { return inner_.name(); }
  using dist::Communicator::allreduce;
  void allreduce(double* data, std::int64_t count, dist::ReduceOp op) override {
    log_.push_back(std::string("allreduce ") + op_name(op) + " " + std::to_string(count));
    inner_.allreduce(data, count, op);
  }
  void allgather(const double* send, std::int64_t count, double* recv) override {
    log_.push_back("allgather " + std::to_string(count));
    inner_.allgather(send, count, recv);
  }
  void broadcast(void* data, std::int64_t bytes, int root) override {
    log_.push_back("broadcast " + std::to_string(bytes) + " root " + std::to_string(root));
    inner_.broadcast(data, bytes, root);
  }
  void barrier() override {
    log_.push_back("barrier");
    inner_.barrier();
  }
  void allreduce_device(void* data, std::int64_t count, DType dtype, dist::ReduceOp op,
                        void* stream) override {
    // The host-staged road issues one host allreduce of the same count and op: a rank
    // that failed and stands in with a host allreduce records the same entry.
    log_.push_back(std::string("allreduce ") + op_name(op) + " " + std::to_string(count));
    inner_.allreduce_device(data, count, dtype, op, stream);
  }
  void abort(int code, const std::string& message) override {
    log_.push_back("abort");
    inner_.abort(code, message);
  }
  const std::vector<std::string>& log() const noexcept { return log_; }

 private:
  static const char* op_name(dist::ReduceOp op) {
    return op == dist::ReduceOp::sum ? "sum" : "max";
  }
  dist::Communicator& inner_;
  std::vector<std::string> log_;
};

/// "" when every rank's record equals rank 0's, else the first difference.
inline std::string compare_logs(const std::vector<std::vector<std::string>>& logs) {
  for (std::size_t r = 1; r < logs.size(); ++r) {
    const auto& a = logs[0];
    const auto& b = logs[r];
    for (std::size_t k = 0; k < std::max(a.size(), b.size()); ++k) {
      const std::string x = k < a.size() ? a[k] : "(none)";
      const std::string y = k < b.size() ? b[k] : "(none)";
      if (x != y) {
        return "collective " + std::to_string(k) + " differs: rank 0 '" + x + "', rank " +
               std::to_string(r) + " '" + y + "' (" + std::to_string(a.size()) + " vs " +
               std::to_string(b.size()) + " calls)";
      }
    }
  }
  return "";
}

}  // namespace otgpu::dist_test
