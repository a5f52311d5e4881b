// The CUDA Gaussian OT path, float64 throughout.
//
// Per call: upload the packed pairs -> traces of S1, S2 -> eigen-decompose each
// distinct S1 (cuSOLVER: syevjBatched for d <= 32, one Xsyevd per matrix above) ->
// S1^{1/2} = (U diag(sqrt l)) U^T (and S1^{+1/2} for the map) as batched GEMMs ->
// M = S1^{1/2} (S2 S1^{1/2}) for every pair (pointer-array batched GEMMs, so a shared
// S1 or S2 is read in place, never copied B times) -> eigen-decompose every M ->
// one block per pair sums the eigenvalue terms (detail/gaussian_math.h, the same
// expressions as the CPU reference) -> for the map, A = S1^{+1/2} M^{1/2} S1^{+1/2}.
// All matrices are symmetric, so the row-major inputs are their own column-major
// forms and cuBLAS / cuSOLVER see them as they are.
//
// Streams: the call works on its own blocking stream (ordered after the legacy
// default stream) and returns synchronized; the results are host vectors.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <limits>
#include <string>
#include <vector>

#include "otgpu/detail/gaussian_math.h"
#include "otgpu/error.h"
#include "otgpu_host/gaussian_cuda.h"

namespace otgpu::cuda_backend {

namespace {

// ---------------------------------------------------------------- status checks

void check_cuda(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  const std::string msg = fmt::format("gaussian_ot: {} failed: {} ({}) at {}:{}", call,
                                      cudaGetErrorString(e), static_cast<int>(e), file, line);
  if (e == cudaErrorMemoryAllocation) throw OutOfMemory(msg);
  throw CudaError(msg, static_cast<int>(e));
}

void check_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const std::string msg = fmt::format("gaussian_ot: {} failed: cuBLAS status {} at {}:{}", call,
                                      static_cast<int>(s), file, line);
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw CudaError(msg, static_cast<int>(s));
}

void check_cusolver(cusolverStatus_t s, const char* call, const char* file, int line) {
  if (s == CUSOLVER_STATUS_SUCCESS) return;
  const std::string msg = fmt::format("gaussian_ot: {} failed: cuSOLVER status {} at {}:{}", call,
                                      static_cast<int>(s), file, line);
  if (s == CUSOLVER_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw CudaError(msg, static_cast<int>(s));
}

#define GAUSS_CUDA_CHECK(call) check_cuda((call), #call, __FILE__, __LINE__)
#define GAUSS_CUBLAS_CHECK(call) check_cublas((call), #call, __FILE__, __LINE__)
#define GAUSS_CUSOLVER_CHECK(call) check_cusolver((call), #call, __FILE__, __LINE__)
#define GAUSS_LAUNCH_CHECK() check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

constexpr int kThreads = 256;
constexpr int kReduceThreads = 128;
/// cusolverDn<t>syevjBatched handles matrices up to 32 x 32.
constexpr std::int64_t kSyevjBatchedMaxN = 32;

unsigned grid_for(std::int64_t total) {
  const std::int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, 65535 * 16));
}

// ---------------------------------------------------------------- kernels

/// tr of each of `count` d x d matrices.
__global__ void __launch_bounds__(kThreads)
    trace_kernel(const double* __restrict__ s, std::int64_t count, std::int64_t d,
                 double* __restrict__ trace) {
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; b < count;
       b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double* a = s + b * d * d;
    double t = 0;
    for (std::int64_t i = 0; i < d; ++i) t += a[i * d + i];
    trace[b] = t;
  }
}

enum class SpectralFn : int { sqrt, pinv_sqrt };

/// out_b = V_b diag(f(w_b)) (column k of the column-major eigenvector matrix V_b
/// scaled by f of its eigenvalue), so that out_b V_b^T = f(the matrix). For the
/// pseudo-inverse the null threshold is kGaussianNullRelTol * trace_b.
__global__ void __launch_bounds__(kThreads)
    scale_columns_kernel(const double* __restrict__ vectors, const double* __restrict__ values,
                         const double* __restrict__ trace, SpectralFn fn, std::int64_t count,
                         std::int64_t d, double* __restrict__ out) {
  const std::int64_t dd = d * d;
  const std::int64_t total = count * dd;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = e / dd;
    const std::int64_t col = (e % dd) / d;
    const double w = values[b * d + col];
    double f = 0;
    if (fn == SpectralFn::sqrt) {
      f = detail::psd_sqrt(w);
    } else {
      const double tr = trace[b] > 0 ? trace[b] : 0.0;
      f = detail::pinv_sqrt(w, detail::kGaussianNullRelTol * tr);
    }
    out[e] = vectors[e] * f;
  }
}

/// ptrs[b] = base + (count == 1 ? 0 : b) * stride: the operand of pair b, where a
/// single block is shared by every pair.
__global__ void __launch_bounds__(kThreads)
    pointer_array_kernel(double* base, std::int64_t count, std::int64_t stride, std::int64_t batch,
                         double** __restrict__ ptrs) {
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; b < batch;
       b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    ptrs[b] = base + (count == 1 ? 0 : b) * stride;
  }
}

/// One block per pair: |m1 - m2|^2 and the eigenvalue sums of M give W2^2, Bures^2
/// and (eps > 0) OT_eps. out is [B, 3] = (w2, bures, entropic).
__global__ void __launch_bounds__(kReduceThreads)
    pair_values_kernel(const double* __restrict__ m1, std::int64_t n_m1,
                       const double* __restrict__ m2, std::int64_t n_m2,
                       const double* __restrict__ tr_s1, std::int64_t n_s1,
                       const double* __restrict__ tr_s2, std::int64_t n_s2,
                       const double* __restrict__ mu, std::int64_t d, double sigma2,
                       double* __restrict__ out) {
  using Reduce = cub::BlockReduce<double, kReduceThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const std::int64_t b = blockIdx.x;
  const double* a = m1 + (n_m1 == 1 ? 0 : b) * d;
  const double* c = m2 + (n_m2 == 1 ? 0 : b) * d;
  const double* w = mu + b * d;
  double mean_sq = 0, sum_sqrt = 0, ent = 0;
  for (std::int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const double diff = a[k] - c[k];
    mean_sq += diff * diff;
    sum_sqrt += detail::psd_sqrt(w[k]);
    if (sigma2 > 0) ent += detail::entropic_eigen_term(w[k], sigma2);
  }
  const double tot_mean = Reduce(tmp).Sum(mean_sq);
  __syncthreads();
  const double tot_sqrt = Reduce(tmp).Sum(sum_sqrt);
  __syncthreads();
  const double tot_ent = Reduce(tmp).Sum(ent);
  if (threadIdx.x == 0) {
    const double t1 = tr_s1[n_s1 == 1 ? 0 : b];
    const double t2 = tr_s2[n_s2 == 1 ? 0 : b];
    const double bures = fmax(0.0, t1 + t2 - 2.0 * tot_sqrt);
    out[b * 3 + 0] = tot_mean + bures;
    out[b * 3 + 1] = bures;
    out[b * 3 + 2] = sigma2 > 0 ? tot_mean + t1 + t2 + tot_ent : 0.0;
  }
}

/// a <- (a + a^T) / 2 for each d x d matrix (round-off asymmetry of the products).
__global__ void __launch_bounds__(kThreads)
    symmetrize_kernel(double* __restrict__ a, std::int64_t count, std::int64_t d) {
  const std::int64_t dd = d * d;
  const std::int64_t total = count * dd;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = e / dd;
    const std::int64_t i = (e % dd) / d;
    const std::int64_t j = e % d;
    if (i < j) {
      double* m = a + b * dd;
      const double s = 0.5 * (m[i * d + j] + m[j * d + i]);
      m[i * d + j] = s;
      m[j * d + i] = s;
    }
  }
}

// ---------------------------------------------------------------- resources

/// Restores the caller's current device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    GAUSS_CUDA_CHECK(cudaGetDevice(&saved_));
    GAUSS_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { (void)cudaSetDevice(saved_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int saved_ = 0;
};

/// The call's stream, device allocations and solver objects, released on every exit
/// path (errors included, where teardown statuses cannot be reported).
class CallResources {
 public:
  CallResources() = default;
  CallResources(const CallResources&) = delete;
  CallResources& operator=(const CallResources&) = delete;
  ~CallResources() {
    for (void* p : allocations_) (void)cudaFreeAsync(p, stream_);
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    if (syevj_ != nullptr) (void)cusolverDnDestroySyevjInfo(syevj_);
    if (params_ != nullptr) (void)cusolverDnDestroyParams(params_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  cudaStream_t stream() {
    if (stream_ == nullptr) GAUSS_CUDA_CHECK(cudaStreamCreate(&stream_));
    return stream_;
  }

  /// Stream-ordered allocation from the device's memory pool (no device-wide
  /// synchronization, reused across calls by the pool).
  template <class T>
  T* alloc(std::int64_t elements) {
    void* p = nullptr;
    const auto bytes = static_cast<std::size_t>(std::max<std::int64_t>(elements, 1)) * sizeof(T);
    const cudaError_t e = cudaMallocAsync(&p, bytes, stream());
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // reset the error state before asking for the free memory
      std::size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      throw OutOfMemory(fmt::format(
          "gaussian_ot: backend cuda: could not allocate {} bytes of device memory ({} free of "
          "{}); split the batch",
          bytes, free_b, total_b));
    }
    GAUSS_CUDA_CHECK(e);
    allocations_.push_back(p);
    return static_cast<T*>(p);
  }

  syevjInfo_t syevj() {
    if (syevj_ == nullptr) {
      GAUSS_CUSOLVER_CHECK(cusolverDnCreateSyevjInfo(&syevj_));
      // The default tolerance is machine accuracy; the sweep cap is stated, not
      // inherited: a matrix that needs more reports info > 0 and fails the call.
      GAUSS_CUSOLVER_CHECK(cusolverDnXsyevjSetMaxSweeps(syevj_, 100));
    }
    return syevj_;
  }

  cusolverDnParams_t params() {
    if (params_ == nullptr) GAUSS_CUSOLVER_CHECK(cusolverDnCreateParams(&params_));
    return params_;
  }

 private:
  cudaStream_t stream_ = nullptr;
  std::vector<void*> allocations_;
  syevjInfo_t syevj_ = nullptr;
  cusolverDnParams_t params_ = nullptr;
};

/// One cuBLAS / cuSOLVER handle per (host thread, device), created on first use and
/// never destroyed: destroying at process exit could run after the CUDA runtime has
/// been torn down, and creating one per call costs milliseconds.
cublasHandle_t blas_handle(int device) {
  thread_local std::vector<cublasHandle_t> handles;
  if (static_cast<int>(handles.size()) <= device) {
    handles.resize(static_cast<std::size_t>(device) + 1, nullptr);
  }
  cublasHandle_t& h = handles[static_cast<std::size_t>(device)];
  if (h == nullptr) GAUSS_CUBLAS_CHECK(cublasCreate(&h));
  return h;
}

cusolverDnHandle_t solver_handle(int device) {
  thread_local std::vector<cusolverDnHandle_t> handles;
  if (static_cast<int>(handles.size()) <= device) {
    handles.resize(static_cast<std::size_t>(device) + 1, nullptr);
  }
  cusolverDnHandle_t& h = handles[static_cast<std::size_t>(device)];
  if (h == nullptr) GAUSS_CUSOLVER_CHECK(cusolverDnCreate(&h));
  return h;
}

/// Eigen-decomposes `count` symmetric d x d matrices in place (a <- eigenvectors as
/// columns, w <- eigenvalues ascending); `what` names them in errors. The per-matrix
/// info codes are checked after the stream is synchronized.
void batched_eigen(cusolverDnHandle_t solver, CallResources& res, double* a, double* w,
                   std::int64_t count, std::int64_t d, const char* what) {
  cudaStream_t stream = res.stream();
  int* info = res.alloc<int>(count);
  GAUSS_CUDA_CHECK(cudaMemsetAsync(info, 0, static_cast<std::size_t>(count) * sizeof(int), stream));
  const char* routine = nullptr;
  if (d <= kSyevjBatchedMaxN) {
    routine = "cusolverDnDsyevjBatched";
    const int n = static_cast<int>(d);
    int lwork = 0;
    GAUSS_CUSOLVER_CHECK(cusolverDnDsyevjBatched_bufferSize(
        solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, n, w, &lwork, res.syevj(),
        static_cast<int>(count)));
    double* work = res.alloc<double>(lwork);
    GAUSS_CUSOLVER_CHECK(cusolverDnDsyevjBatched(solver, CUSOLVER_EIG_MODE_VECTOR,
                                                 CUBLAS_FILL_MODE_LOWER, n, a, n, w, work, lwork,
                                                 info, res.syevj(), static_cast<int>(count)));
  } else {
    routine = "cusolverDnXsyevd";
    std::size_t dev_bytes = 0, host_bytes = 0;
    GAUSS_CUSOLVER_CHECK(cusolverDnXsyevd_bufferSize(
        solver, res.params(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, d, CUDA_R_64F, a, d,
        CUDA_R_64F, w, CUDA_R_64F, &dev_bytes, &host_bytes));
    char* dev_work = res.alloc<char>(static_cast<std::int64_t>(dev_bytes));
    std::vector<char> host_work(std::max<std::size_t>(host_bytes, 1));
    for (std::int64_t k = 0; k < count; ++k) {
      GAUSS_CUSOLVER_CHECK(cusolverDnXsyevd(solver, res.params(), CUSOLVER_EIG_MODE_VECTOR,
                                            CUBLAS_FILL_MODE_LOWER, d, CUDA_R_64F, a + k * d * d, d,
                                            CUDA_R_64F, w + k * d, CUDA_R_64F, dev_work, dev_bytes,
                                            host_work.data(), host_bytes, info + k));
    }
  }
  std::vector<int> host_info(static_cast<std::size_t>(count));
  GAUSS_CUDA_CHECK(cudaMemcpyAsync(host_info.data(), info,
                                   static_cast<std::size_t>(count) * sizeof(int),
                                   cudaMemcpyDeviceToHost, stream));
  GAUSS_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (std::int64_t k = 0; k < count; ++k) {
    const int code = host_info[static_cast<std::size_t>(k)];
    if (code == 0) continue;
    // info < 0: a wrong parameter (a bug here); info > 0: no convergence.
    throw CudaError(
        fmt::format("gaussian_ot: {} on {} {} of {} (d = {}) returned info {} ({})", routine, what,
                    k, count, d, code,
                    code < 0 ? "invalid parameter" : "the eigensolver did not converge"),
        code);
  }
}

/// C_b = op(A_b) op(B_b) for b < batch, through pointer arrays (shared operands are
/// repeated pointers, read-only).
void gemm_batched(cublasHandle_t blas, cublasOperation_t ta, cublasOperation_t tb, std::int64_t d,
                  double* const* a, double* const* b, double* const* c, std::int64_t batch) {
  const double one = 1.0, zero = 0.0;
  const int n = static_cast<int>(d);
  GAUSS_CUBLAS_CHECK(cublasDgemmBatched(blas, ta, tb, n, n, n, &one, a, n, b, n, &zero, c, n,
                                        static_cast<int>(batch)));
}

template <class T>
void upload(const std::vector<T>& host, T* device, cudaStream_t stream) {
  GAUSS_CUDA_CHECK(cudaMemcpyAsync(device, host.data(), host.size() * sizeof(T),
                                   cudaMemcpyHostToDevice, stream));
}

}  // namespace

GaussianOTResult gaussian_ot(const detail::GaussianPairs& pairs, const GaussianOTOptions& options) {
  const std::int64_t B = pairs.batch, d = pairs.d, dd = d * d;
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  if (B > kIntMax || d > 46340) {  // cuBLAS / syevjBatched take int sizes and counts
    throw InvalidArgument(fmt::format(
        "gaussian_ot: backend cuda handles up to {} pairs of dimension up to 46340 (got B = {}, "
        "d = {}); split the batch",
        kIntMax, B, d));
  }
  const std::int64_t n_m1 = pairs.count_m1(), n_m2 = pairs.count_m2();
  const std::int64_t n_s1 = pairs.count_s1(), n_s2 = pairs.count_s2();
  const bool want_map = options.want_map;
  const double sigma2 = options.eps > 0 ? 0.5 * options.eps : 0.0;

  DeviceGuard guard(options.device);
  CallResources res;
  cudaStream_t stream = res.stream();
  cublasHandle_t blas = blas_handle(options.device);
  cusolverDnHandle_t solver = solver_handle(options.device);
  GAUSS_CUBLAS_CHECK(cublasSetStream(blas, stream));
  GAUSS_CUSOLVER_CHECK(cusolverDnSetStream(solver, stream));
  // Plain IEEE float64 products (no emulation or reduced-precision modes).
  GAUSS_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));

  double* m1 = res.alloc<double>(n_m1 * d);
  double* m2 = res.alloc<double>(n_m2 * d);
  double* u1 = res.alloc<double>(n_s1 * dd);  // S1, then its eigenvectors
  double* s2 = res.alloc<double>(n_s2 * dd);
  double* lam = res.alloc<double>(n_s1 * d);
  double* tr1 = res.alloc<double>(n_s1);
  double* tr2 = res.alloc<double>(n_s2);
  double* half = res.alloc<double>(n_s1 * dd);  // S1^{1/2}
  double* scratch = res.alloc<double>(std::max(n_s1, B) * dd);
  double* t = res.alloc<double>(B * dd);
  double* m = res.alloc<double>(B * dd);  // M, then its eigenvectors
  double* mu = res.alloc<double>(B * d);
  double* values = res.alloc<double>(B * 3);
  upload(pairs.m1, m1, stream);
  upload(pairs.m2, m2, stream);
  upload(pairs.s1, u1, stream);
  upload(pairs.s2, s2, stream);

  trace_kernel<<<grid_for(n_s1), kThreads, 0, stream>>>(u1, n_s1, d, tr1);
  GAUSS_LAUNCH_CHECK();
  trace_kernel<<<grid_for(n_s2), kThreads, 0, stream>>>(s2, n_s2, d, tr2);
  GAUSS_LAUNCH_CHECK();

  // ---- S1^{1/2} (and S1^{+1/2}) per distinct source covariance ----
  batched_eigen(solver, res, u1, lam, n_s1, d, "source covariance");
  const double one = 1.0, zero = 0.0;
  const int n = static_cast<int>(d);
  auto spectral = [&](SpectralFn fn, double* out) {
    scale_columns_kernel<<<grid_for(n_s1 * dd), kThreads, 0, stream>>>(u1, lam, tr1, fn, n_s1, d,
                                                                       scratch);
    GAUSS_LAUNCH_CHECK();
    GAUSS_CUBLAS_CHECK(cublasDgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_T, n, n, n, &one,
                                                 scratch, n, dd, u1, n, dd, &zero, out, n, dd,
                                                 static_cast<int>(n_s1)));
  };
  spectral(SpectralFn::sqrt, half);
  double* pinv_half = nullptr;
  if (want_map) {
    pinv_half = res.alloc<double>(n_s1 * dd);
    spectral(SpectralFn::pinv_sqrt, pinv_half);
  }

  // ---- M = S1^{1/2} S2 S1^{1/2} per pair ----
  constexpr int kPtrArrays = 6;
  double** ptrs = res.alloc<double*>(kPtrArrays * B);
  double** p_half = ptrs;
  double** p_s2 = ptrs + B;
  double** p_t = ptrs + 2 * B;
  double** p_m = ptrs + 3 * B;
  double** p_scratch = ptrs + 4 * B;
  double** p_pinv = ptrs + 5 * B;
  auto fill = [&](double* base, std::int64_t count, double** out) {
    pointer_array_kernel<<<grid_for(B), kThreads, 0, stream>>>(base, count, dd, B, out);
    GAUSS_LAUNCH_CHECK();
  };
  fill(half, n_s1, p_half);
  fill(s2, n_s2, p_s2);
  fill(t, B, p_t);
  fill(m, B, p_m);
  fill(scratch, B, p_scratch);
  if (want_map) fill(pinv_half, n_s1, p_pinv);
  gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_s2, p_half, p_t, B);  // T = S2 S1^{1/2}
  gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_half, p_t, p_m, B);   // M = S1^{1/2} T
  batched_eigen(solver, res, m, mu, B, d, "matrix S1^1/2 S2 S1^1/2 of pair");

  pair_values_kernel<<<static_cast<unsigned>(B), kReduceThreads, 0, stream>>>(
      m1, n_m1, m2, n_m2, tr1, n_s1, tr2, n_s2, mu, d, sigma2, values);
  GAUSS_LAUNCH_CHECK();

  // ---- map A = S1^{+1/2} M^{1/2} S1^{+1/2} ----
  double* a = nullptr;
  if (want_map) {
    a = res.alloc<double>(B * dd);
    scale_columns_kernel<<<grid_for(B * dd), kThreads, 0, stream>>>(
        m, mu, nullptr, SpectralFn::sqrt, B, d, scratch);
    GAUSS_LAUNCH_CHECK();
    // T = (V diag(sqrt mu)) V^T = M^{1/2}
    GAUSS_CUBLAS_CHECK(cublasDgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_T, n, n, n, &one,
                                                 scratch, n, dd, m, n, dd, &zero, t, n, dd,
                                                 static_cast<int>(B)));
    double** p_a = p_m;  // M's eigenvectors are no longer needed: reuse its pointer array
    fill(a, B, p_a);
    gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_t, p_pinv, p_scratch,
                 B);  // M^{1/2} S1^{+1/2}
    gemm_batched(blas, CUBLAS_OP_N, CUBLAS_OP_N, d, p_pinv, p_scratch, p_a, B);
    symmetrize_kernel<<<grid_for(B * dd), kThreads, 0, stream>>>(a, B, d);
    GAUSS_LAUNCH_CHECK();
  }

  std::vector<double> host_values(static_cast<std::size_t>(B * 3));
  GaussianOTResult r;
  r.backend = Backend::cuda;
  r.batch = B;
  r.d = d;
  GAUSS_CUDA_CHECK(cudaMemcpyAsync(host_values.data(), values, host_values.size() * sizeof(double),
                                   cudaMemcpyDeviceToHost, stream));
  if (want_map) {
    r.map_matrix.resize(static_cast<std::size_t>(B * dd));
    GAUSS_CUDA_CHECK(cudaMemcpyAsync(r.map_matrix.data(), a, r.map_matrix.size() * sizeof(double),
                                     cudaMemcpyDeviceToHost, stream));
  }
  GAUSS_CUDA_CHECK(cudaStreamSynchronize(stream));
  r.w2_squared.resize(static_cast<std::size_t>(B));
  r.bures_squared.resize(static_cast<std::size_t>(B));
  if (sigma2 > 0) r.entropic.resize(static_cast<std::size_t>(B));
  for (std::size_t b = 0; b < static_cast<std::size_t>(B); ++b) {
    r.w2_squared[b] = host_values[b * 3 + 0];
    r.bures_squared[b] = host_values[b * 3 + 1];
    if (sigma2 > 0) r.entropic[b] = host_values[b * 3 + 2];
  }
  return r;
}

std::vector<double> download_as_double(const TensorView& v, int device) {
  DeviceGuard guard(device);
  // The span the view touches, in elements of its dtype.
  std::int64_t span = 1;
  for (int k = 0; k < v.rank; ++k) span += (v.dim(k) - 1) * v.stride(k);
  const std::size_t bytes = static_cast<std::size_t>(span) * dtype_size(v.dtype);
  std::vector<unsigned char> raw(bytes);
  GAUSS_CUDA_CHECK(cudaMemcpy(raw.data(), v.data, bytes, cudaMemcpyDefault));
  TensorView host = v;
  host.data = raw.data();
  host.space = MemorySpace::host;
  std::vector<double> out(static_cast<std::size_t>(v.numel()));
  const std::int64_t d0 = v.dim(0);
  const std::int64_t d1 = v.rank > 1 ? v.dim(1) : 1;
  const std::int64_t d2 = v.rank > 2 ? v.dim(2) : 1;
  std::size_t k = 0;
  for (std::int64_t i0 = 0; i0 < d0; ++i0) {
    for (std::int64_t i1 = 0; i1 < d1; ++i1) {
      for (std::int64_t i2 = 0; i2 < d2; ++i2) out[k++] = load_as_double(host, i0, i1, i2);
    }
  }
  return out;
}

}  // namespace otgpu::cuda_backend
