// The stream-ordered GPU API for training pipelines: data already on the device, the
// caller's stream, no host synchronization and no device allocation once the
// context's workspace has grown to the problem size (the first call of a size).
//
//   otgpu::GpuContext ctx(/*device=*/0, my_stream);
//   otgpu::DeviceSinkhornOutputs out{d_f, d_g};      // caller-owned device buffers
//   otgpu::sinkhorn_async(ctx, problem, options, out); // returns at once
//
// Plain C++: the stream is passed as void* (a cudaStream_t); no CUDA header here.
//
// Stream semantics. Every call taking a GpuContext queues its work on ctx's stream,
// in order, after whatever the caller queued there before the call: inputs in device
// memory may be written by the caller's kernels or copies on that stream right before
// the call. The synchronous calls (sinkhorn, barycentric_map, gradient_x,
// sample_partners with a context, and the ones of otgpu/sinkhorn.h without one, which
// use a cached per-thread context on the device's legacy default stream, ordered after
// the work of every blocking stream) wait for their work before they return; the
// *_async calls return at once. Contexts reuse their workspace and pinned staging
// memory: after the first call of a size no call allocates, creates a stream or a
// handle (batches above 65,535 problems run in chunks of at most that many).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "otgpu/sinkhorn.h"

namespace otgpu {

/// Device, stream and a grow-only device workspace. Not thread-safe: one context
/// per host thread (or per stream). Construction throws DeviceUnavailable when the
/// device cannot be used (or the build has no CUDA).
class GpuContext {
 public:
  /// stream == nullptr: the device's legacy default stream.
  explicit GpuContext(int device = 0, void* stream = nullptr);
  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;

  int device() const noexcept;
  void* stream() const noexcept;
  /// Later calls are ordered on this stream. Safe while work is in flight: the new
  /// stream waits (on the device, no host sync) for the work queued on the old one, so
  /// new calls never overwrite workspace the old calls still read.
  void set_stream(void* stream);
  /// Current workspace size in bytes.
  std::size_t workspace_bytes() const noexcept;
  /// Grows the workspace to at least `bytes` now (synchronizes the device if it
  /// grows), so that later calls never allocate.
  void reserve(std::size_t bytes);
  /// Blocks until all work queued on the context's stream has finished.
  void synchronize() const;
  /// Allocations (workspace and pinned growths) and handle creations made by the
  /// context so far: after the first call of a size, repeated calls add none.
  std::int64_t allocations() const noexcept;

  struct Impl;
  Impl& impl() noexcept { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

/// The synchronous solve of otgpu/sinkhorn.h on ctx's device and stream (backend cuda;
/// options.backend and options.device are ignored). Views may be in host memory
/// (copied raw into the context's pinned staging memory, then staged on the device by
/// the same kernels as device views) or device memory (read on ctx's stream, after the
/// caller's earlier work there). The result keeps the staged problem (result.state)
/// for the derived outputs below.
SinkhornResult sinkhorn(GpuContext& ctx, const SinkhornProblem& problem,
                        const SinkhornOptions& options = {});

/// The derived outputs of otgpu/sinkhorn.h, on ctx's stream (result must come from the
/// CUDA backend). With result.state from a solve of the same problem they reuse the
/// staged problem and the potentials on the device; else they stage it again.
std::vector<double> barycentric_map(GpuContext& ctx, const SinkhornProblem& problem,
                                    const SinkhornResult& result);
std::vector<double> gradient_x(GpuContext& ctx, const SinkhornProblem& problem,
                               const SinkhornResult& result);
std::vector<std::int64_t> sample_partners(GpuContext& ctx, const SinkhornProblem& problem,
                                          const SinkhornResult& result, std::uint64_t seed);

/// Caller-owned device buffers that sinkhorn_async writes (fp32 potentials; the
/// per-problem report arrays are optional: nullptr skips them).
struct DeviceSinkhornOutputs {
  float* f = nullptr;                ///< [B * n], required
  float* g = nullptr;                ///< [B * m], required
  double* ot_eps = nullptr;          ///< [B]
  double* transport_cost = nullptr;  ///< [B]
  double* marginal_error = nullptr;  ///< [B]
  double* residual = nullptr;        ///< [B]
  int* iterations = nullptr;         ///< [B]
  /// Start from the current contents of f and g (e.g. the previous training step's
  /// potentials) instead of zeros. options.f_init/g_init are ignored here.
  bool warm_start = false;
};

/// Workspace bytes sinkhorn_async (and the derived *_async calls) need for this
/// problem on device options.device (for GpuContext::reserve).
std::size_t sinkhorn_async_workspace_bytes(const SinkhornProblem& problem,
                                           const SinkhornOptions& options);

/// Enqueues a whole solve on ctx's stream and returns without waiting. Every tensor
/// view must be in device memory (any strides, f32 or f64). Shapes and options are
/// validated on the host before anything is queued (typed errors); the data itself
/// is not read back, so NaN inputs surface as NaN values and converged-less results
/// in the report arrays, not as exceptions. All max_iter iterations are enqueued;
/// problems retire on the device as they converge (their blocks exit at once), so
/// the cost after convergence is launch overhead only. Semantics of every number as
/// in otgpu::sinkhorn.
void sinkhorn_async(GpuContext& ctx, const SinkhornProblem& problem, const SinkhornOptions& options,
                    const DeviceSinkhornOutputs& outputs);

// Derived outputs of a solve, online (the plan P is never formed), from the fp32
// potentials sinkhorn_async wrote; pass the same problem and options (they fix eps,
// eps_relative and whether b was rescaled to the mass of a). Stream-ordered like
// sinkhorn_async: they may be queued right behind it, with no synchronization.
// Point clouds only for the map and the gradient; outputs are caller device buffers.

/// map [B * n * d]: T(x_i) = sum_j P_ij y_j / sum_j P_ij.
void barycentric_map_async(GpuContext& ctx, const SinkhornProblem& problem,
                           const SinkhornOptions& options, const float* g, float* map);

/// grad [B * n * d]: gradient of OT_eps w.r.t. x_i at fixed potentials:
/// sqeuclidean 2 (r_i x_i - sum_j P_ij y_j), euclidean sum_j P_ij (x_i - y_j)/|x_i - y_j|,
/// r_i = sum_j P_ij.
void gradient_x_async(GpuContext& ctx, const SinkhornProblem& problem,
                      const SinkhornOptions& options, const float* f, const float* g, float* grad);

/// partners [B * n]: one j per row drawn from P_i. / r_i by Gumbel-max, keyed by
/// (seed, problem, i, j) as on the CPU backend (same partners up to fp32 near-ties).
void sample_partners_async(GpuContext& ctx, const SinkhornProblem& problem,
                           const SinkhornOptions& options, const float* g, std::uint64_t seed,
                           std::int64_t* partners);

}  // namespace otgpu
