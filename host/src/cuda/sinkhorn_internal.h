// Internal to the CUDA Sinkhorn backend: the device-side layout of one solve and the
// functions the backend's translation units share (plan, staging, loop, solve,
// context). Not installed.
//
// Flow of one solve: the inputs are staged into the canonical fp32 layout on the
// device (points padded to dp coordinates and centered on the mean of y, costs being
// translation invariant; weights in double and log form), the planner picks one of
// three kernels:
//   - small: n, m <= 512 and the problem fits in shared memory: one block per
//     problem runs the whole loop (sinkhorn_small.cu);
//   - dense: a cost matrix was given (sinkhorn_dense.cu);
//   - online: point clouds, C recomputed on the fly (sinkhorn_online.cu).
// The online/dense loop never synchronizes per iteration: every check_every
// iterations a device kernel measures the residual, retires converged problems
// (their blocks exit at once afterwards) and counts the active ones.
#pragma once

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "otgpu/detail/sinkhorn_rules.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"
#include "otgpu_host/gpu_runtime.h"
#include "otgpu_host/planner.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/sinkhorn_aux.h"
#include "otgpu_kernels/sinkhorn_dense.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "otgpu_kernels/sinkhorn_loop.h"
#include "otgpu_kernels/sinkhorn_online.h"
#include "otgpu_kernels/sinkhorn_small.h"
#include "otgpu_kernels/sinkhorn_stage.h"
#include "validate.h"

namespace otgpu::cuda_backend {

// ------------------------------------------------------------ launch limits --

/// Most problems one launch of the online / dense half-steps and of the aux kernels
/// may carry: the batch is the grid's y axis (gridDim.y <= 65,535 on every device the
/// backend supports). A larger batch is solved in chunks of at most this many problems
/// (planner::Plan::chunks); the small kernel puts the batch on x and has no limit.
constexpr std::int64_t max_batch_per_launch() { return kernels::geometry::kMaxBatchPerLaunch; }

// ------------------------------------------------------------------ resources --

/// A stream of our own for one call (the host API returns synchronized results).
class Stream {
 public:
  Stream() { OTGPU_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

/// Stream-ordered device buffer (cudaMallocAsync draws from the device's memory
/// pool, so repeated solves do not pay for fresh allocations).
template <class T>
class DeviceArray {
 public:
  DeviceArray(std::size_t count, cudaStream_t s) : s_(s), count_(count) {
    if (count_ > 0) {
      const cudaError_t st = cudaMallocAsync(reinterpret_cast<void**>(&p_), bytes(), s_);
      if (st == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        std::size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        throw OutOfMemory(fmt::format(
            "cuda backend: cannot allocate {} bytes of device memory ({} bytes free of {})",
            bytes(), free_b, total_b));
      }
      OTGPU_CUDA_CHECK(st);
    }
  }
  ~DeviceArray() {
    if (p_ != nullptr) cudaFreeAsync(p_, s_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  void upload(const T* host) const {
    if (count_ > 0)
      OTGPU_CUDA_CHECK(cudaMemcpyAsync(p_, host, bytes(), cudaMemcpyHostToDevice, s_));
  }
  void download(T* host) const {
    if (count_ > 0)
      OTGPU_CUDA_CHECK(cudaMemcpyAsync(host, p_, bytes(), cudaMemcpyDeviceToHost, s_));
  }

 private:
  cudaStream_t s_;
  std::size_t count_;
  T* p_ = nullptr;
};

/// Pinned host memory for the lagged convergence reads.
class PinnedInts {
 public:
  explicit PinnedInts(std::size_t n) {
    OTGPU_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), n * sizeof(int)));
  }
  ~PinnedInts() { cudaFreeHost(p_); }
  PinnedInts(const PinnedInts&) = delete;
  PinnedInts& operator=(const PinnedInts&) = delete;
  int* get() const { return p_; }

 private:
  int* p_ = nullptr;
};

class Event {
 public:
  Event() { OTGPU_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(e_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

// ------------------------------------------------------------------- layouts --

/// The canonical layout, on the host, ready to upload.
struct Canonical {
  std::int64_t B = 0, n = 0, m = 0, d = 0;
  int dp = 0;
  CostKind cost = CostKind::sqeuclidean;
  std::vector<float> X, Y, C;  // points [B,n,dp], [B,m,dp] (centered) or costs
  std::vector<double> center;  // [B, dp] subtracted from x and y
  std::vector<double> a, b;    // weights [B,n], [B,m] (b rescaled when balanced)
  std::vector<float> logA, logB;
};

/// Non-owning views of the canonical device arrays of one solve.
struct DeviceSolve {
  CostKind cost = CostKind::sqeuclidean;
  std::int64_t B = 0, n = 0, m = 0;
  int dp = 0;
  const float *X = nullptr, *Y = nullptr, *C = nullptr;
  const float *logA = nullptr, *logB = nullptr;
  const double *a = nullptr, *b = nullptr;
  float *F = nullptr, *G = nullptr, *Ft = nullptr;
  int K = 0;  ///< rows 0..K of the eps / lambda tables ([K + 1, B])
  const float *eps_tab = nullptr, *lam_a_tab = nullptr, *lam_b_tab = nullptr;
  const float *small_eps = nullptr, *small_eps_init = nullptr;  ///< [B] for the small kernel
  int *active = nullptr, *iters = nullptr, *count = nullptr;
  double* res = nullptr;
  float* small_res = nullptr;
  int* small_conv = nullptr;
  void* col_ws = nullptr;
  std::size_t col_ws_bytes = 0;
  float *cmean = nullptr, *lse = nullptr, *row_mass = nullptr, *row_cost = nullptr;
  double* out4 = nullptr;
  int f_splits = 1, g_splits = 1;  ///< column splits of the f- and g-half-steps (the plan's)
  float* partials = nullptr;       ///< split partials of the online half-steps
  std::size_t partials_floats = 0;
  int* loop = nullptr;  ///< [kernels::kLoopStateInts] device loop state; nullptr: plain loop

  bool points() const { return cost != CostKind::matrix; }
  const float* eps_target() const {
    return eps_tab + static_cast<std::size_t>(K) * static_cast<std::size_t>(B);
  }
  const float* lam_a_target() const {
    return lam_a_tab + static_cast<std::size_t>(K) * static_cast<std::size_t>(B);
  }
  kernels::OnlinePass online(bool f_side, const float* eps, const int* act) const {
    kernels::OnlinePass p;
    p.cost = cost;
    p.rows = f_side ? X : Y;
    p.cols = f_side ? Y : X;
    p.col_logw = f_side ? logB : logA;
    p.col_pot = f_side ? G : F;
    p.eps = eps;
    p.active = act;
    p.B = B;
    p.n_rows = f_side ? n : m;
    p.n_cols = f_side ? m : n;
    p.dp = dp;
    p.splits = f_side ? f_splits : g_splits;
    p.partials = partials;
    // Sized by the plan with the same rule; never write past the buffer.
    if (kernels::geometry::online_partials_floats(p.B, p.n_rows, p.splits) > partials_floats ||
        partials == nullptr)
      p.splits = 1;
    if (p.splits == 1) p.partials = nullptr;
    return p;
  }
};

/// Sizes of the arrays a DeviceSolve points to (the host-canonical path; the device
/// paths carve planner::layout_workspace).
struct SolveSizes {
  std::size_t X = 0, Y = 0, C = 0, nB = 0, mB = 0, B = 0, tab = 0, col_ws = 0, partials = 0;
  int f_splits = 1, g_splits = 1;
};

/// Host-side polling of the active count for early exit (the synchronous API).
struct Poller {
  PinnedInts pinned{2};
  Event ev[2];
  int checks = 0;
};

constexpr std::size_t kAlign = planner::kWorkspaceAlign;

/// Bump allocator over one device buffer; with base == nullptr it only counts.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<unsigned char*>(base)) {}
  template <class T>
  T* take(std::size_t count) {
    if (count == 0) return nullptr;
    off_ = (off_ + kAlign - 1) / kAlign * kAlign;
    T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += count * sizeof(T);
    return p;
  }
  std::size_t used() const { return off_; }

 private:
  unsigned char* base_;
  std::size_t off_ = 0;
};

/// What the driver decided for one call: the planner's answer plus the staging facts.
struct DevicePlan {
  detail::SinkhornShape shape;
  CostKind cost = CostKind::sqeuclidean;
  int dp = 0;
  int K = 0;
  bool stage_cost = false;  ///< the cost view is not contiguous fp32: copy it
  planner::Plan plan;       ///< kernel, splits, workspace layout, chunks
};

/// The arrays of a device-side solve or derived output, carved from one buffer.
struct Carved {
  DeviceSolve d;
  double* center = nullptr;           ///< [B, dp] translation applied to x and y
  double* mean = nullptr;             ///< [B] mean cost (eps_relative)
  unsigned long long* bad = nullptr;  ///< [4] first bad flat index: x or cost, y, a, b
  double* mass = nullptr;             ///< [2B] masses of a, then of b
  float* T = nullptr;                 ///< [B, n, dp] weighted means (derived outputs)
  double* ratio = nullptr;            ///< [B] balancing factor of b (derived outputs)
};

enum class DerivedKind { map, gradient, sample };

// ---------------------------------------------------------- plan (sinkhorn_plan.cpp) --

int padded_dim(std::int64_t d);

/// Number of scaling iterations before eps_t reaches the target (the same for every
/// problem: relative eps scales eps and eps_init alike).
int scaling_steps(const SinkhornOptions& o);

/// The small (one block per problem) kernel runs this solve.
bool small_path(const DeviceSolve& s, int device);

/// The planner's view of `device`, measured once and cached (attributes, the online
/// kernels' occupancy; free memory left unknown: allocation failures report it).
/// planner::query_device adds the free memory.
const planner::DeviceProps& device_planner_props(int device);

int device_sm_count(int device);

/// Sizes of the host-canonical path's arrays, with the plan's column splits.
SolveSizes solve_sizes(CostKind cost, std::int64_t B, std::int64_t n, std::int64_t m, int dp, int K,
                       bool stage_cost, int device);

DevicePlan plan_device(const SinkhornProblem& problem, const SinkhornOptions& o,
                       const detail::SinkhornShape& shape, int device, bool solve);

/// Lays out the arrays (or only counts bytes). own_fg: F and G live in the buffer
/// (else the caller provides them); derived: scratch of the derived outputs.
Carved carve(Carver& cv, const DevicePlan& pl, bool own_fg, bool derived);

std::size_t carved_bytes(const DevicePlan& pl, bool own_fg, bool derived);

// ---------------------------------------------------------- loop (sinkhorn_loop.cpp) --

/// Enqueues the iterations (the loop of the CPU reference, iteration for iteration):
/// the eps-scaling prefix up to the first check as plain launches, then check periods
/// (check_every iterations and the check, the check's f-update reused as the next
/// F), then the iterations after the last whole period.
/// With a poller (synchronous API): the periods replay one captured CUDA graph and the
/// host reads the active count one period late, stopping once it is zero. Without
/// (stream-ordered API): one conditional WHILE graph runs the periods until the
/// device finds no active problem; the host never waits. Either falls back to plain
/// launches (d.loop == nullptr, check_every == 0, no conditional nodes in the driver,
/// a capture that fails, or OTGPU_LOOP=plain in the environment). The graphs are
/// cached in `ctx` (nullptr: runtime::thread_context(device)) and re-instantiated
/// only when the shape or a pointer they bake in changes. planner::last_loop_strategy()
/// says which ran.
void enqueue_iterations(const DeviceSolve& d, const SinkhornOptions& o, int device, cudaStream_t s,
                        Poller* poller, runtime::Context* ctx = nullptr);

/// Enqueues the final report at the target eps for every problem (active flags
/// ignored) into d.out4 [B, 4].
void enqueue_finalize(const DeviceSolve& d, const SinkhornOptions& o, cudaStream_t s);

// -------------------------------------------------------- staging (sinkhorn_stage.cpp) --

Canonical canonicalize(const SinkhornProblem& p, const detail::SinkhornShape& s, bool balanced);

/// Mean cost per problem over all n*m pairs (eps_relative), on the host in double
/// except the Euclidean one, which needs an O(nm) pass and runs on the device.
std::vector<double> mean_costs(const Canonical& c, const float* dX, const float* dY,
                               cudaStream_t s);

void set_device(int device);

kernels::OnlinePass pass(const Canonical& c, bool f_side, const float* dX, const float* dY,
                         const float* dLogA, const float* dLogB, const float* dF, const float* dG,
                         const float* eps, const int* active);

kernels::StridedSource source(const TensorView& v);

/// Phase 1: the caller's tensors into the canonical arrays (points padded, not yet
/// centered; costs copied unless contiguous fp32; weights in double and log form).
void stage_inputs(const SinkhornProblem& problem, const DevicePlan& pl, DeviceSolve& d,
                  cudaStream_t s);

/// Enqueues the data checks on the staged (not yet centered) arrays.
void enqueue_checks(const DevicePlan& pl, const Carved& c, cudaStream_t s);

/// Phase 2: centers the points (costs are translation invariant) and computes the
/// mean cost per problem into c.mean when eps is relative.
void stage_center(const DevicePlan& pl, const Carved& c, bool relative, cudaStream_t s);

/// Phase 3 (solves): balances b, builds the eps / lambda tables, resets the flags.
void stage_schedule(const SinkhornOptions& o, const DevicePlan& pl, const Carved& c,
                    cudaStream_t s);

/// Reads the device-side checks back (one synchronization of s) and throws what the
/// host validation throws for the same data. Returns the mean costs when relative.
std::vector<double> check_device_inputs(const SinkhornProblem& problem, const DevicePlan& pl,
                                        const Carved& c, bool balanced, bool relative,
                                        cudaStream_t s);

/// Starts F and G from options.f_init / g_init (converted to fp32) or zeros.
void init_potentials(const SinkhornOptions& o, const DeviceSolve& d, cudaStream_t s);

// -------------------------------------------------------- solve (sinkhorn_solve.cpp) --

/// The host result from the downloaded arrays; scale[b]: eps of problem b / options.eps.
SinkhornResult make_result(const SinkhornOptions& o, const detail::SinkhornShape& sh,
                           const std::vector<float>& f, const std::vector<float>& g,
                           const std::vector<double>& out4, const std::vector<int>& iters,
                           const std::vector<double>& scale);

/// Enqueues one derived output from staged data (points centered, target eps in row
/// 0 of the eps table, d.F / d.G set). out: float [B, n, d] (map, gradient) or
/// int64 [B, n] (sample). ratio: b's balancing factor per problem (nullptr: 1).
void enqueue_derived(DerivedKind what, const DevicePlan& pl, const Carved& c, const double* ratio,
                     std::uint64_t seed, void* out, cudaStream_t s);

}  // namespace otgpu::cuda_backend
