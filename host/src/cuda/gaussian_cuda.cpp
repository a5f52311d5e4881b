// The CUDA Gaussian OT driver, float64 throughout, on a runtime::Context (the
// caller's GpuContext or the thread's cached one).
//
// Per call: check the values (device views read back once through the context's
// pinned staging memory) -> stage the four tensors on the device (host views copied
// raw; covariances symmetrized by the gather, exactly as the validation forms them)
// -> traces of S1, S2 -> eigen-decompose each distinct S1 (cuSOLVER: syevjBatched
// for d <= 32, one Xsyevd per matrix above) -> S1^{1/2} = (U diag(sqrt l)) U^T (and
// S1^{+1/2} for the map) as batched GEMMs -> M = S1^{1/2} (S2 S1^{1/2}) for every
// pair (pointer-array batched GEMMs, so a shared S1 or S2 is read in place, never
// copied B times) -> eigen-decompose every M -> one block per pair sums the
// eigenvalue terms (detail/gaussian_math.h, the same expressions as the CPU
// reference) -> for the map, A = S1^{+1/2} M^{1/2} S1^{+1/2}. All matrices are
// symmetric, so the row-major inputs are their own column-major forms.
//
// Memory: one carve of ctx.workspace(); handles: ctx.blas(), ctx.solver(); stream:
// ctx.stream(). The eigensolvers' info codes are read back with the results, at the
// call's only synchronization after the staging.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <vector>

#include "gpu_context_impl.h"
#include "otgpu/error.h"
#include "otgpu_host/gaussian_cuda.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/cuda_libs.h"
#include "otgpu_kernels/gather.h"
#include "otgpu_kernels/gaussian.h"
#include "view_staging.h"

namespace otgpu::cuda_backend {

namespace {

/// cusolverDn<t>syevjBatched handles matrices up to 32 x 32.
constexpr std::int64_t kSyevjBatchedMaxN = 32;

/// The eigensolver of `count` symmetric d x d matrices and its device workspace.
struct Eigen {
  bool batched = false;        ///< syevjBatched (d <= 32) or one Xsyevd per matrix
  std::size_t bytes = 0;       ///< device workspace (bytes)
  std::size_t host_bytes = 0;  ///< Xsyevd host workspace
};

// The workspace queries take matrix and eigenvalue pointers for their types only;
// the buffers do not exist yet (their size is what is being asked).
double g_probe = 0;

Eigen eigen_plan(runtime::Context& ctx, std::int64_t count, std::int64_t d) {
  Eigen e;
  e.batched = d <= kSyevjBatchedMaxN;
  if (e.batched) {
    const int n = static_cast<int>(d);
    int lwork = 0;
    OTGPU_CUDA_CHECK(kernels::cusolver().dsyevj_batched_buffer_size(
        ctx.solver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, &g_probe, n, &g_probe,
        &lwork, ctx.syevj_info(), static_cast<int>(count)));
    e.bytes = static_cast<std::size_t>(lwork) * sizeof(double);
  } else {
    OTGPU_CUDA_CHECK(kernels::cusolver().xsyevd_buffer_size(
        ctx.solver(), ctx.solver_params(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, d,
        CUDA_R_64F, &g_probe, d, CUDA_R_64F, &g_probe, CUDA_R_64F, &e.bytes, &e.host_bytes));
  }
  return e;
}

/// Eigen-decomposes `count` symmetric d x d matrices in place (a <- eigenvectors as
/// columns, w <- eigenvalues ascending), queued on the context's stream; info[k] <-
/// the solver's code for matrix k (checked by the caller after the sync).
void batched_eigen(runtime::Context& ctx, const Eigen& plan, double* a, double* w,
                   std::int64_t count, std::int64_t d, void* work, std::vector<char>& host_work,
                   int* info) {
  if (plan.batched) {
    const int n = static_cast<int>(d);
    OTGPU_CUDA_CHECK(kernels::cusolver().dsyevj_batched(
        ctx.solver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, n, w,
        static_cast<double*>(work), static_cast<int>(plan.bytes / sizeof(double)), info,
        ctx.syevj_info(), static_cast<int>(count)));
    return;
  }
  for (std::int64_t k = 0; k < count; ++k) {
    OTGPU_CUDA_CHECK(kernels::cusolver().xsyevd(
        ctx.solver(), ctx.solver_params(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, d,
        CUDA_R_64F, a + k * d * d, d, CUDA_R_64F, w + k * d, CUDA_R_64F, work, plan.bytes,
        host_work.data(), plan.host_bytes, info + k));
  }
}

/// C_b = op(A_b) op(B_b) for b < batch, through pointer arrays (shared operands are
/// repeated pointers, read-only).
void gemm_batched(cublasHandle_t blas, cublasOperation_t ta, cublasOperation_t tb, std::int64_t d,
                  double* const* a, double* const* b, double* const* c, std::int64_t batch) {
  const double one = 1.0, zero = 0.0;
  const int n = static_cast<int>(d);
  OTGPU_CUDA_CHECK(kernels::cublas().dgemm_batched(blas, ta, tb, n, n, n, &one, a, n, b, n, &zero,
                                                   c, n, static_cast<int>(batch)));
}

}  // namespace

GaussianOTResult gaussian_ot(GpuContext* gpu_ctx, const GaussianBatch& source,
                             const GaussianBatch& target, const detail::GaussianShape& shape,
                             const GaussianOTOptions& options) {
  const std::int64_t B = shape.batch, d = shape.d, dd = d * d;
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  if (B > kIntMax || d > 46340) {  // cuBLAS / syevjBatched take int sizes and counts
    throw InvalidArgument(fmt::format(
        "gaussian_ot: backend cuda handles up to {} pairs of dimension up to 46340 (got B = {}, "
        "d = {}); split the batch",
        kIntMax, B, d));
  }
  const DeviceRestore restore;
  runtime::Context& ctx = runtime::context_or_thread(gpu_ctx, options.device);
  ctx.activate();
  const cudaStream_t stream = ctx.stream();
  const std::vector<const TensorView*> views{&source.mean, &source.cov, &target.mean, &target.cov};
  RawLayout raw;
  for (const TensorView* v : views) raw.add(*v);

  // ---- values: the core validation, on the caller's host data or a read-back ----
  if (shape.space == MemorySpace::device) {
    const unsigned char* pin = read_back(ctx, views, raw);
    auto host_view = [&](const TensorView& v, std::size_t k) {
      TensorView h = v;
      h.data = pin + raw.offset[k];
      h.space = MemorySpace::host;
      return h;
    };
    const GaussianBatch hs{host_view(source.mean, 0), host_view(source.cov, 1)};
    const GaussianBatch ht{host_view(target.mean, 2), host_view(target.cov, 3)};
    detail::validate_gaussian_values(hs, ht, shape);
  } else {
    detail::validate_gaussian_values(source, target, shape);
  }
  const auto t0 = std::chrono::steady_clock::now();

  const std::int64_t n_m1 = shape.count_m1, n_m2 = shape.count_m2;
  const std::int64_t n_s1 = shape.count_s1, n_s2 = shape.count_s2;
  const bool want_map = options.want_map;
  const double sigma2 = options.eps > 0 ? 0.5 * options.eps : 0.0;
  const bool host_inputs = shape.space == MemorySpace::host;

  cublasHandle_t blas = ctx.blas();
  // Plain IEEE float64 products (no emulation or reduced-precision modes).
  OTGPU_CUDA_CHECK(kernels::cublas().set_math_mode(blas, CUBLAS_DEFAULT_MATH));
  const Eigen eig_s1 = eigen_plan(ctx, n_s1, d);
  const Eigen eig_m = eigen_plan(ctx, B, d);

  // ---- workspace ----
  constexpr int kPtrArrays = 6;
  struct Buffers {
    unsigned char* raw;
    double *m1, *m2, *u1, *s2, *lam, *tr1, *tr2, *half, *pinv_half, *scratch, *t, *m, *mu, *values,
        *a;
    double** ptrs;
    int* info;  ///< [n_s1 + B]: the S1 decompositions, then the M ones
    void* work;
  };
  auto plan = [&](char* base) {
    Carve c{0, base};
    Buffers bf{};
    bf.raw = c.take<unsigned char>(host_inputs ? static_cast<std::int64_t>(raw.bytes) : 0);
    bf.m1 = c.take<double>(n_m1 * d);
    bf.m2 = c.take<double>(n_m2 * d);
    bf.u1 = c.take<double>(n_s1 * dd);  // S1, then its eigenvectors
    bf.s2 = c.take<double>(n_s2 * dd);
    bf.lam = c.take<double>(n_s1 * d);
    bf.tr1 = c.take<double>(n_s1);
    bf.tr2 = c.take<double>(n_s2);
    bf.half = c.take<double>(n_s1 * dd);  // S1^{1/2}
    bf.pinv_half = c.take<double>(want_map ? n_s1 * dd : 0);
    bf.scratch = c.take<double>(std::max(n_s1, B) * dd);
    bf.t = c.take<double>(B * dd);
    bf.m = c.take<double>(B * dd);  // M, then its eigenvectors
    bf.mu = c.take<double>(B * d);
    bf.values = c.take<double>(B * 3);
    bf.a = c.take<double>(want_map ? B * dd : 0);
    bf.ptrs = c.take<double*>(kPtrArrays * B);
    bf.info = c.take<int>(n_s1 + B);
    bf.work = c.take<char>(static_cast<std::int64_t>(std::max(eig_s1.bytes, eig_m.bytes)));
    return std::make_pair(bf, c.offset);
  };
  const Buffers bf = plan(static_cast<char*>(ctx.workspace(plan(nullptr).second))).first;

  // ---- inputs on the device ----
  if (host_inputs) {
    unsigned char* pin = stage_raw(ctx, views, raw);
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(bf.raw, pin, raw.bytes, cudaMemcpyHostToDevice, stream));
    ctx.staging_done();
  }
  auto source_of = [&](std::size_t k) {
    return strided3(
        *views[k], host_inputs ? static_cast<const void*>(bf.raw + raw.offset[k]) : views[k]->data);
  };
  kernels::gather(source_of(0), bf.m1, stream);
  kernels::gather_symmetrized(source_of(1), bf.u1, stream);
  kernels::gather(source_of(2), bf.m2, stream);
  kernels::gather_symmetrized(source_of(3), bf.s2, stream);
  OTGPU_CUDA_CHECK(
      cudaMemsetAsync(bf.info, 0, static_cast<std::size_t>(n_s1 + B) * sizeof(int), stream));

  kernels::gaussian_traces(bf.u1, n_s1, d, bf.tr1, stream);
  kernels::gaussian_traces(bf.s2, n_s2, d, bf.tr2, stream);

  // ---- S1^{1/2} (and S1^{+1/2}) per distinct source covariance ----
  // Xsyevd's host workspace, sized once for both decompositions: it must outlive
  // the queued solver work, so it is never reallocated between them.
  std::vector<char> host_work(std::max<std::size_t>({eig_s1.host_bytes, eig_m.host_bytes, 1}));
  batched_eigen(ctx, eig_s1, bf.u1, bf.lam, n_s1, d, bf.work, host_work, bf.info);
  const double one = 1.0, zero = 0.0;
  const int n = static_cast<int>(d);
  auto spectral = [&](kernels::SpectralFn fn, double* out) {
    kernels::gaussian_scale_columns(bf.u1, bf.lam, bf.tr1, fn, n_s1, d, bf.scratch, stream);
    OTGPU_CUDA_CHECK(kernels::cublas().dgemm_strided_batched(
        blas, CUBLAS_OP_N, CUBLAS_OP_T, n, n, n, &one, bf.scratch, n, dd, bf.u1, n, dd, &zero, out,
        n, dd, static_cast<int>(n_s1)));
  };
  spectral(kernels::SpectralFn::sqrt, bf.half);
  if (want_map) spectral(kernels::SpectralFn::pinv_sqrt, bf.pinv_half);

  // ---- M = S1^{1/2} S2 S1^{1/2} per pair ----
  double** p_half = bf.ptrs;
  double** p_s2 = bf.ptrs + B;
  double** p_t = bf.ptrs + 2 * B;
  double** p_m = bf.ptrs + 3 * B;
  double** p_scratch = bf.ptrs + 4 * B;
  double** p_pinv = bf.ptrs + 5 * B;
  auto fill = [&](double* base, std::int64_t count, double** out) {
    kernels::gaussian_pointer_array(base, count, dd, B, out, stream);
  };
  fill(bf.half, n_s1, p_half);
  fill(bf.s2, n_s2, p_s2);
  fill(bf.t, B, p_t);
  fill(bf.m, B, p_m);
  fill(bf.scratch, B, p_scratch);
  if (want_map) fill(bf.pinv_half, n_s1, p_pinv);
  gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_s2, p_half, p_t, B);  // T = S2 S1^{1/2}
  gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_half, p_t, p_m, B);   // M = S1^{1/2} T
  batched_eigen(ctx, eig_m, bf.m, bf.mu, B, d, bf.work, host_work, bf.info + n_s1);

  kernels::GaussianPairValues pv;
  pv.m1 = bf.m1;
  pv.n_m1 = n_m1;
  pv.m2 = bf.m2;
  pv.n_m2 = n_m2;
  pv.tr_s1 = bf.tr1;
  pv.n_s1 = n_s1;
  pv.tr_s2 = bf.tr2;
  pv.n_s2 = n_s2;
  pv.mu = bf.mu;
  pv.batch = B;
  pv.d = d;
  pv.sigma2 = sigma2;
  pv.out = bf.values;
  kernels::gaussian_pair_values(pv, stream);

  // ---- map A = S1^{+1/2} M^{1/2} S1^{+1/2} ----
  if (want_map) {
    kernels::gaussian_scale_columns(bf.m, bf.mu, nullptr, kernels::SpectralFn::sqrt, B, d,
                                    bf.scratch, stream);
    // T = (V diag(sqrt mu)) V^T = M^{1/2}
    OTGPU_CUDA_CHECK(kernels::cublas().dgemm_strided_batched(
        blas, CUBLAS_OP_N, CUBLAS_OP_T, n, n, n, &one, bf.scratch, n, dd, bf.m, n, dd, &zero, bf.t,
        n, dd, static_cast<int>(B)));
    double** p_a = p_m;  // M's eigenvectors are no longer needed: reuse its pointer array
    fill(bf.a, B, p_a);
    gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_t, p_pinv, p_scratch,
                 B);  // M^{1/2} S1^{+1/2}
    gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_pinv, p_scratch, p_a, B);
    kernels::gaussian_symmetrize(bf.a, B, d, stream);
  }

  // ---- results ----
  std::vector<double> host_values(static_cast<std::size_t>(B * 3));
  std::vector<int> host_info(static_cast<std::size_t>(n_s1 + B));
  GaussianOTResult r;
  r.backend = Backend::cuda;
  r.batch = B;
  r.d = d;
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(host_values.data(), bf.values,
                                   host_values.size() * sizeof(double), cudaMemcpyDeviceToHost,
                                   stream));
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(host_info.data(), bf.info, host_info.size() * sizeof(int),
                                   cudaMemcpyDeviceToHost, stream));
  if (want_map) {
    r.map_matrix.resize(static_cast<std::size_t>(B * dd));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(r.map_matrix.data(), bf.a,
                                     r.map_matrix.size() * sizeof(double), cudaMemcpyDeviceToHost,
                                     stream));
  }
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (std::int64_t k = 0; k < n_s1 + B; ++k) {
    const int code = host_info[static_cast<std::size_t>(k)];
    if (code == 0) continue;
    const bool s1 = k < n_s1;
    const Eigen& e = s1 ? eig_s1 : eig_m;
    // info < 0: a wrong parameter (a bug here); info > 0: no convergence.
    throw CudaError(
        fmt::format("gaussian_ot: {} on {} {} of {} (d = {}) returned info {} ({})",
                    e.batched ? "cusolverDnDsyevjBatched" : "cusolverDnXsyevd",
                    s1 ? "source covariance" : "matrix S1^1/2 S2 S1^1/2 of pair", s1 ? k : k - n_s1,
                    s1 ? n_s1 : B, d, code,
                    code < 0 ? "invalid parameter" : "the eigensolver did not converge"),
        code);
  }
  r.w2_squared.resize(static_cast<std::size_t>(B));
  r.bures_squared.resize(static_cast<std::size_t>(B));
  if (sigma2 > 0) r.entropic.resize(static_cast<std::size_t>(B));
  for (std::size_t b = 0; b < static_cast<std::size_t>(B); ++b) {
    r.w2_squared[b] = host_values[b * 3 + 0];
    r.bures_squared[b] = host_values[b * 3 + 1];
    if (sigma2 > 0) r.entropic[b] = host_values[b * 3 + 2];
  }
  r.time_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace otgpu::cuda_backend
