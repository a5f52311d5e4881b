// The CUDA sliced Wasserstein driver, on a runtime::Context (the caller's GpuContext
// or the thread's cached one).
//
// Per call: directions (Philox, same draw as the CPU) -> for each chunk of
// directions: projections as one cuBLAS GEMM that writes [Lc, B*n] directly, so each
// (direction, problem) pair is a contiguous segment -> CUB segmented radix sort of
// (projection, index) -> one thread block per segment runs the quantile merge and
// writes W_p^p and the per-point derivatives -> the derivatives are scaled by the
// term weights and back-projected with a second GEMM. The kernels are in
// kernels/src/sliced.cu; this file decides the chunking and the workspace carve-up.
//
// Inputs: points are always staged by the centred gather (otgpu_kernels/
// centered_gather.h): both clouds of a problem translated by the mean of y, computed
// in double from the caller's values, before the one rounding to fp32. The sliced
// distance is translation invariant (a common shift <c, theta> of both projections
// leaves each 1-D Wasserstein distance, and its derivatives, unchanged), while the
// fp32 projection GEMM rounds at the scale of |<x, theta>| (an ulp of 1e4 is 1e-3:
// the rounded inputs alone move a projection by about 5e-4 at offset 1e4) unless
// centred. Weights are read in place when contiguous fp64, else gathered; host views
// are copied raw into the context's pinned staging memory, uploaded, and go the same
// way. Memory: one carve of ctx.workspace(); directions are processed in chunks so
// that it stays bounded. Stream: ctx.stream();
// the call returns synchronized (the results are host vectors).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "gpu_context_impl.h"
#include "otgpu/error.h"
#include "otgpu_host/sliced_cuda.h"
#include "otgpu_kernels/centered_gather.h"
#include "otgpu_kernels/cuda_check.h"
#include "otgpu_kernels/cuda_libs.h"
#include "otgpu_kernels/gather.h"
#include "otgpu_kernels/sliced.h"
#include "view_staging.h"

namespace otgpu::cuda_backend {

namespace {

/// Elements (segments x segment length) sorted per chunk of directions: bounds the
/// workspace (about 48 bytes per element at most) and keeps CUB's int sizes safe.
constexpr std::int64_t kChunkElements = std::int64_t{1} << 26;

/// Timing events of one call, destroyed on every exit path.
class Events {
 public:
  explicit Events(cudaStream_t stream) : stream_(stream) {}
  ~Events() {
    for (auto e : events_) (void)cudaEventDestroy(e);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  /// A new event recorded on the stream now.
  cudaEvent_t record() {
    cudaEvent_t e = nullptr;
    OTGPU_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
    OTGPU_CUDA_CHECK(cudaEventRecord(e, stream_));
    return e;
  }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
};

float elapsed(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  OTGPU_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

/// True when the kernels can read the view's (staged or caller) bytes as they are:
/// contiguous data of type T.
template <class T>
bool direct(const TensorView& v) {
  const bool same_type = (sizeof(T) == 4) == (v.dtype == DType::f32);
  return v.present() && same_type && v.is_contiguous();
}

/// The view laid out contiguously as T on the device: `src` (the caller's device
/// pointer or the staged raw bytes) itself when direct<T>, else gathered into dst.
template <class T>
const T* lay_out(const TensorView& v, const void* src, T* dst, cudaStream_t stream) {
  if (direct<T>(v)) return static_cast<const T*>(src);
  kernels::gather(strided3(v, src), dst, stream);
  return dst;
}

}  // namespace

SlicedResult sliced_wasserstein(GpuContext* gpu_ctx, const SlicedProblem& problem,
                                const SlicedOptions& options, const detail::SlicedShape& shape) {
  const std::int64_t B = shape.batch, n = shape.n, m = shape.m, d = shape.d, L = shape.projections;
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  if (B * std::max(n, m) > kIntMax || L * d > kIntMax) {
    throw InvalidArgument(fmt::format(
        "sliced_wasserstein: backend cuda handles B*n, B*m up to {} points (got B={}, n={}, "
        "m={}, d={}); split the batch",
        kIntMax, B, n, m, d));
  }
  const DeviceRestore restore;
  runtime::Context& ctx = runtime::context_or_thread(gpu_ctx, options.device);
  ctx.activate();
  const int device = ctx.device();
  const cudaStream_t stream = ctx.stream();
  cublasHandle_t blas = ctx.blas();
  OTGPU_CUDA_CHECK(kernels::cublas().set_math_mode(blas, CUBLAS_DEFAULT_MATH));  // fp32, no TF32

  const bool weighted_a = problem.a.present(), weighted_b = problem.b.present();
  const bool grads = options.gradients;
  const bool host_inputs = shape.space == MemorySpace::host;
  const bool host_dirs =
      options.directions.present() && options.directions.space == MemorySpace::host;
  const bool device_dirs =
      options.directions.present() && options.directions.space == MemorySpace::device;
  const std::int64_t len = std::max(n, m);

  // Host data uploaded at the start: the raw inputs (host problems), then the
  // normalized host directions and the gradient term weights of the mean.
  const std::vector<const TensorView*> inputs{&problem.x, &problem.y, &problem.a, &problem.b};
  RawLayout up;
  for (const TensorView* v : inputs) up.add(host_inputs ? *v : TensorView{});
  const std::size_t theta_at = up.add(host_dirs ? static_cast<std::size_t>(L * d) * 4 : 0);
  const bool mean_grads = grads && !options.max_sliced;
  const std::size_t termw_at = up.add(mean_grads ? static_cast<std::size_t>(B * L) * 4 : 0);

  // Directions per chunk so that one chunk sorts at most kChunkElements elements;
  // halved until the workspace fits in free memory.
  std::int64_t Lc = std::clamp<std::int64_t>(kChunkElements / (B * len), 1, L);
  std::size_t temp_bytes = 0;
  struct Buffers {
    unsigned char* raw;
    double* center;
    float *x, *y, *theta_t, *keys_in, *kx, *ky, *dx, *dy, *gx, *gy, *term_w;
    int *vals_in, *px, *py, *off_x, *off_y;
    double *wa, *wb, *px_prefix, *py_prefix, *cost, *given;
    void* temp;
  };
  auto plan = [&](std::int64_t lc, char* base) {
    Carve c{0, base};
    const std::int64_t ex = lc * B * n, ey = lc * B * m;
    Buffers bf{};
    bf.raw = c.take<unsigned char>(static_cast<std::int64_t>(up.bytes));
    // The centred points; layout copies of the weights only when the kernels cannot
    // read them as they are.
    bf.center = c.take<double>(B * d);
    bf.x = c.take<float>(B * n * d);
    bf.y = c.take<float>(B * m * d);
    bf.theta_t = c.take<float>(L * d);
    bf.given = c.take<double>(device_dirs ? L * d : 0);
    bf.wa = c.take<double>(weighted_a && !direct<double>(problem.a) ? (shape.a_batched ? B : 1) * n
                                                                    : 0);
    bf.wb = c.take<double>(weighted_b && !direct<double>(problem.b) ? (shape.b_batched ? B : 1) * m
                                                                    : 0);
    bf.keys_in = c.take<float>(lc * B * len);
    bf.vals_in = c.take<int>(lc * B * len);
    bf.kx = c.take<float>(ex);
    bf.px = c.take<int>(ex);
    bf.ky = c.take<float>(ey);
    bf.py = c.take<int>(ey);
    bf.px_prefix = c.take<double>(weighted_a ? ex : 0);
    bf.py_prefix = c.take<double>(weighted_b ? ey : 0);
    bf.dx = c.take<float>(grads ? ex : 0);
    bf.dy = c.take<float>(grads ? ey : 0);
    bf.off_x = c.take<int>(lc * B + 1);
    bf.off_y = c.take<int>(lc * B + 1);
    bf.cost = c.take<double>(B * L);
    bf.term_w = c.take<float>(grads ? B * L : 0);
    bf.gx = c.take<float>(grads ? B * n * d : 0);
    bf.gy = c.take<float>(grads ? B * m * d : 0);
    bf.temp = c.take<char>(static_cast<std::int64_t>(temp_bytes));
    return std::make_pair(bf, c.offset);
  };
  auto sort_temp_bytes = [&](std::int64_t lc) {
    std::size_t most = 0;
    for (std::int64_t chunk : {lc, L % lc}) {
      if (chunk == 0) continue;
      for (std::int64_t seg_len : {n, m}) {
        most = std::max(most, kernels::sliced_sort_temp_bytes(chunk * B * seg_len,
                                                              static_cast<int>(chunk * B)));
      }
    }
    return most;
  };
  std::size_t free_bytes = 0, total_bytes = 0;
  OTGPU_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  // The context's workspace is reused (or released when it grows): it counts as free.
  free_bytes += ctx.workspace_bytes();
  std::size_t need = 0;
  for (;;) {
    temp_bytes = sort_temp_bytes(Lc);
    need = plan(Lc, nullptr).second;
    if (need <= free_bytes / 10 * 9 || Lc == 1) break;
    Lc = (Lc + 1) / 2;
  }
  if (need > free_bytes) {
    throw OutOfMemory(fmt::format(
        "sliced_wasserstein: needs {:.1f} MiB of device memory on device {}, {:.1f} MiB free",
        static_cast<double>(need) / 1048576.0, device,
        static_cast<double>(free_bytes) / 1048576.0));
  }
  const Buffers bf = plan(Lc, static_cast<char*>(ctx.workspace(need))).first;
  Events ev(stream);

  SlicedResult r;
  r.backend = Backend::cuda;
  r.device = device;
  r.batch = B;
  r.n = n;
  r.m = m;
  r.d = d;
  r.projections = L;

  // Host data: one pinned buffer, one upload.
  if (up.bytes > 0) {
    unsigned char* pin = stage_raw(ctx, inputs, up);
    if (host_dirs) {
      // Validated and normalized on the host, exactly as the CPU does; transposed to
      // theta_t [L, d].
      const std::vector<double> theta = detail::host_directions(options, shape);  // [d, L]
      auto* tt = reinterpret_cast<float*>(pin + theta_at);
      for (std::int64_t l = 0; l < L; ++l)
        for (std::int64_t k = 0; k < d; ++k)
          tt[l * d + k] = static_cast<float>(theta[static_cast<std::size_t>(k * L + l)]);
    }
    if (mean_grads) {
      // Mean: every term has weight 1/L, known before the costs.
      std::fill_n(reinterpret_cast<float*>(pin + termw_at), B * L, 1.0f / static_cast<float>(L));
    }
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(bf.raw, pin, up.bytes, cudaMemcpyHostToDevice, stream));
    ctx.staging_done();
  }
  auto source = [&](std::size_t k) -> const void* {
    return host_inputs ? static_cast<const void*>(bf.raw + up.offset[k]) : inputs[k]->data;
  };
  kernels::stage_centered_pair(strided3(problem.x, source(0)), strided3(problem.y, source(1)), B,
                               static_cast<int>(d), bf.center, bf.x, bf.y, stream);
  const float* X = bf.x;
  const float* Y = bf.y;
  const double* WA = weighted_a ? lay_out<double>(problem.a, source(2), bf.wa, stream) : nullptr;
  const double* WB = weighted_b ? lay_out<double>(problem.b, source(3), bf.wb, stream) : nullptr;

  // Directions: host-given ones are already in place; device-given ones and seeded
  // draws are normalized on the device.
  cudaEvent_t ev_dir0 = ev.record();
  if (host_dirs) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(bf.theta_t, bf.raw + theta_at,
                                     static_cast<std::size_t>(L * d) * sizeof(float),
                                     cudaMemcpyDeviceToDevice, stream));
  } else {
    const double* given = nullptr;
    if (device_dirs) {
      kernels::gather(strided3(options.directions, options.directions.data), bf.given, stream);
      given = bf.given;
    }
    kernels::sliced_directions(given, options.seed, d, L, bf.theta_t, stream);
  }
  cudaEvent_t ev_dir1 = ev.record();

  if (grads) {
    OTGPU_CUDA_CHECK(
        cudaMemsetAsync(bf.gx, 0, static_cast<std::size_t>(B * n * d) * sizeof(float), stream));
    OTGPU_CUDA_CHECK(
        cudaMemsetAsync(bf.gy, 0, static_cast<std::size_t>(B * m * d) * sizeof(float), stream));
  }
  if (mean_grads) {
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(bf.term_w, bf.raw + termw_at,
                                     static_cast<std::size_t>(B * L) * sizeof(float),
                                     cudaMemcpyDeviceToDevice, stream));
  }

  // Per chunk: begin, x projected, x sorted, y projected, y sorted, merged, done.
  using ChunkEvents = std::vector<cudaEvent_t>;
  std::vector<ChunkEvents> chunk_events;

  // One pass over the direction chunks. With derivatives, the per-point
  // derivatives of the chunk are scaled by the term weights and back-projected into
  // gx / gy (accumulated over chunks: beta = 1 on memset-zeroed gradients).
  auto run_pass = [&](bool with_grads, const std::vector<double>* host_term_w) {
    for (std::int64_t l0 = 0; l0 < L; l0 += Lc) {
      const std::int64_t lc = std::min(Lc, L - l0);
      if (with_grads && host_term_w != nullptr) {
        bool any = false;
        for (std::int64_t b = 0; b < B && !any; ++b)
          for (std::int64_t l = l0; l < l0 + lc && !any; ++l)
            any = (*host_term_w)[static_cast<std::size_t>(b * L + l)] != 0.0;
        if (!any) continue;
      }
      const int segments = static_cast<int>(lc * B);
      ChunkEvents ce{ev.record()};
      const float one = 1.0f, zero = 0.0f;
      auto project_and_sort = [&](const float* P, std::int64_t rows, float* keys_out, int* vals_out,
                                  int* offsets) {
        const int N = static_cast<int>(B * rows);
        // keys_in[lc][r] = <theta_{l0+lc}, P_r>: column-major N x lc with ldc = N.
        OTGPU_CUDA_CHECK(kernels::cublas().sgemm(
            blas, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(lc), static_cast<int>(d), &one, P,
            static_cast<int>(d), bf.theta_t + l0 * d, static_cast<int>(d), &zero, bf.keys_in, N));
        ce.push_back(ev.record());
        kernels::sliced_segments(bf.vals_in, offsets, rows, segments, stream);
        kernels::sliced_sort(bf.temp, temp_bytes, bf.keys_in, keys_out, bf.vals_in, vals_out,
                             lc * B * rows, segments, offsets, stream);
        ce.push_back(ev.record());
      };
      project_and_sort(X, n, bf.kx, bf.px, bf.off_x);
      project_and_sort(Y, m, bf.ky, bf.py, bf.off_y);

      if (with_grads) {
        OTGPU_CUDA_CHECK(cudaMemsetAsync(
            bf.dx, 0, static_cast<std::size_t>(lc * B * n) * sizeof(float), stream));
        OTGPU_CUDA_CHECK(cudaMemsetAsync(
            bf.dy, 0, static_cast<std::size_t>(lc * B * m) * sizeof(float), stream));
      }
      kernels::SlicedMerge mg;
      mg.ux = bf.kx;
      mg.perm_x = bf.px;
      mg.vy = bf.ky;
      mg.perm_y = bf.py;
      mg.n = n;
      mg.m = m;
      mg.B = B;
      mg.L = L;
      mg.l0 = l0;
      mg.segments = segments;
      mg.p = options.p;
      mg.wa = WA;
      mg.a_batched = shape.a_batched;
      mg.wb = WB;
      mg.b_batched = shape.b_batched;
      mg.prefix_x = bf.px_prefix;
      mg.prefix_y = bf.py_prefix;
      mg.cost = bf.cost;
      mg.dx = with_grads ? bf.dx : nullptr;
      mg.dy = with_grads ? bf.dy : nullptr;
      kernels::sliced_merge(mg, stream);
      ce.push_back(ev.record());

      if (with_grads) {
        auto back_project = [&](float* D, std::int64_t rows, float* G) {
          kernels::sliced_scale_terms(D, rows, B, L, l0, bf.term_w, lc * B * rows, stream);
          const int N = static_cast<int>(B * rows);
          // G (d x N column-major = [B*rows, d] row-major) += theta_t^T-chunk x D^T.
          OTGPU_CUDA_CHECK(kernels::cublas().sgemm(
              blas, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(d), N, static_cast<int>(lc), &one,
              bf.theta_t + l0 * d, static_cast<int>(d), D, N, &one, G, static_cast<int>(d)));
        };
        back_project(bf.dx, n, bf.gx);
        back_project(bf.dy, m, bf.gy);
      }
      ce.push_back(ev.record());
      chunk_events.push_back(std::move(ce));
    }
  };

  r.per_direction.assign(static_cast<std::size_t>(B * L), 0.0);
  run_pass(mean_grads, nullptr);
  OTGPU_CUDA_CHECK(cudaMemcpyAsync(r.per_direction.data(), bf.cost,
                                   r.per_direction.size() * sizeof(double), cudaMemcpyDeviceToHost,
                                   stream));
  OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (grads && options.max_sliced) {
    // Max-sliced: only the selected term of each problem is differentiated, which is
    // known once all costs are; a second pass recomputes the chunks holding one.
    const std::vector<double> w = detail::sliced_term_weights(r.per_direction, B, L, true);
    auto* pin = static_cast<float*>(ctx.staging(w.size() * sizeof(float)));
    std::copy(w.begin(), w.end(), pin);
    OTGPU_CUDA_CHECK(
        cudaMemcpyAsync(bf.term_w, pin, w.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
    ctx.staging_done();
    run_pass(true, &w);
  }
  if (grads) {
    std::vector<float> gx(static_cast<std::size_t>(B * n * d)),
        gy(static_cast<std::size_t>(B * m * d));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(gx.data(), bf.gx, gx.size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream));
    OTGPU_CUDA_CHECK(cudaMemcpyAsync(gy.data(), bf.gy, gy.size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream));
    OTGPU_CUDA_CHECK(cudaStreamSynchronize(stream));
    r.grad_x.assign(gx.begin(), gx.end());
    r.grad_y.assign(gy.begin(), gy.end());
  }

  r.timings.directions_ms = elapsed(ev_dir0, ev_dir1);
  for (const auto& ce : chunk_events) {
    r.timings.project_ms += elapsed(ce[0], ce[1]) + elapsed(ce[2], ce[3]);
    r.timings.sort_ms += elapsed(ce[1], ce[2]) + elapsed(ce[3], ce[4]);
    r.timings.merge_ms += elapsed(ce[4], ce[5]);
    r.timings.gradient_ms += elapsed(ce[5], ce[6]);
  }
  return r;
}

}  // namespace otgpu::cuda_backend
