// The CUDA sliced Wasserstein path.
//
// Per call: directions (Philox, same draw as the CPU) -> for each chunk of
// directions: projections as one cuBLAS GEMM that writes [Lc, B*n] directly, so each
// (direction, problem) pair is a contiguous segment -> CUB segmented radix sort of
// (projection, index) -> one thread block per segment runs the shared quantile merge
// (detail/quantile_merge.h), its threads splitting the merge by merge path, and
// writes W_p^p and the per-point derivatives -> the derivatives are scaled by the
// term weights and back-projected with a second GEMM.
//
// Streams: the call creates a blocking stream, so it is ordered after work the
// caller queued on the legacy default stream, and returns synchronized (the results
// are host vectors). Memory: one workspace per call from a per-device caching pool,
// carved into buffers; directions are processed in chunks so the workspace stays
// bounded.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <limits>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "otgpu/detail/directions.h"
#include "otgpu/detail/quantile_merge.h"
#include "otgpu/error.h"
#include "otgpu_host/sliced_cuda.h"

namespace otgpu::cuda_backend {

namespace {

// ---------------------------------------------------------------- status checks

void check_cuda(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  const std::string msg = fmt::format("{} failed: {} ({}) at {}:{}", call, cudaGetErrorString(e),
                                      static_cast<int>(e), file, line);
  if (e == cudaErrorMemoryAllocation) throw OutOfMemory("sliced_wasserstein: " + msg);
  throw CudaError("sliced_wasserstein: " + msg, static_cast<int>(e));
}

void check_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw CudaError(fmt::format("sliced_wasserstein: {} failed: cuBLAS status {} at {}:{}", call,
                              static_cast<int>(s), file, line),
                  static_cast<int>(s));
}

#define SLICED_CUDA_CHECK(call) check_cuda((call), #call, __FILE__, __LINE__)
#define SLICED_CUBLAS_CHECK(call) check_cublas((call), #call, __FILE__, __LINE__)
#define SLICED_LAUNCH_CHECK() check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

constexpr int kThreads = 256;
/// Elements (segments x segment length) sorted per chunk of directions: bounds the
/// workspace (about 48 bytes per element at most) and keeps CUB's int sizes safe.
constexpr std::int64_t kChunkElements = std::int64_t{1} << 26;

// ---------------------------------------------------------------- kernels

/// Contiguous copy of a strided rank-1..3 view (dims padded with 1, strides with 0).
template <class Tin, class Tout>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const Tin* __restrict__ src, std::int64_t d1, std::int64_t d2, std::int64_t s0,
                  std::int64_t s1, std::int64_t s2, std::int64_t total, Tout* __restrict__ dst) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i2 = e % d2;
    const std::int64_t i1 = (e / d2) % d1;
    const std::int64_t i0 = e / (d1 * d2);
    dst[e] = static_cast<Tout>(src[i0 * s0 + i1 * s1 + i2 * s2]);
  }
}

/// Unit directions, transposed: theta_t[l * d + k] = theta_l[k]. One block per
/// direction; `given` (double [d, L] row-major) or, when null, the seed's Gaussians.
__global__ void __launch_bounds__(kThreads)
    directions_kernel(const double* __restrict__ given, std::uint64_t seed, std::int64_t d,
                      std::int64_t L, float* __restrict__ theta_t) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double inv_norm;
  const std::int64_t l = blockIdx.x;
  auto coord = [&](std::int64_t k) {
    return given != nullptr ? given[k * L + l]
                            : detail::direction_gaussian(seed, static_cast<std::uint64_t>(l),
                                                         static_cast<std::uint64_t>(k));
  };
  double sq = 0;
  for (std::int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const double t = coord(k);
    sq += t * t;
  }
  const double total = Reduce(tmp).Sum(sq);
  if (threadIdx.x == 0) inv_norm = total > 0 ? 1.0 / sqrt(total) : 0.0;
  __syncthreads();
  for (std::int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    theta_t[l * d + k] = static_cast<float>(coord(k) * inv_norm);
  }
}

/// Value of each sort element: its index inside its segment of length len.
__global__ void __launch_bounds__(kThreads)
    segment_iota_kernel(int* __restrict__ out, std::int64_t len, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    out[e] = static_cast<int>(e % len);
  }
}

/// offsets[s] = s * len, s = 0..segments (begin of s, and end of s - 1). The caller
/// guarantees segments * len <= INT_MAX; s itself can reach INT_MAX, so index in 64 bits.
__global__ void __launch_bounds__(kThreads)
    segment_offsets_kernel(int* __restrict__ offsets, int len, int segments) {
  const std::int64_t s = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (s <= segments) offsets[s] = static_cast<int>(s * len);
}

/// Prefix sums (in sorted order) of the weights of one segment, written to prefix[];
/// the whole block takes part. Tiles of kThreads items; the running carry makes the
/// scan continue across tiles.
__device__ void block_sorted_prefix(const double* __restrict__ w, const int* __restrict__ perm,
                                    std::int64_t len, double* __restrict__ prefix) {
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  double carry = 0;
  for (std::int64_t base = 0; base < len; base += kThreads) {
    const std::int64_t r = base + threadIdx.x;
    const double item = r < len ? w[perm[r]] : 0.0;
    double incl = 0, aggregate = 0;
    Scan(tmp).InclusiveSum(item, incl, aggregate);
    if (r < len) prefix[r] = carry + incl;
    carry += aggregate;
    __syncthreads();  // tmp is reused by the next tile
  }
}

/// One block per segment s = lc * B + b (direction l0 + lc, problem b): the quantile
/// merge of the sorted projections of x and y. Thread t walks merge steps
/// [t K, (t + 1) K) of the n + m - 1 steps, starting from the merge-path split.
/// Derivatives of W_p^p w.r.t. each projected point are added (in the caller's
/// point order) to dx / dy when they are non-null.
template <bool kWeightedA, bool kWeightedB>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const float* __restrict__ ux, const int* __restrict__ perm_x,
                 const float* __restrict__ vy, const int* __restrict__ perm_y, std::int64_t n,
                 std::int64_t m, std::int64_t B, std::int64_t L, std::int64_t l0, double p,
                 const double* __restrict__ wa, bool a_batched, const double* __restrict__ wb,
                 bool b_batched, double* __restrict__ prefix_x, double* __restrict__ prefix_y,
                 double* __restrict__ cost_out, float* __restrict__ dx, float* __restrict__ dy) {
  const std::int64_t s = blockIdx.x;
  const std::int64_t lc = s / B;
  const std::int64_t b = s % B;
  const float* u = ux + s * n;
  const int* pu = perm_x + s * n;
  const float* v = vy + s * m;
  const int* pv = perm_y + s * m;

  double total_a = 1.0, total_b = 1.0;
  if constexpr (kWeightedA) {
    block_sorted_prefix(wa + (a_batched ? b * n : 0), pu, n, prefix_x + s * n);
  }
  if constexpr (kWeightedB) {
    block_sorted_prefix(wb + (b_batched ? b * m : 0), pv, m, prefix_y + s * m);
  }
  if constexpr (kWeightedA || kWeightedB) {
    __syncthreads();  // the prefix sums written above are read by every thread
  }
  if constexpr (kWeightedA) total_a = prefix_x[s * n + n - 1];
  if constexpr (kWeightedB) total_b = prefix_y[s * m + m - 1];

  const auto ca = [&] {
    if constexpr (kWeightedA) {
      return detail::PrefixCumulative{prefix_x + s * n, total_a};
    } else {
      return detail::UniformCumulative{n};
    }
  }();
  const auto cb = [&] {
    if constexpr (kWeightedB) {
      return detail::PrefixCumulative{prefix_y + s * m, total_b};
    } else {
      return detail::UniformCumulative{m};
    }
  }();

  const std::int64_t steps = n + m - 1;
  const std::int64_t per_thread = (steps + kThreads - 1) / kThreads;
  const std::int64_t k0 = static_cast<std::int64_t>(threadIdx.x) * per_thread;
  double cost = 0;
  if (k0 < steps) {
    const std::int64_t i0 = detail::merge_path_split(ca, n, cb, m, k0);
    const bool grads = dx != nullptr;
    // Consecutive pieces often share i (or j): add their derivatives locally and
    // flush once per point, not once per piece.
    std::int64_t cur_i = -1, cur_j = -1;
    double acc_i = 0, acc_j = 0;
    float* gx = grads ? dx + s * n : nullptr;
    float* gy = grads ? dy + s * m : nullptr;
    detail::quantile_merge_walk(
        ca, n, cb, m, i0, k0 - i0, per_thread < steps - k0 ? per_thread : steps - k0,
        [&](std::int64_t i, std::int64_t j, double mass) {
          const double diff = static_cast<double>(u[i]) - static_cast<double>(v[j]);
          cost += mass * detail::ground_cost_1d(diff, p);
          if (grads) {
            const double g = mass * detail::ground_cost_1d_derivative(diff, p);
            if (i != cur_i) {
              if (cur_i >= 0 && acc_i != 0) atomicAdd(gx + pu[cur_i], static_cast<float>(acc_i));
              cur_i = i;
              acc_i = 0;
            }
            if (j != cur_j) {
              if (cur_j >= 0 && acc_j != 0) atomicAdd(gy + pv[cur_j], static_cast<float>(acc_j));
              cur_j = j;
              acc_j = 0;
            }
            acc_i += g;
            acc_j -= g;
          }
        });
    if (grads) {
      if (cur_i >= 0 && acc_i != 0) atomicAdd(gx + pu[cur_i], static_cast<float>(acc_i));
      if (cur_j >= 0 && acc_j != 0) atomicAdd(gy + pv[cur_j], static_cast<float>(acc_j));
    }
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage red;
  const double total = Reduce(red).Sum(cost);
  if (threadIdx.x == 0) cost_out[b * L + l0 + lc] = total;
}

/// d[e] *= weight of the term (problem b, direction l0 + lc) that element e belongs to.
__global__ void __launch_bounds__(kThreads)
    scale_terms_kernel(float* __restrict__ d, std::int64_t len, std::int64_t B, std::int64_t L,
                       std::int64_t l0, const float* __restrict__ term_w, std::int64_t total) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t s = e / len;
    d[e] *= term_w[(s % B) * L + l0 + s / B];
  }
}

// ---------------------------------------------------------------- host helpers

unsigned grid_for(std::int64_t total) {
  const std::int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(
      std::max<std::int64_t>(1, std::min<std::int64_t>(blocks, 65535 * 8)));
}

/// Restores the caller's current device.
struct DeviceGuard {
  int saved = 0;
  explicit DeviceGuard(int device) {
    SLICED_CUDA_CHECK(cudaGetDevice(&saved));
    SLICED_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { (void)cudaSetDevice(saved); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
};

/// The call's stream, workspace and events, released on every exit path.
struct CallResources {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  std::vector<cudaEvent_t> events;
  ~CallResources() {
    // Teardown on every path, errors included: statuses here cannot be reported.
    if (workspace != nullptr) (void)cudaFreeAsync(workspace, stream);
    if (stream != nullptr) {
      (void)cudaStreamSynchronize(stream);
      (void)cudaStreamDestroy(stream);
    }
    for (auto e : events) (void)cudaEventDestroy(e);
  }
  cudaEvent_t event() {
    cudaEvent_t e = nullptr;
    SLICED_CUDA_CHECK(cudaEventCreate(&e));
    events.push_back(e);
    SLICED_CUDA_CHECK(cudaEventRecord(e, stream));
    return e;
  }
};

/// One cuBLAS handle per (host thread, device), created on first use. Handles are
/// deliberately never destroyed: a destructor running at process exit could run
/// after the CUDA runtime has been torn down.
cublasHandle_t blas_handle(int device) {
  thread_local std::vector<cublasHandle_t> handles;
  if (static_cast<int>(handles.size()) <= device)
    handles.resize(static_cast<std::size_t>(device) + 1, nullptr);
  cublasHandle_t& h = handles[static_cast<std::size_t>(device)];
  if (h == nullptr) SLICED_CUBLAS_CHECK(cublasCreate(&h));
  return h;
}

/// The per-device pool the workspaces come from. It keeps its memory between calls
/// (release threshold: unlimited), so repeated calls (a training loop) do not map and
/// unmap gigabytes each time; it is separate from the device's default pool so the
/// caller's cudaMallocAsync behaviour is untouched. Never destroyed (see blas_handle).
cudaMemPool_t workspace_pool(int device) {
  static std::mutex mutex;
  static std::vector<cudaMemPool_t> pools;
  const std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<int>(pools.size()) <= device)
    pools.resize(static_cast<std::size_t>(device) + 1, nullptr);
  cudaMemPool_t& pool = pools[static_cast<std::size_t>(device)];
  if (pool == nullptr) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    SLICED_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    std::uint64_t keep_all = std::numeric_limits<std::uint64_t>::max();
    SLICED_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
  }
  return pool;
}

/// Bump allocator over the single workspace; every buffer 256-byte aligned.
struct Carve {
  std::size_t offset = 0;
  char* base = nullptr;
  template <class T>
  T* take(std::int64_t count) {
    const std::size_t at = (offset + 255) & ~std::size_t{255};
    offset = at + static_cast<std::size_t>(std::max<std::int64_t>(count, 0)) * sizeof(T);
    return base == nullptr ? nullptr : reinterpret_cast<T*>(base + at);
  }
};

float elapsed(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  SLICED_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms;
}

/// Gathers a device view (rank 1..3, any strides, f32/f64) into contiguous `dst`.
template <class Tout>
void gather_device(const TensorView& v, Tout* dst, cudaStream_t stream) {
  const std::int64_t d0 = v.dim(0), d1 = v.rank > 1 ? v.dim(1) : 1, d2 = v.rank > 2 ? v.dim(2) : 1;
  const std::int64_t s0 = v.stride(0), s1 = v.rank > 1 ? v.stride(1) : 0,
                     s2 = v.rank > 2 ? v.stride(2) : 0;
  const std::int64_t total = d0 * d1 * d2;
  if (v.dtype == DType::f32) {
    gather_kernel<float, Tout><<<grid_for(total), kThreads, 0, stream>>>(
        static_cast<const float*>(v.data), d1, d2, s0, s1, s2, total, dst);
  } else {
    gather_kernel<double, Tout><<<grid_for(total), kThreads, 0, stream>>>(
        static_cast<const double*>(v.data), d1, d2, s0, s1, s2, total, dst);
  }
  SLICED_LAUNCH_CHECK();
}

/// Host view (rank 1..3) as a contiguous host vector.
template <class Tout>
std::vector<Tout> gather_host(const TensorView& v) {
  const std::int64_t d0 = v.dim(0), d1 = v.rank > 1 ? v.dim(1) : 1, d2 = v.rank > 2 ? v.dim(2) : 1;
  std::vector<Tout> out(static_cast<std::size_t>(d0 * d1 * d2));
  std::size_t e = 0;
  for (std::int64_t i0 = 0; i0 < d0; ++i0)
    for (std::int64_t i1 = 0; i1 < d1; ++i1)
      for (std::int64_t i2 = 0; i2 < d2; ++i2) {
        out[e++] = static_cast<Tout>(load_as_double(v, i0, i1, i2));
      }
  return out;
}

/// True when stage<T> can hand out the caller's own pointer (contiguous device data
/// of type T): no staging buffer is needed then.
template <class T>
bool zero_copy(const TensorView& v) {
  const bool same_type = (sizeof(T) == 4) == (v.dtype == DType::f32);
  return v.present() && v.space == MemorySpace::device && same_type && v.is_contiguous();
}

/// Puts a view into contiguous device memory `dst` (or returns the caller's pointer
/// when it already is contiguous device data of type T).
template <class T>
const T* stage(const TensorView& v, T* dst, cudaStream_t stream,
               std::vector<std::vector<T>>& keep) {
  if (zero_copy<T>(v)) return static_cast<const T*>(v.data);
  if (v.space == MemorySpace::device) {
    gather_device<T>(v, dst, stream);
    return dst;
  }
  keep.push_back(gather_host<T>(v));
  SLICED_CUDA_CHECK(cudaMemcpyAsync(dst, keep.back().data(), keep.back().size() * sizeof(T),
                                    cudaMemcpyHostToDevice, stream));
  return dst;
}

}  // namespace

SlicedResult sliced_wasserstein(const SlicedProblem& problem, const SlicedOptions& options,
                                const detail::SlicedShape& shape) {
  const std::int64_t B = shape.batch, n = shape.n, m = shape.m, d = shape.d, L = shape.projections;
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  if (B * std::max(n, m) > kIntMax || L * d > kIntMax) {
    throw InvalidArgument(fmt::format(
        "sliced_wasserstein: backend cuda handles B*n, B*m up to {} points (got B={}, n={}, "
        "m={}, d={}); split the batch",
        kIntMax, B, n, m, d));
  }
  const int device = options.device;
  DeviceGuard device_guard(device);
  CallResources res;
  SLICED_CUDA_CHECK(cudaStreamCreate(&res.stream));  // blocking: ordered after stream 0
  cudaStream_t stream = res.stream;
  cublasHandle_t blas = blas_handle(device);
  SLICED_CUBLAS_CHECK(cublasSetStream(blas, stream));
  SLICED_CUBLAS_CHECK(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH));  // fp32, no TF32

  const bool weighted_a = problem.a.present(), weighted_b = problem.b.present();
  const bool grads = options.gradients;
  const std::int64_t len = std::max(n, m);

  // Directions per chunk so that one chunk sorts at most kChunkElements elements;
  // halved until the workspace fits in free memory.
  std::int64_t Lc = std::clamp<std::int64_t>(kChunkElements / (B * len), 1, L);
  std::size_t temp_bytes = 0;
  auto plan = [&](std::int64_t lc, char* base) {
    Carve c{0, base};
    const std::int64_t ex = lc * B * n, ey = lc * B * m;
    struct Buffers {
      float *x, *y, *theta_t, *keys_in, *kx, *ky, *dx, *dy, *gx, *gy, *term_w;
      int *vals_in, *px, *py, *off_x, *off_y;
      double *wa, *wb, *px_prefix, *py_prefix, *cost, *given;
      void* temp;
    } bf{};
    // Staging copies only for inputs that are not already contiguous device data of
    // the type the kernels read (a zero-copy input would otherwise cost its size again).
    bf.x = c.take<float>(zero_copy<float>(problem.x) ? 0 : B * n * d);
    bf.y = c.take<float>(zero_copy<float>(problem.y) ? 0 : B * m * d);
    bf.theta_t = c.take<float>(L * d);
    bf.given = c.take<double>(
        options.directions.present() && options.directions.space == MemorySpace::device ? L * d
                                                                                        : 0);
    bf.wa = c.take<double>(
        weighted_a && !zero_copy<double>(problem.a) ? (shape.a_batched ? B : 1) * n : 0);
    bf.wb = c.take<double>(
        weighted_b && !zero_copy<double>(problem.b) ? (shape.b_batched ? B : 1) * m : 0);
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
        std::size_t bytes = 0;
        const int segments = static_cast<int>(chunk * B);
        SLICED_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(
            nullptr, bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
            static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
            static_cast<int>(chunk * B * seg_len), segments, static_cast<const int*>(nullptr),
            static_cast<const int*>(nullptr), 0, 32, stream));
        most = std::max(most, bytes);
      }
    }
    return most;
  };
  std::size_t free_bytes = 0, total_bytes = 0;
  SLICED_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  // Memory our pool holds but does not use counts as free for this call.
  cudaMemPool_t pool = workspace_pool(device);
  std::uint64_t reserved = 0, used = 0;
  SLICED_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
  SLICED_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
  if (reserved > used) free_bytes += static_cast<std::size_t>(reserved - used);
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
  SLICED_CUDA_CHECK(cudaMallocFromPoolAsync(&res.workspace, need, pool, stream));
  const auto bf = plan(Lc, static_cast<char*>(res.workspace)).first;

  SlicedResult r;
  r.backend = Backend::cuda;
  r.device = device;
  r.batch = B;
  r.n = n;
  r.m = m;
  r.d = d;
  r.projections = L;

  // Inputs, contiguous on the device.
  std::vector<std::vector<float>> keep_f;
  std::vector<std::vector<double>> keep_d;
  const float* X = stage<float>(problem.x, bf.x, stream, keep_f);
  const float* Y = stage<float>(problem.y, bf.y, stream, keep_f);
  const double* WA = weighted_a ? stage<double>(problem.a, bf.wa, stream, keep_d) : nullptr;
  const double* WB = weighted_b ? stage<double>(problem.b, bf.wb, stream, keep_d) : nullptr;

  // Directions: host-given ones were validated and are normalized on the host
  // (exactly as the CPU does); device-given ones and seeded draws on the device.
  cudaEvent_t ev_dir0 = res.event();
  if (options.directions.present() && options.directions.space == MemorySpace::host) {
    const std::vector<double> theta = detail::host_directions(options, shape);  // [d, L]
    std::vector<float> tt(static_cast<std::size_t>(L * d));
    for (std::int64_t l = 0; l < L; ++l)
      for (std::int64_t k = 0; k < d; ++k)
        tt[static_cast<std::size_t>(l * d + k)] =
            static_cast<float>(theta[static_cast<std::size_t>(k * L + l)]);
    keep_f.push_back(std::move(tt));
    SLICED_CUDA_CHECK(cudaMemcpyAsync(bf.theta_t, keep_f.back().data(),
                                      keep_f.back().size() * sizeof(float), cudaMemcpyHostToDevice,
                                      stream));
  } else {
    const double* given = nullptr;
    if (options.directions.present()) {
      gather_device<double>(options.directions, bf.given, stream);
      given = bf.given;
    }
    directions_kernel<<<static_cast<unsigned>(L), kThreads, 0, stream>>>(given, options.seed, d, L,
                                                                         bf.theta_t);
    SLICED_LAUNCH_CHECK();
  }
  cudaEvent_t ev_dir1 = res.event();

  if (grads) {
    SLICED_CUDA_CHECK(
        cudaMemsetAsync(bf.gx, 0, static_cast<std::size_t>(B * n * d) * sizeof(float), stream));
    SLICED_CUDA_CHECK(
        cudaMemsetAsync(bf.gy, 0, static_cast<std::size_t>(B * m * d) * sizeof(float), stream));
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
      ChunkEvents ce{res.event()};
      const float one = 1.0f, zero = 0.0f;
      auto project_and_sort = [&](const float* P, std::int64_t rows, float* keys_out, int* vals_out,
                                  int* offsets) {
        const int N = static_cast<int>(B * rows);
        // keys_in[lc][r] = <theta_{l0+lc}, P_r>: column-major N x lc with ldc = N.
        SLICED_CUBLAS_CHECK(cublasSgemm(
            blas, CUBLAS_OP_T, CUBLAS_OP_N, N, static_cast<int>(lc), static_cast<int>(d), &one, P,
            static_cast<int>(d), bf.theta_t + l0 * d, static_cast<int>(d), &zero, bf.keys_in, N));
        ce.push_back(res.event());
        const std::int64_t items = lc * B * rows;
        segment_iota_kernel<<<grid_for(items), kThreads, 0, stream>>>(bf.vals_in, rows, items);
        SLICED_LAUNCH_CHECK();
        segment_offsets_kernel<<<static_cast<unsigned>(
                                     (static_cast<std::int64_t>(segments) + kThreads) / kThreads),
                                 kThreads, 0, stream>>>(offsets, static_cast<int>(rows), segments);
        SLICED_LAUNCH_CHECK();
        std::size_t bytes = temp_bytes;
        SLICED_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(
            bf.temp, bytes, bf.keys_in, keys_out, bf.vals_in, vals_out, static_cast<int>(items),
            segments, offsets, offsets + 1, 0, 32, stream));
        ce.push_back(res.event());
      };
      project_and_sort(X, n, bf.kx, bf.px, bf.off_x);
      project_and_sort(Y, m, bf.ky, bf.py, bf.off_y);

      float* dxp = with_grads ? bf.dx : nullptr;
      float* dyp = with_grads ? bf.dy : nullptr;
      if (with_grads) {
        SLICED_CUDA_CHECK(cudaMemsetAsync(
            bf.dx, 0, static_cast<std::size_t>(lc * B * n) * sizeof(float), stream));
        SLICED_CUDA_CHECK(cudaMemsetAsync(
            bf.dy, 0, static_cast<std::size_t>(lc * B * m) * sizeof(float), stream));
      }
      auto launch = [&](auto kernel) {
        kernel<<<static_cast<unsigned>(segments), kThreads, 0, stream>>>(
            bf.kx, bf.px, bf.ky, bf.py, n, m, B, L, l0, options.p, WA, shape.a_batched, WB,
            shape.b_batched, bf.px_prefix, bf.py_prefix, bf.cost, dxp, dyp);
        SLICED_LAUNCH_CHECK();
      };
      if (weighted_a && weighted_b) {
        launch(merge_kernel<true, true>);
      } else if (weighted_a) {
        launch(merge_kernel<true, false>);
      } else if (weighted_b) {
        launch(merge_kernel<false, true>);
      } else {
        launch(merge_kernel<false, false>);
      }
      ce.push_back(res.event());

      if (with_grads) {
        auto back_project = [&](float* D, std::int64_t rows, float* G) {
          const std::int64_t items = lc * B * rows;
          scale_terms_kernel<<<grid_for(items), kThreads, 0, stream>>>(D, rows, B, L, l0, bf.term_w,
                                                                       items);
          SLICED_LAUNCH_CHECK();
          const int N = static_cast<int>(B * rows);
          // G (d x N column-major = [B*rows, d] row-major) += theta_t^T-chunk x D^T.
          SLICED_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(d), N,
                                          static_cast<int>(lc), &one, bf.theta_t + l0 * d,
                                          static_cast<int>(d), D, N, &one, G, static_cast<int>(d)));
        };
        back_project(bf.dx, n, bf.gx);
        back_project(bf.dy, m, bf.gy);
      }
      ce.push_back(res.event());
      chunk_events.push_back(std::move(ce));
    }
  };

  r.per_direction.assign(static_cast<std::size_t>(B * L), 0.0);
  if (grads && !options.max_sliced) {
    // Mean: every term has weight 1/L, known before the costs.
    const std::vector<float> w(static_cast<std::size_t>(B * L), 1.0f / static_cast<float>(L));
    SLICED_CUDA_CHECK(cudaMemcpyAsync(bf.term_w, w.data(), w.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, stream));
    run_pass(true, nullptr);
  } else {
    run_pass(false, nullptr);
  }
  SLICED_CUDA_CHECK(cudaMemcpyAsync(r.per_direction.data(), bf.cost,
                                    r.per_direction.size() * sizeof(double), cudaMemcpyDeviceToHost,
                                    stream));
  SLICED_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (grads && options.max_sliced) {
    // Max-sliced: only the selected term of each problem is differentiated, which is
    // known once all costs are; a second pass recomputes the chunks holding one.
    const std::vector<double> w = detail::sliced_term_weights(r.per_direction, B, L, true);
    const std::vector<float> wf(w.begin(), w.end());
    SLICED_CUDA_CHECK(cudaMemcpyAsync(bf.term_w, wf.data(), wf.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, stream));
    run_pass(true, &w);
  }
  if (grads) {
    std::vector<float> gx(static_cast<std::size_t>(B * n * d)),
        gy(static_cast<std::size_t>(B * m * d));
    SLICED_CUDA_CHECK(cudaMemcpyAsync(gx.data(), bf.gx, gx.size() * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
    SLICED_CUDA_CHECK(cudaMemcpyAsync(gy.data(), bf.gy, gy.size() * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream));
    SLICED_CUDA_CHECK(cudaStreamSynchronize(stream));
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
