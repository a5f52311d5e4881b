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
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_context_impl.h"
#include "otgpu/detail/sinkhorn_rules.h"
#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"
#include "otgpu_host/gpu_runtime.h"
#include "otgpu_host/planner.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/sinkhorn_accel.h"
#include "otgpu_kernels/sinkhorn_aux.h"
#include "otgpu_kernels/sinkhorn_continuation.h"
#include "otgpu_kernels/sinkhorn_dense.h"
#include "otgpu_kernels/sinkhorn_geometry.h"
#include "otgpu_kernels/sinkhorn_loop.h"
#include "otgpu_kernels/sinkhorn_mma.h"
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

// Every call runs on a runtime::Context (the caller's GpuContext or the thread's
// cached one): no stream, buffer, pinned memory or event is created per call.

/// Pinned host ints owned by the Context (Context::poll_slots), for lagged reads.
struct PinnedView {
  int* p = nullptr;
  int* get() const { return p; }
};

/// An event owned by the Context (Context::poll_event).
struct EventView {
  cudaEvent_t e = nullptr;
  cudaEvent_t get() const { return e; }
};

// ------------------------------------------------------------------- layouts --

/// The per-problem state of the accelerated synchronous loop (eps continuation,
/// over-relaxation), carved after the planner's layout when DevicePlan::accel; all
/// nullptr otherwise. [B] arrays per problem, potentials [B, n] / [B, m] fp32.
struct AccelArrays {
  float *eps_cur = nullptr, *lam_a_cur = nullptr, *lam_b_cur = nullptr;  ///< level eps_t, lambdas
  int* level_iters = nullptr;  ///< iterations run at the current level
  unsigned* range = nullptr;   ///< [2B] encoded min, max cost (kernels::cost_range)
  int* scaling = nullptr;      ///< [1] problems above eps (at the start, then at level counts)
  double *omega = nullptr, *prev_res = nullptr, *prev_rate = nullptr;  ///< OverrelaxState
  int *failures = nullptr, *restore = nullptr;
  float *F_prev = nullptr, *G_prev = nullptr;  ///< potentials before the relaxed half-step
  float *F_saved = nullptr, *G_saved = nullptr, *Ft_saved = nullptr;  ///< restore point
  bool valid() const { return eps_cur != nullptr; }
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
  int* loop = nullptr;        ///< [kernels::kLoopStateInts] device loop state; nullptr: plain loop
  bool tensor_cores = false;  ///< the plan's: the half-steps run on mma.sync (sinkhorn_mma.h)
  Precision precision = Precision::fp32;
  AccelArrays acc;  ///< the accelerated synchronous loop's state (DevicePlan::accel)
  /// The largest residual of the last check (in the loop state), nullptr without one.
  double* check_max() const { return kernels::loop_max_residual(loop); }

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
    p.tensor_cores = tensor_cores;
    p.precision = precision;
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

/// Host-side polling of the active count for early exit (the synchronous API), and
/// the progress callback at each lagged read.
struct Poller {
  PinnedView pinned;  ///< 2 ints, then 2 doubles at pinned.p + 4 (Context::poll_slots)
  EventView ev[2];
  int checks = 0;
  int iteration[2] = {0, 0};  ///< the iteration of the check copied into each slot
  /// SinkhornProgress::eps: the target eps (the largest of the batch when eps_relative).
  double eps = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  /// The progress callback returned false: no more iterations were enqueued after
  /// iteration stopped_at, and the problems active then stay unfinished.
  bool cancelled = false;
  int stopped_at = 0;
  /// The over-relaxed loop ran: DeviceSolve::acc.omega and failures hold what to report.
  bool relaxed = false;
  double* pinned_max() const { return reinterpret_cast<double*>(pinned.get() + 4); }
};

/// A poller reading through ctx's pinned poll slots and events.
Poller context_poller(runtime::Context& ctx);

/// After the check of iteration `iteration`: queues the copy of its active count and
/// largest residual, and reads the previous check's (one period late, so the GPU never
/// idles), which it hands to the progress callback. True when that count was zero or
/// the callback cancelled the solve (poller->cancelled).
bool poll(const DeviceSolve& d, const SinkhornOptions& o, int iteration, Poller* poller,
          cudaStream_t s);

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
  /// Carve AccelArrays: a solve whose options ask for the eps continuation (eps_init
  /// kAuto) or for over-relaxation (with checks).
  bool accel = false;
  planner::Plan plan;  ///< kernel, splits, workspace layout, chunks
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
/// only when the shape, a pointer or the half-step kernels (tensor cores, precision) they
/// bake in change. With a poller and d.acc
/// carved, when the options ask for the eps continuation (eps_init kAuto) or
/// over-relaxation, the accelerated loop runs instead (plain launches, before the
/// small-kernel test: sinkhorn_loop.cpp, accel_iterations); check_eps_fp32 must have
/// run. planner::last_loop_strategy() says which ran.
void enqueue_iterations(const DeviceSolve& d, const SinkhornOptions& o, int device, cudaStream_t s,
                        Poller* poller, runtime::Context* ctx = nullptr);

/// The eps range check of the CPU backend at float32 (detail::min_resolvable_eps,
/// max_resolvable_eps with u = 2^-24), from the cost range of each problem measured on
/// the device (kernels::cost_range into d.acc.range: one pass over the n x m pairs and
/// one synchronization). Throws InvalidArgument naming the range that works. Runs only
/// when d.acc is carved (DevicePlan::accel: the default options), and must run before
/// enqueue_iterations there (the continuation reads the range). mean: the mean cost
/// per problem when eps is relative (else empty); first_problem: index of problem 0.
void check_eps_fp32(const DeviceSolve& d, const SinkhornOptions& o, const std::vector<double>& mean,
                    std::int64_t first_problem, cudaStream_t s);

/// Enqueues the final report at the target eps for every problem (active flags
/// ignored) into d.out4 [B, 4].
void enqueue_finalize(const DeviceSolve& d, const SinkhornOptions& o, cudaStream_t s);

// -------------------------------------------------------- staging (sinkhorn_stage.cpp) --
//
// One road for host and device views: host views are copied raw (the bytes they span,
// any dtype and strides) through the context's pinned staging memory into the
// workspace, then every view is staged, checked and centered by the same kernels.
// The device checks also run for host views (already checked for finiteness on the
// host): one code path, and they catch finite fp64 values outside the fp32 range.

void set_device(int device);

/// view_span_bytes (bytes a view spans): view_staging.h.

/// Host bytes to copy to the device in one transfer, each into its own aligned slot of
/// one device region.
class RawUpload {
 public:
  /// Adds a span; returns its index for device().
  std::size_t add(const void* host, std::size_t bytes);
  /// Bytes of the device region (slots aligned to kAlign).
  std::size_t bytes() const { return total_; }
  /// Packs the spans into ctx's pinned staging memory and queues one copy to `region`
  /// (bytes() long) on ctx's stream.
  void run(runtime::Context& ctx, void* region);
  /// Device address of span k (after run).
  const void* device(std::size_t k) const;

 private:
  struct Span {
    const void* host;
    std::size_t bytes, offset;
  };
  std::vector<Span> spans_;
  std::size_t total_ = 0;
  unsigned char* region_ = nullptr;
};

/// Adds the host views of `problem` to `up`; device_problem() then gives the problem
/// with those views pointing at their raw copies (same dtype, shape and strides).
struct HostViews {
  std::size_t slot[5] = {0, 0, 0, 0, 0};  ///< x, y, cost, a, b
  bool host[5] = {false, false, false, false, false};
};
HostViews add_host_views(const SinkhornProblem& problem, RawUpload& up);
SinkhornProblem device_problem(const SinkhornProblem& problem, const HostViews& hv,
                               const RawUpload& up);

/// dst[k] = float(src[k]) for k < count: fp64 values uploaded raw (warm starts,
/// potentials and eps of a result) converted on the device.
void convert_doubles(const void* src, std::int64_t count, float* dst, cudaStream_t s);

kernels::StridedSource source(const TensorView& v);

/// Phase 1: the caller's tensors into the canonical arrays (points padded and centred
/// on the mean of y, computed in double from the caller's values, before the one
/// rounding to fp32 (otgpu/detail/staging.h); the centre in c.center; costs copied
/// unless contiguous fp32; weights in double and log form).
void stage_inputs(const SinkhornProblem& problem, const DevicePlan& pl, Carved& c, cudaStream_t s);

/// Enqueues the data checks on the staged arrays (for points: a source value that is
/// not finite, or whose centred value is outside the fp32 range).
void enqueue_checks(const DevicePlan& pl, const Carved& c, cudaStream_t s);

/// Phase 2: the mean cost per problem into c.mean when eps is relative (the points
/// are already centred by stage_inputs).
void stage_center(const DevicePlan& pl, const Carved& c, bool relative, cudaStream_t s);

/// Phase 3 (solves): balances b, builds the eps / lambda tables, resets the flags.
void stage_schedule(const SinkhornOptions& o, const DevicePlan& pl, const Carved& c,
                    cudaStream_t s);

/// Reads the device-side checks back (one synchronization of s) and throws what the
/// host validation throws for the same data. Returns the mean costs when relative.
std::vector<double> check_device_inputs(const SinkhornProblem& problem, const DevicePlan& pl,
                                        const Carved& c, bool balanced, bool relative,
                                        cudaStream_t s);

/// A solve staged in ctx's workspace: the carve-up of `pl` plus the raw host bytes of `up`
/// (the problem's host views, already added as `hv`, and any extra spans the caller
/// added), uploaded, staged and checked on the device (one read-back), centred, with
/// the eps tables and flags of the schedule. The caller starts the potentials.
struct StagedSolve {
  Carved c;
  std::vector<double> mean;  ///< mean cost per problem (eps_relative), else empty
};
StagedSolve stage_solve(runtime::Context& ctx, const SinkhornProblem& problem,
                        const SinkhornOptions& o, const DevicePlan& pl, RawUpload& up,
                        const HostViews& hv);

/// Starts F and G from the raw fp64 copies of options.f_init / g_init (nullptr: zeros).
void init_potentials(const void* f_init, const void* g_init, const DeviceSolve& d, cudaStream_t s);

// -------------------------------------------------------- solve (sinkhorn_solve.cpp) --

/// What a synchronous solve keeps for the derived outputs (SinkhornResult::state): per
/// batch chunk, one stream-ordered device allocation of its own (never the context's
/// workspace, which the next call reuses) holding the staged problem as solved
/// (centered fp32 points or the fp32 cost, weights in double and log form with b
/// rescaled when balanced, the centers), the fp32 potentials and the target eps.
/// Freed stream-ordered on the legacy default stream when the last result copy dies:
/// every synchronous call has completed its work by then.
struct SolveState {
  SinkhornProblem key;  ///< the views the solve was given (pointers, shapes, strides)
  int device = 0;
  struct Chunk {
    std::int64_t begin = 0, count = 0;
    void* mem = nullptr;
    const float *X = nullptr, *Y = nullptr, *C = nullptr, *logA = nullptr, *logB = nullptr;
    const double *a = nullptr, *b = nullptr, *center = nullptr;
    const float *F = nullptr, *G = nullptr, *eps = nullptr;
  };
  std::vector<Chunk> chunks;
  SolveState() = default;
  SolveState(const SolveState&) = delete;
  SolveState& operator=(const SolveState&) = delete;
  ~SolveState();
};

/// Copies what the derived outputs need (staged points or cost, weights, centres, F, G
/// and the target eps of pl's chunk) out of the workspace into a stream-ordered
/// allocation of the chunk's own, which outlives the next call's reuse of the
/// workspace (the synchronous solve and each shard of the sharded driver keep one).
SolveState::Chunk keep_state(const DevicePlan& pl, const Carved& c, std::int64_t begin,
                             cudaStream_t s);

/// The host result from the downloaded arrays; scale[b]: eps of problem b / options.eps.
SinkhornResult make_result(const SinkhornOptions& o, const detail::SinkhornShape& sh,
                           const std::vector<float>& f, const std::vector<float>& g,
                           const std::vector<double>& out4, const std::vector<int>& iters,
                           const std::vector<double>& scale);

/// Enqueues one derived output from staged data (points centered, target eps in row
/// 0 of the eps table, d.F / d.G set). out: float [B, n, d] (map, gradient) or
/// int64 [B, n] (sample). ratio: b's balancing factor per problem (nullptr: 1).
/// batch_offset: index of problem 0 in the whole batch (the sampling key of a chunk).
void enqueue_derived(DerivedKind what, const DevicePlan& pl, const Carved& c, const double* ratio,
                     std::uint64_t seed, void* out, cudaStream_t s, std::int64_t batch_offset = 0);

}  // namespace otgpu::cuda_backend
