// The CUDA coupling driver (otgpu_host/coupling_cuda.h). One stream-ordered sequence
// per call, on the context's stream:
//   1. stage x0 / x1 as contiguous fp32 (host views through the pinned staging, any
//      dtype and strides through the centred gather), both translated by the mean of
//      x1 computed in double before the one rounding (otgpu_kernels/centered_gather.h):
//      the costs (sqeuclidean, euclidean) are translation invariant, and the norm form
//      below cancels catastrophically on clouds far from the origin unless centred
//      (at offset 1e4, |x|^2 ~ 1e8 d against differences of order 1);
//   2. the cost matrix C [K, n, m] by one batched cuBLAS SGEMM (<x_i, y_j>) and the
//      norms: |x|^2 + |y|^2 - 2 <x, y> (fp32, clamped at 0);
//   3. sinkhorn_async on C (the dense kernel: no limit on d);
//   4. the pairs from C and the potentials (otgpu_kernels/coupling.h), or
//      sample_partners_async for one partner per row.
// Buffers: the context's workspace, grown once to S + R, where S is what
// sinkhorn_async requests for this problem (it then reuses [0, S) and never grows)
// and R, past S, holds this driver's arrays; nothing else is allocated after the first
// call of a size.
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "gpu_context_impl.h"
#include "otgpu/detail/coupling_math.h"
#include "otgpu/error.h"
#include "otgpu_host/coupling_cuda.h"
#include "otgpu_kernels/centered_gather.h"
#include "otgpu_kernels/coupling.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/cuda_libs.h"
#include "validate.h"
#include "view_staging.h"

namespace otgpu::coupling_cuda {

namespace {

using cuda_backend::Carve;

/// The per-call arrays past the Sinkhorn workspace.
struct Buffers {
  float* x0 = nullptr;       ///< [K, n, d] staged fp32, centred
  float* x1 = nullptr;       ///< [K, m, d]
  double* center = nullptr;  ///< [K, d] the mean of x1 per problem
  float* C = nullptr;        ///< [K, n, m]
  float* nx = nullptr;       ///< [K, n]
  float* ny = nullptr;       ///< [K, m]
  float* f = nullptr;        ///< [K, n]
  float* g = nullptr;        ///< [K, m]
  double* eps = nullptr;
  double* ot_eps = nullptr;
  double* residual = nullptr;
  int* iterations = nullptr;
  double* pair_cost = nullptr;
  float* logr = nullptr;  ///< [K, n]
  double* cdf = nullptr;  ///< [K, n]
  kernels::TopKScratch topk;
  std::int64_t* i = nullptr;  ///< [K, P] (synchronous path)
  std::int64_t* j = nullptr;
  unsigned char* raw0 = nullptr;  ///< raw bytes of host views (synchronous path)
  unsigned char* raw1 = nullptr;
};

Buffers carve(Carve& cv, const detail::CouplingShape& s, const TensorView& x0,
              const TensorView& x1) {
  const std::int64_t K = s.batch, n = s.bs0, m = s.bs1, d = s.d, P = s.pairs;
  const std::int64_t tiles = kernels::topk_tiles(n * m);
  Buffers b;
  b.x0 = cv.take<float>(K * n * d);
  b.x1 = cv.take<float>(K * m * d);
  b.center = cv.take<double>(K * d);
  b.C = cv.take<float>(K * n * m);
  b.nx = cv.take<float>(K * n);
  b.ny = cv.take<float>(K * m);
  b.f = cv.take<float>(K * n);
  b.g = cv.take<float>(K * m);
  b.eps = cv.take<double>(K);
  b.ot_eps = cv.take<double>(K);
  b.residual = cv.take<double>(K);
  b.iterations = cv.take<int>(K);
  b.pair_cost = cv.take<double>(K);
  b.logr = cv.take<float>(K * n);
  b.cdf = cv.take<double>(K * n);
  b.topk.hist = cv.take<std::uint32_t>(K * 256);
  b.topk.prefix = cv.take<std::uint32_t>(K);
  b.topk.remaining = cv.take<std::uint32_t>(K);
  b.topk.tile_gt = cv.take<std::uint32_t>(K * tiles);
  b.topk.tile_eq = cv.take<std::uint32_t>(K * tiles);
  b.topk.tile_eq_off = cv.take<std::int64_t>(K * tiles);
  b.topk.tile_sel_off = cv.take<std::int64_t>(K * tiles);
  b.i = cv.take<std::int64_t>(K * P);
  b.j = cv.take<std::int64_t>(K * P);
  b.raw0 = cv.take<unsigned char>(x0.space == MemorySpace::host
                                      ? static_cast<std::int64_t>(cuda_backend::view_span_bytes(x0))
                                      : 0);
  b.raw1 = cv.take<unsigned char>(x1.space == MemorySpace::host
                                      ? static_cast<std::int64_t>(cuda_backend::view_span_bytes(x1))
                                      : 0);
  return b;
}

/// The cost-matrix problem sinkhorn_async solves (C in device memory).
SinkhornProblem cost_problem(const float* C, const detail::CouplingShape& s) {
  SinkhornProblem p;
  p.cost = TensorView::device(C, {s.batch, s.bs0, s.bs1});
  p.cost_kind = CostKind::matrix;
  return p;
}

SinkhornOptions cuda_options(const CouplingOptions& o) {
  SinkhornOptions so = detail::coupling_sinkhorn_options(o);
  so.backend = Backend::cuda;
  return so;
}

/// The top-k counters are 32-bit: a plan of 2^32 entries or more is refused there.
void check_limits(const detail::CouplingShape& s, const CouplingOptions& o) {
  const std::int64_t entries = s.bs0 * s.bs1;
  if (o.pairs == CouplingPairs::joint && !o.replacement && entries >= (std::int64_t{1} << 32)) {
    throw InvalidArgument(fmt::format(
        "couple: replacement: draws without replacement on the GPU count the bs0 * bs1 = {} "
        "entries of a plan in 32 bits (fewer than 2^32 needed); draw with replacement",
        entries));
  }
}

/// Bytes of the Sinkhorn workspace (sizes only: C's address does not matter), rounded
/// to the carve alignment.
std::size_t sinkhorn_bytes(const detail::CouplingShape& s, const CouplingOptions& o) {
  // A stand-in device address: only the shape is read to size the workspace.
  static const float kStandIn[1] = {0.f};
  const std::size_t S = sinkhorn_async_workspace_bytes(cost_problem(kStandIn, s), cuda_options(o));
  return (S + 255) & ~std::size_t{255};
}

std::size_t total_bytes(const detail::CouplingShape& s, const CouplingOptions& o,
                        const TensorView& x0, const TensorView& x1) {
  Carve cv;
  cv.offset = sinkhorn_bytes(s, o);
  (void)carve(cv, s, x0, x1);
  return cv.offset;
}

struct Outputs {
  std::int64_t* i = nullptr;
  std::int64_t* j = nullptr;
  bool reports = false;
};

/// Queues steps 1-4 on ctx's stream. x0/x1 device views, or host views whose raw
/// bytes the caller uploads to b.raw0 / b.raw1 first.
void enqueue(GpuContext& ctx, const TensorView& x0, const TensorView& x1, const CouplingOptions& o,
             const detail::CouplingShape& s, const Buffers& b, const Outputs& out) {
  runtime::Context& im = ctx.impl();
  const cudaStream_t st = im.stream();
  const std::int64_t K = s.batch, n = s.bs0, m = s.bs1, d = s.d, P = s.pairs;
  kernels::stage_centered_pair(
      cuda_backend::strided3(x0, x0.space == MemorySpace::host ? b.raw0 : x0.data),
      cuda_backend::strided3(x1, x1.space == MemorySpace::host ? b.raw1 : x1.data), K,
      static_cast<int>(d), b.center, b.x0, b.x1, st);
  kernels::row_sqnorms(b.x0, K * n, d, b.nx, st);
  kernels::row_sqnorms(b.x1, K * m, d, b.ny, st);
  // Row-major C_k = X0_k X1_k^T is the column-major (X1_k X0_k^T): m x n, ld m.
  cublasHandle_t blas = im.blas();
  OTGPU_CUDA_CHECK(kernels::cublas().set_math_mode(blas, CUBLAS_DEFAULT_MATH));  // fp32, no TF32
  const float one = 1.f, zero = 0.f;
  OTGPU_CUDA_CHECK(kernels::cublas().sgemm_strided_batched(
      blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n), static_cast<int>(d),
      &one, b.x1, static_cast<int>(d), m * d, b.x0, static_cast<int>(d), n * d, &zero, b.C,
      static_cast<int>(m), n * m, static_cast<int>(K)));
  kernels::sqdist_from_gram(b.C, b.nx, b.ny, K, n, m, o.cost_kind == CostKind::euclidean, st);
  kernels::coupling_eps(b.C, K, n * m, o.eps, o.eps_relative, b.eps, st);

  const SinkhornProblem cp = cost_problem(b.C, s);
  const SinkhornOptions so = cuda_options(o);
  DeviceSinkhornOutputs so_out;
  so_out.f = b.f;
  so_out.g = b.g;
  so_out.ot_eps = b.ot_eps;
  so_out.residual = b.residual;
  so_out.iterations = b.iterations;
  sinkhorn_async(ctx, cp, so, so_out);

  if (o.pairs == CouplingPairs::per_row) {
    sample_partners_async(ctx, cp, so, b.g, o.seed, out.j);
    kernels::iota_rows(out.i, K, n, st);
  } else if (o.replacement) {
    kernels::row_log_mass(b.C, b.f, b.g, b.eps, K, n, m, b.logr, st);
    kernels::draw_rows(b.logr, K, n, P, o.seed, b.cdf, out.i, st);
    kernels::draw_columns(b.C, b.g, b.eps, out.i, K, n, m, P,
                          detail::stream_seed(o.seed, detail::kStreamJointColumn), out.j, st);
  } else {
    kernels::topk_pairs(b.C, b.f, b.g, b.eps, K, n, m, P,
                        detail::stream_seed(o.seed, detail::kStreamTopK), b.topk, out.i, out.j, st);
  }
  if (out.reports) kernels::pair_cost_mean(b.C, out.i, out.j, K, n, m, P, b.pair_cost, st);
}

/// The calling thread's context per device for the synchronous calls without one
/// (legacy default stream), created on first use.
GpuContext& thread_gpu_context(int device) {
  thread_local std::map<int, std::unique_ptr<GpuContext>> contexts;
  auto& c = contexts[device];
  if (!c) c = std::make_unique<GpuContext>(device, nullptr);
  return *c;
}

}  // namespace

std::size_t entropic_workspace_bytes(const TensorView& x0, const TensorView& x1,
                                     const CouplingOptions& options,
                                     const detail::CouplingShape& shape) {
  return total_bytes(shape, options, x0, x1);
}

void couple_entropic_async(GpuContext& ctx, const TensorView& x0, const TensorView& x1,
                           const CouplingOptions& options, const detail::CouplingShape& shape,
                           std::int64_t* i_out, std::int64_t* j_out) {
  check_limits(shape, options);
  cuda_backend::DeviceRestore restore;
  runtime::Context& im = ctx.impl();
  im.activate();
  const std::size_t S = sinkhorn_bytes(shape, options);
  auto* base = static_cast<char*>(im.workspace(total_bytes(shape, options, x0, x1)));
  Carve cv;
  cv.offset = S;
  cv.base = base;
  const Buffers b = carve(cv, shape, x0, x1);
  enqueue(ctx, x0, x1, options, shape, b, Outputs{i_out, j_out, false});
}

CouplingResult couple_entropic(const TensorView& x0, const TensorView& x1,
                               const CouplingOptions& options, const detail::CouplingShape& shape,
                               GpuContext* ctx) {
  check_limits(shape, options);
  cuda_backend::DeviceRestore restore;
  GpuContext& gc = ctx != nullptr ? *ctx : thread_gpu_context(options.device);
  runtime::Context& im = gc.impl();
  im.activate();
  const std::int64_t K = shape.batch, P = shape.pairs;
  const std::size_t S = sinkhorn_bytes(shape, options);
  auto* base = static_cast<char*>(im.workspace(total_bytes(shape, options, x0, x1)));
  Carve cv;
  cv.offset = S;
  cv.base = base;
  const Buffers b = carve(cv, shape, x0, x1);
  const cudaStream_t st = im.stream();
  // Host views: their raw bytes, through the pinned staging, as they are.
  const bool host0 = x0.space == MemorySpace::host, host1 = x1.space == MemorySpace::host;
  if (host0 || host1) {
    cuda_backend::RawLayout layout;
    layout.add(host0 ? cuda_backend::view_span_bytes(x0) : 0);
    layout.add(host1 ? cuda_backend::view_span_bytes(x1) : 0);
    unsigned char* pin = cuda_backend::stage_raw(im, {&x0, &x1}, layout);
    if (host0) {
      OTGPU_CUDA_CHECK(cudaMemcpyAsync(b.raw0, pin + layout.offset[0],
                                       cuda_backend::view_span_bytes(x0), cudaMemcpyHostToDevice,
                                       st));
    }
    if (host1) {
      OTGPU_CUDA_CHECK(cudaMemcpyAsync(b.raw1, pin + layout.offset[1],
                                       cuda_backend::view_span_bytes(x1), cudaMemcpyHostToDevice,
                                       st));
    }
    im.staging_done();
  }
  enqueue(gc, x0, x1, options, shape, b, Outputs{b.i, b.j, true});

  // Read back the pairs and the per-problem reports in one pinned buffer.
  const auto KP = static_cast<std::size_t>(K * P);
  const auto Ku = static_cast<std::size_t>(K);
  const std::size_t bytes = 2 * KP * 8 + 4 * Ku * 8 + Ku * 4;
  auto* pin = static_cast<unsigned char*>(im.staging(bytes));
  std::size_t at = 0;
  auto back = [&](const void* src, std::size_t len) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(pin + at, src, len, cudaMemcpyDeviceToHost, st));
    at += len;
  };
  back(b.i, KP * 8);
  back(b.j, KP * 8);
  back(b.eps, Ku * 8);
  back(b.ot_eps, Ku * 8);
  back(b.residual, Ku * 8);
  back(b.pair_cost, Ku * 8);
  back(b.iterations, Ku * 4);
  im.staging_done();
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(st));

  CouplingResult r;
  r.backend = Backend::cuda;
  r.batch = K;
  r.pairs = P;
  r.i.resize(KP);
  r.j.resize(KP);
  std::memcpy(r.i.data(), pin, KP * 8);
  std::memcpy(r.j.data(), pin + KP * 8, KP * 8);
  std::vector<double> eps(Ku), ot(Ku), res(Ku), pc(Ku);
  std::vector<int> iters(Ku);
  const unsigned char* p = pin + 2 * KP * 8;
  std::memcpy(eps.data(), p, Ku * 8);
  std::memcpy(ot.data(), p + Ku * 8, Ku * 8);
  std::memcpy(res.data(), p + 2 * Ku * 8, Ku * 8);
  std::memcpy(pc.data(), p + 3 * Ku * 8, Ku * 8);
  std::memcpy(iters.data(), p + 4 * Ku * 8, Ku * 4);
  const double tol = detail::resolve_sinkhorn_options(cuda_options(options), Backend::cuda).tol;
  r.problems.resize(Ku);
  for (std::size_t k = 0; k < Ku; ++k) {
    CouplingReport& rep = r.problems[k];
    rep.pair_cost = pc[k];
    rep.ot = ot[k];
    rep.eps = eps[k];
    rep.gap = res[k];
    rep.iterations = iters[k];
    rep.converged = std::isfinite(res[k]) && res[k] <= tol;
  }
  return r;
}

void fill_row_indices(GpuContext& ctx, std::int64_t* i_out, std::int64_t batch, std::int64_t n) {
  cuda_backend::DeviceRestore restore;
  runtime::Context& im = ctx.impl();
  im.activate();
  kernels::iota_rows(i_out, batch, n, im.stream());
}

}  // namespace otgpu::coupling_cuda
