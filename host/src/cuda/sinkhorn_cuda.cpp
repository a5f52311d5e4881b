// The CUDA Sinkhorn backend (implements otgpu_host/cuda_backend.h).
//
// Flow of one solve: inputs are brought to the host (device views are mirrored
// once and validated like host views), laid out in the canonical fp32 form
// (points padded to dp coordinates and centered on the mean of y, costs being
// translation invariant), uploaded with stream-ordered allocations, and iterated
// entirely on the device. The planner picks one of three kernels:
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
#include <vector>

#include "otgpu/error.h"
#include "otgpu_host/cuda_backend.h"
#include "otgpu_host/cuda_check.h"
#include "otgpu_kernels/sinkhorn_aux.h"
#include "otgpu_kernels/sinkhorn_dense.h"
#include "otgpu_kernels/sinkhorn_online.h"
#include "otgpu_kernels/sinkhorn_small.h"
#include "validate.h"

namespace otgpu {

namespace detail {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw CudaError(fmt::format("{} failed: {} ({}) at {}:{}", call, cudaGetErrorString(status),
                              static_cast<int>(status), file, line),
                  static_cast<int>(status));
}

}  // namespace detail

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
    if (count_ > 0) OTGPU_CUDA_CHECK(cudaMemcpyAsync(p_, host, bytes(), cudaMemcpyHostToDevice, s_));
  }
  void download(T* host) const {
    if (count_ > 0) OTGPU_CUDA_CHECK(cudaMemcpyAsync(host, p_, bytes(), cudaMemcpyDeviceToHost, s_));
  }

 private:
  cudaStream_t s_;
  std::size_t count_;
  T* p_ = nullptr;
};

/// Pinned host memory for the lagged convergence reads.
class PinnedInts {
 public:
  explicit PinnedInts(std::size_t n) { OTGPU_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&p_), n * sizeof(int))); }
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

/// Host copy of a device view's memory span, so the host validation and staging
/// code can read it. Host views are passed through untouched.
struct MirroredView {
  std::vector<unsigned char> storage;
  TensorView view;
};

MirroredView mirror(const TensorView& v) {
  MirroredView out;
  out.view = v;
  if (!v.present() || v.space == MemorySpace::host) return out;
  std::int64_t span = 1;
  for (int k = 0; k < v.rank; ++k) span += (v.dim(k) - 1) * v.stride(k);
  const std::size_t bytes = static_cast<std::size_t>(span) * dtype_size(v.dtype);
  out.storage.resize(bytes);
  OTGPU_CUDA_CHECK(cudaMemcpy(out.storage.data(), v.data, bytes, cudaMemcpyDeviceToHost));
  out.view.data = out.storage.data();
  out.view.space = MemorySpace::host;
  return out;
}

struct HostProblem {
  MirroredView x, y, cost, a, b;
  SinkhornProblem problem;  ///< host views (mirrors where the input was on the device)
};

HostProblem mirror_problem(const SinkhornProblem& p, const SinkhornOptions& o,
                           const detail::SinkhornShape& shape) {
  HostProblem h;
  h.x = mirror(p.x);
  h.y = mirror(p.y);
  h.cost = mirror(p.cost);
  h.a = mirror(p.a);
  h.b = mirror(p.b);
  h.problem = p;
  h.problem.x = h.x.view;
  h.problem.y = h.y.view;
  h.problem.cost = h.cost.view;
  h.problem.a = h.a.view;
  h.problem.b = h.b.view;
  if (shape.space == MemorySpace::device) {
    // Device data skipped the host checks (finiteness, weights): run them now.
    detail::validate_sinkhorn(h.problem, o);
  }
  return h;
}

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
  std::vector<float> X, Y, C;           // points [B,n,dp], [B,m,dp] (centered) or costs
  std::vector<double> center;           // [B, dp] subtracted from x and y
  std::vector<double> a, b;             // weights [B,n], [B,m] (b rescaled when balanced)
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
      out[k] = w[k] > 0 ? static_cast<float>(std::log(w[k])) : -std::numeric_limits<float>::infinity();
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
          const double v = c.X[(b * static_cast<std::size_t>(c.n) + static_cast<std::size_t>(i)) * dp + k];
          sx += v;
          sxx += v * v;
        }
        for (std::int64_t j = 0; j < c.m; ++j) {
          const double v = c.Y[(b * static_cast<std::size_t>(c.m) + static_cast<std::size_t>(j)) * dp + k];
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
                         const float* dLogA, const float* dLogB, const float* dF,
                         const float* dG, const float* eps, const int* active) {
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

SinkhornResult sinkhorn(const SinkhornProblem& problem, const SinkhornOptions& o,
                        const detail::SinkhornShape& shape) {
  require_device(o.device);
  set_device(o.device);
  const HostProblem hp = mirror_problem(problem, o, shape);
  const bool balanced = std::isinf(o.rho_a) && std::isinf(o.rho_b);
  const Canonical c = canonicalize(hp.problem, shape, balanced);
  const auto B = static_cast<std::size_t>(c.B);
  const auto n = static_cast<std::size_t>(c.n);
  const auto m = static_cast<std::size_t>(c.m);
  Stream stream;
  const cudaStream_t s = stream.get();

  const bool points = c.cost != CostKind::matrix;
  DeviceArray<float> dX(points ? c.X.size() : 0, s), dY(points ? c.Y.size() : 0, s);
  DeviceArray<float> dC(points ? 0 : c.C.size(), s);
  dX.upload(c.X.data());
  dY.upload(c.Y.data());
  dC.upload(c.C.data());

  // eps per problem, and the schedule eps_t = max(eps, eps_init decay^t) as a table
  // of K + 1 rows (row K: the target; every later iteration uses it).
  std::vector<double> eps(B, o.eps), eps0(B, o.eps_init);
  if (o.eps_relative) {
    const auto mean = mean_costs(c, dX.get(), dY.get(), s);
    for (std::size_t b = 0; b < B; ++b) {
      eps[b] = o.eps * mean[b];
      eps0[b] = o.eps_init * mean[b];
    }
  }
  const bool scaling = o.eps_init > 0;
  int K = 0;
  if (scaling) {
    while (K < o.max_iter) {
      bool all_target = true;
      for (std::size_t b = 0; b < B; ++b)
        all_target = all_target && eps0[b] * std::pow(o.eps_decay, K) <= eps[b];
      if (all_target) break;
      ++K;
    }
  }
  const std::size_t rows = static_cast<std::size_t>(K) + 1;
  std::vector<float> eps_tab(rows * B), lam_a_tab(rows * B), lam_b_tab(rows * B);
  for (std::size_t t = 0; t < rows; ++t) {
    for (std::size_t b = 0; b < B; ++b) {
      const double e = scaling ? std::max(eps[b], eps0[b] * std::pow(o.eps_decay, static_cast<double>(t)))
                               : eps[b];
      eps_tab[t * B + b] = static_cast<float>(e);
      lam_a_tab[t * B + b] = static_cast<float>(std::isinf(o.rho_a) ? 1.0 : o.rho_a / (o.rho_a + e));
      lam_b_tab[t * B + b] = static_cast<float>(std::isinf(o.rho_b) ? 1.0 : o.rho_b / (o.rho_b + e));
    }
  }
  DeviceArray<float> dEps(eps_tab.size(), s), dLamA(lam_a_tab.size(), s), dLamB(lam_b_tab.size(), s);
  dEps.upload(eps_tab.data());
  dLamA.upload(lam_a_tab.data());
  dLamB.upload(lam_b_tab.data());
  const float* eps_target = dEps.get() + static_cast<std::size_t>(K) * B;
  const float* lam_a_target = dLamA.get() + static_cast<std::size_t>(K) * B;

  DeviceArray<float> dLogA(B * n, s), dLogB(B * m, s);
  DeviceArray<double> dA(B * n, s), dB(B * m, s);
  dLogA.upload(c.logA.data());
  dLogB.upload(c.logB.data());
  dA.upload(c.a.data());
  dB.upload(c.b.data());

  DeviceArray<float> dF(B * n, s), dG(B * m, s), dFt(B * n, s);
  {
    std::vector<float> f0(B * n, 0.f), g0(B * m, 0.f);
    for (std::size_t k = 0; k < o.f_init.size(); ++k) f0[k] = static_cast<float>(o.f_init[k]);
    for (std::size_t k = 0; k < o.g_init.size(); ++k) g0[k] = static_cast<float>(o.g_init[k]);
    dF.upload(f0.data());
    dG.upload(g0.data());
  }
  DeviceArray<int> dActive(B, s), dIters(B, s), dCount(1, s);
  DeviceArray<double> dRes(B, s);
  {
    std::vector<int> ones(B, 1), iters(B, o.max_iter);
    dActive.upload(ones.data());
    dIters.upload(iters.data());
  }

  const bool use_small = points && c.n <= 512 && c.m <= 512 && c.dp <= 32 &&
                         kernels::small_kernel_fits(c.cost, c.n, c.m, c.dp, o.device);
  if (use_small) {
    std::vector<float> e_target(B), e_init(B);
    for (std::size_t b = 0; b < B; ++b) {
      e_target[b] = static_cast<float>(eps[b]);
      e_init[b] = static_cast<float>(scaling ? eps0[b] : 0.0);
    }
    DeviceArray<float> dE(B, s), dE0(B, s), dResF(B, s);
    DeviceArray<int> dConv(B, s);
    dE.upload(e_target.data());
    dE0.upload(e_init.data());
    kernels::SmallSinkhornArgs args;
    args.cost = c.cost;
    args.X = dX.get();
    args.Y = dY.get();
    args.logA = dLogA.get();
    args.logB = dLogB.get();
    args.F = dF.get();
    args.G = dG.get();
    args.eps = dE.get();
    args.eps_init = scaling ? dE0.get() : nullptr;
    args.eps_decay = o.eps_decay;
    args.rho_a = o.rho_a;
    args.rho_b = o.rho_b;
    args.tol = o.tol;
    args.max_iter = o.max_iter;
    args.check_every = o.check_every;
    args.t_begin = 0;
    args.t_end = o.max_iter;
    args.active = dActive.get();
    args.iterations = dIters.get();
    args.residual = dResF.get();
    args.converged = dConv.get();
    args.B = c.B;
    args.n = c.n;
    args.m = c.m;
    args.d = c.dp;
    kernels::small_sinkhorn(args, s);
  } else {
    std::size_t ws_bytes = points ? 0 : kernels::dense_col_workspace_bytes(c.B, c.n, c.m);
    DeviceArray<unsigned char> dWs(ws_bytes, s);
    PinnedInts pinned(2);
    Event ev[2];
    int checks = 0;
    for (int t = 0; t < o.max_iter; ++t) {
      const std::size_t row = static_cast<std::size_t>(std::min(t, K));
      const float* e = dEps.get() + row * B;
      const float* la = dLamA.get() + row * B;
      const float* lb = dLamB.get() + row * B;
      if (points) {
        kernels::online_half_step(pass(c, true, dX.get(), dY.get(), dLogA.get(), dLogB.get(),
                                       dF.get(), dG.get(), e, dActive.get()),
                                  la, dF.get(), s);
        kernels::online_half_step(pass(c, false, dX.get(), dY.get(), dLogA.get(), dLogB.get(),
                                       dF.get(), dG.get(), e, dActive.get()),
                                  lb, dG.get(), s);
      } else {
        kernels::dense_row_update(dC.get(), dLogB.get(), dG.get(), e, la, dActive.get(), dF.get(),
                                  c.B, c.n, c.m, s);
        kernels::dense_col_update(dC.get(), dLogA.get(), dF.get(), e, lb, dActive.get(), dG.get(),
                                  dWs.get(), ws_bytes, c.B, c.n, c.m, s);
      }
      const bool check = o.check_every > 0 && (t + 1) % o.check_every == 0 && t >= K;
      if (!check) continue;
      if (points) {
        kernels::online_half_step(pass(c, true, dX.get(), dY.get(), dLogA.get(), dLogB.get(),
                                       dF.get(), dG.get(), eps_target, dActive.get()),
                                  nullptr, dFt.get(), s);
      } else {
        kernels::dense_row_update(dC.get(), dLogB.get(), dG.get(), eps_target, nullptr,
                                  dActive.get(), dFt.get(), c.B, c.n, c.m, s);
      }
      OTGPU_CUDA_CHECK(cudaMemsetAsync(dCount.get(), 0, sizeof(int), s));
      kernels::sinkhorn_check_residual(dA.get(), dF.get(), dFt.get(), eps_target, lam_a_target,
                                       o.tol, t + 1, dActive.get(), dIters.get(), dRes.get(),
                                       dCount.get(), c.B, c.n, s);
      const int slot = checks % 2;
      OTGPU_CUDA_CHECK(cudaMemcpyAsync(pinned.get() + slot, dCount.get(), sizeof(int),
                                       cudaMemcpyDeviceToHost, s));
      OTGPU_CUDA_CHECK(cudaEventRecord(ev[slot].get(), s));
      // Read the previous check's count: one period late, so the GPU never idles.
      if (checks > 0) {
        const int prev = 1 - slot;
        OTGPU_CUDA_CHECK(cudaEventSynchronize(ev[prev].get()));
        if (pinned.get()[prev] == 0) break;
      }
      ++checks;
    }
  }

  // Final report at the target eps for every problem (active flags ignored).
  DeviceArray<float> dCmean(points ? B * n : 0, s), dRowMass(points ? 0 : B * n, s),
      dRowCost(points ? 0 : B * n, s);
  if (points) {
    const auto fp = pass(c, true, dX.get(), dY.get(), dLogA.get(), dLogB.get(), dF.get(), dG.get(),
                         eps_target, nullptr);
    kernels::online_half_step(fp, nullptr, dFt.get(), s);
    DeviceArray<float> dLse(B * n, s);
    kernels::online_row_stats(fp, dLse.get(), dCmean.get(), s);
  } else {
    kernels::dense_row_update(dC.get(), dLogB.get(), dG.get(), eps_target, nullptr, nullptr,
                              dFt.get(), c.B, c.n, c.m, s);
    kernels::dense_row_stats(dC.get(), dLogA.get(), dLogB.get(), dF.get(), dG.get(), eps_target,
                             dRowMass.get(), dRowCost.get(), c.B, c.n, c.m, s);
  }
  DeviceArray<double> dOut(4 * B, s);
  kernels::sinkhorn_finalize(dA.get(), dB.get(), dF.get(), dG.get(), dFt.get(),
                             points ? dCmean.get() : nullptr, dRowMass.get(), dRowCost.get(),
                             eps_target, o.rho_a, o.rho_b, dOut.get(), c.B, c.n, c.m, s);
  std::vector<float> f(B * n), g(B * m);
  std::vector<double> out4(4 * B);
  std::vector<int> iters(B);
  dF.download(f.data());
  dG.download(g.data());
  dOut.download(out4.data());
  dIters.download(iters.data());
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(s));

  SinkhornResult r;
  r.backend = Backend::cuda;
  r.device = o.device;
  r.batch = c.B;
  r.n = c.n;
  r.m = c.m;
  r.d = c.d;
  r.f.assign(f.begin(), f.end());
  r.g.assign(g.begin(), g.end());
  r.problems.resize(B);
  for (std::size_t b = 0; b < B; ++b) {
    auto& rep = r.problems[b];
    rep.eps = eps[b];
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
        dX(c.X.size(), s), dY(c.Y.size(), s), dC(c.C.size(), s),
        dLogA(c.logA.size(), s), dLogB(c.logB.size(), s),
        dF(result.f.size(), s), dG(result.g.size(), s), dEps(static_cast<std::size_t>(c.B), s) {
    (void)problem;
    (void)shape;
    for (std::size_t b = 0; b < eps.size(); ++b) eps[b] = static_cast<float>(result.problems[b].eps);
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

Canonical canonical_for(const SinkhornProblem& problem, const detail::SinkhornShape& shape,
                        std::vector<MirroredView>& keep, SinkhornProblem& host_problem) {
  keep.clear();
  host_problem = problem;
  for (TensorView* v : {&host_problem.x, &host_problem.y, &host_problem.cost, &host_problem.a,
                        &host_problem.b}) {
    keep.push_back(mirror(*v));
    *v = keep.back().view;
  }
  // Balanced or not, b's scale does not change the row-normalized weights the
  // derived outputs use; rescale only where the masses agree (balanced solves).
  return canonicalize(host_problem, shape, false);
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
      r[b * n + i] = ai > 0 ? ai * scale * std::exp((result.f[b * n + i] - ft[b * n + i]) / e) : 0.0;
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
  Stream stream;
  std::vector<MirroredView> keep;
  SinkhornProblem hp;
  DerivedSetup st(problem, result, shape, stream.get(), canonical_for(problem, shape, keep, hp));
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
  Stream stream;
  std::vector<MirroredView> keep;
  SinkhornProblem hp;
  DerivedSetup st(problem, result, shape, stream.get(), canonical_for(problem, shape, keep, hp));
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
        const std::size_t pk = static_cast<std::size_t>(b * n + i) * dp + static_cast<std::size_t>(k);
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
  Stream stream;
  const cudaStream_t s = stream.get();
  std::vector<MirroredView> keep;
  SinkhornProblem hp;
  DerivedSetup st(problem, result, shape, s, canonical_for(problem, shape, keep, hp));
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
}  // namespace otgpu
