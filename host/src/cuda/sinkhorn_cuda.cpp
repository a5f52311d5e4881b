// The CUDA Sinkhorn backend (implements otgpu_host/cuda_backend.h).
//
// Flow of one solve: host views are laid out on the host in the canonical fp32 form
// (points padded to dp coordinates and centered on the mean of y, costs being
// translation invariant) and uploaded with stream-ordered allocations; device views
// are staged, validated and centered by kernels, never read by the host. Either way
// the solve then runs entirely on the device. The planner picks one of three kernels:
//   - small: n, m <= 512 and the problem fits in shared memory: one block per
//     problem runs the whole loop (sinkhorn_small.cu);
//   - dense: a cost matrix was given (sinkhorn_dense.cu);
//   - online: point clouds, C recomputed on the fly (sinkhorn_online.cu).
// The online/dense loop never synchronizes per iteration: every check_every
// iterations a device kernel measures the residual, retires converged problems
// (their blocks exit at once afterwards) and counts the active ones; the host reads
// that count one check period late, so the GPU always has queued work.
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

#include "otgpu/device.h"
#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"
#include "otgpu_host/cuda_check.h"
#include "otgpu_kernels/sinkhorn_aux.h"
#include "otgpu_kernels/sinkhorn_dense.h"
#include "otgpu_kernels/sinkhorn_online.h"
#include "otgpu_kernels/sinkhorn_small.h"
#include "otgpu_kernels/sinkhorn_stage.h"
#include "validate.h"

namespace otgpu {

namespace cuda_backend {

namespace {

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

// ------------------------------------------------------------------- staging --

int padded_dim(std::int64_t d) {
  if (d <= 64) {
    int p = 1;
    while (p < d) p *= 2;
    return p;
  }
  return static_cast<int>((d + 3) / 4 * 4);
}

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

Canonical canonicalize(const SinkhornProblem& p, const detail::SinkhornShape& s, bool balanced) {
  Canonical c;
  c.B = s.batch;
  c.n = s.n;
  c.m = s.m;
  c.d = s.d;
  c.cost = p.cost_kind;
  const auto B = static_cast<std::size_t>(s.batch);
  auto load3 = [](const TensorView& v, std::int64_t b, std::int64_t i, std::int64_t k) {
    return v.rank == 3 ? load_as_double(v, b, i, k) : load_as_double(v, i, k);
  };
  if (p.cost_kind == CostKind::matrix) {
    c.C.resize(B * static_cast<std::size_t>(s.n * s.m));
    for (std::int64_t b = 0; b < s.batch; ++b)
      for (std::int64_t i = 0; i < s.n; ++i)
        for (std::int64_t j = 0; j < s.m; ++j)
          c.C[static_cast<std::size_t>((b * s.n + i) * s.m + j)] =
              static_cast<float>(load3(p.cost, b, i, j));
  } else {
    c.dp = padded_dim(s.d);
    const auto dp = static_cast<std::size_t>(c.dp);
    c.X.assign(B * static_cast<std::size_t>(s.n) * dp, 0.f);
    c.Y.assign(B * static_cast<std::size_t>(s.m) * dp, 0.f);
    c.center.assign(B * dp, 0.0);
    for (std::int64_t b = 0; b < s.batch; ++b) {
      double* ctr = c.center.data() + static_cast<std::size_t>(b) * dp;
      for (std::int64_t j = 0; j < s.m; ++j)
        for (std::int64_t k = 0; k < s.d; ++k) ctr[k] += load3(p.y, b, j, k);
      for (std::int64_t k = 0; k < s.d; ++k) ctr[k] /= static_cast<double>(s.m);
      for (std::int64_t i = 0; i < s.n; ++i)
        for (std::int64_t k = 0; k < s.d; ++k)
          c.X[(static_cast<std::size_t>(b * s.n + i)) * dp + static_cast<std::size_t>(k)] =
              static_cast<float>(load3(p.x, b, i, k) - ctr[k]);
      for (std::int64_t j = 0; j < s.m; ++j)
        for (std::int64_t k = 0; k < s.d; ++k)
          c.Y[(static_cast<std::size_t>(b * s.m + j)) * dp + static_cast<std::size_t>(k)] =
              static_cast<float>(load3(p.y, b, j, k) - ctr[k]);
    }
  }
  auto weights = [&](const TensorView& w, std::int64_t len, std::vector<double>& out) {
    out.resize(B * static_cast<std::size_t>(len));
    for (std::int64_t b = 0; b < s.batch; ++b)
      for (std::int64_t i = 0; i < len; ++i)
        out[static_cast<std::size_t>(b * len + i)] =
            !w.present() ? 1.0 / static_cast<double>(len)
                         : (w.rank == 2 ? load_as_double(w, b, i) : load_as_double(w, i));
  };
  weights(p.a, s.n, c.a);
  weights(p.b, s.m, c.b);
  if (balanced) {
    for (std::int64_t b = 0; b < s.batch; ++b) {
      double ma = 0, mb = 0;
      for (std::int64_t i = 0; i < s.n; ++i) ma += c.a[static_cast<std::size_t>(b * s.n + i)];
      for (std::int64_t j = 0; j < s.m; ++j) mb += c.b[static_cast<std::size_t>(b * s.m + j)];
      for (std::int64_t j = 0; j < s.m; ++j) c.b[static_cast<std::size_t>(b * s.m + j)] *= ma / mb;
    }
  }
  auto logs = [](const std::vector<double>& w, std::vector<float>& out) {
    out.resize(w.size());
    for (std::size_t k = 0; k < w.size(); ++k)
      out[k] =
          w[k] > 0 ? static_cast<float>(std::log(w[k])) : -std::numeric_limits<float>::infinity();
  };
  logs(c.a, c.logA);
  logs(c.b, c.logB);
  return c;
}

/// Mean cost per problem over all n*m pairs (eps_relative), on the host in double
/// except the Euclidean one, which needs an O(nm) pass and runs on the device.
std::vector<double> mean_costs(const Canonical& c, const float* dX, const float* dY,
                               cudaStream_t s) {
  const auto B = static_cast<std::size_t>(c.B);
  std::vector<double> mean(B, 0.0);
  if (c.cost == CostKind::matrix) {
    for (std::size_t b = 0; b < B; ++b) {
      double acc = 0;
      const std::size_t nm = static_cast<std::size_t>(c.n * c.m);
      for (std::size_t k = 0; k < nm; ++k) acc += c.C[b * nm + k];
      mean[b] = acc / static_cast<double>(nm);
    }
  } else if (c.cost == CostKind::sqeuclidean) {
    // mean_ij |x_i - y_j|^2 = var(x) + var(y) + |mean x - mean y|^2 (centered data).
    const auto dp = static_cast<std::size_t>(c.dp);
    for (std::size_t b = 0; b < B; ++b) {
      for (std::size_t k = 0; k < dp; ++k) {
        double sx = 0, sxx = 0, sy = 0, syy = 0;
        for (std::int64_t i = 0; i < c.n; ++i) {
          const double v =
              c.X[(b * static_cast<std::size_t>(c.n) + static_cast<std::size_t>(i)) * dp + k];
          sx += v;
          sxx += v * v;
        }
        for (std::int64_t j = 0; j < c.m; ++j) {
          const double v =
              c.Y[(b * static_cast<std::size_t>(c.m) + static_cast<std::size_t>(j)) * dp + k];
          sy += v;
          syy += v * v;
        }
        const double mx = sx / static_cast<double>(c.n), my = sy / static_cast<double>(c.m);
        mean[b] += (sxx / static_cast<double>(c.n) - mx * mx) +
                   (syy / static_cast<double>(c.m) - my * my) + (mx - my) * (mx - my);
      }
    }
  } else {
    DeviceArray<double> out(B, s);
    kernels::mean_euclidean_cost(dX, dY, out.get(), c.B, c.n, c.m, c.dp, s);
    out.download(mean.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  for (std::size_t b = 0; b < B; ++b) {
    if (!(mean[b] > 0) || !std::isfinite(mean[b])) {
      throw InvalidArgument(fmt::format(
          "eps_relative: mean cost of problem {} is {}; a relative eps needs a positive mean cost",
          b, mean[b]));
    }
  }
  return mean;
}

void set_device(int device) { OTGPU_CUDA_CHECK(cudaSetDevice(device)); }

kernels::OnlinePass pass(const Canonical& c, bool f_side, const float* dX, const float* dY,
                         const float* dLogA, const float* dLogB, const float* dF, const float* dG,
                         const float* eps, const int* active) {
  kernels::OnlinePass p;
  p.cost = c.cost;
  p.rows = f_side ? dX : dY;
  p.cols = f_side ? dY : dX;
  p.col_logw = f_side ? dLogB : dLogA;
  p.col_pot = f_side ? dG : dF;
  p.eps = eps;
  p.active = active;
  p.B = c.B;
  p.n_rows = f_side ? c.n : c.m;
  p.n_cols = f_side ? c.m : c.n;
  p.dp = c.dp;
  return p;
}

}  // namespace

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky status
    return 0;
  }
  return count;
}

void require_device(int device) {
  int count = 0;
  const cudaError_t st = cudaGetDeviceCount(&count);
  if (st != cudaSuccess) {
    cudaGetLastError();
    throw DeviceUnavailable(fmt::format("backend cuda: CUDA device {} unavailable: {}", device,
                                        cudaGetErrorString(st)));
  }
  if (device < 0 || device >= count) {
    throw DeviceUnavailable(fmt::format(
        "backend cuda: CUDA device {} unavailable: {} device(s) present", device, count));
  }
}

namespace {

/// Number of scaling iterations before eps_t reaches the target (the same for every
/// problem: relative eps scales eps and eps_init alike).
int scaling_steps(const SinkhornOptions& o) {
  if (!(o.eps_init > 0)) return 0;
  int K = 0;
  while (K < o.max_iter && o.eps_init * std::pow(o.eps_decay, K) > o.eps) ++K;
  return K;
}

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
  int sm_count = 0;           ///< SMs of the device, for the column splits
  float* partials = nullptr;  ///< split partials of the online half-steps
  std::size_t partials_floats = 0;

  bool points() const { return cost != CostKind::matrix; }
  const float* eps_target() const {
    return eps_tab + static_cast<std::size_t>(K) * static_cast<std::size_t>(B);
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
    if (partials != nullptr) {
      p.splits = kernels::online_splits(p, sm_count);
      p.partials = partials;
      // Sized by solve_sizes with the same rule; never write past the buffer.
      if (kernels::online_partials_floats(p) > partials_floats) p.splits = 1;
      if (p.splits == 1) p.partials = nullptr;
    }
    return p;
  }
};

bool small_path(const DeviceSolve& s, int device) {
  return s.points() && s.n <= 512 && s.m <= 512 && s.dp <= 32 &&
         kernels::small_kernel_fits(s.cost, s.n, s.m, s.dp, device);
}

/// Sizes of the arrays a DeviceSolve points to, for one workspace carve-up.
struct SolveSizes {
  std::size_t X = 0, Y = 0, C = 0, nB = 0, mB = 0, B = 0, tab = 0, col_ws = 0, partials = 0;
};

/// Floats of split partials the f- and g-half-steps of this shape need.
std::size_t partials_floats(CostKind cost, std::int64_t B, std::int64_t n, std::int64_t m, int dp,
                            int sm_count) {
  if (cost == CostKind::matrix) return 0;
  kernels::OnlinePass p;
  p.cost = cost;
  p.B = B;
  p.dp = dp;
  p.n_rows = n;
  p.n_cols = m;
  p.splits = kernels::online_splits(p, sm_count);
  const std::size_t f = kernels::online_partials_floats(p);
  p.n_rows = m;
  p.n_cols = n;
  p.splits = kernels::online_splits(p, sm_count);
  return std::max(f, kernels::online_partials_floats(p));
}

int device_sm_count(int device) {
  int sms = 0;
  OTGPU_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

SolveSizes solve_sizes(CostKind cost, std::int64_t B, std::int64_t n, std::int64_t m, int dp, int K,
                       bool stage_cost, int sm_count) {
  SolveSizes z;
  const bool pts = cost != CostKind::matrix;
  z.partials = partials_floats(cost, B, n, m, dp, sm_count);
  z.X = pts ? static_cast<std::size_t>(B * n * dp) : 0;
  z.Y = pts ? static_cast<std::size_t>(B * m * dp) : 0;
  z.C = !pts && stage_cost ? static_cast<std::size_t>(B * n * m) : 0;
  z.nB = static_cast<std::size_t>(B * n);
  z.mB = static_cast<std::size_t>(B * m);
  z.B = static_cast<std::size_t>(B);
  z.tab = static_cast<std::size_t>(K + 1) * z.B;
  z.col_ws = pts ? 0 : kernels::dense_col_workspace_bytes(B, n, m);
  return z;
}

/// Host-side polling of the active count for early exit (the synchronous API).
struct Poller {
  PinnedInts pinned{2};
  Event ev[2];
  int checks = 0;
};

/// Enqueues the iterations. With a poller, the host reads the number of active
/// problems one check period late and stops enqueueing once it is zero; without,
/// all max_iter iterations are enqueued (retired problems cost no work).
void enqueue_iterations(const DeviceSolve& d, const SinkhornOptions& o, int device, cudaStream_t s,
                        Poller* poller) {
  if (small_path(d, device)) {
    kernels::SmallSinkhornArgs args;
    args.cost = d.cost;
    args.X = d.X;
    args.Y = d.Y;
    args.logA = d.logA;
    args.logB = d.logB;
    args.F = d.F;
    args.G = d.G;
    args.eps = d.small_eps;
    args.eps_init = o.eps_init > 0 ? d.small_eps_init : nullptr;
    args.eps_decay = o.eps_decay;
    args.rho_a = o.rho_a;
    args.rho_b = o.rho_b;
    args.tol = o.tol;
    args.max_iter = o.max_iter;
    args.check_every = o.check_every;
    args.t_begin = 0;
    args.t_end = o.max_iter;
    args.active = d.active;
    args.iterations = d.iters;
    args.residual = d.small_res;
    args.converged = d.small_conv;
    args.B = d.B;
    args.n = d.n;
    args.m = d.m;
    args.d = d.dp;
    kernels::small_sinkhorn(args, s);
    return;
  }
  const auto B = static_cast<std::size_t>(d.B);
  const float* eps_target = d.eps_target();
  const float* lam_a_target = d.lam_a_tab + static_cast<std::size_t>(d.K) * B;
  for (int t = 0; t < o.max_iter; ++t) {
    const std::size_t row = static_cast<std::size_t>(std::min(t, d.K)) * B;
    const float* e = d.eps_tab + row;
    const float* la = d.lam_a_tab + row;
    const float* lb = d.lam_b_tab + row;
    if (d.points()) {
      kernels::online_half_step(d.online(true, e, d.active), la, d.F, s);
      kernels::online_half_step(d.online(false, e, d.active), lb, d.G, s);
    } else {
      kernels::dense_row_update(d.C, d.logB, d.G, e, la, d.active, d.F, d.B, d.n, d.m, s);
      kernels::dense_col_update(d.C, d.logA, d.F, e, lb, d.active, d.G, d.col_ws, d.col_ws_bytes,
                                d.B, d.n, d.m, s);
    }
    const bool check = o.check_every > 0 && (t + 1) % o.check_every == 0 && t >= d.K;
    if (!check) continue;
    if (d.points()) {
      kernels::online_half_step(d.online(true, eps_target, d.active), nullptr, d.Ft, s);
    } else {
      kernels::dense_row_update(d.C, d.logB, d.G, eps_target, nullptr, d.active, d.Ft, d.B, d.n,
                                d.m, s);
    }
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.count, 0, sizeof(int), s));
    kernels::sinkhorn_check_residual(d.a, d.F, d.Ft, eps_target, lam_a_target, o.tol, t + 1,
                                     d.active, d.iters, d.res, d.count, d.B, d.n, s);
    if (poller == nullptr) continue;
    const int slot = poller->checks % 2;
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(poller->pinned.get() + slot, d.count, sizeof(int),
                                     cudaMemcpyDeviceToHost, s));
    OTGPU_CUDA_CHECK(cudaEventRecord(poller->ev[slot].get(), s));
    // Read the previous check's count: one period late, so the GPU never idles.
    if (poller->checks > 0) {
      const int prev = 1 - slot;
      OTGPU_CUDA_CHECK(cudaEventSynchronize(poller->ev[prev].get()));
      if (poller->pinned.get()[prev] == 0) break;
    }
    ++poller->checks;
  }
}

/// Enqueues the final report at the target eps for every problem (active flags
/// ignored) into d.out4 [B, 4].
void enqueue_finalize(const DeviceSolve& d, const SinkhornOptions& o, cudaStream_t s) {
  const float* eps_target = d.eps_target();
  if (d.points()) {
    const auto fp = d.online(true, eps_target, nullptr);
    kernels::online_half_step(fp, nullptr, d.Ft, s);
    kernels::online_row_stats(fp, d.lse, d.cmean, s);
  } else {
    kernels::dense_row_update(d.C, d.logB, d.G, eps_target, nullptr, nullptr, d.Ft, d.B, d.n, d.m,
                              s);
    kernels::dense_row_stats(d.C, d.logA, d.logB, d.F, d.G, eps_target, d.row_mass, d.row_cost, d.B,
                             d.n, d.m, s);
  }
  kernels::sinkhorn_finalize(d.a, d.b, d.F, d.G, d.Ft, d.points() ? d.cmean : nullptr, d.row_mass,
                             d.row_cost, eps_target, o.rho_a, o.rho_b, d.out4, d.B, d.n, d.m, s);
}

}  // namespace

namespace {

// ------------------------------------------------------ device-side staging --
//
// Device views are never read by the host: kernels stage them into the canonical
// layout, validate them (finiteness, weights, masses) and compute the eps scale on the
// device. The synchronous API reads the checks back once, before iterating, and
// throws the errors the host validation throws for host data; the stream-ordered
// API runs the same staging without that read-back.

constexpr std::size_t kAlign = 256;

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

kernels::StridedSource source(const TensorView& v) {
  kernels::StridedSource s;
  s.data = v.data;
  s.is_f64 = v.dtype == DType::f64;
  s.rank = v.rank;
  for (int k = 0; k < v.rank && k < 3; ++k) s.stride[k] = v.stride(k);
  return s;
}

struct DevicePlan {
  detail::SinkhornShape shape;
  CostKind cost = CostKind::sqeuclidean;
  int dp = 0;
  int K = 0;
  bool stage_cost = false;  ///< the cost view is not contiguous fp32: copy it
  int sm_count = 0;
};

DevicePlan plan_device(const SinkhornProblem& problem, const SinkhornOptions& o,
                       const detail::SinkhornShape& shape, int device, bool solve) {
  DevicePlan pl;
  pl.shape = shape;
  pl.cost = problem.cost_kind;
  pl.dp = problem.cost_kind == CostKind::matrix ? 0 : padded_dim(shape.d);
  pl.K = solve ? scaling_steps(o) : 0;
  pl.stage_cost = problem.cost_kind == CostKind::matrix &&
                  !(problem.cost.dtype == DType::f32 && problem.cost.is_contiguous() &&
                    (problem.cost.rank == 3 || shape.batch == 1));
  pl.sm_count = device_sm_count(device);
  return pl;
}

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

/// Lays out the arrays (or only counts bytes). own_fg: F and G live in the buffer
/// (else the caller provides them); derived: scratch of the derived outputs.
Carved carve(Carver& cv, const DevicePlan& pl, bool own_fg, bool derived) {
  const auto& sh = pl.shape;
  const SolveSizes z =
      solve_sizes(pl.cost, sh.batch, sh.n, sh.m, pl.dp, pl.K, pl.stage_cost, pl.sm_count);
  Carved c;
  DeviceSolve& d = c.d;
  d.cost = pl.cost;
  d.B = sh.batch;
  d.n = sh.n;
  d.m = sh.m;
  d.dp = pl.dp;
  d.K = pl.K;
  d.X = cv.take<float>(z.X);
  d.Y = cv.take<float>(z.Y);
  d.C = cv.take<float>(z.C);
  d.logA = cv.take<float>(z.nB);
  d.logB = cv.take<float>(z.mB);
  d.a = cv.take<double>(z.nB);
  d.b = cv.take<double>(z.mB);
  d.Ft = cv.take<float>(z.nB);
  d.eps_tab = cv.take<float>(z.tab);
  d.lam_a_tab = cv.take<float>(z.tab);
  d.lam_b_tab = cv.take<float>(z.tab);
  d.small_eps = cv.take<float>(z.B);
  d.small_eps_init = cv.take<float>(z.B);
  d.active = cv.take<int>(z.B);
  d.iters = cv.take<int>(z.B);
  d.count = cv.take<int>(1);
  d.res = cv.take<double>(z.B);
  d.small_res = cv.take<float>(z.B);
  d.small_conv = cv.take<int>(z.B);
  d.col_ws = cv.take<unsigned char>(z.col_ws);
  d.col_ws_bytes = z.col_ws;
  d.cmean = cv.take<float>(z.nB);
  d.lse = cv.take<float>(z.nB);
  d.row_mass = cv.take<float>(z.nB);
  d.row_cost = cv.take<float>(z.nB);
  d.out4 = cv.take<double>(4 * z.B);
  d.sm_count = pl.sm_count;
  d.partials = cv.take<float>(z.partials);
  d.partials_floats = z.partials;
  if (own_fg) {
    d.F = cv.take<float>(z.nB);
    d.G = cv.take<float>(z.mB);
  }
  const auto dp1 = static_cast<std::size_t>(std::max(pl.dp, 1));
  c.center = cv.take<double>(z.B * dp1);
  c.mean = cv.take<double>(z.B);
  c.bad = cv.take<unsigned long long>(4);
  c.mass = cv.take<double>(2 * z.B);
  if (derived) {
    c.T = cv.take<float>(z.nB * dp1);
    c.ratio = cv.take<double>(z.B);
  }
  return c;
}

std::size_t carved_bytes(const DevicePlan& pl, bool own_fg, bool derived) {
  Carver counter(nullptr);
  (void)carve(counter, pl, own_fg, derived);
  return counter.used();
}

/// Phase 1: the caller's tensors into the canonical arrays (points padded, not yet
/// centered; costs copied unless contiguous fp32; weights in double and log form).
void stage_inputs(const SinkhornProblem& problem, const DevicePlan& pl, DeviceSolve& d,
                  cudaStream_t s) {
  const auto& sh = pl.shape;
  if (d.points()) {
    kernels::stage_points(source(problem.x), sh.batch, sh.n, sh.d, pl.dp, const_cast<float*>(d.X),
                          s);
    kernels::stage_points(source(problem.y), sh.batch, sh.m, sh.d, pl.dp, const_cast<float*>(d.Y),
                          s);
  } else if (pl.stage_cost) {
    kernels::stage_points(source(problem.cost), sh.batch, sh.n, sh.m, static_cast<int>(sh.m),
                          const_cast<float*>(d.C), s);
  } else {
    d.C = static_cast<const float*>(problem.cost.data);
  }
  kernels::StridedSource none;
  kernels::stage_weights(problem.a.present() ? source(problem.a) : none, sh.batch, sh.n,
                         const_cast<double*>(d.a), const_cast<float*>(d.logA), s);
  kernels::stage_weights(problem.b.present() ? source(problem.b) : none, sh.batch, sh.m,
                         const_cast<double*>(d.b), const_cast<float*>(d.logB), s);
}

/// Enqueues the data checks on the staged (not yet centered) arrays.
void enqueue_checks(const DevicePlan& pl, const Carved& c, cudaStream_t s) {
  const auto& sh = pl.shape;
  const DeviceSolve& d = c.d;
  if (d.points()) {
    kernels::find_nonfinite(d.X, sh.batch * sh.n * pl.dp, c.bad + 0, s);
    kernels::find_nonfinite(d.Y, sh.batch * sh.m * pl.dp, c.bad + 1, s);
  } else {
    kernels::find_nonfinite(d.C, sh.batch * sh.n * sh.m, c.bad + 0, s);
    kernels::find_nonfinite(nullptr, 0, c.bad + 1, s);  // no y: marks "none"
  }
  kernels::check_weights(d.a, sh.batch, sh.n, c.mass, c.bad + 2, s);
  kernels::check_weights(d.b, sh.batch, sh.m, c.mass + sh.batch, c.bad + 3, s);
}

/// Phase 2: centers the points (costs are translation invariant) and computes the
/// mean cost per problem into c.mean when eps is relative.
void stage_center(const DevicePlan& pl, const Carved& c, bool relative, cudaStream_t s) {
  const auto& sh = pl.shape;
  const DeviceSolve& d = c.d;
  if (d.points()) {
    kernels::center_points(const_cast<float*>(d.X), const_cast<float*>(d.Y), c.center, sh.batch,
                           sh.n, sh.m, pl.dp, s);
  }
  if (!relative) return;
  if (pl.cost == CostKind::sqeuclidean) {
    kernels::mean_sqeuclidean_cost(d.X, d.Y, c.mean, sh.batch, sh.n, sh.m, pl.dp, s);
  } else if (pl.cost == CostKind::euclidean) {
    kernels::mean_euclidean_cost(d.X, d.Y, c.mean, sh.batch, sh.n, sh.m, pl.dp, s);
  } else {
    kernels::mean_matrix_cost(d.C, sh.batch, sh.n * sh.m, c.mean, s);
  }
}

/// Phase 3 (solves): balances b, builds the eps / lambda tables, resets the flags.
void stage_schedule(const SinkhornOptions& o, const DevicePlan& pl, const Carved& c,
                    cudaStream_t s) {
  const auto& sh = pl.shape;
  const DeviceSolve& d = c.d;
  if (std::isinf(o.rho_a) && std::isinf(o.rho_b)) {
    kernels::balance_weights(d.a, const_cast<double*>(d.b), const_cast<float*>(d.logB), sh.batch,
                             sh.n, sh.m, s);
  }
  kernels::make_eps_tables(o.eps_relative ? c.mean : nullptr, o.eps, o.eps_init, o.eps_decay,
                           o.rho_a, o.rho_b, pl.K, const_cast<float*>(d.eps_tab),
                           const_cast<float*>(d.lam_a_tab), const_cast<float*>(d.lam_b_tab),
                           const_cast<float*>(d.small_eps), const_cast<float*>(d.small_eps_init),
                           sh.batch, s);
  kernels::fill_ints(d.active, 1, sh.batch, s);
  kernels::fill_ints(d.iters, o.max_iter, sh.batch, s);
}

/// One element of a device view (error messages only).
double read_element(const TensorView& v, std::int64_t offset) {
  if (v.dtype == DType::f64) {
    double x = 0;
    OTGPU_CUDA_CHECK(cudaMemcpy(&x, static_cast<const double*>(v.data) + offset, sizeof(double),
                                cudaMemcpyDeviceToHost));
    return x;
  }
  float x = 0;
  OTGPU_CUDA_CHECK(cudaMemcpy(&x, static_cast<const float*>(v.data) + offset, sizeof(float),
                              cudaMemcpyDeviceToHost));
  return x;
}

[[noreturn]] void throw_bad_element(const TensorView& v, const char* name, std::int64_t b,
                                    std::int64_t i, std::int64_t k) {
  const bool batched = v.rank == 3;
  const std::int64_t off = batched ? b * v.stride(0) + i * v.stride(1) + k * v.stride(2)
                                   : i * v.stride(0) + k * v.stride(1);
  const double x = read_element(v, off);
  const std::string where =
      batched ? fmt::format("[{}, {}, {}]", b, i, k) : fmt::format("[{}, {}]", i, k);
  if (std::isfinite(x)) {
    throw NonFiniteInput(fmt::format(
        "{}: element {} is {}, outside the fp32 range of the CUDA backend", name, where, x));
  }
  throw NonFiniteInput(fmt::format("{}: element {} is {}", name, where, x));
}

/// Reads the device-side checks back (one synchronization of s) and throws what the
/// host validation throws for the same data. Returns the mean costs when relative.
std::vector<double> check_device_inputs(const SinkhornProblem& problem, const DevicePlan& pl,
                                        const Carved& c, bool balanced, bool relative,
                                        cudaStream_t s) {
  const auto& sh = pl.shape;
  const auto B = static_cast<std::size_t>(sh.batch);
  unsigned long long bad[4] = {0, 0, 0, 0};
  std::vector<double> mass(2 * B), mean(relative ? B : 0);
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(bad, c.bad, sizeof(bad), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(mass.data(), c.mass, 2 * B * sizeof(double), cudaMemcpyDeviceToHost, s));
  if (relative) {
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(mean.data(), c.mean, B * sizeof(double), cudaMemcpyDeviceToHost, s));
  }
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  constexpr unsigned long long kNone = ~0ull;
  const auto dp = static_cast<unsigned long long>(std::max(pl.dp, 1));
  auto point_error = [&](const TensorView& v, const char* name, std::int64_t rows,
                         unsigned long long e) {
    const auto r = static_cast<unsigned long long>(rows);
    throw_bad_element(v, name, static_cast<std::int64_t>(e / (dp * r)),
                      static_cast<std::int64_t>((e / dp) % r), static_cast<std::int64_t>(e % dp));
  };
  if (bad[0] != kNone) {
    if (pl.cost != CostKind::matrix) {
      point_error(problem.x, "x", sh.n, bad[0]);
    } else {
      const auto n = static_cast<unsigned long long>(sh.n);
      const auto m = static_cast<unsigned long long>(sh.m);
      throw_bad_element(problem.cost, "cost", static_cast<std::int64_t>(bad[0] / (n * m)),
                        static_cast<std::int64_t>((bad[0] / m) % n),
                        static_cast<std::int64_t>(bad[0] % m));
    }
  }
  if (bad[1] != kNone) point_error(problem.y, "y", sh.m, bad[1]);
  auto weight_error = [&](const TensorView& w, const char* name, std::int64_t len,
                          const double* staged, unsigned long long e) {
    double x = 0;
    OTGPU_CUDA_CHECK(cudaMemcpy(&x, staged + e, sizeof(double), cudaMemcpyDeviceToHost));
    const auto l = static_cast<unsigned long long>(len);
    const std::string where =
        w.rank == 2 ? fmt::format("[{}, {}]", e / l, e % l) : fmt::format("[{}]", e % l);
    if (std::isfinite(x)) {
      throw NonFiniteInput(
          fmt::format("{}: element {} is {} (weights must be >= 0)", name, where, x));
    }
    throw NonFiniteInput(fmt::format("{}: element {} is {}", name, where, x));
  };
  if (bad[2] != kNone) weight_error(problem.a, "a", sh.n, c.d.a, bad[2]);
  if (bad[3] != kNone) weight_error(problem.b, "b", sh.m, c.d.b, bad[3]);
  for (std::size_t b = 0; b < B; ++b) {
    const double ma = mass[b], mb = mass[B + b];
    for (const auto& [mv, name, batched] :
         {std::tuple{ma, "a", sh.a_batched}, std::tuple{mb, "b", sh.b_batched}}) {
      if (mv > 0) continue;
      if (batched) {
        throw InvalidArgument(
            fmt::format("{}: problem {} has total mass 0 (weights need a positive mass)", name, b));
      }
      throw InvalidArgument(
          fmt::format("{}: total mass is 0 (weights need a positive mass)", name));
    }
    if (balanced && std::fabs(ma - mb) > 1e-5 * std::max(ma, mb)) {
      throw InvalidArgument(
          fmt::format("a, b: problem {} has mass(a) = {} and mass(b) = {}; a balanced problem "
                      "(rho_a = rho_b = inf) needs equal masses (relative 1e-5); set rho_a / rho_b "
                      "for unbalanced transport",
                      b, ma, mb));
    }
  }
  for (std::size_t b = 0; b < mean.size(); ++b) {
    if (!(mean[b] > 0) || !std::isfinite(mean[b])) {
      throw InvalidArgument(fmt::format(
          "eps_relative: mean cost of problem {} is {}; a relative eps needs a positive mean cost",
          b, mean[b]));
    }
  }
  return mean;
}

/// Starts F and G from options.f_init / g_init (converted to fp32) or zeros.
void init_potentials(const SinkhornOptions& o, const DeviceSolve& d, cudaStream_t s) {
  const auto nB = static_cast<std::size_t>(d.B * d.n), mB = static_cast<std::size_t>(d.B * d.m);
  std::vector<float> f0(o.f_init.begin(), o.f_init.end()), g0(o.g_init.begin(), o.g_init.end());
  if (f0.empty()) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.F, 0, nB * sizeof(float), s));
  } else {
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(d.F, f0.data(), nB * sizeof(float), cudaMemcpyHostToDevice, s));
  }
  if (g0.empty()) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(d.G, 0, mB * sizeof(float), s));
  } else {
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(d.G, g0.data(), mB * sizeof(float), cudaMemcpyHostToDevice, s));
  }
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // f0, g0 are pageable and go out of scope
}

/// The host result from the downloaded arrays; scale[b]: eps of problem b / options.eps.
SinkhornResult make_result(const SinkhornOptions& o, const detail::SinkhornShape& sh,
                           const std::vector<float>& f, const std::vector<float>& g,
                           const std::vector<double>& out4, const std::vector<int>& iters,
                           const std::vector<double>& scale) {
  SinkhornResult r;
  r.backend = Backend::cuda;
  r.device = o.device;
  r.batch = sh.batch;
  r.n = sh.n;
  r.m = sh.m;
  r.d = sh.d;
  r.f.assign(f.begin(), f.end());
  r.g.assign(g.begin(), g.end());
  const auto B = static_cast<std::size_t>(sh.batch);
  r.problems.resize(B);
  for (std::size_t b = 0; b < B; ++b) {
    auto& rep = r.problems[b];
    rep.eps = o.eps * scale[b];
    rep.ot_eps = out4[4 * b + 0];
    rep.transport_cost = out4[4 * b + 1];
    rep.marginal_error = out4[4 * b + 2];
    rep.residual = out4[4 * b + 3];
    rep.iterations = iters[b];
    // Non-finite values (eps too small for fp32, say) are reported, never hidden.
    rep.converged = std::isfinite(rep.ot_eps) && rep.residual <= o.tol;
  }
  return r;
}

/// otgpu::sinkhorn on device views: staged, validated and solved on the device; the
/// host reads the check results, the convergence count (lagged) and the outputs.
SinkhornResult solve_device_views(const SinkhornProblem& problem, const SinkhornOptions& o,
                                  const detail::SinkhornShape& shape) {
  const DevicePlan pl = plan_device(problem, o, shape, o.device, true);
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  Stream stream;
  const cudaStream_t s = stream.get();
  DeviceArray<unsigned char> ws(carved_bytes(pl, true, false), s);
  Carver cv(ws.get());
  Carved c = carve(cv, pl, true, false);
  stage_inputs(problem, pl, c.d, s);
  enqueue_checks(pl, c, s);
  stage_center(pl, c, o.eps_relative, s);
  const std::vector<double> mean = check_device_inputs(problem, pl, c, balanced, o.eps_relative, s);
  stage_schedule(o, pl, c, s);
  init_potentials(o, c.d, s);

  Poller poller;
  enqueue_iterations(c.d, o, o.device, s, &poller);
  enqueue_finalize(c.d, o, s);

  const auto B = static_cast<std::size_t>(shape.batch);
  std::vector<float> f(B * static_cast<std::size_t>(shape.n)),
      g(B * static_cast<std::size_t>(shape.m));
  std::vector<double> out4(4 * B);
  std::vector<int> iters(B);
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(f.data(), c.d.F, f.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(g.data(), c.d.G, g.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(out4.data(), c.d.out4, out4.size() * sizeof(double),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(iters.data(), c.d.iters, iters.size() * sizeof(int),
                                   cudaMemcpyDeviceToHost, s));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return make_result(o, shape, f, g, out4, iters,
                     o.eps_relative ? mean : std::vector<double>(B, 1.0));
}

enum class DerivedKind { map, gradient, sample };

/// Enqueues one derived output from staged data (points centered, target eps in row
/// 0 of the eps table, d.F / d.G set). out: float [B, n, d] (map, gradient) or
/// int64 [B, n] (sample). ratio: b's balancing factor per problem (nullptr: 1).
void enqueue_derived(DerivedKind what, const DevicePlan& pl, const Carved& c, const double* ratio,
                     std::uint64_t seed, void* out, cudaStream_t s) {
  const DeviceSolve& d = c.d;
  const auto& sh = pl.shape;
  const float* eps = d.eps_tab;
  switch (what) {
    case DerivedKind::map:
      kernels::online_weighted_mean(d.online(true, eps, nullptr), 0, c.T, s);
      kernels::finish_map(c.T, c.center, static_cast<float*>(out), sh.batch, sh.n, sh.d, pl.dp, s);
      return;
    case DerivedKind::gradient: {
      const bool euclid = pl.cost == CostKind::euclidean;
      kernels::online_half_step(d.online(true, eps, nullptr), nullptr, d.Ft, s);
      kernels::online_weighted_mean(d.online(true, eps, nullptr), euclid ? 1 : 0, c.T, s);
      kernels::finish_gradient(d.X, c.T, d.a, d.F, d.Ft, eps, ratio, euclid,
                               static_cast<float*>(out), sh.batch, sh.n, sh.d, pl.dp, s);
      return;
    }
    case DerivedKind::sample:
      if (pl.cost == CostKind::matrix) {
        kernels::dense_sample(d.C, d.logB, d.G, eps, seed, static_cast<std::int64_t*>(out),
                              sh.batch, sh.n, sh.m, s);
      } else {
        kernels::online_sample(d.online(true, eps, nullptr), seed, static_cast<std::int64_t*>(out),
                               s);
      }
      return;
  }
}

/// The host-level derived outputs on device views: the problem is staged and checked
/// on the device, the result's potentials and eps uploaded.
template <class Out>
std::vector<Out> derived_device_views(DerivedKind what, const SinkhornProblem& problem,
                                      const SinkhornResult& result,
                                      const detail::SinkhornShape& shape, std::uint64_t seed,
                                      int device) {
  const DevicePlan pl = plan_device(problem, SinkhornOptions{}, shape, device, false);
  Stream stream;
  const cudaStream_t s = stream.get();
  DeviceArray<unsigned char> ws(carved_bytes(pl, true, true), s);
  Carver cv(ws.get());
  Carved c = carve(cv, pl, true, true);
  stage_inputs(problem, pl, c.d, s);
  enqueue_checks(pl, c, s);
  stage_center(pl, c, false, s);
  (void)check_device_inputs(problem, pl, c, false, false, s);

  const auto B = static_cast<std::size_t>(shape.batch);
  const std::vector<float> f(result.f.begin(), result.f.end()), g(result.g.begin(), result.g.end());
  std::vector<float> eps(B);
  for (std::size_t b = 0; b < B; ++b) eps[b] = static_cast<float>(result.problems[b].eps);
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(c.d.F, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice, s));
  OTGPU_CUDA_CHECK(
      cudaMemcpyAsync(c.d.G, g.data(), g.size() * sizeof(float), cudaMemcpyHostToDevice, s));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(const_cast<float*>(c.d.eps_tab), eps.data(), B * sizeof(float),
                                   cudaMemcpyHostToDevice, s));
  // Without the solve's options, b is taken as rescaled when the masses agree (the
  // host-view path applies the same rule).
  if (what == DerivedKind::gradient) {
    kernels::mass_ratio(c.d.a, c.d.b, shape.batch, shape.n, shape.m, 1e-5, c.ratio, s);
  }
  const std::size_t count = what == DerivedKind::sample
                                ? B * static_cast<std::size_t>(shape.n)
                                : B * static_cast<std::size_t>(shape.n * shape.d);
  DeviceArray<Out> dOut(count, s);
  enqueue_derived(what, pl, c, c.ratio, seed, dOut.get(), s);
  std::vector<Out> out(count);
  dOut.download(out.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // also keeps f, g, eps alive until read
  return out;
}

}  // namespace

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& o,
                        const detail::SinkhornShape& shape) {
  require_device(o.device);
  set_device(o.device);
  if (shape.space == MemorySpace::device) return solve_device_views(problem, o, shape);
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  const Canonical c = canonicalize(problem, shape, balanced);
  const auto B = static_cast<std::size_t>(c.B);
  Stream stream;
  const cudaStream_t s = stream.get();
  const int K = scaling_steps(o);
  const int sms = device_sm_count(o.device);
  const SolveSizes z = solve_sizes(c.cost, c.B, c.n, c.m, c.dp, K, true, sms);

  DeviceArray<float> dX(z.X, s), dY(z.Y, s), dC(z.C, s);
  dX.upload(c.X.data());
  dY.upload(c.Y.data());
  dC.upload(c.C.data());

  // eps per problem, and the schedule eps_t = max(eps, eps_init decay^t) as tables
  // of K + 1 rows (row K: the target; every later iteration uses it).
  std::vector<double> scale(B, 1.0);
  if (o.eps_relative) scale = mean_costs(c, dX.get(), dY.get(), s);
  std::vector<float> eps_tab(z.tab), lam_a_tab(z.tab), lam_b_tab(z.tab), e_target(B), e_init(B);
  for (std::size_t t = 0; t <= static_cast<std::size_t>(K); ++t) {
    for (std::size_t b = 0; b < B; ++b) {
      const double target = o.eps * scale[b];
      const double e = o.eps_init > 0
                           ? std::max(target, o.eps_init * scale[b] *
                                                  std::pow(o.eps_decay, static_cast<double>(t)))
                           : target;
      eps_tab[t * B + b] = static_cast<float>(e);
      lam_a_tab[t * B + b] =
          static_cast<float>(std::isinf(o.rho_a) ? 1.0 : o.rho_a / (o.rho_a + e));
      lam_b_tab[t * B + b] =
          static_cast<float>(std::isinf(o.rho_b) ? 1.0 : o.rho_b / (o.rho_b + e));
      e_target[b] = static_cast<float>(target);
      e_init[b] = static_cast<float>(o.eps_init > 0 ? o.eps_init * scale[b] : 0.0);
    }
  }
  DeviceArray<float> dEps(z.tab, s), dLamA(z.tab, s), dLamB(z.tab, s), dE(B, s), dE0(B, s);
  dEps.upload(eps_tab.data());
  dLamA.upload(lam_a_tab.data());
  dLamB.upload(lam_b_tab.data());
  dE.upload(e_target.data());
  dE0.upload(e_init.data());

  DeviceArray<float> dLogA(z.nB, s), dLogB(z.mB, s);
  DeviceArray<double> dA(z.nB, s), dB(z.mB, s);
  dLogA.upload(c.logA.data());
  dLogB.upload(c.logB.data());
  dA.upload(c.a.data());
  dB.upload(c.b.data());

  DeviceArray<float> dF(z.nB, s), dG(z.mB, s), dFt(z.nB, s);
  {
    std::vector<float> f0(z.nB, 0.f), g0(z.mB, 0.f);
    for (std::size_t k = 0; k < o.f_init.size(); ++k) f0[k] = static_cast<float>(o.f_init[k]);
    for (std::size_t k = 0; k < o.g_init.size(); ++k) g0[k] = static_cast<float>(o.g_init[k]);
    dF.upload(f0.data());
    dG.upload(g0.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // f0, g0 are pageable and go out of scope
  }
  DeviceArray<int> dActive(B, s), dIters(B, s), dCount(1, s), dConv(B, s);
  DeviceArray<double> dRes(B, s), dOut(4 * B, s);
  DeviceArray<float> dResF(B, s), dCmean(z.nB, s), dLse(z.nB, s), dRowMass(z.nB, s),
      dRowCost(z.nB, s);
  DeviceArray<unsigned char> dWs(z.col_ws, s);
  DeviceArray<float> dPart(z.partials, s);
  {
    std::vector<int> ones(B, 1), iters(B, o.max_iter);
    dActive.upload(ones.data());
    dIters.upload(iters.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }

  DeviceSolve d;
  d.cost = c.cost;
  d.B = c.B;
  d.n = c.n;
  d.m = c.m;
  d.dp = c.dp;
  d.X = dX.get();
  d.Y = dY.get();
  d.C = dC.get();
  d.logA = dLogA.get();
  d.logB = dLogB.get();
  d.a = dA.get();
  d.b = dB.get();
  d.F = dF.get();
  d.G = dG.get();
  d.Ft = dFt.get();
  d.K = K;
  d.eps_tab = dEps.get();
  d.lam_a_tab = dLamA.get();
  d.lam_b_tab = dLamB.get();
  d.small_eps = dE.get();
  d.small_eps_init = dE0.get();
  d.active = dActive.get();
  d.iters = dIters.get();
  d.count = dCount.get();
  d.res = dRes.get();
  d.small_res = dResF.get();
  d.small_conv = dConv.get();
  d.col_ws = dWs.get();
  d.col_ws_bytes = z.col_ws;
  d.cmean = dCmean.get();
  d.lse = dLse.get();
  d.row_mass = dRowMass.get();
  d.row_cost = dRowCost.get();
  d.out4 = dOut.get();
  d.sm_count = sms;
  d.partials = dPart.get();
  d.partials_floats = z.partials;

  Poller poller;
  enqueue_iterations(d, o, o.device, s, &poller);
  enqueue_finalize(d, o, s);

  std::vector<float> f(z.nB), g(z.mB);
  std::vector<double> out4(4 * B);
  std::vector<int> iters(B);
  dF.download(f.data());
  dG.download(g.data());
  dOut.download(out4.data());
  dIters.download(iters.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));

  return make_result(o, shape, f, g, out4, iters, scale);
}

namespace {

/// Device copies of the canonical problem and of the result's potentials, for the
/// derived outputs.
struct DerivedSetup {
  Canonical c;
  std::vector<float> eps;
  DeviceArray<float> dX, dY, dC, dLogA, dLogB, dF, dG, dEps;
  DerivedSetup(const SinkhornProblem& problem, const SinkhornResult& result,
               const detail::SinkhornShape& shape, cudaStream_t s, Canonical&& canon)
      : c(std::move(canon)),
        eps(static_cast<std::size_t>(c.B)),
        dX(c.X.size(), s),
        dY(c.Y.size(), s),
        dC(c.C.size(), s),
        dLogA(c.logA.size(), s),
        dLogB(c.logB.size(), s),
        dF(result.f.size(), s),
        dG(result.g.size(), s),
        dEps(static_cast<std::size_t>(c.B), s) {
    (void)problem;
    (void)shape;
    for (std::size_t b = 0; b < eps.size(); ++b)
      eps[b] = static_cast<float>(result.problems[b].eps);
    std::vector<float> f(result.f.begin(), result.f.end()), g(result.g.begin(), result.g.end());
    dX.upload(c.X.data());
    dY.upload(c.Y.data());
    dC.upload(c.C.data());
    dLogA.upload(c.logA.data());
    dLogB.upload(c.logB.data());
    dF.upload(f.data());
    dG.upload(g.data());
    dEps.upload(eps.data());
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));  // the host vectors f, g go out of scope
  }
  kernels::OnlinePass f_pass() const {
    return pass(c, true, dX.get(), dY.get(), dLogA.get(), dLogB.get(), dF.get(), dG.get(),
                dEps.get(), nullptr);
  }
};

Canonical canonical_for(const SinkhornProblem& problem, const detail::SinkhornShape& shape) {
  // Balanced or not, b's scale does not change the row-normalized weights the
  // derived outputs use; rescale only where the masses agree (balanced solves).
  return canonicalize(problem, shape, false);
}

/// Row masses r_i = a_i exp((f_i - ftilde_i)/eps) of the plan at the result.
std::vector<double> row_masses(DerivedSetup& st, const SinkhornResult& result, cudaStream_t s) {
  const auto B = static_cast<std::size_t>(st.c.B), n = static_cast<std::size_t>(st.c.n);
  DeviceArray<float> dFt(B * n, s);
  kernels::online_half_step(st.f_pass(), nullptr, dFt.get(), s);
  std::vector<float> ft(B * n);
  dFt.download(ft.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  // b's total mass enters r_i linearly: scale to the mass the solve used.
  std::vector<double> r(B * n);
  for (std::size_t b = 0; b < B; ++b) {
    double ma = 0, mb = 0;
    for (std::size_t i = 0; i < n; ++i) ma += st.c.a[b * n + i];
    const auto m = static_cast<std::size_t>(st.c.m);
    for (std::size_t j = 0; j < m; ++j) mb += st.c.b[b * m + j];
    const double scale = std::abs(ma - mb) <= 1e-5 * std::max(ma, mb) ? ma / mb : 1.0;
    const double e = result.problems[b].eps;
    for (std::size_t i = 0; i < n; ++i) {
      const double ai = st.c.a[b * n + i];
      r[b * n + i] =
          ai > 0 ? ai * scale * std::exp((result.f[b * n + i] - ft[b * n + i]) / e) : 0.0;
    }
  }
  return r;
}

std::vector<float> weighted_mean(DerivedSetup& st, int mode, cudaStream_t s) {
  const auto size = static_cast<std::size_t>(st.c.B * st.c.n) * static_cast<std::size_t>(st.c.dp);
  DeviceArray<float> dOut(size, s);
  kernels::online_weighted_mean(st.f_pass(), mode, dOut.get(), s);
  std::vector<float> out(size);
  dOut.download(out.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

}  // namespace

std::vector<double> barycentric_map(const SinkhornProblem& problem, const SinkhornResult& result,
                                    const detail::SinkhornShape& shape, int device) {
  require_device(device);
  set_device(device);
  if (shape.space == MemorySpace::device) {
    const auto m = derived_device_views<float>(DerivedKind::map, problem, result, shape, 0, device);
    return {m.begin(), m.end()};
  }
  Stream stream;
  DerivedSetup st(problem, result, shape, stream.get(), canonical_for(problem, shape));
  const auto T = weighted_mean(st, 0, stream.get());
  const auto B = st.c.B, n = st.c.n, d = st.c.d;
  const auto dp = static_cast<std::size_t>(st.c.dp);
  std::vector<double> out(static_cast<std::size_t>(B * n * d));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < d; ++k)
        out[static_cast<std::size_t>((b * n + i) * d + k)] =
            T[static_cast<std::size_t>(b * n + i) * dp + static_cast<std::size_t>(k)] +
            st.c.center[static_cast<std::size_t>(b) * dp + static_cast<std::size_t>(k)];
  return out;
}

std::vector<double> gradient_x(const SinkhornProblem& problem, const SinkhornResult& result,
                               const detail::SinkhornShape& shape, int device) {
  require_device(device);
  set_device(device);
  if (shape.space == MemorySpace::device) {
    const auto g =
        derived_device_views<float>(DerivedKind::gradient, problem, result, shape, 0, device);
    return {g.begin(), g.end()};
  }
  Stream stream;
  DerivedSetup st(problem, result, shape, stream.get(), canonical_for(problem, shape));
  const auto r = row_masses(st, result, stream.get());
  const bool euclid = st.c.cost == CostKind::euclidean;
  const auto V = weighted_mean(st, euclid ? 1 : 0, stream.get());
  const auto B = st.c.B, n = st.c.n, d = st.c.d;
  const auto dp = static_cast<std::size_t>(st.c.dp);
  std::vector<double> out(static_cast<std::size_t>(B * n * d));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < n; ++i) {
      const double ri = r[static_cast<std::size_t>(b * n + i)];
      for (std::int64_t k = 0; k < d; ++k) {
        const std::size_t pk =
            static_cast<std::size_t>(b * n + i) * dp + static_cast<std::size_t>(k);
        const auto o = static_cast<std::size_t>((b * n + i) * d + k);
        // Both x and the weighted mean of y are centered: their difference is not.
        out[o] = euclid ? ri * V[pk] : 2.0 * ri * (static_cast<double>(st.c.X[pk]) - V[pk]);
      }
    }
  return out;
}

std::vector<std::int64_t> sample_partners(const SinkhornProblem& problem,
                                          const SinkhornResult& result,
                                          const detail::SinkhornShape& shape, std::uint64_t seed,
                                          int device) {
  require_device(device);
  set_device(device);
  if (shape.space == MemorySpace::device) {
    return derived_device_views<std::int64_t>(DerivedKind::sample, problem, result, shape, seed,
                                              device);
  }
  Stream stream;
  const cudaStream_t s = stream.get();
  DerivedSetup st(problem, result, shape, s, canonical_for(problem, shape));
  const auto size = static_cast<std::size_t>(st.c.B * st.c.n);
  DeviceArray<std::int64_t> dOut(size, s);
  if (st.c.cost == CostKind::matrix) {
    kernels::dense_sample(st.dC.get(), st.dLogB.get(), st.dG.get(), st.dEps.get(), seed, dOut.get(),
                          st.c.B, st.c.n, st.c.m, s);
  } else {
    kernels::online_sample(st.f_pass(), seed, dOut.get(), s);
  }
  std::vector<std::int64_t> out(size);
  dOut.download(out.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

}  // namespace cuda_backend

// ------------------------------------------------------- stream-ordered API --

struct GpuContext::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  std::size_t bytes = 0;

  void grow(std::size_t need) {
    if (need <= bytes) return;
    OTGPU_CUDA_CHECK(cudaSetDevice(device));
    // Growing is the one allocation of the API; queued work may still read the old
    // buffer, so wait for it before freeing.
    if (workspace != nullptr) {
      OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream));
      OTGPU_CUDA_CHECK(cudaFree(workspace));
      workspace = nullptr;
      bytes = 0;
    }
    const cudaError_t st = cudaMalloc(&workspace, need);
    if (st == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      std::size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw OutOfMemory(fmt::format(
          "GpuContext: workspace of {} bytes does not fit on device {} ({} bytes free of {})", need,
          device, free_b, total_b));
    }
    OTGPU_CUDA_CHECK(st);
    bytes = need;
  }
};

GpuContext::GpuContext(int device, void* stream) : impl_(std::make_unique<Impl>()) {
  cuda_backend::require_device(device);
  impl_->device = device;
  impl_->stream = static_cast<cudaStream_t>(stream);
}

GpuContext::~GpuContext() {
  if (impl_ && impl_->workspace != nullptr) {
    cudaSetDevice(impl_->device);
    cudaStreamSynchronize(impl_->stream);
    cudaFree(impl_->workspace);
  }
}

int GpuContext::device() const noexcept { return impl_->device; }
void* GpuContext::stream() const noexcept { return impl_->stream; }
void GpuContext::set_stream(void* stream) noexcept {
  impl_->stream = static_cast<cudaStream_t>(stream);
}
std::size_t GpuContext::workspace_bytes() const noexcept { return impl_->bytes; }
void GpuContext::reserve(std::size_t bytes) { impl_->grow(bytes); }
void GpuContext::synchronize() const {
  OTGPU_CUDA_CHECK(cudaSetDevice(impl_->device));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

namespace {

using cuda_backend::DerivedKind;

/// Shape of a stream-ordered call: validated on the host, device views only.
detail::SinkhornShape device_shape(const SinkhornProblem& problem, const SinkhornOptions& o,
                                   const char* what) {
  const auto shape = detail::validate_sinkhorn(problem, o);
  if (shape.space != MemorySpace::device) {
    throw InvalidArgument(fmt::format(
        "{}: every tensor view must be in device memory (use the host-level API for host data)",
        what));
  }
  return shape;
}

void derived_async(GpuContext& ctx, DerivedKind what, const SinkhornProblem& problem,
                   const SinkhornOptions& o, const float* f, const float* g, std::uint64_t seed,
                   void* out, const char* name) {
  if (g == nullptr || out == nullptr || (what == DerivedKind::gradient && f == nullptr)) {
    throw InvalidArgument(
        fmt::format("{}: the potentials ({}) and the output must be device buffers, got null", name,
                    what == DerivedKind::gradient ? "f and g" : "g"));
  }
  const auto shape = device_shape(problem, o, name);
  if (what != DerivedKind::sample && problem.cost_kind == CostKind::matrix) {
    throw InvalidArgument(
        fmt::format("{}: needs point clouds x and y; the problem has cost_kind matrix", name));
  }
  auto& im = ctx.impl();
  OTGPU_CUDA_CHECK(cudaSetDevice(im.device));
  const auto pl = cuda_backend::plan_device(problem, o, shape, im.device, false);
  im.grow(cuda_backend::carved_bytes(pl, false, true));
  const cudaStream_t s = im.stream;
  cuda_backend::Carver cv(im.workspace);
  cuda_backend::Carved c = cuda_backend::carve(cv, pl, false, true);
  // The derived passes only read the potentials.
  c.d.F = const_cast<float*>(f);
  c.d.G = const_cast<float*>(g);
  cuda_backend::stage_inputs(problem, pl, c.d, s);
  cuda_backend::stage_center(pl, c, o.eps_relative, s);
  // Row 0 of the table: the target eps (no scaling schedule for derived outputs).
  kernels::make_eps_tables(o.eps_relative ? c.mean : nullptr, o.eps, 0.0, 1.0, o.rho_a, o.rho_b, 0,
                           const_cast<float*>(c.d.eps_tab), const_cast<float*>(c.d.lam_a_tab),
                           const_cast<float*>(c.d.lam_b_tab), nullptr, nullptr, shape.batch, s);
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  if (what == DerivedKind::gradient && balanced) {
    kernels::mass_ratio(c.d.a, c.d.b, shape.batch, shape.n, shape.m,
                        std::numeric_limits<double>::infinity(), c.ratio, s);
  }
  cuda_backend::enqueue_derived(what, pl, c, balanced ? c.ratio : nullptr, seed, out, s);
}

/// Workspace of a solve and of its derived outputs: sinkhorn_async grows to it, so a
/// training step's solve + map + gradient allocate once, on the first step.
std::size_t async_bytes(const SinkhornProblem& problem, const SinkhornOptions& o,
                        const detail::SinkhornShape& shape, int device) {
  const auto solve = cuda_backend::plan_device(problem, o, shape, device, true);
  const auto derived = cuda_backend::plan_device(problem, o, shape, device, false);
  return std::max(cuda_backend::carved_bytes(solve, false, false),
                  cuda_backend::carved_bytes(derived, false, true));
}

}  // namespace

std::size_t sinkhorn_async_workspace_bytes(const SinkhornProblem& problem,
                                           const SinkhornOptions& options) {
  const auto shape = device_shape(problem, options, "sinkhorn_async_workspace_bytes");
  cuda_backend::require_device(options.device);
  return async_bytes(problem, options, shape, options.device);
}

void sinkhorn_async(GpuContext& ctx, const SinkhornProblem& problem, const SinkhornOptions& o,
                    const DeviceSinkhornOutputs& out) {
  if (out.f == nullptr || out.g == nullptr) {
    throw InvalidArgument("sinkhorn_async: outputs.f and outputs.g must be device buffers");
  }
  if (o.backend == Backend::cpu) {
    throw InvalidArgument("sinkhorn_async: runs on the GPU; options.backend cpu is not allowed");
  }
  const auto shape = device_shape(problem, o, "sinkhorn_async");
  auto& im = ctx.impl();
  OTGPU_CUDA_CHECK(cudaSetDevice(im.device));
  const auto pl = cuda_backend::plan_device(problem, o, shape, im.device, true);
  im.grow(async_bytes(problem, o, shape, im.device));
  const cudaStream_t s = im.stream;
  cuda_backend::Carver cv(im.workspace);
  cuda_backend::Carved c = cuda_backend::carve(cv, pl, false, false);
  c.d.F = out.f;
  c.d.G = out.g;
  cuda_backend::stage_inputs(problem, pl, c.d, s);
  cuda_backend::stage_center(pl, c, o.eps_relative, s);
  cuda_backend::stage_schedule(o, pl, c, s);
  if (!out.warm_start) {
    OTGPU_CUDA_CHECK(cudaMemsetAsync(
        out.f, 0, static_cast<std::size_t>(shape.batch * shape.n) * sizeof(float), s));
    OTGPU_CUDA_CHECK(cudaMemsetAsync(
        out.g, 0, static_cast<std::size_t>(shape.batch * shape.m) * sizeof(float), s));
  }
  cuda_backend::enqueue_iterations(c.d, o, im.device, s, nullptr);
  cuda_backend::enqueue_finalize(c.d, o, s);

  const auto B = shape.batch;
  kernels::copy_column(c.d.out4, 0, out.ot_eps, B, s);
  kernels::copy_column(c.d.out4, 1, out.transport_cost, B, s);
  kernels::copy_column(c.d.out4, 2, out.marginal_error, B, s);
  kernels::copy_column(c.d.out4, 3, out.residual, B, s);
  if (out.iterations != nullptr) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(out.iterations, c.d.iters,
                                     static_cast<std::size_t>(B) * sizeof(int),
                                     cudaMemcpyDeviceToDevice, s));
  }
}

void barycentric_map_async(GpuContext& ctx, const SinkhornProblem& problem,
                           const SinkhornOptions& options, const float* g, float* map) {
  derived_async(ctx, DerivedKind::map, problem, options, nullptr, g, 0, map,
                "barycentric_map_async");
}

void gradient_x_async(GpuContext& ctx, const SinkhornProblem& problem,
                      const SinkhornOptions& options, const float* f, const float* g, float* grad) {
  derived_async(ctx, DerivedKind::gradient, problem, options, f, g, 0, grad, "gradient_x_async");
}

void sample_partners_async(GpuContext& ctx, const SinkhornProblem& problem,
                           const SinkhornOptions& options, const float* g, std::uint64_t seed,
                           std::int64_t* partners) {
  derived_async(ctx, DerivedKind::sample, problem, options, nullptr, g, seed, partners,
                "sample_partners_async");
}

}  // namespace otgpu
