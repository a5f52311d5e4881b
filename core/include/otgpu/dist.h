// Sharded Sinkhorn over several ranks (processes, GPUs, or logical shards in one
// process) and the communicators it runs on.
//
// Layout: the rows of the problem (x, a, and the cost matrix when one is given) are
// split over the R ranks in contiguous slices, rank r holding rows
// [row_range(n, r, R).begin, .end) (the first n % R ranks one row more); y, b and g
// are replicated. One iteration is
//   f-update (local): f_i = -lam_a eps LSE_j(log b_j + (g_j - C_ij)/eps), i local;
//   g-update (merged): rank r forms per column j the partial (M_rj, S_rj) with
//     M_rj = max_{i in r} s_ij, S_rj = sum_{i in r} exp(s_ij - M_rj),
//     s_ij = log a_i + (f_i - C_ij)/eps; then M_j = allreduce_max_r M_rj,
//     S_j = allreduce_sum_r S_rj exp(M_rj - M_j), g_j = -lam_b eps (M_j + log S_j):
//     2 m doubles in two allreduces per iteration, whatever n;
//   residual, dual value, <P, C>: local sums, then one allreduce.
// Every control decision (convergence, eps schedule level, over-relaxation safeguard,
// non-finite abort, cancellation) is taken on allreduced values, so all ranks take the
// same branch and issue the same collectives.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "otgpu/error.h"
#include "otgpu/sinkhorn.h"

namespace otgpu::dist {

/// A collective failed, or another rank of the group failed and this one cannot go on
/// (the message names the rank and its error when known).
class CommError : public Error {
 public:
  using Error::Error;
};

enum class ReduceOp : std::uint8_t { sum, max };

/// A group of `size()` ranks. Every collective must be called by every rank of the
/// group in the same order (MPI's rule). Host buffers are plain pointers; device
/// buffers (NCCL) are device pointers ordered on the given CUDA stream (a
/// cudaStream_t passed as void*, null = the legacy default stream).
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  /// "local", "mpi", "nccl".
  virtual std::string_view name() const noexcept = 0;

  /// data[k] <- op over ranks of data[k], k < count, in place, host memory. Every rank
  /// receives the same bits.
  virtual void allreduce(double* data, std::int64_t count, ReduceOp op) = 0;
  /// recv[r * count + k] <- send[k] of rank r; recv holds size() * count doubles.
  virtual void allgather(const double* send, std::int64_t count, double* recv) = 0;
  /// data (bytes) of rank `root` copied to every rank.
  virtual void broadcast(void* data, std::int64_t bytes, int root) = 0;
  virtual void barrier() = 0;

  /// The same on device buffers of float or double: NCCL natively; LocalGroup and MPI
  /// stage them through pinned host memory (synchronizing the stream; without CUDA or
  /// a device, DeviceUnavailable naming the communicator).
  virtual void allreduce_device(void* data, std::int64_t count, DType dtype, ReduceOp op,
                                void* stream);

  /// Ends every rank of the group now with `code` (MPI_Abort), for an error that this
  /// rank alone hit where the others would wait in a collective forever. The local group
  /// wakes its waiting ranks with CommError instead. Does not return for MPI.
  virtual void abort(int code, const std::string& message) = 0;

  // Conveniences over the primitives.
  double allreduce(double value, ReduceOp op) {
    allreduce(&value, 1, op);
    return value;
  }
};

/// Rows [begin, end) of an n-row problem held by `rank` of `size`: contiguous slices,
/// the first n % size ranks one row longer. Throws InvalidArgument for size < 1, rank
/// outside [0, size) or n < size (a rank would hold no row).
struct RowRange {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const noexcept { return end - begin; }
};
RowRange row_range(std::int64_t n, int rank, int size);

/// The rows of every rank of the group: counts[r] = rows of rank r (allgathered), so
/// uneven or caller-chosen splits are allowed; offset(r) = sum of counts below r.
struct RowLayout {
  std::vector<std::int64_t> counts;
  std::int64_t total() const noexcept;
  std::int64_t offset(int rank) const noexcept;
};
RowLayout row_layout(Communicator& comm, std::int64_t local_rows);

/// Concatenates the ranks' row blocks [local_rows, width] (row-major) in rank order on
/// every rank: [total rows, width].
std::vector<double> allgather_rows(Communicator& comm, const std::vector<double>& local,
                                   std::int64_t width);

/// ---- Communicators ----

/// A group of `size` logical ranks in one process, one thread per rank: the collectives
/// rendezvous in shared memory and reduce in rank order (deterministic, the same bits on
/// every rank). size 1 is the trivial group, whose collectives are the identity.
class LocalGroup {
 public:
  explicit LocalGroup(int size);
  ~LocalGroup();
  LocalGroup(const LocalGroup&) = delete;
  LocalGroup& operator=(const LocalGroup&) = delete;
  int size() const noexcept;
  /// The communicator of rank r (owned by the group; one thread per rank must use it).
  Communicator& communicator(int rank);
  /// Wakes every rank waiting in a collective (and fails every later one) with
  /// CommError(why): for a rank that fails outside a collective.
  void abort(const std::string& why);
  struct State;

 private:
  std::unique_ptr<State> state_;
};

/// Runs body(comm) on `size` threads, one per logical rank of a fresh LocalGroup, and
/// rethrows the first error by rank (a rank that fails wakes the others, whose
/// collectives throw CommError, so nothing hangs).
void run_local(int size, const std::function<void(Communicator&)>& body);

/// MPI_COMM_WORLD (MPI initialized here if the caller has not, finalized at exit when
/// it was initialized here). Host buffers; CPU ranks, one per process, any number of
/// nodes. Throws DeviceUnavailable when the library was built without MPI.
std::unique_ptr<Communicator> mpi_world();
/// True when the library was built with MPI (OTGPU_MPI).
bool mpi_built() noexcept;
/// True when this process was started by an MPI launcher with more than one rank
/// (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK...), without initializing MPI.
bool launched_by_mpi() noexcept;

/// NCCL over device buffers. One communicator per device of `devices` in this process
/// (ncclCommInitAll): communicator k drives devices[k] and must be used by one thread
/// per device, or its collectives grouped. Host-buffer collectives stage through a
/// small device buffer. Throws DeviceUnavailable when built without NCCL.
std::vector<std::unique_ptr<Communicator>> nccl_local(const std::vector<int>& devices);
/// One NCCL rank per process, bootstrapped over `bootstrap` (rank 0 creates the
/// ncclUniqueId and broadcasts it), on CUDA device `device`.
std::unique_ptr<Communicator> nccl_over(Communicator& bootstrap, int device);
bool nccl_built() noexcept;

/// ---- Sharded Sinkhorn ----

/// Solves the problem whose rows are split over the ranks of `comm`: each rank passes
/// its own rows (x [B, n_r, d] or a cost matrix [B, n_r, m], a [n_r] or [B, n_r]) and
/// the whole y and b; options.f_init is this rank's [B, n_r] slice, g_init the whole
/// [B, m]. Returns f of this rank's rows (result.n = n_r), g replicated, and the
/// reports of the whole problem (the same on every rank). A rank with bad input makes
/// every rank throw: the failing rank its own error, the others InvalidArgument
/// naming that rank and its message (the status is agreed by an allreduce before any
/// solve). CPU backend (fp64) by default; Backend::cuda (or device views) runs the
/// sharded CUDA driver on options.device, this rank's GPU (fp32, the single-GPU
/// kernels; g merged through allreduce_device), and keeps the shard's device state in
/// the result for the derived outputs below.
SinkhornResult sinkhorn(Communicator& comm, const SinkhornProblem& local_problem,
                        const SinkhornOptions& options = {});

/// Derived outputs of this rank's rows from a sharded result (`local_result` as
/// sinkhorn(comm, ...) returned it on this rank): [B, n_r, d] / [B, n_r]. Sampled
/// partners key the Philox stream by the global row index, so the pairs equal those of
/// the single-process solve.
std::vector<double> barycentric_map(Communicator& comm, const SinkhornProblem& local_problem,
                                    const SinkhornResult& local_result);
std::vector<double> gradient_x(Communicator& comm, const SinkhornProblem& local_problem,
                               const SinkhornResult& local_result);
std::vector<std::int64_t> sample_partners(Communicator& comm, const SinkhornProblem& local_problem,
                                          const SinkhornResult& local_result, std::uint64_t seed);

/// Runs `body` on every rank; if any rank throws, every rank throws: the failing rank
/// (lowest failing rank when several) rethrows its own error, the others throw
/// InvalidArgument "rank R: <its message>". One allreduce (and a broadcast of the
/// message on failure), so no rank is left waiting.
void agree(Communicator& comm, const std::function<void()>& body);

}  // namespace otgpu::dist
