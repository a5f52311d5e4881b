// MpiCommunicator: MPI_COMM_WORLD over host buffers (one rank per process, any number
// of nodes). Every MPI call's return code is checked; MPI_ERRORS_RETURN is set on the
// communicator so that failures come back as codes instead of aborting inside MPI.
// Built without MPI (OTGPU_MPI off or not found) the entry points throw
// DeviceUnavailable naming the option.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "host_staged.h"
#include "otgpu/dist.h"

#if defined(OTGPU_WITH_MPI)
#include <mpi.h>
#endif

namespace otgpu::dist {

bool launched_by_mpi() noexcept {
  // OpenMPI, MPICH/Hydra and Slurm's PMI export the world size to every rank.
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    const char* v = std::getenv(var);
    if (v != nullptr && std::atoi(v) > 1) return true;
  }
  return false;
}

#if defined(OTGPU_WITH_MPI)

bool mpi_built() noexcept { return true; }

namespace {

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw CommError(fmt::format("{} failed: {} (MPI error {})", call,
                              std::string(text, static_cast<std::size_t>(len)), code));
}
#define OTGPU_MPI_CHECK(call) check_mpi((call), #call)

/// MPI counts are int: a larger collective is split into chunks below 2^30 elements.
constexpr std::int64_t kChunk = std::int64_t{1} << 30;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    OTGPU_MPI_CHECK(MPI_Initialized(&initialized));
    if (!initialized) {
      int provided = 0;
      OTGPU_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
      // Finalize at exit, after every communicator is gone (atexit runs after main).
      std::atexit([] {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
      });
    }
    OTGPU_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    OTGPU_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    OTGPU_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  }
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  std::string_view name() const noexcept override { return "mpi"; }

  void allreduce(double* data, std::int64_t count, ReduceOp op) override {
    const MPI_Op mop = op == ReduceOp::sum ? MPI_SUM : MPI_MAX;
    for (std::int64_t k = 0; k < count; k += kChunk) {
      const int len = static_cast<int>(std::min(kChunk, count - k));
      OTGPU_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + k, len, MPI_DOUBLE, mop, MPI_COMM_WORLD));
    }
  }

  void allgather(const double* send, std::int64_t count, double* recv) override {
    if (count > std::numeric_limits<int>::max()) {
      throw InvalidArgument(fmt::format("allgather: count {} exceeds MPI's int counts", count));
    }
    OTGPU_MPI_CHECK(MPI_Allgather(send, static_cast<int>(count), MPI_DOUBLE, recv,
                                  static_cast<int>(count), MPI_DOUBLE, MPI_COMM_WORLD));
  }

  void broadcast(void* data, std::int64_t bytes, int root) override {
    if (root < 0 || root >= size_) {
      throw InvalidArgument(fmt::format("broadcast: root is {} (must be in [0, {}))", root, size_));
    }
    auto* p = static_cast<char*>(data);
    for (std::int64_t k = 0; k < bytes; k += kChunk) {
      const int len = static_cast<int>(std::min(kChunk, bytes - k));
      OTGPU_MPI_CHECK(MPI_Bcast(p + k, len, MPI_BYTE, root, MPI_COMM_WORLD));
    }
  }

  void barrier() override { OTGPU_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

  /// Host-staged through pinned memory (host_staged.h), not CUDA-aware MPI: works with
  /// any MPI build.
  void allreduce_device(void* data, std::int64_t count, DType dtype, ReduceOp op,
                        void* stream) override {
    staged_allreduce_device(*this, stage_, data, count, dtype, op, stream);
  }

  void abort(int code, const std::string& message) override {
    std::fprintf(stderr, "otgpu: rank %d aborts the MPI job: %s\n", rank_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this is only if it did
  }

 private:
  int rank_ = 0, size_ = 1;
  PinnedStage stage_;
};

}  // namespace

std::unique_ptr<Communicator> mpi_world() { return std::make_unique<MpiCommunicator>(); }

#else

bool mpi_built() noexcept { return false; }

std::unique_ptr<Communicator> mpi_world() {
  throw DeviceUnavailable(
      "mpi_world: libotgpu was built without MPI (configure with OTGPU_MPI=ON and an MPI "
      "installation, e.g. Debian's libopenmpi-dev)");
}

#endif

}  // namespace otgpu::dist
